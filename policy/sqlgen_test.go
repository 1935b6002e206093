package policy

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// featuresPolicy exercises what the example policy does not: a named rule
// (one constraint), sql: false, services left out, the other types,
// quoting, a message holding the dollar quote, a transition with a final
// state listed.
const featuresPolicy = `
databases:
  app:
    tables:
      Odd "Table":
        columns:
          user: {type: uuid, required: true, name: odd_user_rule}
          Site URL: {type: url, min_length: 10}
          at: {type: timestamp, cel: "value > timestamp('2000-01-01T00:00:00Z')"}
          code: {pattern: '^[A-Z]{3}$', sql: false}
          kind: {enum: [a, b, "it's"], except_services: [jobs]}
          n: {type: number, cel: "value >= 0.5 && (value < 10 || value == 100.0) && !(value == 7.0)"}
          s: {cel: "value != 'x' && value < 'm'"}
          flag: {type: boolean, cel: "value == true"}
        rows:
          - {name: odd_row, cel: "row.n > 1 || row.s == 'a'"}
          - {name: odd_row_untranslated, cel: "row.s.size() > 1"}
          - {name: odd_row_jobs, cel: "row.n > 2", services: [jobs]}
        transitions:
          - name: odd_kind_flow
            column: kind
            allowed: {a: [b], b: []}
            message: "kind cannot go back $pgshield$ 'quoted'"
`

func TestSQLGolden(t *testing.T) {
	features, err := compileYAML(t, featuresPolicy)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		p    *Policy
		db   string
	}{
		{"testdata/sql_example.sql", examplePolicy(t), "app"},
		{"testdata/sql_features.sql", features, "app"},
		{"testdata/sql_none.sql", features, "other"},
	} {
		got := SQL(c.p, c.db)
		if rulesUpdating() {
			if err := os.WriteFile(c.path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("%s differs (go test ./policy -run TestSQLGolden -update rewrites it); got:\n%s", c.path, got)
		}
	}
}

// exampleSchema is the example application's schema.
const exampleSchema = `
CREATE TABLE leads (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  email text NOT NULL UNIQUE, phone text, first_name text, last_name text,
  ssn text, credit_card text, bank_account text, date_of_birth text,
  quality_score int, status text NOT NULL DEFAULT 'RECEIVED', source text, metadata jsonb,
  created_at timestamptz DEFAULT now(), updated_at timestamptz, created_by text, updated_by text,
  deleted_at timestamptz, version int NOT NULL DEFAULT 1);
CREATE TABLE agents (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL, email text NOT NULL, license_number text, is_active bool NOT NULL DEFAULT true,
  current_lead_count int NOT NULL DEFAULT 0, max_lead_capacity int NOT NULL DEFAULT 50,
  performance_score numeric(5,2),
  created_at timestamptz DEFAULT now(), updated_at timestamptz, created_by text, updated_by text,
  deleted_at timestamptz, version int NOT NULL DEFAULT 1);
CREATE TABLE carriers (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL, api_key text,
  created_at timestamptz DEFAULT now(), updated_at timestamptz, created_by text, updated_by text,
  deleted_at timestamptz, version int NOT NULL DEFAULT 1);
CREATE TABLE partnerships (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  carrier_id bigint REFERENCES carriers, agent_id bigint REFERENCES agents,
  contract_start date NOT NULL, contract_end date NOT NULL, commission_rate numeric(5,4) NOT NULL,
  created_at timestamptz DEFAULT now(), updated_at timestamptz, created_by text, updated_by text,
  deleted_at timestamptz, version int NOT NULL DEFAULT 1);
CREATE TABLE lead_assignments (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  lead_id bigint REFERENCES leads, agent_id bigint REFERENCES agents, assigned_at timestamptz DEFAULT now());
CREATE TABLE audit_log (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, table_name text, row_id bigint, action text,
  changed_by text, changed_at timestamptz DEFAULT now(), old_row jsonb, new_row jsonb);
CREATE TABLE "Odd ""Table""" (
  "user" text, "Site URL" text, at timestamptz, code text, kind text, n float8, s text, flag bool);
`

// TestPostgres runs what needs a real server: the generated SQL against
// the example schema, the SQL type checks against the Go ones, and
// DecodeBinary against the server's own text output.
func TestPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := pg.CreateDatabase(ctx, "app", "postgres"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, pg.ConnString("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, exampleSchema); err != nil {
		t.Fatal(err)
	}
	t.Run("migration", func(t *testing.T) { testMigration(ctx, t, conn) })
	t.Run("types", func(t *testing.T) { testSQLTypeChecks(ctx, t, conn) })
	t.Run("binary", func(t *testing.T) { testBinaryAgainstServer(ctx, t, conn) })
}

func pgError(err error) *pgconn.PgError {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe
	}
	return nil
}

func testMigration(ctx context.Context, t *testing.T, conn *pgx.Conn) {
	p := examplePolicy(t)
	script := SQL(p, "app")
	features, err := compileYAML(t, featuresPolicy)
	if err != nil {
		t.Fatal(err)
	}
	// Twice: the second run replaces what the first created.
	for range 2 {
		if _, err := conn.Exec(ctx, script); err != nil {
			t.Fatalf("the script: %v", err)
		}
	}
	count := func(sql string) int {
		var n int
		if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	const marked = `SELECT count(*) FROM pg_description WHERE description = 'pgshield policy'`
	// Constraints: every kind of every rule in SQL, and the two row rules;
	// a trigger and its function.
	if got, want := count(marked), strings.Count(script, "ADD CONSTRAINT")+2; got != want {
		t.Errorf("%d objects marked, want %d", got, want)
	}

	exec := func(sql string, args ...any) error {
		_, err := conn.Exec(ctx, sql, args...)
		return err
	}
	// refused runs sql and wants the error a client of pgshield would
	// get for the same row: 23514 naming the same constraint.
	refused := func(what, sql, constraint string, args ...any) *pgconn.PgError {
		t.Helper()
		pe := pgError(exec(sql, args...))
		if pe == nil || pe.Code != "23514" || pe.ConstraintName != constraint {
			t.Errorf("%s: %v, want 23514 on %s", what, pe, constraint)
		}
		return pe
	}
	mustExec := func(sql string, args ...any) {
		t.Helper()
		if err := exec(sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	refused("a bad email", `INSERT INTO leads (email) VALUES ('not-an-email')`, "leads_email_type")
	refused("a long phone", `INSERT INTO leads (email, phone) VALUES ('a@b.co', '+1234567890123456')`, "leads_phone_type")
	refused("quality 101", `INSERT INTO leads (email, quality_score) VALUES ('a@b.co', 101)`, "leads_quality_score_range")
	refused("a bad status", `INSERT INTO leads (email, status) VALUES ('a@b.co', 'LOST')`, "leads_status_enum")
	refused("a long first name", `INSERT INTO leads (email, first_name) VALUES ('a@b.co', repeat('x', 101))`, "leads_first_name_length")
	mustExec(`INSERT INTO leads (email, phone, quality_score, source) VALUES ('ada@example.com', '+14155550123', 87, 'Not A Word')`)

	// Transitions: the trigger refuses as Transition does, with the same
	// message, hint and fields.
	pe := refused("RECEIVED → CONVERTED", `UPDATE leads SET status = 'CONVERTED' WHERE email = 'ada@example.com'`, "leads_status_transition")
	goV := p.Transition("app", "api", "leads", "status", []byte("RECEIVED"), []byte("CONVERTED"))
	if pe != nil && (pe.Message != goV.Message || pe.Hint != goV.Hint || pe.TableName != "leads" || pe.ColumnName != "status") {
		t.Errorf("trigger: %q %q %s.%s; Transition: %q %q", pe.Message, pe.Hint, pe.TableName, pe.ColumnName, goV.Message, goV.Hint)
	}
	mustExec(`UPDATE leads SET status = 'PROCESSING' WHERE email = 'ada@example.com'`)
	mustExec(`UPDATE leads SET status = 'PROCESSING', quality_score = 90 WHERE email = 'ada@example.com'`)
	for _, s := range []string{"QUALIFIED", "ROUTED", "CONVERTED"} {
		mustExec(`UPDATE leads SET status = $1 WHERE email = 'ada@example.com'`, s)
	}
	refused("CONVERTED is final", `UPDATE leads SET status = 'REJECTED' WHERE email = 'ada@example.com'`, "leads_status_transition")

	// Row rules.
	refused("over capacity", `INSERT INTO agents (name, email, current_lead_count, max_lead_capacity) VALUES ('Grace', 'g@example.com', 51, 50)`, "agents_capacity")
	refused("over the default capacity", `INSERT INTO agents (name, email, current_lead_count) VALUES ('Grace', 'g@example.com', 51)`, "agents_capacity")
	mustExec(`INSERT INTO agents (name, email, current_lead_count) VALUES ('Grace', 'g@example.com', 50)`)
	refused("one lead too many", `UPDATE agents SET current_lead_count = current_lead_count + 1`, "agents_capacity")
	refused("capacity 1001", `UPDATE agents SET max_lead_capacity = 1001`, "agents_max_lead_capacity_cel")
	refused("a bad agent email", `UPDATE agents SET email = 'nobody'`, "agents_email_type")
	refused("score 100.01", `UPDATE agents SET performance_score = 100.01`, "agents_performance_score_range")
	mustExec(`INSERT INTO carriers (name) VALUES ('Acme')`)
	refused("contract_end before contract_start",
		`INSERT INTO partnerships (carrier_id, contract_start, contract_end, commission_rate) VALUES (1, '2025-01-01', '2024-12-31', 0.1)`,
		"partnerships_contract_dates")
	refused("commission_rate 1.5",
		`INSERT INTO partnerships (carrier_id, contract_start, contract_end, commission_rate) VALUES (1, '2024-01-01', '2025-01-01', 1.5)`,
		"partnerships_commission_rate_range")
	mustExec(`INSERT INTO partnerships (carrier_id, contract_start, contract_end, commission_rate) VALUES (1, '2024-01-01', '2025-01-01', 0.1)`)
	// A date's text form depends on DateStyle; the checks do not.
	mustExec(`SET DateStyle = 'SQL, DMY'`)
	mustExec(`INSERT INTO partnerships (carrier_id, contract_start, contract_end, commission_rate) VALUES (1, '2024-01-01', '2025-01-01', 0.2)`)
	refused("dates under DateStyle SQL",
		`INSERT INTO partnerships (carrier_id, contract_start, contract_end, commission_rate) VALUES (1, '2024-03-01', '2024-02-01', 0.2)`,
		"partnerships_contract_dates")
	mustExec(`RESET DateStyle`)

	// What the proxy decides for the same rows, for the ones it can
	// judge alone.
	for _, c := range []struct {
		table      string
		kind       WriteKind
		cols       []string
		vals       []string
		constraint string
	}{
		{"leads", WriteInsert, []string{"email"}, []string{"not-an-email"}, "leads_email_type"},
		{"agents", WriteInsert, []string{"name", "email", "current_lead_count", "max_lead_capacity"}, []string{"Grace", "g@example.com", "51", "50"}, "agents_capacity"},
		{"partnerships", WriteInsert, []string{"contract_start", "contract_end", "commission_rate"}, []string{"2025-01-01", "2024-12-31", "0.1"}, "partnerships_contract_dates"},
		{"partnerships", WriteInsert, []string{"contract_start", "contract_end", "commission_rate"}, []string{"2024-01-01", "2025-01-01", "1.5"}, "partnerships_commission_rate_range"},
	} {
		vals := make([]Value, len(c.vals))
		for i, v := range c.vals {
			vals[i] = Value{Kind: ValueText, Text: []byte(v)}
		}
		if v := p.CheckRow("app", "api", c.table, c.kind, c.cols, vals); v == nil || v.Constraint != c.constraint {
			t.Errorf("proxy on %s %v: %v, want %s", c.table, c.vals, v, c.constraint)
		}
	}

	// The features policy's script is valid SQL too, and replaces the
	// example's objects wholly (the cleanup finds them by their mark).
	if err := exec(SQL(features, "app")); err != nil {
		t.Fatalf("the features script: %v", err)
	}
	if n := count(`SELECT count(*) FROM pg_constraint c JOIN pg_description d ON d.objoid = c.oid
			WHERE c.conrelid IN ('leads'::regclass, 'agents'::regclass, 'partnerships'::regclass)`); n != 0 {
		t.Errorf("%d constraints of the example policy left", n)
	}
	if n := count(`SELECT count(*) FROM pg_trigger WHERE tgname = 'leads_status_transition'`); n != 0 {
		t.Error("the example's trigger left")
	}
	mustExec(`INSERT INTO "Odd ""Table""" ("user", "Site URL", at, n, s, kind, flag) VALUES ('123e4567-e89b-12d3-a456-426614174000', 'https://example.com', now(), 2, 'a', 'a', true)`)
	refused("a named rule", `INSERT INTO "Odd ""Table""" ("user") VALUES ('nope')`, "odd_user_rule")
	refused("a named rule's required", `INSERT INTO "Odd ""Table""" (s) VALUES ('a')`, "odd_user_rule")
	refused("a short URL", `INSERT INTO "Odd ""Table""" ("user", "Site URL") VALUES ('123e4567-e89b-12d3-a456-426614174000', 'http://a')`, `Odd "Table"_Site URL_length`)
	// A CEL rule beyond comparisons is the proxy's alone.
	mustExec(`INSERT INTO "Odd ""Table""" ("user", at) VALUES ('123e4567-e89b-12d3-a456-426614174000', '1999-01-01')`)
	refused("n is 7", `INSERT INTO "Odd ""Table""" ("user", n) VALUES ('123e4567-e89b-12d3-a456-426614174000', 7)`, `Odd "Table"_n_cel`)
	refused("n and s", `INSERT INTO "Odd ""Table""" ("user", n, s) VALUES ('123e4567-e89b-12d3-a456-426614174000', 1, 'b')`, "odd_row")
	refused("s >= m", `INSERT INTO "Odd ""Table""" ("user", s) VALUES ('123e4567-e89b-12d3-a456-426614174000', 'z')`, `Odd "Table"_s_cel`)
	refused("flag false", `INSERT INTO "Odd ""Table""" ("user", flag) VALUES ('123e4567-e89b-12d3-a456-426614174000', false)`, `Odd "Table"_flag_cel`)
	mustExec(`UPDATE "Odd ""Table""" SET kind = 'b'`)
	refused("b is final", `UPDATE "Odd ""Table""" SET kind = 'it''s'`, "odd_kind_flow")
	pe = refused("b → a", `UPDATE "Odd ""Table""" SET kind = 'a'`, "odd_kind_flow")
	want := features.Transition("app", "api", `Odd "Table"`, "kind", []byte("b"), []byte("a"))
	if pe != nil && pe.Message != want.Message {
		t.Errorf("trigger message %q, want %q", pe.Message, want.Message)
	}
}

// testSQLTypeChecks holds the SQL type checks to the Go ones over the
// type corpus: the proxy and the database accept the same texts.
func testSQLTypeChecks(ctx context.Context, t *testing.T, conn *pgx.Conn) {
	g := &sqlGen{}
	var helpers strings.Builder
	for _, h := range sqlHelperOrder() {
		helpers.WriteString(sqlHelper(h))
	}
	if _, err := conn.Exec(ctx, helpers.String()); err != nil {
		t.Fatal(err)
	}
	for typ, texts := range typeCorpus() {
		check := g.typeCheck(typ, "$1::text")
		for _, s := range texts {
			var got *bool
			if err := conn.QueryRow(ctx, "SELECT "+check, s).Scan(&got); err != nil {
				t.Errorf("%s %q: %v", typ, s, err)
				continue
			}
			if want := typ.valid([]byte(s)); got == nil || *got != want {
				t.Errorf("%s %q: SQL %v, Go %v", typ, s, got, want)
			}
		}
	}
	// Columns of the type itself pass whatever DateStyle prints.
	if _, err := conn.Exec(ctx, `SET DateStyle = 'German'`); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, `RESET DateStyle`)
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pgshield_is_date('2024-01-02'::date) AND pgshield_is_timestamp(now()) AND pgshield_is_timestamp(localtimestamp)`).Scan(&ok); err != nil || !ok {
		t.Errorf("typed columns: %v %v", ok, err)
	}
}

// testBinaryAgainstServer sends each binary case to the server as a
// binary parameter and compares the text form the server sends back for
// it (its output function) with DecodeBinary's.
func testBinaryAgainstServer(ctx context.Context, t *testing.T, conn *pgx.Conn) {
	if _, err := conn.Exec(ctx, `SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 1`); err != nil {
		t.Fatal(err)
	}
	m := pgtype.NewMap()
	for _, c := range binaryCases(t) {
		data := encodeBinary(t, m, c)
		rr := conn.PgConn().ExecParams(ctx, "SELECT $1", [][]byte{data}, []uint32{c.oid}, []int16{pgtype.BinaryFormatCode}, []int16{pgtype.TextFormatCode})
		res := rr.Read()
		if res.Err != nil {
			t.Errorf("%d %v: %v", c.oid, c.value, res.Err)
			continue
		}
		server := string(res.Rows[0][0])
		got, err := DecodeBinary(c.oid, data, nil)
		if err != nil || string(got) != server {
			t.Errorf("%d %v: DecodeBinary %q %v, server %q", c.oid, c.value, got, err, server)
		}
	}
}
