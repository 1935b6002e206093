package admin

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/proxy"
)

// The keys of column encryption on the console: SHOW KEYS, ROTATE KEY and
// RETIRE KEY (REENCRYPT is in reencrypt.go).
//
// A change is made to the keyring file as it is on disk, not to the
// keyring in force: the file is what RELOAD and every other pgshield that
// shares it read, so a change made by one of them (or by pgshield keys)
// is kept. The changed keyring is saved atomically (crypto.Keyring.Save),
// then put in force (proxy.Server.SetKeyring); if the save fails nothing
// changes.
//
// How many values are under each key is counted in SQL on each
// database's primary, without a key: the first 8 base64 characters after
// "pgs1:" decode to 0x01 and the 4-byte key id (see package crypto),
//
//	substring(decode(substr(col, 6, 8), 'base64') from 2 for 4)
//
// grouped by that id over every encrypted column. The last scan is kept
// for SHOW KEYS; RETIRE KEY and ROTATE KEY scan again before retiring.

// KeyConfig is what the key commands take from the configuration in
// force.
type KeyConfig struct {
	// KeysetFile is the keyring file (encryption.keyset_file, resolved).
	KeysetFile string
	// KeySource returns the master key of the keyring file; in pgshield,
	// crypto.EnvKeySourceFrom(os.Getenv). nil: ROTATE KEY and RETIRE KEY
	// cannot save.
	KeySource func() (crypto.KeySource, error)
	// KeepKeys is how many of the newest enabled keys of each kind ROTATE
	// KEY keeps; the older ones no row uses are retired (below 1: 2).
	KeepKeys int
	// BatchRows is how many rows REENCRYPT reads and rewrites per
	// transaction (below 1: 500); Pause is its sleep between two
	// transactions (0: none).
	BatchRows int
	Pause     time.Duration
}

// The defaults of KeyConfig, which the configuration file's encryption
// section takes too.
const (
	DefaultKeepKeys       = 2
	DefaultReencryptBatch = 500
	DefaultReencryptPause = 20 * time.Millisecond
)

const (
	// keyScanMaxAge is how old a scan SHOW KEYS shows without scanning
	// again.
	keyScanMaxAge = time.Minute
	// keyScanTimeout bounds one scan of every encrypted column.
	keyScanTimeout = 5 * time.Minute
	// The rows of SHOW KEYS that are not keys.
	kindPlaintext = "plaintext" // a value that is not a ciphertext
	kindInvalid   = "invalid"   // a value with the prefix but no key id
	kindUnknown   = "unknown"   // a key id the keyring does not have
)

// keyState is the key commands' part of a Live.
type keyState struct {
	change   sync.Mutex // held for a whole ROTATE KEY or RETIRE KEY; taken before scanning
	scanning sync.Mutex // held for a whole scan, so that scans do not pile up; taken before mu

	mu        sync.Mutex // guards the fields below
	config    func() KeyConfig
	scan      *keyScan        // the last scan that succeeded; nil before any
	scanStale bool            // a re-encryption ran since scan: count again
	running   map[string]bool // the job keys of the re-encryptions this pgshield runs
}

// keyScan is one count of the values of every encrypted column by class:
// a key id as 8 hex digits, kindPlaintext or kindInvalid. It is not
// changed once made.
type keyScan struct {
	at     time.Time
	counts map[string]int64            // by class
	where  map[string]map[string]int64 // by class: database.table → values
	notes  []string                    // what could not be counted
}

func keyClass(id uint32) string { return fmt.Sprintf("%08x", id) }

// use is the values of key id in s.
func (s *keyScan) use(id uint32, kind string) KeyUse {
	u := KeyUse{ID: id, Kind: kind}
	if s == nil {
		return u
	}
	c := keyClass(id)
	u.Rows = s.counts[c]
	u.Tables = slices.Sorted(maps.Keys(s.where[c]))
	return u
}

// SetKeyConfig gives the key commands the configuration in force. f is
// called at every key command and every batch of a re-encryption, so a
// RELOAD applies to them. Call it before the console serves; without it
// (or with nil) ROTATE KEY and RETIRE KEY cannot save the keyring and
// REENCRYPT uses the defaults.
func (l *Live) SetKeyConfig(f func() KeyConfig) {
	l.keys.mu.Lock()
	defer l.keys.mu.Unlock()
	l.keys.config = f
}

// keyConfig is the configuration in force with its defaults.
func (l *Live) keyConfig() KeyConfig {
	l.keys.mu.Lock()
	f := l.keys.config
	l.keys.mu.Unlock()
	kc := KeyConfig{Pause: DefaultReencryptPause}
	if f != nil {
		kc = f()
	}
	if kc.KeepKeys < 1 {
		kc.KeepKeys = DefaultKeepKeys
	}
	if kc.BatchRows < 1 {
		kc.BatchRows = DefaultReencryptBatch
	}
	kc.Pause = max(kc.Pause, 0)
	return kc
}

// connectPrimary opens a connection of its own to the primary of
// database, as DatabaseQuery does.
func (l *Live) connectPrimary(ctx context.Context, database string) (*pgconn.PgConn, error) {
	addr := ""
	if l.topo != nil {
		addr, _ = l.topo.HealthyPrimary(database)
	}
	return l.pools.Connect(ctx, database, addr)
}

// closeConn ends a connection of connectPrimary (and with it its session
// locks), whatever the state of the context it was used with.
func closeConn(conn *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// execParams runs one statement with text parameters and returns its
// rows, values as text (nil for NULL). A server error keeps its
// *pgconn.PgError, whose message names no value of a row.
func execParams(ctx context.Context, conn *pgconn.PgConn, sql string, args ...[]byte) ([][][]byte, error) {
	res := conn.ExecParams(ctx, sql, args, nil, nil, nil).Read()
	return res.Rows, res.Err
}

// noEncryption is the refusal of a key command without encryption.
func noEncryption(cmd string) *Error {
	return Errorf(CodeObjectNotInPrerequisiteState, "%s: no column encryption is configured", cmd).
		withHint("name the encrypted columns (encryption.columns) and the keyring file (encryption.keyset_file) in the configuration, then RELOAD")
}

// relation is a table as the catalog of its database knows it.
type relation struct {
	oid          string // pg_class.oid, as text for parameters
	schema, name string
	columns      map[string]bool
	pk           string // the single-column integer primary key; "" when there is none
	pkProblem    string // why pk is "": what the table has instead
}

// ident is the relation quoted for SQL.
func (r relation) ident() string { return pgx.Identifier{r.schema, r.name}.Sanitize() }

// String is schema.table, for messages.
func (r relation) String() string { return r.schema + "." + r.name }

// inspectTable reads table (a configured name, resolved on the search
// path as the proxy's clients name it) from the catalog; ok is false when
// the database has no such table.
func inspectTable(ctx context.Context, conn *pgconn.PgConn, table string) (rel relation, ok bool, err error) {
	rows, err := execParams(ctx, conn, `SELECT c.oid, n.nspname, c.relname
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = to_regclass(quote_ident($1)) AND c.relkind IN ('r', 'p')`, []byte(table))
	if err != nil || len(rows) == 0 {
		return relation{}, false, err
	}
	rel = relation{oid: string(rows[0][0]), schema: string(rows[0][1]), name: string(rows[0][2]), columns: map[string]bool{}}
	rows, err = execParams(ctx, conn, `SELECT attname FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped`, []byte(rel.oid))
	if err != nil {
		return relation{}, false, err
	}
	for _, r := range rows {
		rel.columns[string(r[0])] = true
	}
	rows, err = execParams(ctx, conn, `SELECT a.attname, format_type(a.atttypid, NULL), a.atttypid IN (20, 21, 23), i.indnkeyatts
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = $1 AND i.indisprimary`, []byte(rel.oid))
	if err != nil {
		return relation{}, false, err
	}
	switch {
	case len(rows) == 0:
		rel.pkProblem = "it has no primary key"
	case string(rows[0][3]) != "1":
		rel.pkProblem = "its primary key has " + string(rows[0][3]) + " columns"
	case string(rows[0][2]) != "t":
		rel.pkProblem = fmt.Sprintf("its primary key %s is of type %s", rows[0][0], rows[0][1])
	default:
		rel.pk = string(rows[0][0])
	}
	return rel, true, nil
}

// scanSQL counts the non-NULL values of the columns of one table by
// class; $1… are the column names, in the order of cols.
func scanSQL(rel relation, cols []string) string {
	var values strings.Builder
	for i, c := range cols {
		if i > 0 {
			values.WriteString(", ")
		}
		fmt.Fprintf(&values, "($%d::text, t.%s::text)", i+1, pgx.Identifier{c}.Sanitize())
	}
	// CASE keeps decode from seeing what is not base64.
	return `SELECT x.col,
	CASE
		WHEN left(x.v, 5) <> 'pgs1:' THEN '` + kindPlaintext + `'
		WHEN substr(x.v, 6, 8) !~ '^[A-Za-z0-9+/]{8}$' THEN '` + kindInvalid + `'
		WHEN get_byte(decode(substr(x.v, 6, 8), 'base64'), 0) <> 1 THEN '` + kindInvalid + `'
		ELSE encode(substring(decode(substr(x.v, 6, 8), 'base64') from 2 for 4), 'hex')
	END AS class,
	count(*)
FROM ` + rel.ident() + ` AS t CROSS JOIN LATERAL (VALUES ` + values.String() + `) AS x(col, v)
WHERE x.v IS NOT NULL
GROUP BY 1, 2`
}

// scanKeys returns a scan no older than maxAge (0: a new one). When a new
// scan fails it returns the error with the last scan that succeeded (nil
// before any).
func (l *Live) scanKeys(ctx context.Context, maxAge time.Duration) (*keyScan, error) {
	l.keys.scanning.Lock()
	defer l.keys.scanning.Unlock()
	l.keys.mu.Lock()
	last, stale := l.keys.scan, l.keys.scanStale
	l.keys.mu.Unlock()
	if last != nil && !stale && maxAge > 0 && time.Since(last.at) < maxAge {
		return last, nil
	}
	s, err := l.scanNow(ctx)
	if err != nil {
		return last, err
	}
	l.keys.mu.Lock()
	l.keys.scan, l.keys.scanStale = s, false
	l.keys.mu.Unlock()
	return s, nil
}

// markScanStale makes the next SHOW KEYS count again.
func (l *Live) markScanStale() {
	l.keys.mu.Lock()
	l.keys.scanStale = true
	l.keys.mu.Unlock()
}

// scanNow counts the values of every encrypted column of every database,
// on each primary. A table or column the database does not have is noted
// and counts nothing; a database that cannot be reached fails the scan.
func (l *Live) scanNow(ctx context.Context) (*keyScan, error) {
	ctx, cancel := context.WithTimeout(ctx, keyScanTimeout)
	defer cancel()
	s := &keyScan{counts: map[string]int64{}, where: map[string]map[string]int64{}}
	cols := l.srv.EncryptedColumns()
	for _, db := range sortedKeys(cols) {
		if err := l.scanDatabase(ctx, s, db, cols[db]); err != nil {
			return nil, databaseError(db, err)
		}
	}
	s.at = time.Now()
	return s, nil
}

func (l *Live) scanDatabase(ctx context.Context, s *keyScan, db string, tables map[string]map[string]proxy.EncryptedColumn) error {
	conn, err := l.connectPrimary(ctx, db)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	for _, table := range sortedKeys(tables) {
		rel, ok, err := inspectTable(ctx, conn, table)
		if err != nil {
			return fmt.Errorf("reading table %s from the catalog: %w", table, err)
		}
		if !ok {
			s.notes = append(s.notes, fmt.Sprintf("table %s of database %s does not exist: its encrypted columns count nothing", table, db))
			continue
		}
		var present []string
		var args [][]byte
		for _, col := range sortedKeys(tables[table]) {
			if !rel.columns[col] {
				s.notes = append(s.notes, fmt.Sprintf("column %s.%s of database %s does not exist: it counts nothing", table, col, db))
				continue
			}
			present = append(present, col)
			args = append(args, []byte(col))
		}
		if len(present) == 0 {
			continue
		}
		rows, err := execParams(ctx, conn, scanSQL(rel, present), args...)
		if err != nil {
			return fmt.Errorf("counting the values of table %s by key: %w", table, err)
		}
		where := db + "." + table
		for _, r := range rows {
			n, err := strconv.ParseInt(string(r[2]), 10, 64)
			if err != nil {
				return fmt.Errorf("counting the values of table %s by key: count %q: %w", table, r[2], err)
			}
			class := string(r[1])
			s.counts[class] += n
			if s.where[class] == nil {
				s.where[class] = map[string]int64{}
			}
			s.where[class][where] += n
		}
	}
	return nil
}

// Keys lists the keys of the keyring in force with the values under each,
// then the plaintext values (always) and the values under no key of the
// keyring (when there are).
func (l *Live) Keys(ctx context.Context, maxAge time.Duration) (KeysReport, error) {
	keys := l.srv.Keyring()
	if keys == nil {
		return KeysReport{Notes: []string{"no column encryption is configured"}}, nil
	}
	s, err := l.scanKeys(ctx, maxAge)
	var rep KeysReport
	if err != nil {
		what := "no scan has succeeded yet, so rows is NULL"
		if s != nil {
			what = "rows are as of the last scan, at " + s.at.UTC().Format(timeLayout)
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("the values could not be counted (%v); %s", err, what))
	}
	if s != nil {
		rep.ScannedAt = s.at
		rep.Notes = append(rep.Notes, s.notes...)
	}
	counted := s != nil
	known := map[string]bool{}
	for _, k := range keys.Keys() {
		c := keyClass(k.ID)
		known[c] = true
		row := KeyRow{ID: k.ID, Kind: k.Kind.String(), Created: k.Created, Primary: k.Primary, Enabled: k.Enabled, Counted: counted}
		if counted {
			row.Rows = s.counts[c]
		}
		rep.Keys = append(rep.Keys, row)
	}
	plain := KeyRow{Kind: kindPlaintext, Counted: counted}
	if counted {
		plain.Rows = s.counts[kindPlaintext]
	}
	rep.Keys = append(rep.Keys, plain)
	if !counted {
		return rep, nil
	}
	for _, c := range slices.Sorted(maps.Keys(s.counts)) {
		if known[c] || c == kindPlaintext || c == kindInvalid {
			continue
		}
		id, err := strconv.ParseUint(c, 16, 32)
		if err != nil {
			continue
		}
		rep.Keys = append(rep.Keys, KeyRow{ID: uint32(id), Kind: kindUnknown, Rows: s.counts[c], Counted: true})
	}
	if n := s.counts[kindInvalid]; n > 0 {
		rep.Keys = append(rep.Keys, KeyRow{Kind: kindInvalid, Rows: n, Counted: true})
	}
	return rep, nil
}

// keyChange checks what ROTATE KEY and RETIRE KEY need: encryption in
// force, a keyring file and its master key.
func (l *Live) keyChange(cmd string) (KeyConfig, crypto.KeySource, error) {
	if l.srv.Keyring() == nil {
		return KeyConfig{}, nil, noEncryption(cmd)
	}
	kc := l.keyConfig()
	if kc.KeysetFile == "" || kc.KeySource == nil {
		return KeyConfig{}, nil, Errorf(CodeObjectNotInPrerequisiteState, "%s: this pgshield has no keyring file to save the keys to", cmd).
			withHint("name it in the configuration: encryption.keyset_file")
	}
	ks, err := kc.KeySource()
	if err != nil {
		return KeyConfig{}, nil, (&Error{Code: CodeObjectNotInPrerequisiteState, Err: err,
			Message: fmt.Sprintf("%s: no master key for the keyring file: %v", cmd, err)}).
			withHint("pgshield derives it from ENCRYPTION_KEY and ENCRYPTION_SALT in its environment")
	}
	return kc, ks, nil
}

// keyringFile loads the keyring file to change it, and checks that it
// still has every enabled key of the keyring in force (a file replaced
// since would lose keys values are under).
func (l *Live) keyringFile(ctx context.Context, cmd string, kc KeyConfig, ks crypto.KeySource) (*crypto.Keyring, error) {
	k, err := crypto.LoadKeyring(ctx, kc.KeysetFile, ks)
	if err != nil {
		return nil, &Error{Code: CodeObjectNotInPrerequisiteState, Err: err,
			Message: fmt.Sprintf("%s: the keyring file does not load; nothing changed: %v", cmd, err)}
	}
	if inForce := l.srv.Keyring(); inForce != nil {
		for _, ki := range inForce.Keys() {
			if _, ok := k.Kind(ki.ID); ki.Enabled && !ok {
				return nil, (&Error{Code: CodeObjectNotInPrerequisiteState,
					Message: fmt.Sprintf("%s: the keyring file %s does not have key %d, which is in force: the file was replaced since pgshield loaded it; nothing changed", cmd, kc.KeysetFile, ki.ID)}).
					withHint("restore the keyring file, or RELOAD to put the file's keys in force")
			}
		}
	}
	return k, nil
}

// putKeyring saves k to the keyring file, then puts it in force.
func (l *Live) putKeyring(ctx context.Context, cmd string, kc KeyConfig, ks crypto.KeySource, k *crypto.Keyring) error {
	if err := k.Save(ctx, kc.KeysetFile, ks); err != nil {
		return &Error{Code: CodeObjectNotInPrerequisiteState, Err: err,
			Message: fmt.Sprintf("%s: saving the keyring file failed; nothing changed: %v", cmd, err)}
	}
	l.srv.SetKeyring(k)
	return nil
}

// RotateKey adds a new primary key of each kind, saves and puts in force
// the keyring, then counts the values under every key and retires the
// keys older than the newest keep_keys enabled ones of their kind that no
// value uses. A failed count leaves them all: the rotation stays done.
func (l *Live) RotateKey(ctx context.Context) (RotateReport, error) {
	const cmd = "ROTATE KEY"
	kc, ks, err := l.keyChange(cmd)
	if err != nil {
		return RotateReport{}, err
	}
	l.keys.change.Lock()
	defer l.keys.change.Unlock()
	cur, err := l.keyringFile(ctx, cmd, kc, ks)
	if err != nil {
		return RotateReport{}, err
	}
	next, err := cur.Rotate(time.Now())
	if err != nil {
		return RotateReport{}, &Error{Code: CodeInternalError, Err: err, Message: fmt.Sprintf("%s: %v", cmd, err)}
	}
	if err := l.putKeyring(ctx, cmd, kc, ks, next); err != nil {
		return RotateReport{}, err
	}
	rep := RotateReport{KeepKeys: kc.KeepKeys}
	for _, kind := range []crypto.Kind{crypto.Randomized, crypto.Deterministic} {
		rep.New = append(rep.New, KeyUse{ID: next.Primary(kind), Kind: kind.String()})
	}
	s, err := l.scanKeys(ctx, 0)
	if err != nil {
		rep.Notes = append(rep.Notes, fmt.Sprintf("no older key was retired: the values under each could not be counted (%v); RETIRE KEY retires one once they can", err))
		return rep, nil
	}
	retired := next
	var retire []KeyUse
	for _, kind := range []crypto.Kind{crypto.Randomized, crypto.Deterministic} {
		var enabled []crypto.KeyInfo
		for _, ki := range next.Keys() { // oldest first
			if ki.Kind == kind && ki.Enabled {
				enabled = append(enabled, ki)
			}
		}
		for _, ki := range enabled[:max(0, len(enabled)-kc.KeepKeys)] {
			u := s.use(ki.ID, kind.String())
			if ki.Primary || u.Rows > 0 {
				rep.Kept = append(rep.Kept, u)
				continue
			}
			if retired, err = retired.Retire(ki.ID); err != nil {
				return rep, &Error{Code: CodeInternalError, Err: err, Message: fmt.Sprintf("%s: retiring key %d: %v", cmd, ki.ID, err)}
			}
			retire = append(retire, u)
		}
	}
	if len(retire) > 0 {
		if err := l.putKeyring(ctx, cmd, kc, ks, retired); err != nil {
			rep.Notes = append(rep.Notes, "the rotation is done, but the older keys no value uses were not retired: "+err.Error())
			return rep, nil
		}
		rep.Retired = retire
	}
	return rep, nil
}

// RetireKey retires key id once a count finds no value under it.
func (l *Live) RetireKey(ctx context.Context, id uint32) (RetireReport, error) {
	const cmd = "RETIRE KEY"
	kc, ks, err := l.keyChange(cmd)
	if err != nil {
		return RetireReport{}, err
	}
	l.keys.change.Lock()
	defer l.keys.change.Unlock()
	cur, err := l.keyringFile(ctx, cmd, kc, ks)
	if err != nil {
		return RetireReport{}, err
	}
	i := slices.IndexFunc(cur.Keys(), func(k crypto.KeyInfo) bool { return k.ID == id })
	if i < 0 {
		return RetireReport{}, Errorf(CodeUndefinedObject, "%s: key %d is not in the keyring", cmd, id).
			withHint("SHOW KEYS lists the keys")
	}
	info := cur.Keys()[i]
	switch {
	case info.Primary:
		return RetireReport{}, Errorf(CodeObjectNotInPrerequisiteState, "%s: key %d is the primary %s key: new values are encrypted with it", cmd, id, info.Kind).
			withHint(fmt.Sprintf("ROTATE KEY makes a new primary key; REENCRYPT the tables, then RETIRE KEY %d", id))
	case !info.Enabled:
		return RetireReport{Key: KeyUse{ID: id, Kind: info.Kind.String()}, Already: true}, nil
	}
	s, err := l.scanKeys(ctx, 0)
	if err != nil {
		e := sourceError(cmd, err)
		return RetireReport{}, &Error{Code: e.Code, Err: err, Detail: e.Detail,
			Message: fmt.Sprintf("%s: cannot check that no value is under key %d: %s", cmd, id, e.Message)}
	}
	u := s.use(id, info.Kind.String())
	if u.Rows > 0 {
		return RetireReport{}, (&Error{Code: CodeObjectNotInPrerequisiteState,
			Message: fmt.Sprintf("%s: %s still use key %d, in %s: they would no longer decrypt", cmd, plural(int(u.Rows), "row"), id, strings.Join(u.Tables, ", "))}).
			withHint(fmt.Sprintf("run %s to rewrite them under the primary key, then RETIRE KEY %d again", reencryptCommands(u.Tables), id))
	}
	next, err := cur.Retire(id)
	if err != nil {
		return RetireReport{}, &Error{Code: CodeInternalError, Err: err, Message: fmt.Sprintf("%s: %v", cmd, err)}
	}
	if err := l.putKeyring(ctx, cmd, kc, ks, next); err != nil {
		return RetireReport{}, err
	}
	return RetireReport{Key: u}, nil
}

// reencryptCommands is "REENCRYPT app.leads" for each table, joined.
func reencryptCommands(tables []string) string {
	cmds := make([]string, len(tables))
	for i, t := range tables {
		cmds[i] = "REENCRYPT " + t
	}
	return strings.Join(cmds, ", ")
}

// The console's side.

// showKeys is SHOW KEYS.
func (c *Console) showKeys(ctx context.Context, _ []token) (*answer, error) {
	rep, err := c.src.Keys(ctx, keyScanMaxAge)
	if err != nil {
		return nil, sourceError("SHOW KEYS", err)
	}
	res := &Result{Columns: Cols("key_id", TypeInt8, "kind", TypeText, "created", TypeTimestamptz,
		"primary", TypeBool, "enabled", TypeBool, "rows", TypeInt8, "scanned_at", TypeTimestamptz)}
	for _, k := range rep.Keys {
		var id, primary, enabled, rows any
		if k.Kind != kindPlaintext && k.Kind != kindInvalid {
			id, primary, enabled = int64(k.ID), k.Primary, k.Enabled
		}
		if k.Counted {
			rows = k.Rows
		}
		res.Rows = append(res.Rows, []any{id, k.Kind, k.Created, primary, enabled, rows, rep.ScannedAt})
	}
	return &answer{res: res, notices: rep.Notes, tag: showTag}, nil
}

// rotateKey is ROTATE KEY.
func (c *Console) rotateKey(ctx context.Context, _ []token) (*answer, error) {
	const tag = "ROTATE KEY"
	rep, err := c.src.RotateKey(ctx)
	if err != nil {
		return nil, sourceError(tag, err)
	}
	ans := control(tag, fmt.Sprintf("new primary keys: %s; the older keys still decrypt, and REENCRYPT <table> rewrites the values under them",
		keyList(rep.New, false)))
	if len(rep.Retired) > 0 {
		ans.notices = append(ans.notices, fmt.Sprintf("retired, as no value is under them and they are older than the newest %d of their kind: %s",
			rep.KeepKeys, keyList(rep.Retired, false)))
	}
	if len(rep.Kept) > 0 {
		var tables []string
		for _, k := range rep.Kept {
			tables = append(tables, k.Tables...)
		}
		slices.Sort(tables)
		ans.notices = append(ans.notices, fmt.Sprintf("kept, as values are under them: %s; %s, then RETIRE KEY retires them",
			keyList(rep.Kept, true), reencryptCommands(slices.Compact(tables))))
	}
	ans.notices = append(ans.notices, rep.Notes...)
	return ans, nil
}

// keyList is "12 (randomized), 34 (deterministic)", with the rows under
// each when rows is set.
func keyList(keys []KeyUse, rows bool) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		if rows {
			parts[i] = fmt.Sprintf("%d (%s, %s)", k.ID, k.Kind, plural(int(k.Rows), "row"))
		} else {
			parts[i] = fmt.Sprintf("%d (%s)", k.ID, k.Kind)
		}
	}
	return strings.Join(parts, ", ")
}

// retireKey is RETIRE KEY <id>.
func (c *Console) retireKey(ctx context.Context, args []token) (*answer, error) {
	const tag = "RETIRE KEY"
	id, err := strconv.ParseUint(args[1].text, 10, 32)
	if err != nil || id == 0 {
		return nil, Errorf(CodeInvalidParameterValue, "invalid key id %q: want a key id from 1 to %d", args[1].text, uint32(1<<32-1)).
			withHint("the ids are in the key_id column of SHOW KEYS")
	}
	rep, err := c.src.RetireKey(ctx, uint32(id))
	if err != nil {
		return nil, sourceError(tag, err)
	}
	if rep.Already {
		return control(tag, fmt.Sprintf("key %d (%s) was already retired; nothing changed", id, rep.Key.Kind)), nil
	}
	return control(tag, fmt.Sprintf("key %d (%s) retired: no value is under it; it stays in the keyring file, disabled, and no longer decrypts", id, rep.Key.Kind)), nil
}

// keyArgs is the rule of ROTATE KEY (ids 0) and RETIRE KEY <id> (ids 1).
func keyArgs(ids int) argRule {
	return func(cmd string, args []token) error {
		usage := cmd + " KEY"
		if ids == 1 {
			usage += " <id>"
		}
		switch {
		case len(args) == 0 || args[0].quoted || !strings.EqualFold(args[0].text, "KEY"):
			return Errorf(CodeSyntaxError, "%s needs KEY: %s", cmd, usage)
		case len(args)-1 < ids:
			return Errorf(CodeSyntaxError, "%s KEY needs a key id: %s", cmd, usage).
				withHint("the ids are in the key_id column of SHOW KEYS")
		case len(args)-1 > ids && ids == 0:
			return Errorf(CodeSyntaxError, "%s KEY takes no arguments, got %q", cmd, args[1].text)
		case len(args)-1 > ids:
			return Errorf(CodeSyntaxError, "%s KEY takes one key id, got %d arguments", cmd, len(args)-1)
		}
		return nil
	}
}
