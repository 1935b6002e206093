package main

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"gopkg.in/yaml.v3"

	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/internal/example"
	"github.com/pgshield/pgshield/internal/pgcluster"
)

// The encryption scenario: that traffic touching no encrypted column pays
// nothing for column encryption, and what an encrypted value costs where
// it is encrypted or decrypted. Two pgshield processes configured alike,
// one with the example application's encryption section, run the same
// pgbench workloads side by side in the same rounds.

// encGoal is the bound: TPS of traffic that touches no encrypted
// column with encryption at least this fraction of TPS without it.
const encGoal = 0.99

// The targets of the scenario.
const (
	tEncOn  = "encryption-on"
	tEncOff = "encryption-off"
)

// encKeysFile is the keyring the scenario makes, beside the
// configurations (keyset_file is relative to the configuration's
// directory).
const encKeysFile = "encryption-keys.json"

// The example's encryption names its database app, as its policy does
// (examplePolicyDatabase); the bench's clients connect to bench.
const exampleEncDatabase = examplePolicyDatabase

// encReadRows is how many rows the read workload reads per transaction,
// each with two encrypted columns.
const encReadRows = 1000

// encReadQuery is the read workload's statement, encReadRows rows of
// two encrypted columns (ORDER BY an encrypted column would be refused:
// the database would sort ciphertexts).
const encReadQuery = "SELECT id, ssn, credit_card FROM leads ORDER BY id LIMIT 1000"

// encInsertColumns are the encrypted columns the insert workload writes.
const encInsertColumns = "ssn, credit_card, bank_account"

// encColumns are encInsertColumns one by one.
func encColumns() []string { return strings.Split(encInsertColumns, ", ") }

// encWorkload is one pgbench workload of the scenario.
type encWorkload struct {
	name    string
	clients int
	// values is how many encrypted values a transaction encrypts or
	// decrypts; 0: it touches no encrypted column.
	values int
	// script is the pgbench script in a mode; nil: the built-in -S.
	script func(mode string) string
	// fill: before each run, leads holds encReadRows rows written through
	// the target; else it is emptied.
	fill bool
	// about describes the workload in the report.
	about string
}

// encWorkloads are the workloads, in the order they run and are reported.
func encWorkloads() []encWorkload {
	return []encWorkload{
		{name: "select-only", clients: 50,
			about: "`pgbench -S -c 50` (select-only on pgbench_accounts)"},
		{name: "leads read", clients: 8, values: 2 * encReadRows, script: func(string) string { return encReadQuery + "\n" }, fill: true,
			about: fmt.Sprintf("`%s` with `-c 8`: %d values decrypted per transaction. Before every run leads was emptied and refilled with %d rows through the process measured (ciphertext through the one with encryption, the same plaintexts through the other), so both return the same values", encReadQuery, 2*encReadRows, encReadRows)},
		{name: "leads insert", clients: 50, values: 3, script: encInsertScript,
			about: "`INSERT INTO leads (" + encInsertColumns + ")` of random digits with `-c 50`, leads emptied before every run: 3 values encrypted per transaction, Bind parameters in prepared mode, literals of each new query text in simple mode (every text is new to pgshield there, so its figure includes parsing each text to find and replace the literals, which prepared mode does once per prepared statement)"},
	}
}

// encModes are the pgbench query modes: values in Bind parameters, and
// literals of each query text.
func encModes() []string { return []string{"prepared", "simple"} }

// The insert workload's values: digits of a social security number, a
// card and an account, which pgbench's \set can make (numbers only).
const (
	encSSNMin  = 100000000
	encSSNMax  = 999999999
	encCardMin = 4000000000000000
	encCardMax = 4999999999999999
	encBankMin = 100000000000
	encBankMax = 999999999999
)

// encInsertScript inserts one lead with three encrypted columns: Bind
// parameters in prepared mode, quoted literals in simple mode (pgbench
// pastes a variable's text into the query there).
func encInsertScript(mode string) string {
	text := func(v string) string {
		if mode == "simple" {
			return "'" + v + "'"
		}
		return v
	}
	return fmt.Sprintf(`\set ssn random(%d, %d)
\set card random(%d, %d)
\set bank random(%d, %d)
INSERT INTO leads (%s) VALUES (%s, %s, %s)
`, encSSNMin, encSSNMax, encCardMin, encCardMax, encBankMin, encBankMax, encInsertColumns, text(":ssn"), text(":card"), text(":bank"))
}

// encFillRow is row i of what the read workload reads: values of the
// insert workload's shape.
func encFillRow(i int) [3]string {
	return [3]string{strconv.Itoa(encSSNMin + i), strconv.Itoa(encCardMin + i), strconv.Itoa(encBankMin + i)}
}

// encryptionSection is the encryption section of the example
// application's configuration, its database key from renamed to and its
// keyset_file set to keys; the masking section is left out (it names a
// service the bench does not have).
func encryptionSection(src []byte, from, to, keys string) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, err
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, errors.New("the encryption configuration is empty")
	}
	encKey, enc := mappingEntry(doc.Content[0], "encryption")
	if enc == nil || enc.Kind != yaml.MappingNode {
		return nil, errors.New("the encryption configuration has no encryption mapping")
	}
	_, cols := mappingEntry(enc, "columns")
	if cols == nil || cols.Kind != yaml.MappingNode {
		return nil, errors.New("the encryption section has no columns mapping")
	}
	if k, _ := mappingEntry(cols, to); k != nil {
		return nil, fmt.Errorf("the encryption section already has database %s", to)
	}
	db, _ := mappingEntry(cols, from)
	if db == nil {
		return nil, fmt.Errorf("the encryption section has no database %s", from)
	}
	db.Value = to
	if _, kf := mappingEntry(enc, "keyset_file"); kf != nil {
		kf.Value, kf.Style = keys, yaml.DoubleQuotedStyle
	} else {
		enc.Content = append([]*yaml.Node{
			{Kind: yaml.ScalarNode, Value: "keyset_file"},
			{Kind: yaml.ScalarNode, Value: keys, Style: yaml.DoubleQuotedStyle},
		}, enc.Content...)
	}
	key := *encKey
	key.HeadComment = fmt.Sprintf("# The example application's encrypted columns (internal/example/encryption.yaml),\n# database %s renamed %s; the keyring made by the bench.", from, to)
	root := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{&key, enc}}
	var b strings.Builder
	w := yaml.NewEncoder(&b)
	w.SetIndent(2)
	if err := w.Encode(root); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

// mappingEntry is the key and value nodes of key in mapping m, or nils.
func mappingEntry(m *yaml.Node, key string) (k, v *yaml.Node) {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i], m.Content[i+1]
		}
	}
	return nil, nil
}

// encMasterKey is a made-up master key pair, new every run, for the
// keyring the scenario makes; as pgshield reads it from its environment.
func encMasterKey() crypto.EnvKeySource {
	return crypto.EnvKeySource{Key: crand.Text(), Salt: crand.Text()}
}

// encEnv is ks as the environment variables pgshield reads.
func encEnv(ks crypto.EnvKeySource) []string {
	return []string{crypto.EnvKey + "=" + ks.Key, crypto.EnvSalt + "=" + ks.Salt}
}

// encCheck is what one row written through a target became: stored is
// what PostgreSQL holds, read what the target returned of it, each
// "ciphertext" (the stored form, which decrypts to what was written under
// the scenario's keyring, for its column), "as written", or "other".
type encCheck struct {
	target, way  string // way: "literal" or "parameter"
	stored, read string
}

// want is the check's expected outcome for its target.
func (c encCheck) want() (stored, read string) {
	if c.target == tEncOn {
		return "ciphertext", "as written"
	}
	return "as written", "as written"
}

func (c encCheck) ok() bool {
	s, r := c.want()
	return c.stored == s && c.read == r
}

// encResult is what the scenario measured.
type encResult struct {
	duration time.Duration
	rounds   int
	runs     runSet // "workload mode target" → runs, by round
	checks   []encCheck
	err      error // the scenario could not run, or encryption was not in force where expected
}

func onlyEncryption(duration time.Duration, rounds int, pgshieldBin, profiles string) error {
	return onlyScenario(profiles, func(e *env) (string, error) {
		res := encryptionCost(e, pgshieldBin, duration, rounds)
		return res.markdown(), res.err
	})
}

// encryptionCost runs the scenario in e's database: the example schema,
// a keyring, two pgshields (with and without the encryption section), the
// check that encryption is in force in one and not the other, then rounds
// of each workload and mode through each, the order reversed every round.
func encryptionCost(e *env, bin string, duration time.Duration, rounds int) (res encResult) {
	res = encResult{duration: duration, rounds: rounds}
	ctx := context.Background()
	say("column encryption on versus off: two pgshields, the example schema and encrypted columns, %d rounds", rounds)
	// As role bench, which owns the database: the tables are its own. The
	// insert workload writes the three columns alone, so email (encrypted
	// too, and NOT NULL) may be null while the scenario runs.
	if err := e.pg.Exec(ctx, benchDatabase, "SET ROLE bench;\n"+example.Schema()+"\nTRUNCATE leads CASCADE;\nALTER TABLE leads ALTER COLUMN email DROP NOT NULL;"); err != nil {
		res.err = fmt.Errorf("the example schema: %w", err)
		return res
	}
	defer func() {
		if err := e.pg.Exec(ctx, benchDatabase, "TRUNCATE leads CASCADE; ALTER TABLE leads ALTER COLUMN email SET NOT NULL"); err != nil && res.err == nil {
			res.err = err
		}
	}()
	section, err := encryptionSection([]byte(example.Encryption()), exampleEncDatabase, benchDatabase, encKeysFile)
	if err != nil {
		res.err = fmt.Errorf("the example encryption: %w", err)
		return res
	}
	ks := encMasterKey()
	keys, err := crypto.NewKeyring(time.Now())
	if err == nil {
		err = keys.Save(ctx, filepath.Join(e.dir, encKeysFile), ks)
	}
	if err != nil {
		res.err = fmt.Errorf("the keyring: %w", err)
		return res
	}
	profile := func(target string) string {
		if e.profiles == "" {
			return ""
		}
		return filepath.Join(e.profiles, target+".prof")
	}
	on, err := startPgshield(e.dir, tEncOn, bin, e.pg, shieldOptions{config: string(section), env: encEnv(ks), cpuProfile: profile(tEncOn)})
	if err != nil {
		res.err = fmt.Errorf("pgshield with encryption: %w", err)
		return res
	}
	defer on.stop()
	off, err := startPgshield(e.dir, tEncOff, bin, e.pg, shieldOptions{cpuProfile: profile(tEncOff)})
	if err != nil {
		res.err = fmt.Errorf("pgshield without encryption: %w", err)
		return res
	}
	defer off.stop()
	procs := map[string]*proc{tEncOn: on, tEncOff: off}
	truncate := func() error { return e.pg.Exec(ctx, benchDatabase, "TRUNCATE leads CASCADE") }

	// Encryption is in force in one and not in the other, or the
	// comparison measures nothing.
	for _, target := range []string{tEncOn, tEncOff} {
		cs, err := checkEncryption(ctx, e.pg, procs[target].port, target, keys)
		if err != nil {
			res.err = fmt.Errorf("checking encryption through %s: %w", target, err)
			return res
		}
		res.checks = append(res.checks, cs...)
	}
	for _, c := range res.checks {
		if !c.ok() {
			s, r := c.want()
			res.err = fmt.Errorf("a row written as %ss through %s was stored %s and read back %s; want stored %s, read back %s", c.way, c.target, c.stored, c.read, s, r)
			return res
		}
	}

	scripts := map[string]string{}
	for _, w := range encWorkloads() {
		if w.script == nil {
			continue
		}
		for _, mode := range encModes() {
			path := filepath.Join(e.dir, "encryption-"+strings.ReplaceAll(w.name, " ", "-")+"-"+mode+".sql")
			if err := os.WriteFile(path, []byte(w.script(mode)), 0o644); err != nil {
				res.err = err
				return res
			}
			scripts[w.name+" "+mode] = path
		}
	}
	run := func(w encWorkload, mode, target string, d time.Duration) (measure, error) {
		p := procs[target]
		if w.script == nil {
			return e.pgbenchThrough(p, mode, w.clients, d), nil
		}
		if err := truncate(); err != nil {
			return measure{}, err
		}
		if w.fill {
			if err := fillLeads(ctx, p.port, encReadRows); err != nil {
				return measure{}, fmt.Errorf("filling leads through %s: %w", target, err)
			}
		}
		return e.scriptThrough(p, scripts[w.name+" "+mode], mode, w.clients, d), nil
	}
	// A short unmeasured run of each workload per target first.
	for _, target := range []string{tEncOn, tEncOff} {
		for _, w := range encWorkloads() {
			for _, mode := range encModes() {
				if _, err := run(w, mode, target, 2*time.Second); err != nil {
					res.err = err
					return res
				}
			}
		}
	}
	say("pgbench (select-only: -S; leads read: %d rows of 2 encrypted columns; leads insert: 3 encrypted columns), %d rounds of %s per target, workload and mode", encReadRows, rounds, duration)
	for r := 0; r < rounds; r++ {
		for _, w := range encWorkloads() {
			for _, mode := range encModes() {
				for _, target := range roundOrder([]string{tEncOn, tEncOff}, r) {
					m, err := run(w, mode, target, duration)
					if err != nil {
						res.err = err
						return res
					}
					say("round %d %-12s %-9s %-14s tps %8.0f  latency %7.3f ms  pgshield cpu %s µs/tx  failed %d %s", r+1, w.name, mode, target, m.tps, m.latency, cpuCell(m.cpuPerTx()), m.failed, m.note)
					res.runs.add(w.name, mode, target, m)
				}
			}
		}
	}
	return res
}

// benchConn connects to the bench's database through port as the bench's
// user.
func benchConn(ctx context.Context, port int) (*pgconn.PgConn, error) {
	return pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=bench password=bench dbname=%s sslmode=disable", port, benchDatabase))
}

// fillLeads inserts rows leads of encFillRow through port, as Bind
// parameters, in one batch.
func fillLeads(ctx context.Context, port, rows int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := benchConn(ctx, port)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	b := &pgconn.Batch{}
	for i := range rows {
		v := encFillRow(i)
		b.ExecParams("INSERT INTO leads ("+encInsertColumns+") VALUES ($1, $2, $3)", [][]byte{[]byte(v[0]), []byte(v[1]), []byte(v[2])}, nil, nil, nil)
	}
	_, err = conn.ExecBatch(ctx, b).ReadAll()
	return err
}

// checkEncryption writes a row through port, once as literals of a
// simple Query and once as Bind parameters, reads what PostgreSQL stored
// (straight from it, as its superuser) and what the target reads back,
// and says what each was.
func checkEncryption(ctx context.Context, pg *pgcluster.Cluster, port int, target string, keys *crypto.Keyring) ([]encCheck, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := benchConn(ctx, port)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	direct, err := pgconn.Connect(ctx, pg.ConnString(benchDatabase))
	if err != nil {
		return nil, err
	}
	defer direct.Close(context.Background())
	const read = "SELECT " + encInsertColumns + " FROM leads WHERE id = $1"
	cols := encColumns()
	var out []encCheck
	for _, way := range []string{"literal", "parameter"} {
		written := make([]string, len(cols))
		for i, c := range cols {
			written[i] = fmt.Sprintf("%s %s %s", target, way, c)
		}
		var res *pgconn.Result
		if way == "literal" {
			rs, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO leads (%s) VALUES ('%s') RETURNING id", encInsertColumns, strings.Join(written, "', '"))).ReadAll()
			if err != nil {
				return nil, err
			}
			if len(rs) > 0 {
				res = rs[0]
			}
		} else {
			params := make([][]byte, len(written))
			for i, w := range written {
				params[i] = []byte(w)
			}
			res = conn.ExecParams(ctx, "INSERT INTO leads ("+encInsertColumns+") VALUES ($1, $2, $3) RETURNING id", params, nil, nil, nil).Read()
		}
		if res == nil || res.Err != nil || len(res.Rows) != 1 {
			return nil, fmt.Errorf("inserting as %ss: %v", way, resultErr(res))
		}
		id := res.Rows[0][0]
		values := func(c *pgconn.PgConn) ([][]byte, error) {
			r := c.ExecParams(ctx, read, [][]byte{id}, nil, nil, nil).Read()
			if r.Err != nil || len(r.Rows) != 1 {
				return nil, fmt.Errorf("reading row %s: %v", id, resultErr(r))
			}
			return r.Rows[0], nil
		}
		stored, err := values(direct)
		if err != nil {
			return nil, err
		}
		back, err := values(conn)
		if err != nil {
			return nil, err
		}
		out = append(out, encCheck{target: target, way: way, stored: storedAs(written, stored, keys), read: storedAs(written, back, keys)})
	}
	return out, nil
}

func resultErr(r *pgconn.Result) error {
	switch {
	case r == nil:
		return errors.New("no result")
	case r.Err != nil:
		return r.Err
	}
	return fmt.Errorf("%d rows", len(r.Rows))
}

// storedAs says what got is of written, column by column: "as written",
// "ciphertext" when every value is the stored form of what was written
// into its column under keys, or "other".
func storedAs(written []string, got [][]byte, keys *crypto.Keyring) string {
	if len(got) != len(written) {
		return "other"
	}
	plain, cipher := true, true
	cols := encColumns()
	for i, w := range written {
		plain = plain && string(got[i]) == w
		if !crypto.IsCiphertext(got[i]) {
			cipher = false
			continue
		}
		pt, _, err := keys.Decrypt("leads."+cols[i], got[i], nil)
		cipher = cipher && err == nil && string(pt) == w
	}
	switch {
	case plain:
		return "as written"
	case cipher:
		return "ciphertext"
	}
	return "other"
}

// encFigures are one workload and mode's figures: medians of each
// target's runs, and the rounds' paired figures.
type encFigures struct {
	on, off summary
	tps     []float64 // per round, on / off TPS
	cpu     []float64 // per round, on / off CPU per transaction
	// cpuValue and latValue are, per round, the difference of CPU and of
	// latency per transaction, on − off, over the encrypted values of a
	// transaction, in µs.
	cpuValue, latValue []float64
}

func (r *encResult) figures(w encWorkload, mode string) encFigures {
	a, b := r.runs.of(w.name, mode, tEncOn), r.runs.of(w.name, mode, tEncOff)
	f := encFigures{on: summarize(a), off: summarize(b)}
	f.tps, f.cpu = pairedRatios(a, b)
	f.cpuValue, f.latValue = perValue(a, b, w.values)
	return f
}

// perValue pairs the runs of on and off by round: CPU and latency per
// transaction, on − off, over values, in µs. A pair without a figure on
// either side gives none.
func perValue(on, off []measure, values int) (cpu, lat []float64) {
	if values <= 0 {
		return nil, nil
	}
	for i := 0; i < len(on) && i < len(off); i++ {
		a, b := on[i], off[i]
		if a.cpuRead && b.cpuRead && a.txns > 0 && b.txns > 0 {
			cpu = append(cpu, (a.cpuPerTx()-b.cpuPerTx())/float64(values))
		}
		if a.latency > 0 && b.latency > 0 {
			lat = append(lat, (a.latency-b.latency)*1e3/float64(values))
		}
	}
	return cpu, lat
}

// encGoalMet says how the rounds' on/off TPS ratios stand against
// encGoal.
func encGoalMet(tps []float64) string {
	if len(tps) == 0 {
		return "n/a"
	}
	lo, _ := spread(tps)
	switch {
	case median(tps) < encGoal:
		return "missed"
	case lo >= encGoal:
		return "met in every round"
	}
	return fmt.Sprintf("met by the median; not in every round (lowest %.3f)", lo)
}

// usCell renders µs per value, or n/a without a figure.
func usCell(xs []float64) string {
	if len(xs) == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", median(xs))
}

// usRange renders the rounds' smallest and largest µs per value.
func usRange(xs []float64) string {
	if len(xs) == 0 {
		return "n/a"
	}
	lo, hi := spread(xs)
	return fmt.Sprintf("%.3f–%.3f", lo, hi)
}

func (r encResult) markdown() string {
	var b strings.Builder
	b.WriteString("\n## Column encryption cost\n\n")
	if r.err != nil && len(r.runs) == 0 && len(r.checks) == 0 {
		fmt.Fprintf(&b, "The encryption scenario failed: %v\n", r.err)
		return b.String()
	}
	fmt.Fprintf(&b, "Two pgshield processes configured alike (transaction mode, 20 server connections, SQL classification on, trust authentication), one with the `encryption:` section of the example application (`internal/example/encryption.yaml`: leads.email deterministic, leads.ssn, credit_card, bank_account, date_of_birth, agents.license_number, carriers.api_key randomized; its database key `%s` renamed to the bench's `%s`; a keyring made by the bench, its master key made up for the run and passed in ENCRYPTION_KEY and ENCRYPTION_SALT), the other without; the example schema's tables in the bench's database (leads.email, encrypted and NOT NULL, made nullable for the scenario, so that a lead can be written with the three columns alone). Per round, every workload and mode ran through each process in turn, the order reversed every round: `pgbench -M <mode> -j 2 -T %d`, %d rounds; medians shown. on/off is the median of the rounds' ratios. pgshield CPU is the process's utime + stime over the transactions pgbench completed.\n\n",
		exampleEncDatabase, benchDatabase, int(r.duration.Seconds()), r.rounds)
	if len(r.checks) > 0 {
		b.WriteString("Encryption was checked before measuring: a lead of three values was written through each process, as literals of a simple Query and as Bind parameters, then read straight from PostgreSQL and back through the process.\n\n| process | written as | stored in PostgreSQL | read back through it |\n|---|---|---|---|\n")
		for _, c := range r.checks {
			fmt.Fprintf(&b, "| %s | %ss | %s | %s |\n", c.target, c.way, c.stored, c.read)
		}
		b.WriteString("\nciphertext: the `pgs1:` stored form, which decrypts to the value written under the run's keyring, for its column.\n\n")
	}
	var notes []string
	note := func(w, mode string, f encFigures) {
		for _, x := range []struct {
			who string
			s   summary
		}{{"with encryption", f.on}, {"without encryption", f.off}} {
			if x.s.note != "" {
				notes = append(notes, fmt.Sprintf("%s, %s mode, %s: %s. %s", w, mode, x.who, x.s.note, abortedNote))
			}
		}
	}
	var plain, costly []encWorkload
	for _, w := range encWorkloads() {
		if w.values == 0 {
			plain = append(plain, w)
		} else {
			costly = append(costly, w)
		}
	}
	b.WriteString("### Traffic that touches no encrypted column\n\n")
	for _, w := range plain {
		fmt.Fprintf(&b, "- **%s**: %s.\n", w.name, w.about)
	}
	fmt.Fprintf(&b, "\nGoal (issue): TPS with encryption at least %.2f × without it.\n\n", encGoal)
	b.WriteString("| workload | mode | encryption on tps | off tps | on/off tps | rounds' on/off tps | on CPU µs/tx | off CPU µs/tx | on/off CPU | rounds' on/off CPU | goal | failed (on / off) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, w := range plain {
		for _, mode := range encModes() {
			f := r.figures(w, mode)
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s | %s / %s |\n", w.name, mode, f.on.tps, f.off.tps,
				ratioCell(median(f.tps)), rangeOf(f.tps), cpuCell(f.on.cpu), cpuCell(f.off.cpu), ratioCell(median(f.cpu)), rangeOf(f.cpu),
				encGoalMet(f.tps), failures(f.on.failed, f.on.note), failures(f.off.failed, f.off.note))
			note(w.name, mode, f)
		}
	}
	b.WriteString("\n### Cost per encrypted value\n\n")
	for _, w := range costly {
		fmt.Fprintf(&b, "- **%s**: %s.\n", w.name, w.about)
	}
	b.WriteString("\nCPU per value = (pgshield CPU µs per transaction with encryption − without) / values per transaction; latency per value = (pgbench's average latency with − without) / values per transaction, in µs. Each is computed per round from the round's two runs; the median and the rounds' min–max shown. Latency includes waiting for one of the 20 server connections, so it grows with any slowdown, not only pgshield's own work.\n\n")
	b.WriteString("| workload | mode | values/tx | on tps | off tps | on CPU µs/tx | off CPU µs/tx | CPU µs per value | rounds' CPU µs per value | on latency ms | off latency ms | latency µs per value | rounds' latency µs per value | failed (on / off) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, w := range costly {
		for _, mode := range encModes() {
			f := r.figures(w, mode)
			fmt.Fprintf(&b, "| %s | %s | %d | %.0f | %.0f | %s | %s | %s | %s | %.3f | %.3f | %s | %s | %s / %s |\n", w.name, mode, w.values, f.on.tps, f.off.tps,
				cpuCell(f.on.cpu), cpuCell(f.off.cpu), usCell(f.cpuValue), usRange(f.cpuValue), f.on.lat, f.off.lat, usCell(f.latValue), usRange(f.latValue),
				failures(f.on.failed, f.on.note), failures(f.off.failed, f.off.note))
			note(w.name, mode, f)
		}
	}
	for _, n := range notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	if r.err != nil {
		fmt.Fprintf(&b, "\nThe scenario stopped early: %v\n", r.err)
	}
	return b.String()
}
