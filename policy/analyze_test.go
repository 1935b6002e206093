package policy

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// -update rewrites the expected outputs of the golden files. Another test
// file of the package may define the flag too; the first one wins.
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite the golden files of the policy tests")
	}
}

func updating() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// goldenCase is one case of a golden file:
//
//	=== name
//	input lines
//	---
//	expected output lines
type goldenCase struct {
	name, input, want string
}

func readGolden(t *testing.T, path string) []goldenCase {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cases []goldenCase
	var cur *goldenCase
	inWant := false
	var in, want []string
	flush := func() {
		if cur != nil {
			cur.input = strings.Join(in, "\n")
			cur.want = strings.TrimRight(strings.Join(want, "\n"), "\n")
			cases = append(cases, *cur)
		}
	}
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "=== "):
			flush()
			cur = &goldenCase{name: strings.TrimPrefix(line, "=== ")}
			in, want, inWant = nil, nil, false
		case cur == nil:
			// the file's preamble
		case !inWant && line == "---":
			inWant = true
		case inWant:
			want = append(want, line)
		default:
			in = append(in, line)
		}
	}
	flush()
	if len(cases) == 0 {
		t.Fatalf("%s: no cases", path)
	}
	return cases
}

// checkGolden compares got (one output per case) with the file, or
// rewrites the file's outputs under -update.
func checkGolden(t *testing.T, path string, cases []goldenCase, got []string) {
	t.Helper()
	if updating() {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		preamble, _, _ := strings.Cut(string(data), "\n=== ")
		if strings.HasPrefix(string(data), "=== ") {
			preamble = ""
		}
		var b strings.Builder
		if preamble != "" {
			b.WriteString(strings.TrimRight(preamble, "\n") + "\n\n")
		}
		for i, c := range cases {
			fmt.Fprintf(&b, "=== %s\n%s\n---\n%s\n\n", c.name, c.input, got[i])
		}
		if err := os.WriteFile(path, []byte(strings.TrimRight(b.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	for i, c := range cases {
		if got[i] != c.want {
			t.Errorf("%s: case %q:\n%s\n--- got:\n%s\n--- want:\n%s", filepath.Base(path), c.name, c.input, got[i], c.want)
		}
	}
}

// fakeCatalog has the tables of the example application.
type fakeCatalog map[string][]Column

func (c fakeCatalog) Columns(schema, table string) ([]Column, bool) {
	if schema != "" && schema != "public" {
		cols, ok := c[schema+"."+table]
		return cols, ok
	}
	cols, ok := c[table]
	return cols, ok
}

func exampleCatalog() fakeCatalog {
	audit := []Column{{"created_at", oidTimestamptz}, {"updated_at", oidTimestamptz}, {"created_by", oidText},
		{"updated_by", oidText}, {"deleted_at", oidTimestamptz}, {"version", oidInt4}}
	with := func(cols ...Column) []Column { return append(cols, audit...) }
	return fakeCatalog{
		"leads": with(Column{"id", oidInt8}, Column{"email", oidText}, Column{"phone", oidText},
			Column{"first_name", oidText}, Column{"last_name", oidText}, Column{"ssn", oidText},
			Column{"credit_card", oidText}, Column{"bank_account", oidText}, Column{"date_of_birth", oidDate},
			Column{"quality_score", oidInt4}, Column{"status", oidText}, Column{"source", oidText},
			Column{"metadata", oidJSONB}),
		"agents": with(Column{"id", oidInt8}, Column{"name", oidText}, Column{"email", oidText},
			Column{"license_number", oidText}, Column{"is_active", oidBool}, Column{"current_lead_count", oidInt4},
			Column{"max_lead_capacity", oidInt4}, Column{"performance_score", oidNumeric}),
		"carriers": with(Column{"id", oidInt8}, Column{"name", oidText}, Column{"code", oidText},
			Column{"is_active", oidBool}),
		"partnerships": with(Column{"id", oidInt8}, Column{"carrier_id", oidInt8}, Column{"agent_id", oidInt8},
			Column{"contract_start", oidDate}, Column{"contract_end", oidDate}, Column{"commission_rate", oidNumeric}),
		"lead_assignments": with(Column{"id", oidInt8}, Column{"lead_id", oidInt8}, Column{"agent_id", oidInt8},
			Column{"assigned_at", oidTimestamptz}, Column{"status", oidText}),
		"audit_log": {{"id", oidInt8}, {"table_name", oidText}, {"record_id", oidInt8}, {"action", oidText},
			{"old_data", oidJSONB}, {"new_data", oidJSONB}, {"changed_by", oidText}, {"changed_at", oidTimestamptz}},
		"crm.contacts": {{"id", oidInt8}, {"email", oidText}},
	}
}

// renderSource writes a value: "text" for a literal, $n, NULL, DEFAULT,
// ? for unknown; ::oid for a cast.
func renderSource(s Source) string {
	var r string
	switch s.Kind {
	case SourceLiteral:
		r = strconv.Quote(string(s.Literal))
	case SourceParam:
		r = "$" + strconv.Itoa(s.Param)
	case SourceNull:
		r = "NULL"
	case SourceDefault:
		r = "DEFAULT"
	case SourceUnknown:
		r = "?"
	default:
		r = fmt.Sprintf("<kind %d>", s.Kind)
	}
	if s.TypeOID != 0 {
		r += "::" + strconv.FormatUint(uint64(s.TypeOID), 10)
	}
	return r
}

func renderStatements(stmts []Statement) string {
	var b strings.Builder
	for i, st := range stmts {
		fmt.Fprintf(&b, "stmt %d: %s\n", i+1, st.Kind)
		if len(st.Functions) > 0 {
			fmt.Fprintf(&b, "  functions: %s\n", strings.Join(st.Functions, " "))
		}
		var flags []string
		if st.DeleteWithoutWhere {
			flags = append(flags, "delete-without-where")
		}
		if st.UpdateWithoutWhere {
			flags = append(flags, "update-without-where")
		}
		if st.CopyProgram {
			flags = append(flags, "copy-program")
		}
		if len(flags) > 0 {
			fmt.Fprintf(&b, "  flags: %s\n", strings.Join(flags, " "))
		}
		if st.CopyFormat != "" {
			o := st.CopyOptions
			fmt.Fprintf(&b, "  copy: %s delimiter=%q quote=%q escape=%q null=%q header=%v", st.CopyFormat,
				string(o.Delimiter), string(o.Quote), string(o.Escape), o.Null, o.Header)
			if o.HasDefault {
				fmt.Fprintf(&b, " default=%q", o.Default)
			}
			if o.ForceNull != nil {
				fmt.Fprintf(&b, " force_null=%v", o.ForceNull)
			}
			if o.ForceNotNull != nil {
				fmt.Fprintf(&b, " force_not_null=%v", o.ForceNotNull)
			}
			b.WriteString("\n")
		}
		for _, w := range st.Writes {
			kind := map[WriteKind]string{WriteInsert: "insert", WriteUpdate: "update", WriteUpsert: "upsert", WriteCopy: "copy"}[w.Kind]
			table := w.Table
			if w.Schema != "" {
				table = w.Schema + "." + w.Table
			}
			fmt.Fprintf(&b, "  write %s %s", kind, table)
			if w.FromQuery {
				b.WriteString(" from-query")
			}
			if w.Where {
				b.WriteString(" where")
			}
			b.WriteString("\n")
			if w.Columns != nil {
				cols := make([]string, len(w.Columns))
				for i, c := range w.Columns {
					cols[i] = fmt.Sprintf("%s:%d", c, w.ColumnTypes[i])
				}
				fmt.Fprintf(&b, "    columns: %s\n", strings.Join(cols, " "))
			}
			for _, row := range w.Rows {
				vals := make([]string, len(row))
				for i, s := range row {
					vals[i] = renderSource(s)
				}
				fmt.Fprintf(&b, "    row: (%s)\n", strings.Join(vals, ", "))
			}
			for _, a := range w.Set {
				fmt.Fprintf(&b, "    set %s:%d = %s\n", a.Column, a.TypeOID, renderSource(a.Value))
			}
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func analyzeText(sql string, cat Catalog) string {
	tree, err := pg.Parse(sql)
	if err != nil {
		return "parse error: " + err.Error()
	}
	stmts, err := Analyze(tree, cat)
	if err != nil {
		return "error: " + err.Error()
	}
	if len(stmts) == 0 {
		return "no statements"
	}
	return renderStatements(stmts)
}

func TestAnalyzeGolden(t *testing.T) {
	path := filepath.Join("testdata", "analyze_statements.txt")
	cases := readGolden(t, path)
	cat := exampleCatalog()
	got := make([]string, len(cases))
	for i, c := range cases {
		got[i] = analyzeText(c.input, cat)
	}
	checkGolden(t, path, cases, got)
}

// Every kind Analyze gives for the golden file's statements is listed by
// Kinds, which the firewall validates its deny lists with.
func TestAnalyzeKindsListed(t *testing.T) {
	kinds := Kinds()
	if !slices.IsSorted(kinds) {
		t.Fatal("Kinds is not sorted")
	}
	extra := []string{
		"CREATE VIEW v AS SELECT 1", "CREATE SEQUENCE s", "ALTER SEQUENCE s RESTART", "DROP SEQUENCE s",
		"CREATE SCHEMA s", "DROP SCHEMA s", "CREATE EXTENSION pgcrypto", "DROP EXTENSION pgcrypto",
		"ALTER SYSTEM SET work_mem = '1MB'", "CREATE DATABASE d", "DROP DATABASE d", "ALTER DATABASE d SET x = 1",
		"CREATE MATERIALIZED VIEW m AS SELECT 1", "REFRESH MATERIALIZED VIEW m", "DROP MATERIALIZED VIEW m",
		"CREATE TYPE t AS (a int)", "CREATE TYPE e AS ENUM ('a')", "ALTER TYPE e ADD VALUE 'b'", "DROP TYPE e",
		"CREATE DOMAIN d AS int", "ALTER DOMAIN d SET NOT NULL", "CREATE TRIGGER t BEFORE INSERT ON leads FOR EACH ROW EXECUTE FUNCTION f()",
		"DROP TRIGGER t ON leads", "CREATE POLICY p ON leads USING (true)", "ALTER POLICY p ON leads USING (false)",
		"COMMENT ON TABLE leads IS 'x'", "SECURITY LABEL ON TABLE leads IS 'x'", "CLUSTER leads", "REINDEX TABLE leads",
		"CHECKPOINT", "LISTEN c", "UNLISTEN *", "NOTIFY c", "LOAD 'x'", "DISCARD ALL", "DISCARD TEMP",
		"DEALLOCATE ALL", "DEALLOCATE p", "FETCH 1 FROM c", "MOVE 1 IN c", "CLOSE c", "CLOSE ALL",
		"DECLARE c CURSOR FOR SELECT 1", "SAVEPOINT s", "RELEASE s", "ROLLBACK TO s", "PREPARE TRANSACTION 'x'",
		"COMMIT PREPARED 'x'", "ROLLBACK PREPARED 'x'", "START TRANSACTION", "RESET ALL", "SET CONSTRAINTS ALL DEFERRED",
		"ANALYZE leads", "ALTER FUNCTION f() STABLE", "ALTER PROCEDURE p() SECURITY DEFINER", "DROP FUNCTION f()",
		"CREATE PROCEDURE p() LANGUAGE sql AS 'select 1'", "ALTER TABLE leads OWNER TO x", "ALTER TABLE leads SET SCHEMA s",
		"ALTER VIEW v RENAME TO w", "ALTER INDEX i RENAME TO j", "ALTER TABLE leads RENAME CONSTRAINT c TO d",
		"DROP OWNED BY x", "REASSIGN OWNED BY x TO y", "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO x",
		"CREATE SERVER s FOREIGN DATA WRAPPER w", "CREATE FOREIGN TABLE f (a int) SERVER s", "IMPORT FOREIGN SCHEMA a FROM SERVER s INTO b",
		"CREATE USER MAPPING FOR x SERVER s", "DROP USER MAPPING FOR x SERVER s", "CREATE PUBLICATION p FOR ALL TABLES",
		"CREATE STATISTICS s ON a, b FROM leads", "CREATE AGGREGATE a (int) (sfunc = f, stype = int)",
		"CREATE OPERATOR === (leftarg = int, rightarg = int, function = f)", "CREATE CAST (int AS text) WITH INOUT",
		"CREATE TEXT SEARCH CONFIGURATION c (copy = english)", "ALTER TEXT SEARCH CONFIGURATION c OWNER TO x",
		"CREATE TABLESPACE t LOCATION '/x'", "DROP TABLESPACE t", "CREATE RULE r AS ON INSERT TO leads DO NOTHING",
		"ALTER ROLE x SET work_mem = '1MB'", "CREATE GROUP g", "ALTER GROUP g ADD USER x", "DROP GROUP g",
		"CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", "ALTER LARGE OBJECT 1 OWNER TO x",
		"CREATE LANGUAGE plperl", "CREATE ACCESS METHOD m TYPE TABLE HANDLER h", "CREATE COLLATION c (locale = 'C')",
		"CREATE CONVERSION c FOR 'LATIN1' TO 'UTF8' FROM f", "CREATE OPERATOR CLASS c FOR TYPE int USING btree AS OPERATOR 1 <",
		"CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p", "ALTER SUBSCRIPTION s DISABLE", "DROP SUBSCRIPTION s",
		"CREATE TRANSFORM FOR int LANGUAGE plperl (FROM SQL WITH FUNCTION f(internal))",
	}
	sqls := extra
	for _, c := range readGolden(t, filepath.Join("testdata", "analyze_statements.txt")) {
		sqls = append(sqls, c.input)
	}
	for _, sql := range sqls {
		tree, err := pg.Parse(sql)
		if err != nil {
			t.Errorf("%s: %v", sql, err)
			continue
		}
		stmts, err := Analyze(tree, nil)
		if err != nil {
			t.Errorf("%s: %v", sql, err)
			continue
		}
		for _, st := range stmts {
			if _, found := slices.BinarySearch(kinds, st.Kind); !found {
				t.Errorf("%s: kind %q is not in Kinds()", sql, st.Kind)
			}
		}
	}
}

func TestAnalyzeErrors(t *testing.T) {
	if _, err := Analyze(nil, nil); err == nil {
		t.Error("nil tree: no error")
	}
	if _, err := Analyze(&pg.ParseResult{Stmts: []*pg.RawStmt{{}}}, nil); err == nil {
		t.Error("empty statement: no error")
	}
	stmts, err := Analyze(&pg.ParseResult{}, nil)
	if err != nil || len(stmts) != 0 {
		t.Errorf("no statements: %v %v", stmts, err)
	}
}

type fakeParams []struct {
	data   []byte
	format int16
	null   bool
}

func (p fakeParams) Param(n int) ([]byte, int16, bool, bool) {
	if n < 1 || n > len(p) {
		return nil, 0, false, false
	}
	v := p[n-1]
	return v.data, v.format, v.null, true
}

func TestSourceResolve(t *testing.T) {
	params := fakeParams{{data: []byte("x"), format: 0}, {data: []byte{0, 0, 0, 5}, format: 1}, {null: true}}
	for _, c := range []struct {
		src    Source
		p      Params
		data   string
		format int16
		null   bool
		ok     bool
	}{
		{src: Source{Kind: SourceLiteral, Literal: []byte("lit")}, p: params, data: "lit", ok: true},
		{src: Source{Kind: SourceNull}, p: params, null: true, ok: true},
		{src: Source{Kind: SourceParam, Param: 1}, p: params, data: "x", ok: true},
		{src: Source{Kind: SourceParam, Param: 2, TypeOID: oidInt4}, p: params, data: "\x00\x00\x00\x05", format: 1, ok: true},
		{src: Source{Kind: SourceParam, Param: 3}, p: params, null: true, ok: true},
		{src: Source{Kind: SourceParam, Param: 4}, p: params},
		{src: Source{Kind: SourceParam, Param: 1}, p: nil},
		{src: Source{Kind: SourceDefault}, p: params},
		{src: Source{Kind: SourceUnknown}, p: params},
	} {
		data, format, null, ok := c.src.Resolve(c.p)
		if string(data) != c.data || format != c.format || null != c.null || ok != c.ok {
			t.Errorf("%s: got %q %d %v %v, want %q %d %v %v", renderSource(c.src), data, format, null, ok, c.data, c.format, c.null, c.ok)
		}
	}
	if got := (Source{Kind: SourceParam, Param: 1}).Type(oidText); got != oidText {
		t.Errorf("Type without cast = %d", got)
	}
	if got := (Source{Kind: SourceParam, Param: 1, TypeOID: oidInt4}).Type(oidText); got != oidInt4 {
		t.Errorf("Type with cast = %d", got)
	}
	src := Source{Kind: SourceParam, Param: 2}
	var p Params = params
	if n := testing.AllocsPerRun(100, func() { src.Resolve(p) }); n != 0 {
		t.Errorf("Resolve allocates %v times", n)
	}
}

func FuzzAnalyze(f *testing.F) {
	for _, c := range readGoldenForFuzz(f) {
		f.Add(c)
	}
	cat := exampleCatalog()
	f.Fuzz(func(t *testing.T, sql string) {
		tree, err := pg.Parse(sql)
		if err != nil {
			return
		}
		stmts, err := Analyze(tree, cat)
		if err != nil {
			return
		}
		if len(stmts) != len(tree.GetStmts()) {
			t.Fatalf("%d statements for %d", len(stmts), len(tree.GetStmts()))
		}
		for _, st := range stmts {
			for _, w := range st.Writes {
				if len(w.ColumnTypes) != len(w.Columns) {
					t.Fatalf("%d types for %d columns", len(w.ColumnTypes), len(w.Columns))
				}
				for _, r := range w.Rows {
					if w.Columns != nil && len(r) != len(w.Columns) {
						t.Fatalf("row of %d values for %d columns", len(r), len(w.Columns))
					}
				}
			}
		}
	})
}

// readGoldenForFuzz returns the golden file's statements as fuzz seeds.
func readGoldenForFuzz(f *testing.F) []string {
	data, err := os.ReadFile(filepath.Join("testdata", "analyze_statements.txt"))
	if err != nil {
		f.Fatal(err)
	}
	var seeds []string
	for _, block := range strings.Split(string(data), "\n=== ") {
		_, rest, ok := strings.Cut(block, "\n")
		if !ok {
			continue
		}
		sql, _, ok := strings.Cut(rest, "\n---\n")
		if ok {
			seeds = append(seeds, sql)
		}
	}
	return seeds
}
