package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/internal/example"
	"github.com/pgshield/pgshield/policy"
)

// policyOnce creates the example application's database (schema and the
// policy's generated SQL) once for the package's policy tests.
var policyOnce struct {
	sync.Once
	err error
}

const policyDB = "policyapp"

// examplePolicy is the example application's policy.
func examplePolicy(t *testing.T) *policy.Policy {
	t.Helper()
	p, err := config.ParsePolicy([]byte(example.Policy()))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startPolicyProxy is a proxy whose database app is the example
// application, with its policy in force.
func startPolicyProxy(t *testing.T) (*env, *pgx.Conn) {
	t.Helper()
	p := examplePolicy(t)
	policyOnce.Do(func() {
		ctx := context.Background()
		if policyOnce.err = pg.CreateDatabase(ctx, policyDB, "postgres"); policyOnce.err != nil {
			return
		}
		if policyOnce.err = pg.Exec(ctx, policyDB, example.Schema()); policyOnce.err != nil {
			return
		}
		policyOnce.err = pg.Exec(ctx, policyDB, policy.SQL(p, "app")+"; GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC")
	})
	if policyOnce.err != nil {
		t.Fatal(policyOnce.err)
	}
	e := startProxy(t, func(_ *proxyConfig, m *poolConfig) {
		db := m.Databases["app"]
		db.DBName = policyDB
		m.Databases["app"] = db
	})
	e.srv.SetPolicy(p, e.m)
	d, err := pgx.Connect(ctxT(t), pg.ConnString(policyDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close(context.Background()) })
	if _, err := d.Exec(ctxT(t), "TRUNCATE leads, agents, carriers, partnerships, lead_assignments, audit_log CASCADE"); err != nil {
		t.Fatal(err)
	}
	return e, d
}

// wantRefusal checks err is the policy's refusal code on table.column.
func wantRefusal(t *testing.T, what string, err error, code, table, column string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Errorf("%s: %v, want %s on %s.%s", what, err, code, table, column)
		return
	}
	if pe.Code != code || pe.TableName != table || pe.ColumnName != column || pe.ConstraintName == "" ||
		!strings.Contains(pe.Message, table) || !strings.Contains(pe.Message, column) {
		t.Errorf("%s: %s %q (table %q column %q constraint %q), want %s naming %s.%s", what, pe.Code, pe.Message,
			pe.TableName, pe.ColumnName, pe.ConstraintName, code, table, column)
	}
}

func countLeads(t *testing.T, d *pgx.Conn) int {
	t.Helper()
	var n int
	if err := d.QueryRow(ctxT(t), "SELECT count(*) FROM leads").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A bad email is refused with 23514 naming leads.email, in the simple
// protocol, with a text and a binary parameter, inside a transaction
// (which is then aborted as PostgreSQL aborts one), in a pipeline, and
// for psql; a valid row is stored; the refused value is in no message.
func TestPolicyRefusesBadWrites(t *testing.T) {
	e, d := startPolicyProxy(t)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")

	_, err := c.Exec(ctx, "INSERT INTO leads (email) VALUES ('not-an-email')", pgx.QueryExecModeSimpleProtocol)
	wantRefusal(t, "simple protocol", err, "23514", "leads", "email")
	if err != nil && strings.Contains(err.Error(), "not-an-email") {
		t.Errorf("the refused value is in the error: %v", err)
	}
	if _, err := c.Exec(ctx, "INSERT INTO leads (email, phone, quality_score, status) VALUES ('a@example.com', '+15551234567', 50, 'RECEIVED')",
		pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("a valid row: %v", err)
	}
	_, err = c.Exec(ctx, "INSERT INTO leads (email) VALUES ($1)", "still-not-an-email") // text format
	wantRefusal(t, "text parameter", err, "23514", "leads", "email")
	_, err = c.Exec(ctx, "INSERT INTO leads (email, quality_score) VALUES ($1, $2)", "b@example.com", 150) // int4 in binary
	wantRefusal(t, "binary parameter", err, "23514", "leads", "quality_score")
	_, err = c.Exec(ctx, "INSERT INTO leads (phone) VALUES ($1)", "+15551234567")
	wantRefusal(t, "missing required value", err, "23502", "leads", "email")

	// Inside a transaction.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, "INSERT INTO leads (email) VALUES ($1)", "nope")
	wantRefusal(t, "in a transaction", err, "23514", "leads", "email")
	if _, err := tx.Exec(ctx, "SELECT 1"); pgCode(err) != "25P02" {
		t.Errorf("after the refusal in a transaction: %v, want 25P02", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatalf("ROLLBACK after the refusal: %v", err)
	}
	tx, err = c.Begin(ctx)
	if err == nil {
		_, err = tx.Exec(ctx, "INSERT INTO leads (email) VALUES ($1)", "c@example.com")
	}
	if err == nil {
		err = tx.Commit(ctx)
	}
	if err != nil {
		t.Fatalf("the next transaction: %v", err)
	}

	// A pipeline: the refused statement and what follows it up to Sync
	// are not run, and the implicit transaction is rolled back.
	before := countLeads(t, d)
	b := &pgx.Batch{}
	b.Queue("INSERT INTO leads (email) VALUES ($1)", "d@example.com")
	b.Queue("INSERT INTO leads (email) VALUES ($1)", "bad")
	b.Queue("INSERT INTO leads (email) VALUES ($1)", "e@example.com")
	err = c.SendBatch(ctx, b).Close()
	wantRefusal(t, "pipeline", err, "23514", "leads", "email")
	if n := countLeads(t, d); n != before {
		t.Errorf("the pipeline stored %d rows, want none", n-before)
	}

	// psql.
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql is not installed")
	}
	out, _ := exec.Command(psql, "-X", "-v", "VERBOSITY=verbose", e.url("app", ""), "-c",
		"INSERT INTO leads (email) VALUES ('not-an-email')").CombinedOutput()
	if !strings.Contains(string(out), "23514") || !strings.Contains(string(out), "leads") || !strings.Contains(string(out), "email") {
		t.Errorf("psql: %s", out)
	}
	if e.m == nil {
		t.Fatal("no metrics")
	}
	if n := e.m.PolicyRejections.WithLabelValues("api", "app", "type"); n == nil {
		t.Error("no pgshield_policy_rejections_total series")
	}
}

// A COPY of 1,000 rows with one bad row is refused, naming the row (and
// the line for text formats), and stores nothing: CSV from psql's \copy
// and binary from pgx's CopyFrom.
func TestPolicyCopy(t *testing.T) {
	e, d := startPolicyProxy(t)
	ctx := ctxT(t)
	var csv strings.Builder
	rows := make([][]any, 0, 1000)
	for i := 1; i <= 1000; i++ {
		email := fmt.Sprintf("copy%d@example.com", i)
		score := 10
		if i == 617 {
			email, score = "copy-bad", 200
		}
		fmt.Fprintf(&csv, "%s,%d\n", email, score)
		rows = append(rows, []any{email, int32(score)})
	}
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql is not installed")
	}
	cmd := exec.Command(psql, "-X", "-v", "ON_ERROR_STOP=1", e.url("app", ""), "-c", `\copy leads (email, quality_score) FROM STDIN WITH (FORMAT csv)`)
	cmd.Stdin = strings.NewReader(csv.String())
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "row 617") || !strings.Contains(string(out), "line 617") {
		t.Errorf("psql \\copy: %v\n%s\nwant a refusal naming row and line 617", err, out)
	}
	if n := countLeads(t, d); n != 0 {
		t.Errorf("\\copy stored %d rows, want none", n)
	}
	c := e.connect(t, "app", "")
	_, err = c.CopyFrom(ctx, pgx.Identifier{"leads"}, []string{"email", "quality_score"}, pgx.CopyFromRows(rows))
	wantRefusal(t, "pgx CopyFrom (binary)", err, "23514", "leads", "email")
	if err != nil && !strings.Contains(err.Error(), "row 617") {
		t.Errorf("pgx CopyFrom: %v, want the row named", err)
	}
	if n := countLeads(t, d); n != 0 {
		t.Errorf("CopyFrom stored %d rows, want none", n)
	}
	rows[616] = []any{"copy617@example.com", int32(10)}
	if n, err := c.CopyFrom(ctx, pgx.Identifier{"leads"}, []string{"email", "quality_score"}, pgx.CopyFromRows(rows)); err != nil || n != 1000 {
		t.Errorf("a valid COPY: %d rows, %v", n, err)
	}
}

// Stateful rules: a status transition is refused by the generated
// trigger; an agent over capacity and a partnership ending before it
// starts are refused inline.
func TestPolicyStatefulRules(t *testing.T) {
	e, _ := startPolicyProxy(t)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	var id int64
	if err := c.QueryRow(ctx, "INSERT INTO leads (email) VALUES ($1) RETURNING id", "t@example.com").Scan(&id); err != nil {
		t.Fatal(err)
	}
	_, err := c.Exec(ctx, "UPDATE leads SET status = 'CONVERTED' WHERE id = $1", id)
	wantRefusal(t, "RECEIVED → CONVERTED", err, "23514", "leads", "status")
	if _, err := c.Exec(ctx, "UPDATE leads SET status = 'PROCESSING' WHERE id = $1", id); err != nil {
		t.Errorf("RECEIVED → PROCESSING: %v", err)
	}
	_, err = c.Exec(ctx, "INSERT INTO agents (name, email, current_lead_count, max_lead_capacity) VALUES ($1, $2, $3, $4)",
		"Ann", "ann@example.com", 60, 50)
	if pgCode(err) != "23514" {
		t.Errorf("an agent over capacity: %v, want 23514", err)
	}
	_, err = c.Exec(ctx, "INSERT INTO partnerships (contract_start, contract_end, commission_rate) VALUES ($1, $2, $3)",
		"2026-06-01", "2026-01-01", "0.1")
	if pgCode(err) != "23514" {
		t.Errorf("a partnership ending before it starts: %v, want 23514", err)
	}
	// A statement on no governed table is not touched.
	if _, err := c.Exec(ctx, "INSERT INTO audit_log (table_name, action) VALUES ('x', 'y')", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Errorf("an ungoverned table: %v", err)
	}
}

// The example firewall: the api service gets 42501 for a DELETE without
// WHERE and for DROP TABLE; another service does not.
func TestPolicyFirewall(t *testing.T) {
	e, _ := startPolicyProxy(t)
	ctx := ctxT(t)
	api := e.connect(t, "app", "")
	for _, sql := range []string{"DELETE FROM leads", "DROP TABLE audit_log", "SELECT pg_read_file('/etc/hostname')"} {
		if _, err := api.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); pgCode(err) != "42501" {
			t.Errorf("api: %s: %v, want 42501", sql, err)
		}
	}
	if _, err := api.Exec(ctx, "DELETE FROM leads WHERE id = -1", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Errorf("api: a DELETE with WHERE: %v", err)
	}
	other := e.connect(t, "tiny", "") // analytics: no firewall rules
	if _, err := other.Exec(ctx, "DELETE FROM lead_assignments", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Errorf("analytics: a DELETE without WHERE: %v", err)
	}
}

// Simple-mode texts of one shape share one plan, each judged by its own
// literals: a refused value after an accepted one of the same shape (and
// the other way round), doubled quotes, negative numbers, and literals of
// another class (E'…', 0050, -0) that the shared plan must not read.
func TestPolicySharedPlans(t *testing.T) {
	e, d := startPolicyProxy(t)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	insert := func(email, score, phone string) string {
		return "INSERT INTO leads (email, quality_score, phone) VALUES (" + email + ", " + score + ", " + phone + ")"
	}
	cases := []struct {
		sql    string
		column string // refused on it; "" accepted
	}{
		{insert("'a1@example.com'", "50", "'+14155550001'"), ""},
		{insert("'not-an-email'", "50", "'+14155550002'"), "email"},
		{insert("'a3@example.com'", "150", "'+14155550003'"), "quality_score"},
		{insert("'a4@example.com'", "100", "'x'"), "phone"},
		{insert("'o''brien@example.com'", "7", "'+14155550005'"), ""},
		{insert("'a6@example.com'", "-5", "'+14155550006'"), "quality_score"},
		{insert("'a7@example.com'", "- 0", "'+14155550007'"), ""},
		{insert("E'a8@example.com'", "50", "'+14155550008'"), ""},
		{insert("'a9@example.com'", "0050", "'+14155550009'"), ""},
		{insert("'x@'", "1", "'+14155550010'"), "email"},
		{insert("'a11@example.com'", "101", "'+14155550011'"), "quality_score"},
		{insert("'a12@example.com'", "-1", "'+14155550012'"), "quality_score"},
		{insert("'b1@example.com'", "1", "'+14155550013'") + "; " + insert("'bad'", "1", "'+14155550014'"), "email"},
	}
	for _, tc := range cases {
		_, err := c.Exec(ctx, tc.sql, pgx.QueryExecModeSimpleProtocol)
		if tc.column == "" {
			if err != nil {
				t.Errorf("%s: %v, want it accepted", tc.sql, err)
			}
			continue
		}
		wantRefusal(t, tc.sql, err, "23514", "leads", tc.column)
	}
	if n := countLeads(t, d); n != 5 {
		t.Errorf("%d leads stored, want 5", n)
	}
}
