package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/proxy"
)

// SQLSTATEs the console reports. Source implementations use them in Error.
const (
	CodeSyntaxError                  = "42601" // unknown command, missing argument
	CodeUndefinedObject              = "42704" // unknown SHOW item
	CodeInvalidParameterValue        = "22023" // an argument or value that is not valid
	CodeObjectNotInPrerequisiteState = "55000" // the command is valid but cannot be done now
	CodeFeatureNotSupported          = "0A000" // extended query protocol
	CodeConnectionFailure            = "08006" // a database could not be reached
	CodeQueryCanceled                = "57014" // a statistics query ran out of time
	CodeAdminShutdown                = "57P01" // pgshield is shutting down
	CodeProtocolViolation            = "08P01"
	CodeInternalError                = "XX000"
	defaultSourceCode                = CodeObjectNotInPrerequisiteState
	databaseQueryTimeout             = 10 * time.Second
	defaultQueries                   = 20
	// showHint is showItemsHint() as a constant (a test keeps them equal).
	showHint           = "SHOW items: POOLS, CLIENTS, SERVERS, BACKENDS, STATS, CONFIG, VERSION, QUERIES [n], SLOW_QUERIES, TRANSACTIONS, PINNED, HEALTH, LOCKS, TABLES, INDEXES, ALERTS, POLICY, FIREWALL, KEYS, JOBS, JOB <id>, BACKUPS, WAL, SCHEDULE, HELP" // showItemsHint(), as a constant; a test keeps them equal
	showTag            = "SHOW"
	maxQueriesArgument = 100000
)

// Error is an error the console reports as an ErrorResponse with severity
// ERROR and the given SQLSTATE. Source implementations return one (or wrap
// one) to choose what the operator sees: CodeInvalidParameterValue (22023)
// for a value that is not valid (SET pool_mode = sideways, KILL of an
// unknown client), CodeObjectNotInPrerequisiteState (55000) for a command
// that cannot be done now (READMIT of a backend that is not fenced). A
// Source error that is not an Error is reported as 55000, unless it carries
// a PostgreSQL error (*pgconn.PgError), whose SQLSTATE is kept.
type Error struct {
	Code    string // SQLSTATE
	Message string
	Detail  string
	Hint    string
	Err     error // the cause, if any
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an Error; a %w verb in format sets Err.
func Errorf(code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), Err: errors.Unwrap(err)}
}

func (e *Error) withHint(hint string) *Error {
	e.Hint = hint
	return e
}

// token is one word of a command: a bare word, a quoted string ('…' or
// "…", quotes removed) or "=".
type token struct {
	text   string
	quoted bool
}

func (t token) isEq() bool { return !t.quoted && t.text == "=" }

// tokenize splits one command into tokens.
func tokenize(s string) ([]token, error) {
	var out []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '=':
			out = append(out, token{text: "="})
			i++
		case c == '\'' || c == '"':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					if c == '\'' {
						return nil, Errorf(CodeSyntaxError, "unterminated quoted string")
					}
					return nil, Errorf(CodeSyntaxError, "unterminated quoted identifier")
				}
				if s[j] == c {
					if j+1 < len(s) && s[j+1] == c { // doubled quote
						b.WriteByte(c)
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			out = append(out, token{text: b.String(), quoted: true})
			i = j + 1
		default:
			j := i
			for j < len(s) && !strings.ContainsRune(" \t\n\r\f\v='\"", rune(s[j])) {
				j++
			}
			out = append(out, token{text: s[i:j]})
			i = j
		}
	}
	return out, nil
}

// splitCommands splits the text of one Query message into commands on
// ";", outside single quotes, double quotes and comments (-- to the end of
// the line, /* … */). Comments are dropped and empty commands skipped.
func splitCommands(q string) []string {
	var out []string
	var cur strings.Builder
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			out = append(out, s)
		}
		cur.Reset()
	}
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'' || c == '"':
			j := i + 1
			for j < len(q) && q[j] != c {
				j++
			}
			// An unterminated quote runs to the end; tokenize reports it.
			end := min(j+1, len(q))
			cur.WriteString(q[i:end])
			i = end - 1
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' {
				i++
			}
			cur.WriteByte(' ')
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				i = len(q)
			} else {
				i += 2 + end + 1
			}
			cur.WriteByte(' ')
		case c == ';':
			flush()
		default:
			cur.WriteByte(c)
		}
	}
	flush()
	return out
}

// commandWord is what a command is logged as: its first word, upper-cased,
// and for SHOW the item. Never an argument value.
func commandWord(toks []token) string {
	if len(toks) == 0 {
		return ""
	}
	w := strings.ToUpper(toks[0].text)
	if w == "SHOW" && len(toks) > 1 {
		w += " " + strings.ToUpper(toks[1].text)
	}
	return w
}

// answer is what one command returns.
type answer struct {
	res     *Result
	notices []string
	tag     string
}

// command is one console command: the word it starts with, the arguments
// it takes, what SHOW HELP says about it and what runs it. Adding a
// command is adding an entry to commandTable (a SHOW item, to showTable).
type command struct {
	name  string  // the first word, upper case
	usage string  // KILL <client id>: in SHOW HELP and the hint of an unknown command
	help  string  // its line in SHOW HELP ("": none; SHOW lists its items instead)
	args  argRule // nil: run reads the arguments itself
	run   func(c *Console, ctx context.Context, args []token) (*answer, error)
}

// showItem is one item of SHOW.
type showItem struct {
	name  string // upper case: POOLS
	usage string // SHOW QUERIES [n]; "": SHOW and the name
	help  string
	args  argRule // nil: none
	run   func(c *Console, ctx context.Context, args []token) (*answer, error)
}

// argRule checks a command's arguments before it runs; cmd is the command
// as messages name it (KILL, SHOW POOLS).
type argRule func(cmd string, args []token) error

// commandTable is every command, in the order of SHOW HELP.
func commandTable() []command {
	return []command{
		{name: "SHOW", usage: "SHOW <item>", args: needsItem, run: (*Console).showCommand},
		{name: "PAUSE", usage: "PAUSE [database]", args: atMostOneDatabase, run: (*Console).pause,
			help: "hold new transactions of one or every database until RESUME"},
		{name: "RESUME", usage: "RESUME [database]", args: atMostOneDatabase, run: (*Console).resume,
			help: "let paused transactions go on"},
		{name: "RELOAD", usage: "RELOAD", args: noArgs, run: (*Console).reload,
			help: "reload the configuration file, the console's SETs on top; a bad file is refused and the old one stays"},
		{name: "KILL", usage: "KILL <client id>", run: (*Console).kill,
			args: exactly(1, "a client id: KILL <client id>", "one client id", "the ids are in the id column of SHOW CLIENTS"),
			help: "disconnect a client (ids from SHOW CLIENTS)"},
		{name: "SET", usage: "SET <setting> = <value>", run: (*Console).set,
			help: "change a setting of the configuration file at run time, until RESET or restart (also SET <setting> TO <value>)"},
		{name: "RESET", usage: "RESET <setting>|ALL", run: (*Console).reset,
			args: exactly(1, "a setting: RESET <setting> or RESET ALL", "one setting", "SHOW CONFIG marks with set the values a console SET gave"),
			help: "drop the SET of one setting (ALL: of every setting): the configuration file's value applies again"},
		{name: "READMIT", usage: "READMIT <database> <host:port>", run: (*Console).readmit,
			args: exactly(2, "a database and a backend: READMIT <database> <host:port>", "", "the fenced backends are in SHOW BACKENDS"),
			help: "put a fenced backend back into service"},
		{name: "FIREWALL", usage: "FIREWALL SAVE [service]", args: firewallArgs, run: (*Console).firewallSave,
			help: "write the fingerprints a service learned (without a service: every service in mode learn) to its allow_file, the allow list of mode enforce"},
		{name: "ROTATE", usage: "ROTATE KEY", args: keyArgs(0), run: (*Console).rotateKey,
			help: "add a new primary key of each kind to the keyring file and put it in force; older keys still decrypt, and those beyond encryption.keep_keys that no row uses are retired"},
		{name: "RETIRE", usage: "RETIRE KEY <id>", args: keyArgs(1), run: (*Console).retireKey,
			help: "retire a key (key_id of SHOW KEYS) once no row uses it: it stays in the keyring file but no longer decrypts"},
		{name: "REENCRYPT", usage: "REENCRYPT <table>", run: (*Console).reencrypt,
			args: exactly(1, "a table: REENCRYPT <table>", "one table", "a table with encrypted columns, or database.table"),
			help: "rewrite the values of a table's encrypted columns under the primary keys, in the background (SHOW JOBS follows it; run again, it goes on where it stopped)"},
		{name: "CANCEL", usage: "CANCEL JOB <id>", args: cancelArgs, run: (*Console).cancelJob,
			help: "cancel a background job (id of SHOW JOBS) and wait up to 5 s for it to stop"},
		{name: "BACKUP", usage: "BACKUP FULL|INCREMENTAL", args: backupArgs, run: (*Console).backupCmd,
			help: "take a backup of the database into the backup repository, in the background (SHOW JOBS follows it, SHOW BACKUPS lists it)"},
		{name: "RESTORE", usage: restoreUsage, run: (*Console).restore,
			help: "restore a backup (to a time or LSN with the archived WAL) into a new directory and start it on the port; waits for the job, then says where it is"},
		{name: "VERIFY", usage: "VERIFY BACKUP <id>|LATEST", args: words("VERIFY BACKUP <id>|LATEST", 1, "BACKUP"), run: (*Console).verifyBackup,
			help: "check that a backup is whole and restorable; waits for the job; the result is in SHOW BACKUPS"},
		{name: "DELETE", usage: "DELETE EXPIRED BACKUPS", args: words("DELETE EXPIRED BACKUPS", 0, "EXPIRED", "BACKUPS"), run: (*Console).deleteExpired,
			help: "delete the backups and WAL older than backup.retention; waits for the job, then lists what it deleted"},
		{name: "HELP", usage: "HELP", args: noArgs, run: func(c *Console, ctx context.Context, _ []token) (*answer, error) {
			return c.show(ctx, "HELP", nil)
		}},
	}
}

// showTable is every SHOW item, in the order of SHOW HELP.
func showTable() []showItem {
	items := []showItem{
		{name: "POOLS", help: "pools per service, database and backend: clients, servers, limits, wait times", run: table((*Console).pools)},
		{name: "CLIENTS", help: "connected clients: user, service, state, attached server, traffic", run: table((*Console).clients)},
		{name: "SERVERS", help: "open server connections: state, client served, idle time", run: table((*Console).servers)},
		{name: "BACKENDS", help: "backend servers: role, health, breaker, replication lag", run: table((*Console).backends)},
		{name: "STATS", help: "traffic per service and database since start", run: table((*Console).stats)},
		{name: "CONFIG", help: "the running configuration, one setting a row; source is set for a value from a console SET", run: table((*Console).config)},
		{name: "VERSION", help: "the pgshield version", run: table((*Console).version)},
		{name: "QUERIES", usage: "SHOW QUERIES [n]", help: "the n statements (default 20) with the most total time, normalized",
			args: queriesArgs, run: (*Console).showQueries},
		{name: "SLOW_QUERIES", help: "recent statements slower than slow_query_threshold", run: (*Console).showSlowQueries},
		{name: "TRANSACTIONS", help: "open transactions: age, statements, tables written", run: table((*Console).transactions)},
		{name: "PINNED", help: "clients pinned to their server by session state, and why", run: table((*Console).pinned)},
		{name: "HEALTH", help: "per database: connections, cache hit ratio, rollbacks, deadlocks, replication lag", run: databaseTable(sqlHealth)},
		{name: "LOCKS", help: "per database: blocked sessions and the sessions blocking them", run: databaseTable(sqlLocks)},
		{name: "TABLES", help: "per database: table sizes, scans, dead tuples, vacuum and analyze times", run: databaseTable(sqlTables)},
		{name: "INDEXES", help: "per database: index sizes and usage, unused indexes", run: databaseTable(sqlIndexes)},
		{name: "ALERTS", help: "alerts firing now", run: table((*Console).alerts)},
		{name: "POLICY", help: "the policy's rules in force: table, column, rule, kind, services, rows checked and refusals since the policy was loaded",
			run: table((*Console).policyRules)},
		{name: "FIREWALL", help: "the firewall of each service: mode, fingerprints learned or allowed with their normalized text, deny rules",
			run: table((*Console).firewallRows)},
		{name: "KEYS", help: "the encryption keys: kind, created, primary, enabled, and the rows under each (plaintext: not encrypted) as of the last scan, at most a minute old",
			run: (*Console).showKeys},
		{name: "JOBS", help: "background jobs, running and the last 100 finished: state, progress, percent, ETA, error",
			run: (*Console).showJobs},
		{name: "JOB", usage: "SHOW JOB <id>", help: "one background job, with the columns of SHOW JOBS",
			args: exactly(1, "a job id: SHOW JOB <id>", "one job id", "the ids are in the id column of SHOW JOBS"), run: (*Console).showJob},
		{name: "BACKUPS", help: "the backups in the repository, oldest first: kind, LSNs, size, key, verification, parent",
			run: (*Console).showBackups},
		{name: "WAL", help: "WAL archiving on this pgshield: running, last segment archived, lag, error", run: (*Console).showWAL},
		{name: "SCHEDULE", help: "the scheduled backup jobs: cron expression (UTC), next run, whether this pgshield leads (runs them)",
			run: (*Console).showSchedule},
		{name: "HELP", help: "this list (also HELP)", run: table(func(*Console) *Result {
			res := &Result{Columns: Cols("command", TypeText, "description", TypeText)}
			for _, h := range helpLines() {
				res.Rows = append(res.Rows, []any{h[0], h[1]})
			}
			return res
		})},
	}
	for i := range items {
		if items[i].usage == "" {
			items[i].usage = "SHOW " + items[i].name
		}
	}
	return items
}

// commandIndex and showIndex key the tables by name, for dispatch.
func commandIndex() map[string]command {
	m := make(map[string]command)
	for _, cmd := range commandTable() {
		m[cmd.name] = cmd
	}
	return m
}

func showIndex() map[string]showItem {
	m := make(map[string]showItem)
	for _, it := range showTable() {
		m[it.name] = it
	}
	return m
}

// table runs a SHOW item that renders what Source returns.
func table(render func(c *Console) *Result) func(*Console, context.Context, []token) (*answer, error) {
	return func(c *Console, _ context.Context, _ []token) (*answer, error) {
		return &answer{res: render(c), tag: showTag}, nil
	}
}

// databaseTable runs a SHOW item that queries every database.
func databaseTable(sql string) func(*Console, context.Context, []token) (*answer, error) {
	return func(c *Console, ctx context.Context, _ []token) (*answer, error) { return c.databaseQuery(ctx, sql) }
}

// helpLines is SHOW HELP: every command with one line, SHOW with one per
// item.
func helpLines() [][2]string {
	var out [][2]string
	for _, cmd := range commandTable() {
		if cmd.name == "SHOW" {
			for _, it := range showTable() {
				out = append(out, [2]string{it.usage, it.help})
			}
		}
		if cmd.help != "" {
			out = append(out, [2]string{cmd.usage, cmd.help})
		}
	}
	return out
}

// commandsHint lists the commands, for the hint of an unknown one.
func commandsHint() string {
	var usages []string
	for _, cmd := range commandTable() {
		usages = append(usages, cmd.usage)
	}
	return "commands: " + strings.Join(usages, ", ")
}

// showItemsHint lists the SHOW items as showHint does.
func showItemsHint() string {
	var items []string
	for _, it := range showTable() {
		items = append(items, strings.TrimPrefix(it.usage, "SHOW "))
	}
	return "SHOW items: " + strings.Join(items, ", ")
}

// execute runs one command.
func (c *Console) execute(ctx context.Context, toks []token) (*answer, error) {
	if len(toks) == 0 {
		return nil, Errorf(CodeSyntaxError, "empty command").withHint(commandsHint())
	}
	cmd, ok := c.commands[strings.ToUpper(toks[0].text)]
	if !ok {
		return nil, Errorf(CodeSyntaxError, "unknown command %q", toks[0].text).withHint(commandsHint())
	}
	args := toks[1:]
	if cmd.args != nil {
		if err := cmd.args(cmd.name, args); err != nil {
			return nil, err
		}
	}
	return cmd.run(c, ctx, args)
}

// show answers SHOW item.
func (c *Console) show(ctx context.Context, item string, args []token) (*answer, error) {
	it, ok := c.items[item]
	if !ok {
		return nil, Errorf(CodeUndefinedObject, "unknown SHOW item %q", item).withHint(showHint)
	}
	rule := it.args
	if rule == nil {
		rule = noArgs
	}
	if err := rule("SHOW "+item, args); err != nil {
		return nil, err
	}
	return it.run(c, ctx, args)
}

func (c *Console) showCommand(ctx context.Context, args []token) (*answer, error) {
	return c.show(ctx, strings.ToUpper(args[0].text), args[1:])
}

func (c *Console) pause(ctx context.Context, args []token) (*answer, error) {
	db, err := c.optionalDatabase("PAUSE", args)
	if err != nil {
		return nil, err
	}
	if err := c.src.Pause(ctx, db); err != nil {
		return nil, sourceError("PAUSE", err)
	}
	return control("PAUSE", "paused "+databaseNoun(db)+": new transactions wait until RESUME"), nil
}

func (c *Console) resume(_ context.Context, args []token) (*answer, error) {
	db, err := c.optionalDatabase("RESUME", args)
	if err != nil {
		return nil, err
	}
	if err := c.src.Resume(db); err != nil {
		return nil, sourceError("RESUME", err)
	}
	return control("RESUME", "resumed "+databaseNoun(db)), nil
}

func (c *Console) reload(context.Context, []token) (*answer, error) {
	if err := c.src.Reload(); err != nil {
		return nil, sourceError("RELOAD", err)
	}
	return control("RELOAD", "configuration reloaded"), nil
}

func (c *Console) kill(_ context.Context, args []token) (*answer, error) {
	id, err := strconv.ParseUint(args[0].text, 10, 32)
	if err != nil || id == 0 {
		return nil, Errorf(CodeInvalidParameterValue, "invalid client id %q: want a positive number", args[0].text).
			withHint("the ids are in the id column of SHOW CLIENTS")
	}
	if err := c.src.Kill(uint32(id)); err != nil {
		return nil, sourceError("KILL", err)
	}
	return control("KILL", fmt.Sprintf("client %d disconnected", id)), nil
}

func (c *Console) set(_ context.Context, args []token) (*answer, error) {
	setting, value, err := parseSet(args)
	if err != nil {
		return nil, err
	}
	if err := c.src.Set(setting, value); err != nil {
		return nil, sourceError("SET", err)
	}
	return control("SET", fmt.Sprintf("%s set to %q", setting, value)), nil
}

// reset runs RESET <setting> and RESET ALL; a quoted "all" is a setting.
func (c *Console) reset(_ context.Context, args []token) (*answer, error) {
	name := args[0].text
	if args[0].isEq() || args[0].quoted && name == "" {
		return nil, Errorf(CodeSyntaxError, "RESET needs a setting: RESET <setting> or RESET ALL")
	}
	if !args[0].quoted {
		name = strings.ToLower(name)
		if name == "all" {
			if err := c.src.Reset(""); err != nil {
				return nil, sourceError("RESET", err)
			}
			return control("RESET", "every SET dropped: the configuration file's values apply"), nil
		}
	}
	if err := c.src.Reset(name); err != nil {
		return nil, sourceError("RESET", err)
	}
	return control("RESET", fmt.Sprintf("%s reset: the configuration file's value applies", name)), nil
}

func (c *Console) readmit(_ context.Context, args []token) (*answer, error) {
	db, backend := args[0].text, args[1].text
	if err := c.checkDatabase("READMIT", db); err != nil {
		return nil, err
	}
	if _, _, err := net.SplitHostPort(backend); err != nil {
		return nil, Errorf(CodeInvalidParameterValue, "invalid backend %q: want host:port as in SHOW BACKENDS", backend)
	}
	if err := c.src.Readmit(db, backend); err != nil {
		return nil, sourceError("READMIT", err)
	}
	return control("READMIT", fmt.Sprintf("backend %s of database %s readmitted", backend, db)), nil
}

func (c *Console) showQueries(_ context.Context, args []token) (*answer, error) {
	n := defaultQueries
	if len(args) == 1 {
		v, err := strconv.Atoi(args[0].text)
		if err != nil || v < 1 || v > maxQueriesArgument {
			return nil, Errorf(CodeInvalidParameterValue, "SHOW QUERIES takes a number of statements from 1 to %d, got %q",
				maxQueriesArgument, args[0].text)
		}
		n = v
	}
	return &answer{res: c.queries(n), tag: showTag}, nil
}

func (c *Console) showSlowQueries(context.Context, []token) (*answer, error) {
	return &answer{res: c.slowQueries(), tag: showTag,
		notices: []string{fmt.Sprintf("slow-query threshold: %s ms", strconv.FormatFloat(durationMs(c.src.SlowThreshold()), 'f', 3, 64))}}, nil
}

func control(tag, notice string) *answer {
	return &answer{res: &Result{}, notices: []string{notice}, tag: tag}
}

func databaseNoun(db string) string {
	if db == "" {
		return "every database"
	}
	return "database " + db
}

// noArgs is the rule of a command that takes no arguments.
func noArgs(cmd string, args []token) error {
	if len(args) > 0 {
		return Errorf(CodeSyntaxError, "%s takes no arguments, got %q", cmd, args[0].text)
	}
	return nil
}

// needsItem is SHOW's rule.
func needsItem(_ string, args []token) error {
	if len(args) == 0 {
		return Errorf(CodeSyntaxError, "SHOW needs an item: SHOW POOLS, SHOW CLIENTS …").withHint(showHint)
	}
	return nil
}

// atMostOneDatabase is the rule of PAUSE and RESUME.
func atMostOneDatabase(cmd string, args []token) error {
	if len(args) > 1 {
		return Errorf(CodeSyntaxError, "%s takes at most one database, got %d arguments", cmd, len(args)).
			withHint(cmd + " [database]; without a database it applies to every database")
	}
	return nil
}

// queriesArgs is the rule of SHOW QUERIES [n].
func queriesArgs(_ string, args []token) error {
	if len(args) > 1 {
		return Errorf(CodeSyntaxError, "SHOW QUERIES takes at most one argument (the number of statements), got %d", len(args))
	}
	return nil
}

// exactly is the rule of a command taking n arguments: with fewer it
// "needs" them (with hint); with more it "takes" extra, or, when extra is
// "", it needs them as with fewer.
func exactly(n int, needs, extra, hint string) argRule {
	return func(cmd string, args []token) error {
		switch {
		case len(args) < n || len(args) > n && extra == "":
			return Errorf(CodeSyntaxError, "%s needs %s", cmd, needs).withHint(hint)
		case len(args) > n:
			return Errorf(CodeSyntaxError, "%s takes %s, got %d arguments", cmd, extra, len(args))
		}
		return nil
	}
}

// optionalDatabase reads the [database] argument of PAUSE and RESUME.
func (c *Console) optionalDatabase(cmd string, args []token) (string, error) {
	if len(args) == 0 {
		return "", nil
	}
	return args[0].text, c.checkDatabase(cmd, args[0].text)
}

func (c *Console) checkDatabase(cmd, db string) error {
	names := c.src.Databases()
	for _, n := range names {
		if n == db {
			return nil
		}
	}
	return Errorf(CodeInvalidParameterValue, "%s: database %q is not configured", cmd, db).
		withHint("configured databases: " + strings.Join(names, ", "))
}

// parseSet reads "name = value" or "name TO value"; the value is one word
// or a quoted string. An unquoted name is folded to lower case, as
// PostgreSQL folds identifiers.
func parseSet(args []token) (name, value string, err error) {
	usage := Errorf(CodeSyntaxError, "SET needs a setting and a value: SET <setting> = <value>").
		withHint("quote a value with spaces: SET <setting> = '1 min'; SHOW CONFIG lists the settings")
	if len(args) != 3 || args[0].quoted && args[0].text == "" {
		return "", "", usage
	}
	if !args[1].isEq() && !(!args[1].quoted && strings.EqualFold(args[1].text, "TO")) {
		return "", "", usage
	}
	if args[2].isEq() {
		return "", "", usage
	}
	name = args[0].text
	if !args[0].quoted {
		name = strings.ToLower(name)
	}
	return name, args[2].text, nil
}

func (c *Console) config() *Result {
	res := &Result{Columns: Cols("key", TypeText, "value", TypeText, "source", TypeText)}
	for _, r := range c.src.Config() {
		res.Rows = append(res.Rows, []any{r.Key, r.Value, r.Source})
	}
	return res
}

func (c *Console) version() *Result {
	return &Result{Columns: Cols("version", TypeText), Rows: [][]any{{c.src.Version()}}}
}

func (c *Console) pools() *Result {
	res := &Result{Columns: Cols(
		"service", TypeText, "database", TypeText, "backend", TypeText, "mode", TypeText,
		"cl_active", TypeInt8, "cl_idle", TypeInt8, "cl_waiting", TypeInt8,
		"sv_active", TypeInt8, "sv_idle", TypeInt8, "sv_opening", TypeInt8,
		"max", TypeInt8, "min", TypeInt8,
		"wait_p50_ms", TypeFloat8, "wait_p95_ms", TypeFloat8, "wait_p99_ms", TypeFloat8,
		"acquires", TypeInt8, "wait_timeouts", TypeInt8, "paused", TypeBool,
	)}
	for _, p := range c.src.Pools() {
		res.Rows = append(res.Rows, []any{
			p.Service, p.Database, p.Backend, p.Mode,
			p.ClientsActive, p.ClientsIdle, p.ClientsWaiting,
			p.ServersActive, p.ServersIdle, p.ServersOpening,
			p.Max, p.Min, p.WaitP50, p.WaitP95, p.WaitP99,
			p.Acquires, p.WaitTimeouts, p.Paused,
		})
	}
	return res
}

func (c *Console) clients() *Result {
	res := &Result{Columns: Cols(
		"id", TypeInt8, "user", TypeText, "database", TypeText, "service", TypeText, "mode", TypeText,
		"remote", TypeText, "application_name", TypeText, "tls", TypeBool, "state", TypeText,
		"backend", TypeText, "server_pid", TypeInt8, "connected_at", TypeTimestamptz, "tx_start", TypeTimestamptz,
		"queries", TypeInt8, "transactions", TypeInt8, "bytes_in", TypeInt8, "bytes_out", TypeInt8,
		"pinned", TypeText,
	)}
	for _, r := range c.src.Clients() {
		res.Rows = append(res.Rows, []any{
			r.ID, r.User, r.Database, r.Service, r.Mode, r.Remote, r.ApplicationName, r.TLS, r.State,
			nullIf(r.Backend), nullIf(r.ServerPID), r.ConnectedAt, r.TxStart,
			r.Queries, r.Transactions, r.BytesIn, r.BytesOut, nullIf(r.Pinned),
		})
	}
	return res
}

func (c *Console) servers() *Result {
	res := &Result{Columns: Cols(
		"service", TypeText, "database", TypeText, "backend", TypeText, "pid", TypeInt8,
		"state", TypeText, "client_id", TypeInt8, "connected_at", TypeTimestamptz, "idle_s", TypeFloat8,
	)}
	for _, r := range c.src.Servers() {
		res.Rows = append(res.Rows, []any{
			r.Service, r.Database, r.Backend, r.PID, r.State, nullIf(r.ClientID), r.ConnectedAt, seconds(r.IdleFor),
		})
	}
	return res
}

func (c *Console) backends() *Result {
	res := &Result{Columns: Cols(
		"database", TypeText, "backend", TypeText, "role", TypeText, "in_service", TypeBool,
		"healthy", TypeBool, "fenced", TypeBool, "breaker", TypeText,
		"lag_bytes", TypeInt8, "lag_s", TypeFloat8, "last_check", TypeTimestamptz, "last_error", TypeText,
		"clients", TypeInt8,
	)}
	for _, r := range c.src.Backends() {
		res.Rows = append(res.Rows, []any{
			r.Database, r.Backend, r.Role, r.InService, r.Healthy, r.Fenced, r.Breaker,
			r.LagBytes, r.LagSeconds, r.LastCheck, nullIf(r.LastError), r.Clients,
		})
	}
	return res
}

func (c *Console) stats() *Result {
	res := &Result{Columns: Cols(
		"service", TypeText, "database", TypeText,
		"queries", TypeInt8, "transactions", TypeInt8, "commits", TypeInt8, "rollbacks", TypeInt8, "errors", TypeInt8,
		"bytes_in", TypeInt8, "bytes_out", TypeInt8,
		"total_query_ms", TypeFloat8, "avg_query_ms", TypeFloat8, "avg_transaction_ms", TypeFloat8,
	)}
	for _, r := range c.src.Stats() {
		res.Rows = append(res.Rows, []any{
			r.Service, r.Database, r.Queries, r.Transactions, r.Commits, r.Rollbacks, r.Errors,
			r.BytesIn, r.BytesOut, r.QueryTime, r.AvgQuery, r.AvgTransaction,
		})
	}
	return res
}

func (c *Console) queries(n int) *Result {
	res := &Result{Columns: Cols(
		"fingerprint", TypeText, "calls", TypeInt8, "rows", TypeInt8, "errors", TypeInt8,
		"total_ms", TypeFloat8, "mean_ms", TypeFloat8, "p50_ms", TypeFloat8, "p95_ms", TypeFloat8,
		"p99_ms", TypeFloat8, "max_ms", TypeFloat8, "query", TypeText,
	)}
	qs := c.src.Queries(n)
	if len(qs) > n {
		qs = qs[:n]
	}
	for _, q := range qs {
		res.Rows = append(res.Rows, []any{
			q.Fingerprint, q.Calls, q.Rows, q.Errors, q.Total, q.Mean, q.P50, q.P95, q.P99, q.Max, q.Query,
		})
	}
	return res
}

func (c *Console) slowQueries() *Result {
	res := &Result{Columns: Cols(
		"at", TypeTimestamptz, "duration_ms", TypeFloat8, "service", TypeText, "database", TypeText,
		"backend", TypeText, "error", TypeText, "fingerprint", TypeText, "query", TypeText,
	)}
	for _, q := range c.src.SlowQueries() {
		res.Rows = append(res.Rows, []any{
			q.At, q.Duration, q.Service, q.Database, q.Backend, nullIf(q.Error), q.Fingerprint, q.Query,
		})
	}
	return res
}

func (c *Console) transactions() *Result {
	res := &Result{Columns: Cols(
		"client_id", TypeInt8, "user", TypeText, "service", TypeText, "database", TypeText, "backend", TypeText,
		"state", TypeText, "isolation", TypeText, "age_s", TypeFloat8, "statements", TypeInt8, "rows", TypeInt8,
		"tables", TypeText, "long", TypeBool,
	)}
	for _, t := range c.src.Transactions() {
		res.Rows = append(res.Rows, []any{
			t.ClientID, t.User, t.Service, t.Database, t.Backend, t.State, t.Isolation, seconds(t.Age),
			t.Statements, t.Rows, strings.Join(t.Tables, ","), t.Long,
		})
	}
	return res
}

func (c *Console) pinned() *Result {
	res := &Result{Columns: Cols(
		"client_id", TypeInt8, "user", TypeText, "service", TypeText, "database", TypeText, "backend", TypeText,
		"server_pid", TypeInt8, "reasons", TypeText,
	)}
	for _, p := range c.src.Pinned() {
		res.Rows = append(res.Rows, []any{
			p.ClientID, p.User, p.Service, p.Database, nullIf(p.Backend), nullIf(p.ServerPID), p.Reasons,
		})
	}
	return res
}

func (c *Console) alerts() *Result {
	res := &Result{Columns: Cols(
		"severity", TypeText, "alert", TypeText, "subject", TypeText, "value", TypeFloat8,
		"threshold", TypeFloat8, "since", TypeTimestamptz, "message", TypeText,
	)}
	for _, a := range c.src.Alerts() {
		res.Rows = append(res.Rows, []any{a.Severity, a.Name, a.Subject, a.Value, a.Threshold, a.Since, a.Message})
	}
	return res
}

// databaseQuery runs sql on every configured database and concatenates the
// results behind a database column. The first failure ends the command.
func (c *Console) databaseQuery(ctx context.Context, sql string) (*answer, error) {
	out := &Result{Columns: Cols("database", TypeText)}
	var first []Column
	for i, db := range c.src.Databases() {
		qctx, cancel := context.WithTimeout(ctx, databaseQueryTimeout)
		res, err := c.src.DatabaseQuery(qctx, db, sql)
		cancel()
		if err != nil {
			return nil, databaseError(db, err)
		}
		if i == 0 {
			first = res.Columns
			out.Columns = append(out.Columns, res.Columns...)
		} else if !sameColumns(first, res.Columns) {
			return nil, Errorf(CodeInternalError, "database %q: the statistics query returned other columns than on the first database", db)
		}
		for _, row := range res.Rows {
			out.Rows = append(out.Rows, append([]any{db}, row...))
		}
	}
	return &answer{res: out, tag: showTag}, nil
}

func sameColumns(a, b []Column) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// databaseError is how a failed statistics query on db is reported.
func databaseError(db string, err error) *Error {
	var ce *pgconn.ConnectError
	var pe *pgconn.PgError
	var ae *Error
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: CodeQueryCanceled, Err: err,
			Message: fmt.Sprintf("database %q: the statistics query did not finish within %s", db, databaseQueryTimeout)}
	case errors.Is(err, context.Canceled):
		return &Error{Code: CodeAdminShutdown, Err: err, Message: fmt.Sprintf("database %q: the statistics query was cancelled", db)}
	case errors.As(err, &ce):
		return &Error{Code: CodeConnectionFailure, Err: err, Detail: ce.Unwrap().Error(),
			Message: fmt.Sprintf("database %q: %s", db, "cannot connect to the primary")}
	case errors.As(err, &pe):
		return &Error{Code: pe.Code, Err: err, Message: fmt.Sprintf("database %q: %s", db, pe.Message), Detail: pe.Detail, Hint: pe.Hint}
	case errors.As(err, &ae):
		return &Error{Code: ae.Code, Err: err, Message: fmt.Sprintf("database %q: %s", db, ae.Message), Detail: ae.Detail, Hint: ae.Hint}
	case errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		return &Error{Code: CodeConnectionFailure, Err: err, Detail: err.Error(),
			Message: fmt.Sprintf("database %q: %s", db, "cannot connect to the primary")}
	}
	return &Error{Code: CodeInternalError, Err: err, Message: fmt.Sprintf("database %q: %v", db, err)}
}

// sourceError is how a failed control command is reported: an Error keeps
// its SQLSTATE, a PostgreSQL error its own; anything else is 55000.
func sourceError(cmd string, err error) *Error {
	var ae *Error
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &pe):
		return &Error{Code: pe.Code, Err: err, Message: cmd + ": " + pe.Message, Detail: pe.Detail, Hint: pe.Hint}
	case errors.Is(err, context.Canceled):
		return &Error{Code: CodeAdminShutdown, Err: err, Message: cmd + " cancelled: the admin console is shutting down"}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: CodeQueryCanceled, Err: err, Message: cmd + " timed out"}
	}
	// What the proxy would tell a client of the same error (a pool wait,
	// an unreachable server, a failover), else a failure of the command.
	if _, code, msg, detail, hint, ok := proxy.ClientError(err); ok {
		return &Error{Code: code, Err: err, Message: cmd + ": " + msg, Detail: detail, Hint: hint}
	}
	return &Error{Code: defaultSourceCode, Err: err, Message: cmd + " failed: " + err.Error()}
}
