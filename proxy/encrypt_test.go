package proxy_test

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/internal/example"
	"github.com/pgshield/pgshield/policy"
)

// encOnce creates the example application's database for the encryption
// tests once: its schema and the policy's SQL with the encrypted columns
// left to pgshield.
var encOnce struct {
	sync.Once
	err error
}

const encDB = "encapp"

type decryptFailures struct {
	mu sync.Mutex
	n  map[string]int
}

func (d *decryptFailures) DecryptFailed(database, table, column string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.n[database+"."+table+"."+column]++
}

// startEncProxy is a proxy whose database app is the example application
// with its encryption, masks and policy in force; it returns the proxy,
// a direct connection to the database, the keyring and the failure count.
func startEncProxy(t *testing.T) (*env, *pgx.Conn, *crypto.Keyring, *decryptFailures) {
	t.Helper()
	p := examplePolicy(t)
	ef, err := config.ParseEncryption([]byte(example.Encryption()))
	if err != nil {
		t.Fatal(err)
	}
	// The example masks the analytics service; the tests' user of that
	// service is tiny.
	encOnce.Do(func() {
		ctx := context.Background()
		if encOnce.err = pg.CreateDatabase(ctx, encDB, "postgres"); encOnce.err != nil {
			return
		}
		if encOnce.err = pg.Exec(ctx, encDB, example.Schema()); encOnce.err != nil {
			return
		}
		encOnce.err = pg.Exec(ctx, encDB, policy.SQLFor(p, "app", ef.Encrypted("app"))+"; GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC")
	})
	if encOnce.err != nil {
		t.Fatal(encOnce.err)
	}
	keys, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	enc, err := ef.ProxyEncryption(keys)
	if err != nil {
		t.Fatal(err)
	}
	e := startProxy(t, func(_ *proxyConfig, m *poolConfig) {
		db := m.Databases["app"]
		db.DBName = encDB
		m.Databases["app"] = db
	})
	fails := &decryptFailures{n: map[string]int{}}
	e.srv.SetPolicy(p, e.m)
	e.srv.SetEncryption(enc, fails)
	d, err := pgx.Connect(ctxT(t), pg.ConnString(encDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close(context.Background()) })
	if _, err := d.Exec(ctxT(t), "TRUNCATE leads, agents, carriers, partnerships, lead_assignments, audit_log CASCADE"); err != nil {
		t.Fatal(err)
	}
	return e, d, keys, fails
}

func wantCode(t *testing.T, what string, err error, code, column string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != code || (column != "" && pe.ColumnName != column) {
		t.Errorf("%s: %v, want %s on column %q", what, err, code, column)
	}
}

// Leads written through pgshield as a psql-style literal, with pgx
// parameters in text and in binary format, in transaction and session
// pooling, read back as plaintext; the database holds pgs1: ciphertext;
// date_of_birth reads as a time.Time; the email finds its lead by
// parameter and by literal; what cannot work on ciphertext is refused
// with 0A000; the analytics service sees masks.
func TestEncryptionReadsWrites(t *testing.T) {
	e, d, _, _ := startEncProxy(t)
	ctx := ctxT(t)
	dob := time.Date(1990, 1, 2, 0, 0, 0, 0, time.UTC)
	for _, user := range []string{"app", "sess"} {
		c := e.connect(t, user, "")
		lit := user + "-lit@example.com"
		if _, err := c.Exec(ctx, "INSERT INTO leads (email, phone, ssn, credit_card, date_of_birth) VALUES ('"+lit+
			"', '+11234567890', '123-45-6789', '4111111111111111', '1990-01-02')", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: a literal insert: %v", user, err)
		}
		// pgx sends the text parameters in text format, date_of_birth
		// (described to it as a date) in binary.
		param := user + "-param@example.com"
		if _, err := c.Exec(ctx, "INSERT INTO leads (email, ssn, credit_card, date_of_birth) VALUES ($1, $2, $3, $4)",
			param, "987-65-4321", "5500000000000004", dob); err != nil {
			t.Fatalf("%s: a parameter insert: %v", user, err)
		}
		// Every parameter in binary format: text as its bytes, the date
		// as days since 2000-01-01.
		bin := user + "-bin@example.com"
		days := -3651 // 1990-01-02
		binDate := []byte{byte(days >> 24), byte(days >> 16), byte(days >> 8), byte(days)}
		if _, err := c.PgConn().ExecParams(ctx, "INSERT INTO leads (email, ssn, date_of_birth) VALUES ($1, $2, $3)",
			[][]byte{[]byte(bin), []byte("111-11-1111"), binDate}, nil, []int16{1, 1, 1}, nil).Close(); err != nil {
			t.Fatalf("%s: a binary parameter insert: %v", user, err)
		}
		for _, email := range []string{lit, param, bin} {
			var ssn string
			var got time.Time
			if err := c.QueryRow(ctx, "SELECT ssn, date_of_birth FROM leads WHERE email = $1", email).Scan(&ssn, &got); err != nil {
				t.Fatalf("%s: reading %s back: %v", user, email, err)
			}
			if !got.Equal(dob) || !strings.Contains(ssn, "-") {
				t.Errorf("%s: %s read back ssn %q date_of_birth %v", user, email, ssn, got)
			}
			var id int64
			if err := c.QueryRow(ctx, "SELECT id FROM leads WHERE email = '"+email+"'", pgx.QueryExecModeSimpleProtocol).Scan(&id); err != nil {
				t.Errorf("%s: finding %s by a literal: %v", user, email, err)
			}
		}
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM leads WHERE email IN ($1, $2) OR email = 'nobody@example.com'", lit, param).Scan(&n); err != nil || n != 2 {
			t.Errorf("%s: IN with parameters found %d (%v), want 2", user, n, err)
		}
		for _, q := range []string{"SELECT id FROM leads ORDER BY ssn", "SELECT id FROM leads WHERE ssn LIKE '1%'",
			"INSERT INTO leads (email, ssn) SELECT 'x@example.com', ssn FROM leads", "SELECT upper(email) FROM leads"} {
			_, err := c.Exec(ctx, q)
			wantCode(t, user+": "+q, err, "0A000", "")
		}
	}
	// What the database holds.
	rows, err := d.Query(ctx, "SELECT email, ssn, credit_card, date_of_birth FROM leads")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var vals [4]*string
		if err := rows.Scan(&vals[0], &vals[1], &vals[2], &vals[3]); err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			if v != nil && !strings.HasPrefix(*v, crypto.Prefix) {
				t.Errorf("column %d is stored in plaintext", i)
			}
		}
	}
	rows.Close()

	// The analytics service (user tiny) sees masks.
	a := e.connect(t, "tiny", "")
	var email, phone, ssn, card string
	if err := a.QueryRow(ctx, "SELECT email, phone, ssn, credit_card FROM leads WHERE email = 'app-lit@example.com'",
		pgx.QueryExecModeSimpleProtocol).Scan(&email, &phone, &ssn, &card); err != nil {
		t.Fatal(err)
	}
	if email != "a*****t@example.com" || phone != "***-***-7890" || ssn != "***-**-6789" || card != "****-****-****-1111" {
		t.Errorf("analytics sees %q %q %q %q", email, phone, ssn, card)
	}
	// What would show a masked column unmasked is refused to that service
	// alone.
	for _, q := range []string{"SELECT lower(phone) FROM leads", "SELECT phone || '' FROM leads", "SELECT id FROM leads WHERE phone LIKE '+1%'"} {
		_, err := a.Exec(ctx, q)
		wantCode(t, "analytics: "+q, err, "0A000", "phone")
		if err != nil && !strings.Contains(err.Error(), "masked for service analytics") {
			t.Errorf("analytics: %s: %v, want it to say the column is masked", q, err)
		}
		if _, err := e.connect(t, "app", "").Exec(ctx, q); err != nil {
			t.Errorf("api: %s: %v", q, err)
		}
	}
}

// A value that does not decrypt fails its statement with XX001, counted,
// and the session goes on; plaintext left in an encrypted column does too.
func TestEncryptionFailsClosed(t *testing.T) {
	e, d, _, fails := startEncProxy(t)
	ctx := ctxT(t)
	other, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Encrypt("leads.ssn", []byte("123-45-6789"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Exec(ctx, "INSERT INTO leads (email, ssn) VALUES ('f@example.com', $1), ('g@example.com', 'plain')", string(foreign)); err != nil {
		t.Fatal(err)
	}
	c := e.connect(t, "app", "")
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		rows, err := c.Query(ctx, "SELECT ssn FROM leads ORDER BY id", mode)
		if err == nil {
			for rows.Next() {
			}
			rows.Close()
			err = rows.Err()
		}
		wantCode(t, "reading a foreign ciphertext", err, "XX001", "ssn")
		if err != nil && strings.Contains(err.Error(), "pgs1:") {
			t.Errorf("the error shows the ciphertext: %v", err)
		}
		var one int
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Errorf("after XX001: %v", err)
		}
	}
	fails.mu.Lock()
	n := fails.n["app.leads.ssn"]
	fails.mu.Unlock()
	if n < 2 {
		t.Errorf("%d decrypt failures counted, want 2 or more", n)
	}
}

// A COPY FROM STDIN into encrypted columns, in text (psql's \copy-like
// rows through pgconn) and binary (pgx's CopyFrom), stores ciphertext
// that reads back as plaintext.
func TestEncryptionCopy(t *testing.T) {
	e, d, _, _ := startEncProxy(t)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	if _, err := c.PgConn().CopyFrom(ctx, strings.NewReader("t1@example.com\t111-22-3333\nt2@example.com\t\\N\n"),
		"COPY leads (email, ssn) FROM STDIN"); err != nil {
		t.Fatalf("text COPY: %v", err)
	}
	if _, err := c.PgConn().CopyFrom(ctx, strings.NewReader("email,ssn\n\"c1@example.com\",\"444-55-6666\"\n"),
		"COPY leads (email, ssn) FROM STDIN (FORMAT csv, HEADER true)"); err != nil {
		t.Fatalf("CSV COPY: %v", err)
	}
	rowsIn := [][]any{{"b1@example.com", "777-88-9999"}, {"b2@example.com", nil}}
	if _, err := c.CopyFrom(ctx, pgx.Identifier{"leads"}, []string{"email", "ssn"}, pgx.CopyFromRows(rowsIn)); err != nil {
		t.Fatalf("binary COPY: %v", err)
	}
	want := map[string]string{"t1@example.com": "111-22-3333", "t2@example.com": "", "c1@example.com": "444-55-6666",
		"b1@example.com": "777-88-9999", "b2@example.com": ""}
	rows, err := c.Query(ctx, "SELECT email, ssn FROM leads")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for rows.Next() {
		var email string
		var ssn *string
		if err := rows.Scan(&email, &ssn); err != nil {
			t.Fatal(err)
		}
		got[email] = ""
		if ssn != nil {
			got[email] = *ssn
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: ssn %q, want %q", k, got[k], v)
		}
	}
	var plain int
	if err := d.QueryRow(ctx, "SELECT count(*) FROM leads WHERE email NOT LIKE 'pgs1:%' OR ssn NOT LIKE 'pgs1:%'").Scan(&plain); err != nil || plain != 0 {
		t.Errorf("%d rows stored with plaintext (%v)", plain, err)
	}
}

// During a rotation a deterministic column is searched under every key:
// a lead written before ROTATE KEY is found after it, by parameter and by
// literal, also by a statement prepared before the rotation.
func TestEncryptionSearchDuringRotation(t *testing.T) {
	e, _, keys, _ := startEncProxy(t)
	ctx := ctxT(t)
	c := e.connect(t, "sess", "")
	if _, err := c.Exec(ctx, "INSERT INTO leads (email) VALUES ($1)", "old@example.com"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(ctx, "find", "SELECT count(*) FROM leads WHERE email = $1"); err != nil {
		t.Fatal(err)
	}
	rotated, err := keys.Rotate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e.srv.SetKeyring(rotated)
	if _, err := c.Exec(ctx, "INSERT INTO leads (email) VALUES ($1)", "new@example.com"); err != nil {
		t.Fatal(err)
	}
	for _, email := range []string{"old@example.com", "new@example.com"} {
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{"find", []any{email}},
			{"SELECT count(*) FROM leads WHERE email = $1", []any{email}},
			{"SELECT count(*) FROM leads WHERE email = '" + email + "'", []any{pgx.QueryExecModeSimpleProtocol}},
			{"SELECT count(*) FROM leads WHERE email IN ('" + email + "', 'x@example.com')", []any{pgx.QueryExecModeSimpleProtocol}},
			{"SELECT count(*) FROM leads WHERE email = ($1)", []any{email}},
			{"SELECT count(*) FROM leads WHERE ($1) = email", []any{email}},
			{"SELECT count(*) FROM leads WHERE email = ('" + email + "')", []any{pgx.QueryExecModeSimpleProtocol}},
			{"SELECT count(*) FROM leads WHERE ('" + email + "') = email", []any{pgx.QueryExecModeSimpleProtocol}},
		} {
			var n int
			if err := c.QueryRow(ctx, q.sql, q.args...).Scan(&n); err != nil || n != 1 {
				t.Errorf("%s (%s): %d, %v; want 1", q.sql, email, n, err)
			}
		}
	}
}

// Through psql: a lead written with literals and with \copy reads back as
// plaintext, is stored as ciphertext, and a search on ssn is refused.
func TestEncryptionPsql(t *testing.T) {
	e, d, _, _ := startEncProxy(t)
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql is not installed")
	}
	run := func(stdin string, args ...string) string {
		cmd := exec.Command(psql, append([]string{"-X", "-At", e.url("app", "")}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	if out := run("", "-c", "INSERT INTO leads (email, ssn, date_of_birth) VALUES ('psql@example.com', '123-45-6789', '1990-01-02')"); !strings.Contains(out, "INSERT 0 1") {
		t.Fatalf("psql insert: %s", out)
	}
	if out := run("copy@example.com\t222-33-4444\n", "-c", `\copy leads (email, ssn) FROM STDIN`); !strings.Contains(out, "COPY 1") {
		t.Fatalf("psql \\copy: %s", out)
	}
	out := run("", "-c", "SELECT email, ssn, date_of_birth FROM leads WHERE email IN ('psql@example.com', 'copy@example.com') ORDER BY id")
	if want := "psql@example.com|123-45-6789|1990-01-02\ncopy@example.com|222-33-4444|\n"; out != want {
		t.Errorf("psql read %q, want %q", out, want)
	}
	if out := run("", "-v", "VERBOSITY=verbose", "-c", "SELECT id FROM leads WHERE ssn = '123-45-6789'"); !strings.Contains(out, "0A000") {
		t.Errorf("a search on a randomized column through psql: %s", out)
	}
	var stored string
	if err := d.QueryRow(ctxT(t), "SELECT ssn FROM leads WHERE ssn IS NOT NULL LIMIT 1").Scan(&stored); err != nil || !strings.HasPrefix(stored, crypto.Prefix) {
		t.Errorf("stored ssn %.8q… (%v), want ciphertext", stored, err)
	}
}
