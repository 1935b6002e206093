package admin

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/proxy"
)

func TestReencryptTarget(t *testing.T) {
	one := map[string]map[string]map[string]proxy.EncryptedColumn{
		"app":   {"leads": {"ssn": {}}, "agents": {"license_number": {}}, "empty": {}},
		"stats": {},
	}
	two := map[string]map[string]map[string]proxy.EncryptedColumn{
		"app": {"leads": {"ssn": {}}},
		"crm": {"leads": {"ssn": {}}},
	}
	for _, tc := range []struct {
		cols      map[string]map[string]map[string]proxy.EncryptedColumn
		arg       string
		db, table string
		code, msg string
	}{
		{cols: one, arg: "leads", db: "app", table: "leads"},
		{cols: one, arg: "app.agents", db: "app", table: "agents"},
		{cols: one, arg: "crm.leads", code: "22023", msg: `database "crm" has no encrypted columns`},
		{cols: one, arg: "stats.leads", code: "22023", msg: `database "stats" has no encrypted columns`},
		{cols: one, arg: "notes", code: "22023", msg: `table "notes" of database app has no encrypted columns`},
		{cols: one, arg: "empty", code: "22023", msg: `table "empty" of database app has no encrypted columns`},
		{cols: one, arg: "app.", code: "22023", msg: "needs a table name"},
		{cols: two, arg: "leads", code: "22023", msg: "more than one database has encrypted columns: name one, as REENCRYPT <database>.leads"},
		{cols: two, arg: "crm.leads", db: "crm", table: "leads"},
	} {
		db, table, err := reencryptTarget(tc.cols, tc.arg)
		if tc.code == "" {
			if err != nil || db != tc.db || table != tc.table {
				t.Errorf("%q: %s %s %v, want %s %s", tc.arg, db, table, err, tc.db, tc.table)
			}
			continue
		}
		var e *Error
		if !errors.As(err, &e) || e.Code != tc.code || !strings.Contains(e.Message, tc.msg) {
			t.Errorf("%q: %v, want %s %q", tc.arg, err, tc.code, tc.msg)
		}
	}
}

// The array literals of a batch's UPDATE read back as they were written,
// whatever the values hold.
func TestReencryptTextArray(t *testing.T) {
	e := startEncEnv(t, testPeopleSchema, testPeopleColumns())
	vals := [][]byte{[]byte("pgs1:AQID+/=="), []byte(`a"b\c`), nil, []byte("NULL"), []byte("{x,y}"), []byte(" "), []byte("")}
	res := e.db.PgConn().ExecParams(ctxT(t), "SELECT x FROM unnest($1::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n",
		[][]byte{textArray(vals)}, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	var got [][]byte
	for _, r := range res.Rows {
		got = append(got, r[0])
	}
	if !slices.EqualFunc(got, vals, func(a, b []byte) bool { return (a == nil) == (b == nil) && string(a) == string(b) }) {
		t.Errorf("round trip: %q, want %q", got, vals)
	}
}

const testRefusalSchema = testPeopleSchema + `;
	CREATE TABLE nopk (code text, secret text);
	CREATE TABLE pair (a int, b int, secret text, PRIMARY KEY (a, b));
	CREATE TABLE texty (code text PRIMARY KEY, secret text);
	CREATE TABLE nocol (id int PRIMARY KEY)`

// REENCRYPT refuses, with the SQLSTATE of each, what it cannot go
// through, and a table another pgshield re-encrypts.
func TestReencryptRefusals(t *testing.T) {
	cols := testPeopleColumns()
	for _, table := range []string{"nopk", "pair", "texty", "nocol"} {
		cols[table] = map[string]proxy.EncryptedColumn{"secret": {}}
	}
	e := startEncEnv(t, testRefusalSchema, cols)
	fillPeople(t, e, e.srv.Keyring(), 10, 0)
	c, ns := e.admin.connect(t, true)
	for _, tc := range []struct{ arg, code, msg string }{
		{"nopk", "0A000", "table public.nopk of database app cannot be re-encrypted: it has no primary key"},
		{"pair", "0A000", "its primary key has 2 columns"},
		{"texty", "0A000", "its primary key code is of type text"},
		{"gone", "42P01", "table gone of database app does not exist"},
		{"nocol", "42703", "the encrypted column nocol.secret of database app does not exist"},
		{"other.people", "22023", `database "other" has no encrypted columns`},
		{"''", "22023", "REENCRYPT needs a table name"},
	} {
		refused(t, c, "REENCRYPT "+tc.arg, tc.code, tc.msg)
	}

	// Another pgshield (here: another session) holds the table's lock.
	lock := "SELECT pg_advisory_lock(hashtextextended('reencrypt public.people', 0))"
	if _, err := e.db.Exec(ctxT(t), lock); err != nil {
		t.Fatal(err)
	}
	refused(t, c, "REENCRYPT people", "55000", "another pgshield is re-encrypting table people of database app")
	if _, err := e.db.Exec(ctxT(t), "SELECT pg_advisory_unlock(hashtextextended('reencrypt public.people', 0))"); err != nil {
		t.Fatal(err)
	}
	// It takes it between the check and the job: the job fails.
	job, err := e.live.Reencrypt(ctxT(t), "people")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec(ctxT(t), lock); err != nil {
		t.Fatal(err)
	}
	jid, err := e.jobs.Start("reencrypt", job.Target(), job.Run)
	if err != nil {
		t.Fatal(err)
	}
	if info := waitJob(t, e.jobs, jid); info.State != JobFailed || !strings.Contains(info.Err, "another pgshield is re-encrypting") {
		t.Errorf("a job whose lock is taken: %s %q", info.State, info.Err)
	}
	if _, err := e.db.Exec(ctxT(t), "SELECT pg_advisory_unlock_all()"); err != nil {
		t.Fatal(err)
	}
	// Free again, it runs.
	jid = startReencrypt(t, c, ns, "people")
	if info := waitJob(t, e.jobs, jid); info.State != JobSucceeded || info.Progress.Done != 10 {
		t.Errorf("REENCRYPT once the lock is free: %s %+v %s", info.State, info.Progress, info.Err)
	}
}

// A value that does not decrypt fails the job, naming the table, the
// column and the row's primary key but not the value; the batch it was
// in is not committed.
func TestReencryptDecryptFailure(t *testing.T) {
	e := startEncEnv(t, testPeopleSchema, testPeopleColumns())
	k0 := e.srv.Keyring()
	fillPeople(t, e, k0, 10, 0)
	stranger, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	const secret = "999-99-9999"
	foreign, err := stranger.Encrypt("people.ssn", []byte(secret), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec(ctxT(t), "UPDATE people SET ssn = $1 WHERE id = 3", string(foreign)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.live.RotateKey(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	c, ns := e.admin.connect(t, true)
	jid := startReencrypt(t, c, ns, "people")
	info := waitJob(t, e.jobs, jid)
	if info.State != JobFailed || !strings.Contains(info.Err, "table people of database app: the value of column ssn in the row with id = 3 does not decrypt") {
		t.Fatalf("job %d: %s %q", jid, info.State, info.Err)
	}
	if strings.Contains(info.Err, string(foreign)) || strings.Contains(info.Err, secret) || strings.Contains(info.Err, "pgs1:") {
		t.Errorf("the job's error shows the value: %q", info.Err)
	}
	people := readPeople(t, e)
	if classOf(*people[0].ssn) != kid(k0.Primary(crypto.Randomized)) {
		t.Errorf("row 1 was rewritten by a batch that failed")
	}
	if got, want := progressRow(t, e, 1), fmt.Sprintf("NULL|0|0|10|{%d,%d}|NULL", e.srv.Keyring().Primary(crypto.Randomized), e.srv.Keyring().Primary(crypto.Deterministic)); got != want {
		t.Errorf("pgshield_reencrypt after the failure: %s, want %s", got, want)
	}
}

// A run that had not finished when the keys were rotated again is not
// resumed: what it did is under a key that is no longer primary. It is
// finished as superseded and a new run begins from the first row.
func TestReencryptSupersededByRotation(t *testing.T) {
	e := startEncEnv(t, testPeopleSchema, testPeopleColumns())
	fillPeople(t, e, e.srv.Keyring(), 30, 5)
	ctx := ctxT(t)
	if _, err := e.live.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	first := e.srv.Keyring()
	c, ns := e.admin.connect(t, true)
	e.setConfig(10, time.Hour)
	jid := startReencrypt(t, c, ns, "people")
	waitProgress(t, e.jobs, jid, func(p JobProgress) bool { return p.Done >= 10 })
	exec1(t, c, fmt.Sprintf("CANCEL JOB %d", jid))
	ns.take()
	waitJob(t, e.jobs, jid)
	if _, err := e.live.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	k := e.srv.Keyring()
	r, d := k.Primary(crypto.Randomized), k.Primary(crypto.Deterministic)
	e.setConfig(10, 0)
	jid = startReencrypt(t, c, ns, "people")
	if info := waitJob(t, e.jobs, jid); info.State != JobSucceeded || info.Progress.Done != 30 {
		t.Fatalf("the run after the rotation: %s %+v %s", info.State, info.Progress, info.Err)
	}
	if got, want := progressRow(t, e, 1), fmt.Sprintf("10|10|10|30|{%d,%d}|superseded", first.Primary(crypto.Randomized), first.Primary(crypto.Deterministic)); got != want {
		t.Errorf("the first run: %s, want %s", got, want)
	}
	if got, want := progressRow(t, e, 2), fmt.Sprintf("30|30|30|30|{%d,%d}|done", r, d); got != want {
		t.Errorf("the second run: %s, want %s", got, want)
	}
	for _, p := range readPeople(t, e) {
		if p.ssn != nil && classOf(*p.ssn) != kid(r) || classOf(*p.email) != kid(d) {
			t.Errorf("row %d: ssn %s, email %s, want %d and %d", p.id, classOf(deref(p.ssn)), classOf(*p.email), r, d)
		}
	}
}
