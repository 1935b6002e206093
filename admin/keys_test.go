package admin

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/internal/pgcluster"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
)

// The fake Source of the console tests has no column encryption.
func (f *fakeSource) Keys(context.Context, time.Duration) (KeysReport, error) {
	return KeysReport{Notes: []string{"no column encryption is configured"}}, nil
}
func (f *fakeSource) RotateKey(context.Context) (RotateReport, error) {
	return RotateReport{}, noEncryption("ROTATE KEY")
}
func (f *fakeSource) RetireKey(context.Context, uint32) (RetireReport, error) {
	return RetireReport{}, noEncryption("RETIRE KEY")
}
func (f *fakeSource) Reencrypt(context.Context, string) (ReencryptJob, error) {
	return ReencryptJob{}, noEncryption("REENCRYPT")
}
func (f *fakeSource) Unfinished(context.Context) ([]ReencryptJob, error) { return nil, nil }

// testMasterKey is a master key given as it is, without scrypt.
type testMasterKey []byte

func (k testMasterKey) MasterKey(context.Context) ([]byte, error) { return bytes.Clone(k), nil }

// encEnv is a Live over real PostgreSQL (database app) with encrypted
// columns, its keyring in a file, and a console with a job registry in
// front of it.
type encEnv struct {
	pg      *pgcluster.Cluster
	srv     *proxy.Server
	live    *Live
	jobs    *Jobs
	console *Console
	admin   *consoleEnv // its address, for connect
	path    string      // the keyring file
	master  crypto.KeySource
	cfg     atomic.Pointer[KeyConfig] // what the Live's key configuration returns
	db      *pgx.Conn                 // to app, directly
}

const testPeopleSchema = `CREATE TABLE people (id bigint PRIMARY KEY, ssn text, email text UNIQUE, note text)`

// testPeopleColumns: people.ssn randomized, people.email deterministic,
// and a table the database does not have.
func testPeopleColumns() map[string]map[string]proxy.EncryptedColumn {
	return map[string]map[string]proxy.EncryptedColumn{
		"people": {"ssn": {}, "email": {Deterministic: true}},
		"gone":   {"secret": {}},
	}
}

func startEncEnv(t *testing.T, schema string, cols map[string]map[string]proxy.EncryptedColumn) *encEnv {
	t.Helper()
	ctx := ctxT(t)
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	if err := pg.CreateDatabase(ctx, "app", pg.User); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "app", schema); err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	mcfg := poolmgr.Config{Databases: map[string]poolmgr.DatabaseConfig{
		"app": {Primary: pg.Addr(), DBName: "app", User: pg.User, Password: pg.Password, ServerTLS: poolmgr.ServerTLS{Mode: "disable"}},
	}}.WithDefaults()
	pools, err := poolmgr.New(mcfg, log)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(proxy.Config{Listen: "127.0.0.1:0", Users: []proxy.User{{Name: "admin", Password: testAdminPassword, Admin: true}}}, pools, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	e := &encEnv{pg: pg, srv: srv, path: filepath.Join(t.TempDir(), "keys.json"), master: testMasterKey(bytes.Repeat([]byte{7}, crypto.MasterKeySize))}
	keys, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.Save(ctx, e.path, e.master); err != nil {
		t.Fatal(err)
	}
	srv.SetEncryption(&proxy.Encryption{Keys: keys, Columns: map[string]map[string]map[string]proxy.EncryptedColumn{"app": cols}}, nil)
	e.setConfig(500, 0)
	e.live = NewLive(srv, pools, nil, nil, nil, "test", nil)
	e.live.SetKeyConfig(func() KeyConfig { return *e.cfg.Load() })
	e.jobs = NewJobs(log, nil)
	e.console = NewConsole(srv.AcceptAdmin, e.live, log, WithJobs(e.jobs))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.admin = &consoleEnv{addr: ln.Addr().String(), console: e.console, served: make(chan error, 1)}
	go func() { e.admin.served <- e.console.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.console.Shutdown(ctx); err != nil {
			t.Errorf("console shutdown: %v", err)
		}
		if err := <-e.admin.served; err != nil {
			t.Errorf("serve: %v", err)
		}
		if err := e.jobs.Close(ctx); err != nil {
			t.Errorf("close jobs: %v", err)
		}
		pools.Close(ctx)
	})
	if e.db, err = pgx.Connect(ctx, pg.ConnString("app")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.db.Close(context.Background()) })
	return e
}

// setConfig sets REENCRYPT's batch and pause (keep_keys 2).
func (e *encEnv) setConfig(batch int, pause time.Duration) {
	e.cfg.Store(&KeyConfig{KeysetFile: e.path, KeySource: func() (crypto.KeySource, error) { return e.master, nil },
		KeepKeys: 2, BatchRows: batch, Pause: pause})
}

// testSSN and testEmail are the plaintexts of row i.
func testSSN(i int) string   { return fmt.Sprintf("%03d-%02d-%04d", i%1000, i%100, i) }
func testEmail(i int) string { return fmt.Sprintf("user%d@example.com", i) }

// fillPeople writes n rows encrypted with keys, as the proxy would: ssn
// NULL in every row i with i%1000 == 7, plaintext (never encrypted) in
// the last plain rows.
func fillPeople(t *testing.T, e *encEnv, keys *crypto.Keyring, n, plain int) {
	t.Helper()
	rows := make([][]any, 0, n)
	for i := 1; i <= n; i++ {
		var ssn any
		switch {
		case i%1000 == 7:
		case i > n-plain:
			ssn = testSSN(i)
		default:
			ct, err := keys.Encrypt("people.ssn", []byte(testSSN(i)), nil)
			if err != nil {
				t.Fatal(err)
			}
			ssn = string(ct)
		}
		email, err := keys.EncryptDeterministic("people.email", []byte(testEmail(i)), nil)
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, []any{int64(i), ssn, string(email), "note " + strconv.Itoa(i)})
	}
	if _, err := e.db.CopyFrom(ctxT(t), pgx.Identifier{"people"}, []string{"id", "ssn", "email", "note"}, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
}

// personRow is one row of people as stored.
type personRow struct {
	id         int64
	ssn, email *string
}

func readPeople(t *testing.T, e *encEnv) []personRow {
	t.Helper()
	rows, err := e.db.Query(ctxT(t), "SELECT id, ssn, email FROM people ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (personRow, error) {
		var p personRow
		return p, r.Scan(&p.id, &p.ssn, &p.email)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// classOf is how SHOW KEYS counts a stored value: its key id, or
// plaintext.
func classOf(v string) string {
	if !crypto.IsCiphertext([]byte(v)) {
		return kindPlaintext
	}
	id, ok := crypto.KeyID([]byte(v))
	if !ok {
		return kindInvalid
	}
	return strconv.FormatUint(uint64(id), 10)
}

// countClasses counts the stored values of people by key id (decimal)
// or plaintext, as SHOW KEYS should.
func countClasses(people []personRow) map[string]int64 {
	out := map[string]int64{}
	for _, p := range people {
		for _, v := range []*string{p.ssn, p.email} {
			if v != nil {
				out[classOf(*v)]++
			}
		}
	}
	return out
}

// showKeys runs SHOW KEYS and returns rows by key_id (or kind for the
// rows without one) as "kind|primary|enabled|rows", with the notices.
func showKeys(t *testing.T, c *pgx.Conn, ns *notices) (map[string]string, []string) {
	t.Helper()
	res := exec1(t, c, "SHOW KEYS")[0]
	if got := strings.Join(columnNames(res), " "); got != "key_id kind created primary enabled rows scanned_at" {
		t.Fatalf("SHOW KEYS columns %s", got)
	}
	out := map[string]string{}
	for _, r := range res.Rows {
		if r[6] == nil {
			t.Errorf("SHOW KEYS row %q: no scanned_at", rowText(r))
		}
		id := string(r[0])
		if r[0] == nil {
			id = string(r[1])
		} else if r[2] == nil && string(r[1]) != kindUnknown {
			t.Errorf("key %s has no created", id)
		}
		out[id] = rowText([][]byte{r[1], r[3], r[4], r[5]})
	}
	return out, ns.take()
}

// kid is a key id as SHOW KEYS shows it.
func kid(k uint32) string { return strconv.FormatUint(uint64(k), 10) }

// waitProgress waits until job id has reported ok progress; it fails if
// the job ends first.
func waitProgress(t *testing.T, jobs *Jobs, jid int64, ok func(JobProgress) bool) JobInfo {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		info := getJob(t, jobs, jid)
		if ok(info.Progress) {
			return info
		}
		if info.State.Finished() {
			t.Fatalf("job %d ended %s (%s) before the progress awaited: %+v", jid, info.State, info.Err, info.Progress)
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %d: progress %+v, not the one awaited", jid, info.Progress)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startReencrypt runs REENCRYPT on the console and returns the job id.
func startReencrypt(t *testing.T, c *pgx.Conn, ns *notices, arg string) int64 {
	t.Helper()
	res := exec1(t, c, "REENCRYPT "+arg)[0]
	if res.CommandTag.String() != "REENCRYPT" || len(res.Rows) != 1 {
		t.Fatalf("REENCRYPT %s: tag %q, %d rows", arg, res.CommandTag, len(res.Rows))
	}
	jid, err := strconv.ParseInt(string(res.Rows[0][0]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if got := ns.take(); len(got) != 1 || !strings.Contains(got[0], fmt.Sprintf("job %d started: reencrypt app.people", jid)) {
		t.Errorf("REENCRYPT %s: notices %q", arg, got)
	}
	return jid
}

// progressRow is the run of people in pgshield_reencrypt with id rid, as
// "last_pk|rows_done|rows_rewritten|rows_total|key_ids|outcome" (NULL
// while it runs).
func progressRow(t *testing.T, e *encEnv, rid int) string {
	t.Helper()
	var last, done, rewritten, total *int64
	var ids string
	var outcome *string
	var finished bool
	err := e.db.QueryRow(ctxT(t), `SELECT last_pk, rows_done, rows_rewritten, rows_total, key_ids::text, outcome, finished_at IS NOT NULL
		FROM pgshield_reencrypt WHERE id = $1 AND table_name = 'people' AND job_key = 'reencrypt public.people'`, rid).
		Scan(&last, &done, &rewritten, &total, &ids, &outcome, &finished)
	if err != nil {
		t.Fatalf("pgshield_reencrypt run %d: %v", rid, err)
	}
	if finished != (outcome != nil) {
		t.Errorf("run %d: finished %v with outcome %v", rid, finished, outcome)
	}
	s := func(p *int64) string {
		if p == nil {
			return "NULL"
		}
		return strconv.FormatInt(*p, 10)
	}
	o := "NULL"
	if outcome != nil {
		o = *outcome
	}
	return strings.Join([]string{s(last), s(done), s(rewritten), s(total), ids, o}, "|")
}

func refused(t *testing.T, c *pgx.Conn, sql, code string, parts ...string) {
	t.Helper()
	_, err := c.PgConn().Exec(ctxT(t), sql).ReadAll()
	if err == nil {
		t.Errorf("%s: not refused", sql)
		return
	}
	pe := pgErr(t, err)
	if pe.Code != code {
		t.Errorf("%s: %s %q, want %s", sql, pe.Code, pe.Message, code)
	}
	for _, p := range parts {
		if !strings.Contains(pe.Message+" HINT: "+pe.Hint, p) {
			t.Errorf("%s: %q (hint %q) does not say %q", sql, pe.Message, pe.Hint, p)
		}
	}
}

// The whole life of a key: SHOW KEYS counts the rows under each key,
// ROTATE KEY adds new primaries while the old keys still decrypt, RETIRE
// KEY is refused while rows use a key, REENCRYPT (cancelled, then started
// again, then resumed as at start) moves every row to the primaries and
// encrypts plaintext, then RETIRE KEY and ROTATE KEY retire the old keys.
func TestKeysRotateReencryptRetire(t *testing.T) {
	e := startEncEnv(t, testPeopleSchema, testPeopleColumns())
	k0 := e.srv.Keyring()
	r0, d0 := k0.Primary(crypto.Randomized), k0.Primary(crypto.Deterministic)
	const n, plain = 5000, 10
	fillPeople(t, e, k0, n, plain)
	const nulls = n / 1000 // ids 7, 1007 …
	c, ns := e.admin.connect(t, true)

	keys, notes := showKeys(t, c, ns)
	want := map[string]string{
		kid(r0):       fmt.Sprintf("randomized|t|t|%d", n-nulls-plain),
		kid(d0):       fmt.Sprintf("deterministic|t|t|%d", n),
		kindPlaintext: fmt.Sprintf("plaintext|NULL|NULL|%d", plain),
	}
	if !maps.Equal(keys, want) {
		t.Errorf("SHOW KEYS before the rotation\n got %v\nwant %v", keys, want)
	}
	if got := countClasses(readPeople(t, e)); got[kid(r0)] != int64(n-nulls-plain) || got[kid(d0)] != n || got[kindPlaintext] != plain {
		t.Errorf("the stored values count %v, not what SHOW KEYS said", got)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "table gone of database app does not exist") {
		t.Errorf("SHOW KEYS notices %q, want one about table gone", notes)
	}

	// ROTATE KEY: new primaries, in force and in the file; the old keys
	// still decrypt.
	res := exec1(t, c, "ROTATE KEY")[0]
	if res.CommandTag.String() != "ROTATE KEY" {
		t.Errorf("ROTATE KEY tag %q", res.CommandTag)
	}
	k1 := e.srv.Keyring()
	r1, d1 := k1.Primary(crypto.Randomized), k1.Primary(crypto.Deterministic)
	if r1 == r0 || d1 == d0 {
		t.Fatalf("ROTATE KEY left the primaries %d %d", r1, d1)
	}
	if got := ns.take(); len(got) != 1 || !strings.Contains(got[0], fmt.Sprintf("new primary keys: %d (randomized), %d (deterministic)", r1, d1)) {
		t.Errorf("ROTATE KEY notices %q (keep_keys 2: nothing to retire)", got)
	}
	onDisk, err := crypto.LoadKeyring(ctxT(t), e.path, e.master)
	if err != nil {
		t.Fatal(err)
	}
	if onDisk.Primary(crypto.Randomized) != r1 || onDisk.Primary(crypto.Deterministic) != d1 || len(onDisk.Keys()) != 4 {
		t.Errorf("the keyring file has %v, not the rotated keyring", onDisk.Keys())
	}
	ct, err := k1.Encrypt("people.ssn", []byte("123-45-6789"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if kid, _ := crypto.KeyID(ct); kid != r1 {
		t.Errorf("a new ciphertext is under key %d, not the new primary %d", kid, r1)
	}
	people := readPeople(t, e)
	if pt, kid, err := k1.Decrypt("people.ssn", []byte(*people[0].ssn), nil); err != nil || string(pt) != testSSN(1) || kid != r0 {
		t.Errorf("an old value after the rotation: %q under %d, %v", pt, kid, err)
	}

	// RETIRE KEY while rows use the key, of a primary, of no key.
	refused(t, c, "RETIRE KEY "+kid(r0), "55000", fmt.Sprintf("%d rows still use key %d, in app.people", n-nulls-plain, r0), "REENCRYPT app.people")
	refused(t, c, "RETIRE KEY "+kid(r1), "55000", "is the primary randomized key")
	refused(t, c, "RETIRE KEY 1", "42704", "key 1 is not in the keyring")
	refused(t, c, "RETIRE KEY x", "22023", `invalid key id "x"`)
	refused(t, c, "RETIRE KEY", "42601", "RETIRE KEY needs a key id")
	refused(t, c, "RETIRE "+kid(r0), "42601", "RETIRE needs KEY")
	refused(t, c, "ROTATE KEY now", "42601", "ROTATE KEY takes no arguments")
	if len(e.srv.Keyring().Keys()) != 4 || !e.srv.Keyring().Keys()[0].Enabled {
		t.Errorf("a refused RETIRE KEY changed the keyring: %v", e.srv.Keyring().Keys())
	}

	// REENCRYPT, cancelled after its first batch.
	e.setConfig(500, time.Hour)
	j1 := startReencrypt(t, c, ns, "people")
	info := waitProgress(t, e.jobs, j1, func(p JobProgress) bool { return p.Done >= 500 })
	if info.Progress.Total != n || info.Progress.Unit != "rows" || info.Progress.Detail != "batch 1 of 10, 500 rows rewritten" {
		t.Errorf("progress after a batch %+v", info.Progress)
	}
	refused(t, c, "REENCRYPT app.people", "55000", fmt.Sprintf("job %d (reencrypt app.people) is already running", j1))
	exec1(t, c, fmt.Sprintf("CANCEL JOB %d", j1))
	if got := ns.take(); len(got) != 1 || !strings.Contains(got[0], fmt.Sprintf("job %d (reencrypt app.people) cancelled", j1)) {
		t.Errorf("CANCEL JOB notices %q", got)
	}
	if info := waitJob(t, e.jobs, j1); info.State != JobCancelled || info.Progress.Done != 500 {
		t.Fatalf("job %d after CANCEL JOB: %s, %+v", j1, info.State, info.Progress)
	}
	keyIDs := fmt.Sprintf("{%d,%d}", r1, d1)
	if got, want := progressRow(t, e, 1), "500|500|500|5000|"+keyIDs+"|NULL"; got != want {
		t.Errorf("pgshield_reencrypt after the cancel: %s, want %s", got, want)
	}
	for _, p := range readPeople(t, e) {
		wantR, wantD := kid(r0), kid(d0)
		if p.id <= 500 {
			wantR, wantD = kid(r1), kid(d1)
		}
		if p.ssn != nil && p.id <= int64(n-plain) && classOf(*p.ssn) != wantR || classOf(*p.email) != wantD {
			t.Fatalf("row %d after the first batch: ssn %s, email %s", p.id, classOf(deref(p.ssn)), classOf(*p.email))
		}
	}
	// A row done in the first batch set back under the old key: a run that
	// goes on from its last pk leaves it so; one that starts over would not.
	old1, err := k0.Encrypt("people.ssn", []byte(testSSN(1)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec(ctxT(t), "UPDATE people SET ssn = $1 WHERE id = 1", string(old1)); err != nil {
		t.Fatal(err)
	}

	// Started again, it goes on from row 501; cancelled again after a batch.
	j2 := startReencrypt(t, c, ns, "app.people")
	info = waitProgress(t, e.jobs, j2, func(p JobProgress) bool { return p.Done >= 1000 })
	if info.Progress.Done != 1000 || info.Progress.Detail != "batch 2 of 10, 1000 rows rewritten" {
		t.Errorf("the second run's progress after a batch: %+v (want 1000 done: it resumed at 500)", info.Progress)
	}
	exec1(t, c, fmt.Sprintf("CANCEL JOB %d", j2))
	ns.take()
	waitJob(t, e.jobs, j2)

	// At start, pgshield resumes it.
	e.setConfig(500, 0)
	ids, err := e.console.ResumeJobs(ctxT(t))
	if err != nil || len(ids) != 1 {
		t.Fatalf("ResumeJobs: %v, %v", ids, err)
	}
	info = waitJob(t, e.jobs, ids[0])
	if info.State != JobSucceeded || info.Kind != "reencrypt" || info.Target != "app.people" || info.Progress.Done != n || info.Progress.Total != n {
		t.Fatalf("the resumed job: %s %s %s %+v %s", info.Kind, info.Target, info.State, info.Progress, info.Err)
	}
	if got, want := progressRow(t, e, 1), fmt.Sprintf("%d|%d|%d|%d|%s|done", n, n, n, n, keyIDs); got != want {
		t.Errorf("pgshield_reencrypt after the resumed run: %s, want %s", got, want)
	}
	k := e.srv.Keyring()
	for _, p := range readPeople(t, e) {
		wantR := kid(r1)
		if p.id == 1 {
			wantR = kid(r0) // set back after its batch: not read again
		}
		switch {
		case p.id%1000 == 7:
			if p.ssn != nil {
				t.Errorf("row %d: a NULL ssn became a value", p.id)
			}
		case classOf(*p.ssn) != wantR || classOf(*p.email) != kid(d1):
			t.Errorf("row %d: ssn under %s, email under %s", p.id, classOf(*p.ssn), classOf(*p.email))
		default:
			if pt, _, err := k.Decrypt("people.ssn", []byte(*p.ssn), nil); err != nil || string(pt) != testSSN(int(p.id)) {
				t.Errorf("row %d: ssn decrypts to %q, %v", p.id, pt, err)
			}
		}
		if pt, _, err := k.Decrypt("people.email", []byte(*p.email), nil); err != nil || string(pt) != testEmail(int(p.id)) {
			t.Errorf("row %d: email decrypts to %q, %v", p.id, pt, err)
		}
	}
	if ids, err := e.console.ResumeJobs(ctxT(t)); err != nil || len(ids) != 0 {
		t.Errorf("ResumeJobs with nothing unfinished: %v, %v", ids, err)
	}

	// A new run rewrites the one row left under the old key.
	j3 := startReencrypt(t, c, ns, "people")
	if info := waitJob(t, e.jobs, j3); info.State != JobSucceeded || info.Progress.Done != n {
		t.Fatalf("job %d: %s %+v %s", j3, info.State, info.Progress, info.Err)
	}
	if got, want := progressRow(t, e, 2), fmt.Sprintf("%d|%d|1|%d|%s|done", n, n, n, keyIDs); got != want {
		t.Errorf("pgshield_reencrypt of the new run: %s, want %s", got, want)
	}
	keys, _ = showKeys(t, c, ns)
	want = map[string]string{
		kid(r0):       "randomized|f|t|0",
		kid(d0):       "deterministic|f|t|0",
		kid(r1):       fmt.Sprintf("randomized|t|t|%d", n-nulls),
		kid(d1):       fmt.Sprintf("deterministic|t|t|%d", n),
		kindPlaintext: "plaintext|NULL|NULL|0",
	}
	if !maps.Equal(keys, want) {
		t.Errorf("SHOW KEYS after REENCRYPT\n got %v\nwant %v", keys, want)
	}

	// Now the old randomized key retires.
	exec1(t, c, "RETIRE KEY "+kid(r0))
	if got := ns.take(); len(got) != 1 || !strings.Contains(got[0], fmt.Sprintf("key %d (randomized) retired", r0)) {
		t.Errorf("RETIRE KEY notices %q", got)
	}
	if onDisk, err = crypto.LoadKeyring(ctxT(t), e.path, e.master); err != nil || onDisk.Keys()[0].Enabled {
		t.Errorf("the keyring file after RETIRE KEY: %v, %v", onDisk.Keys(), err)
	}
	if _, _, err := e.srv.Keyring().Decrypt("people.ssn", old1, nil); err == nil {
		t.Error("a value under the retired key still decrypts")
	}
	exec1(t, c, "RETIRE KEY "+kid(r0))
	if got := ns.take(); len(got) != 1 || !strings.Contains(got[0], "was already retired") {
		t.Errorf("RETIRE KEY of a retired key: notices %q", got)
	}

	// ROTATE KEY retires what is older than the newest two enabled keys
	// of each kind and no row uses: d0.
	exec1(t, c, "ROTATE KEY")
	got := ns.take()
	if len(got) != 2 || !strings.Contains(got[1], fmt.Sprintf("retired, as no value is under them and they are older than the newest 2 of their kind: %d (deterministic)", d0)) {
		t.Errorf("the second ROTATE KEY: notices %q", got)
	}
	// The next one keeps r1 and d1: rows use them.
	exec1(t, c, "ROTATE KEY")
	got = ns.take()
	wantKept := fmt.Sprintf("kept, as values are under them: %d (randomized, %d rows), %d (deterministic, %d rows); REENCRYPT app.people", r1, n-nulls, d1, n)
	if len(got) != 2 || !strings.Contains(got[1], wantKept) {
		t.Errorf("the third ROTATE KEY: notices %q, want %q", got, wantKept)
	}
	enabled := map[uint32]bool{}
	for _, ki := range e.srv.Keyring().Keys() {
		enabled[ki.ID] = ki.Enabled
	}
	if enabled[r0] || enabled[d0] || !enabled[r1] || !enabled[d1] || len(enabled) != 8 {
		t.Errorf("keys after three rotations: %v", e.srv.Keyring().Keys())
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// SHOW KEYS keeps a scan until it is maxAge old, or a re-encryption ran;
// values under no key of the keyring and values that are not well
// formed have rows of their own.
func TestKeysScan(t *testing.T) {
	e := startEncEnv(t, testPeopleSchema, testPeopleColumns())
	k0 := e.srv.Keyring()
	fillPeople(t, e, k0, 20, 2)
	ctx := ctxT(t)
	first, err := e.live.Keys(ctx, time.Hour)
	if err != nil || first.ScannedAt.IsZero() {
		t.Fatalf("Keys: %+v, %v", first, err)
	}
	stranger, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := stranger.Encrypt("people.ssn", []byte("000-00-0000"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec(ctx, "UPDATE people SET ssn = $1 WHERE id = 1", string(foreign)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec(ctx, "UPDATE people SET ssn = 'pgs1:not base64!' WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	again, err := e.live.Keys(ctx, time.Hour)
	if err != nil || !again.ScannedAt.Equal(first.ScannedAt) || !slices.Equal(again.Keys, first.Keys) {
		t.Errorf("a second SHOW KEYS within maxAge scanned again: %+v, %v", again, err)
	}
	e.live.markScanStale()
	fresh, err := e.live.Keys(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]int64{}
	for _, k := range fresh.Keys {
		rows[k.Kind+" "+kid(k.ID)] = k.Rows
	}
	strangerID, _ := crypto.KeyID(foreign)
	r0 := k0.Primary(crypto.Randomized)
	// 20 rows: ssn NULL in row 7, plaintext in 19 and 20, 1 and 2 changed.
	if rows["randomized "+kid(r0)] != 15 || rows["unknown "+kid(strangerID)] != 1 || rows["invalid 0"] != 1 || rows["plaintext 0"] != 2 {
		t.Errorf("SHOW KEYS after a stale scan: %v", rows)
	}
}

// Without encryption SHOW KEYS lists nothing and the key commands are
// refused with 55000; without a keyring file or a master key, too.
func TestKeysRefusedWithoutEncryption(t *testing.T) {
	l, _ := liveWithPolicy(t, "", nil)
	ctx := ctxT(t)
	if rep, err := l.Keys(ctx, time.Minute); err != nil || len(rep.Keys) != 0 || len(rep.Notes) != 1 {
		t.Errorf("Keys without encryption: %+v, %v", rep, err)
	}
	code := func(err error) string {
		if e, ok := err.(*Error); ok {
			return e.Code
		}
		return fmt.Sprint(err)
	}
	_, err := l.RotateKey(ctx)
	if code(err) != CodeObjectNotInPrerequisiteState || !strings.Contains(err.Error(), "no column encryption is configured") {
		t.Errorf("ROTATE KEY without encryption: %v", err)
	}
	if _, err := l.RetireKey(ctx, 5); code(err) != CodeObjectNotInPrerequisiteState {
		t.Errorf("RETIRE KEY without encryption: %v", err)
	}
	if _, err := l.Reencrypt(ctx, "leads"); code(err) != CodeObjectNotInPrerequisiteState {
		t.Errorf("REENCRYPT without encryption: %v", err)
	}
	if jobs, err := l.Unfinished(ctx); err != nil || jobs != nil {
		t.Errorf("Unfinished without encryption: %v, %v", jobs, err)
	}

	keys, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	l.srv.SetEncryption(&proxy.Encryption{Keys: keys, Columns: map[string]map[string]map[string]proxy.EncryptedColumn{"app": {"leads": {"ssn": {}}}}}, nil)
	if _, err := l.RotateKey(ctx); code(err) != CodeObjectNotInPrerequisiteState || !strings.Contains(err.Error(), "no keyring file") {
		t.Errorf("ROTATE KEY without a keyring file: %v", err)
	}
	path := filepath.Join(t.TempDir(), "keys.json")
	l.SetKeyConfig(func() KeyConfig {
		return KeyConfig{KeysetFile: path, KeySource: func() (crypto.KeySource, error) {
			return crypto.EnvKeySourceFrom(func(string) string { return "" })
		}}
	})
	if _, err := l.RotateKey(ctx); code(err) != CodeObjectNotInPrerequisiteState || !strings.Contains(err.Error(), "ENCRYPTION_KEY") {
		t.Errorf("ROTATE KEY without a master key: %v", err)
	}
	if l.srv.Keyring() != keys {
		t.Error("a refused ROTATE KEY changed the keyring in force")
	}

	// A keyring file that lost keys in force (replaced) is not rotated.
	master := testMasterKey(bytes.Repeat([]byte{1}, crypto.MasterKeySize))
	other, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Save(ctx, path, master); err != nil {
		t.Fatal(err)
	}
	l.SetKeyConfig(func() KeyConfig {
		return KeyConfig{KeysetFile: path, KeySource: func() (crypto.KeySource, error) { return master, nil }}
	})
	if _, err := l.RotateKey(ctx); code(err) != CodeObjectNotInPrerequisiteState || !strings.Contains(err.Error(), "was replaced") {
		t.Errorf("ROTATE KEY of a replaced keyring file: %v", err)
	}
	if l.srv.Keyring() != keys {
		t.Error("a refused ROTATE KEY changed the keyring in force")
	}
	if onDisk, err := crypto.LoadKeyring(ctx, path, master); err != nil || len(onDisk.Keys()) != 2 {
		t.Errorf("a refused ROTATE KEY changed the file: %v", err)
	}
}

// The console refuses malformed key commands before asking the Source,
// and reports the Source's refusal with its SQLSTATE.
func TestConsoleKeyCommands(t *testing.T) {
	e := startConsole(t)
	c, ns := e.connect(t, true)
	for _, tc := range []struct{ sql, code, message string }{
		{"ROTATE", "42601", "ROTATE needs KEY: ROTATE KEY"},
		{"ROTATE KEYS", "42601", "ROTATE needs KEY"},
		{"ROTATE KEY 1", "42601", `ROTATE KEY takes no arguments, got "1"`},
		{"ROTATE KEY", "55000", "ROTATE KEY: no column encryption is configured"},
		{"RETIRE KEY", "42601", "RETIRE KEY needs a key id: RETIRE KEY <id>"},
		{"RETIRE KEY 1 2", "42601", "RETIRE KEY takes one key id, got 2 arguments"},
		{"RETIRE KEY 0", "22023", `invalid key id "0"`},
		{"RETIRE KEY 4294967296", "22023", "invalid key id"},
		{"RETIRE KEY 42", "55000", "RETIRE KEY: no column encryption is configured"},
		{"REENCRYPT", "42601", "REENCRYPT needs a table: REENCRYPT <table>"},
		{"REENCRYPT a b", "42601", "REENCRYPT takes one table, got 2 arguments"},
		{"REENCRYPT leads", "55000", "no job registry"},
	} {
		refused(t, c, tc.sql, tc.code, tc.message)
	}
	res := exec1(t, c, "SHOW KEYS")[0]
	if len(res.Rows) != 0 {
		t.Errorf("SHOW KEYS without encryption: %d rows", len(res.Rows))
	}
	if got := ns.take(); len(got) != 1 || !strings.Contains(got[0], "no column encryption is configured") {
		t.Errorf("SHOW KEYS without encryption: notices %q", got)
	}
	var help []string
	for _, h := range helpLines() {
		help = append(help, h[0])
	}
	for _, want := range []string{"SHOW KEYS", "ROTATE KEY", "RETIRE KEY <id>", "REENCRYPT <table>"} {
		if !slices.Contains(help, want) {
			t.Errorf("SHOW HELP has no line %q", want)
		}
	}
}
