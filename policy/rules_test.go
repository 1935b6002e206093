package policy

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"gopkg.in/yaml.v3"
)

// -update rewrites the golden files. Other test files of the package may
// define the flag too; the first definition wins.
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite the golden files of the policy tests")
	}
}

func rulesUpdating() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

const examplePolicyFile = "../internal/example/policy.yaml" // the example application's policy, which pgshield dev loads

func readPolicyFile(t testing.TB, path string) File {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f File
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f
}

func examplePolicy(t testing.TB) *Policy {
	t.Helper()
	p, err := Compile(readPolicyFile(t, examplePolicyFile))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func compileYAML(t testing.TB, src string) (*Policy, error) {
	t.Helper()
	var f File
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	return Compile(f)
}

func TestCompileReportsEveryProblem(t *testing.T) {
	_, err := compileYAML(t, `
on_unknown: maybe
databases:
  app:
    tables:
      t:
        on_unknown: sometimes
        columns:
          a: {type: emial}
          b: {pattern: "a(b", min_length: 5, max_length: 2}
          c: {type: text, min: 1}
          d: {type: integer, min: 10, max: 1}
          e: {cel: "value + 1"}
          f: {type: integer, cel: "value.startsWith('x')"}
          g: {cel: "row.a == 'x'"}
          h: {services: [api], except_services: [jobs], enum: []}
          i: {name: dup}
          j: {name: dup}
        transitions:
          - {column: k, allowed: {}}
          - {column: k, allowed: {A: [B]}}
          - {allowed: {A: [B]}}
          - {column: s, allowed: {X: [Y]}}
        rows:
          - {cel: "row.a"}
          - {name: r2, cel: "row.m <= row.n +"}
          - {name: r3}
          - {name: r4, cel: "[row].size() == 1"}
      s_table:
        columns:
          s: {enum: [A]}
        transitions:
          - {column: s, allowed: {A: [B]}}
firewall:
  api: {mode: sometimes}
`)
	if err == nil {
		t.Fatal("compiled")
	}
	msg := err.Error()
	for _, want := range []string{
		`on_unknown: "maybe" is neither defer nor refuse`,
		`databases.app.tables.t.on_unknown: "sometimes" is neither defer nor refuse`,
		`databases.app.tables.t.columns.a.type: unknown type "emial" (one of text, email, phone, url, uuid, integer, number, boolean, date, timestamp)`,
		`databases.app.tables.t.columns.b.pattern: invalid RE2: error parsing regexp: missing closing ): ` + "`a(b`",
		`databases.app.tables.t.columns.b: min_length 5 is greater than max_length 2`,
		`databases.app.tables.t.columns.c: min and max need type integer or number`,
		`databases.app.tables.t.columns.d: min 10 is greater than max 1`,
		`databases.app.tables.t.columns.e.cel: invalid CEL: ERROR: <input>:1:7: found no matching overload for '_+_' applied to '(string, int)'`,
		`databases.app.tables.t.columns.f.cel: invalid CEL: ERROR: <input>:1:17: found no matching overload for 'startsWith' applied to 'int.(string)'`,
		`databases.app.tables.t.columns.g.cel: invalid CEL: ERROR: <input>:1:1: undeclared reference to 'row'`,
		`databases.app.tables.t.columns.h: set services or except_services, not both`,
		`databases.app.tables.t.columns.h.enum: lists no value`,
		`databases.app.tables.t.columns.j.name: the rule name "dup" is already used by databases.app.tables.t.columns.i.name`,
		`databases.app.tables.t.transitions[0].allowed: lists no transition`,
		`databases.app.tables.t.transitions[1].column: k already has transitions (transitions[0])`,
		`databases.app.tables.t.transitions[1]: the rule name "t_k_transition" is already used by databases.app.tables.t.transitions[0]`,
		`databases.app.tables.t.transitions[2].column: is missing`,
		`databases.app.tables.t.rows[0].name: is missing`,
		`databases.app.tables.t.rows[0].cel: invalid CEL: must return bool, returns string`,
		`databases.app.tables.t.rows[1].cel: invalid CEL: ERROR: <input>:1:17: Syntax error`,
		`databases.app.tables.t.rows[2].cel: is missing`,
		`databases.app.tables.t.rows[3].cel: reads row other than by its columns`,
		`databases.app.tables.s_table.transitions[0].allowed.A[0]: B is not one of the column's enum values`,
		`firewall.api`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
}

func TestCompileExample(t *testing.T) {
	p := examplePolicy(t)
	leads := p.Table("app", "leads")
	if leads == nil || leads.Name() != "leads" || p.Table("app", "carriers") != nil || p.Table("other", "leads") != nil {
		t.Fatal("tables")
	}
	if leads.Index("email") < 0 || leads.Index("ssn") != -1 {
		t.Error("Index")
	}
	// Columns only a row rule reads get a number too.
	if p.Table("app", "agents").Index("current_lead_count") < 0 {
		t.Error("row rule column")
	}
	if !p.Governs("app", "api", "leads") || !p.Governs("app", "analytics", "leads") || p.Governs("app", "api", "carriers") {
		t.Error("Governs")
	}
	if !p.Firewall().Governs("api") || p.Firewall().Governs("analytics") {
		t.Error("the example's firewall governs api only")
	}
}

func TestGovernsByService(t *testing.T) {
	p, err := compileYAML(t, `
databases:
  app:
    tables:
      only_api:
        columns: {a: {max_length: 1, services: [api]}}
      not_jobs:
        rows: [{name: r, cel: "row.a == 'x'", except_services: [jobs]}]
      transitions_only:
        transitions: [{column: s, allowed: {A: [B]}}]
`)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		service, table string
		want           bool
	}{
		{"api", "only_api", true}, {"jobs", "only_api", false},
		{"api", "not_jobs", true}, {"jobs", "not_jobs", false}, {"", "not_jobs", true},
		{"api", "transitions_only", false}, {"api", "absent", false},
	} {
		if got := p.Governs("app", c.service, c.table); got != c.want {
			t.Errorf("Governs(%s, %s) = %v", c.service, c.table, got)
		}
	}
	var nilPolicy *Policy
	if nilPolicy.Governs("app", "api", "t") || nilPolicy.CheckRow("app", "api", "t", WriteInsert, nil, nil) != nil {
		t.Error("nil policy")
	}
}

func TestTransition(t *testing.T) {
	p := examplePolicy(t)
	tr := func(from, to string) *Violation {
		return p.Transition("app", "api", "leads", "status", []byte(from), []byte(to))
	}
	for _, ok := range [][2]string{{"RECEIVED", "PROCESSING"}, {"ROUTED", "REJECTED"}, {"CONVERTED", "CONVERTED"}, {"BOGUS", "BOGUS"}} {
		if v := tr(ok[0], ok[1]); v != nil {
			t.Errorf("%s → %s: %v", ok[0], ok[1], v)
		}
	}
	v := tr("RECEIVED", "CONVERTED")
	if v == nil || v.Code != "23514" || v.Constraint != "leads_status_transition" || v.Kind != "transition" || v.Table != "leads" || v.Column != "status" {
		t.Fatalf("RECEIVED → CONVERTED: %+v", v)
	}
	if want := `new row for leads violates rule "leads_status_transition" on column status: this change of status is not an allowed transition`; v.Message != want {
		t.Errorf("message %q", v.Message)
	}
	if tr("CONVERTED", "RECEIVED") == nil || tr("REJECTED", "PROCESSING") == nil {
		t.Error("a final status changed")
	}
	if p.Transition("app", "api", "leads", "status", nil, []byte("RECEIVED")) != nil ||
		p.Transition("app", "api", "leads", "email", []byte("a"), []byte("b")) != nil ||
		p.Transition("app", "api", "agents", "status", []byte("a"), []byte("b")) != nil {
		t.Error("judged what no rule covers")
	}
	// Editing a returned Violation does not change the next.
	v.Message = "changed"
	if tr("RECEIVED", "CONVERTED").Message == "changed" {
		t.Error("violations shared")
	}
}

// TestRowRules covers what the golden file cannot show well: the columns
// a rule reads, NULLs, has(), a rule over the whole row.
func TestRowRules(t *testing.T) {
	p, err := compileYAML(t, `
databases:
  app:
    tables:
      t:
        columns:
          n: {type: integer}
          m: {type: integer}
          d: {type: date}
          e: {type: date}
          ts: {type: timestamp}
          f: {type: number}
          b: {type: boolean}
        rows:
          - {name: n_le_m, cel: "row.n <= row.m"}
          - {name: dates, cel: "row.e > row.d"}
          - {name: has_s, cel: "!has(row.s) || row.s != 'forbidden'"}
          - {name: num, cel: "row.f < 10.5 && row.b"}
          - {name: ts_after, cel: "row.ts > timestamp('2020-01-01T00:00:00Z')"}
`)
	if err != nil {
		t.Fatal(err)
	}
	check := func(kind WriteKind, kv ...string) string {
		var cols []string
		var vals []Value
		for i := 0; i < len(kv); i += 2 {
			cols = append(cols, kv[i])
			switch kv[i+1] {
			case "NULL":
				vals = append(vals, Value{Kind: ValueNull})
			case "DEFAULT":
				vals = append(vals, Value{Kind: ValueDefault})
			case "?":
				vals = append(vals, Value{Kind: ValueUnknown})
			default:
				vals = append(vals, Value{Kind: ValueText, Text: []byte(kv[i+1])})
			}
		}
		v := p.CheckRow("app", "api", "t", kind, cols, vals)
		if v == nil {
			return "accept"
		}
		return v.Constraint
	}
	for n, c := range []struct {
		got, want string
	}{
		{check(WriteInsert, "n", "9", "m", "10"), "accept"},
		{check(WriteInsert, "n", "11", "m", "10"), "n_le_m"},
		// Compared as integers, not as text ("9" > "10").
		{check(WriteInsert, "n", "9", "m", "10"), "accept"},
		{check(WriteInsert, "n", "11", "m", "NULL"), "accept"},
		{check(WriteInsert, "n", "11", "m", "DEFAULT"), "accept"},
		{check(WriteInsert, "n", "11"), "accept"},
		{check(WriteInsert, "n", "11", "m", "?"), "accept"},
		{check(WriteUpdate, "n", "11"), "accept"},
		{check(WriteUpdate, "n", "11", "m", "10"), "n_le_m"},
		// A value not of its type is its type rule's business.
		{check(WriteInsert, "n", "x", "m", "10"), "t_n_type"},
		{check(WriteInsert, "d", "2024-01-02", "e", "2024-01-02"), "dates"},
		{check(WriteInsert, "d", "2024-01-02", "e", "2024-01-03"), "accept"},
		{check(WriteInsert, "d", "0001-01-01 BC", "e", "0001-01-01"), "accept"},
		{check(WriteInsert, "s", "forbidden"), "has_s"},
		{check(WriteInsert, "s", "fine"), "accept"},
		{check(WriteUpdate, "s", "forbidden"), "has_s"},
		{check(WriteInsert, "f", "10.4", "b", "yes"), "accept"},
		{check(WriteInsert, "f", "10.6", "b", "yes"), "num"},
		{check(WriteInsert, "f", "1", "b", "off"), "num"},
		{check(WriteInsert, "ts", "2019-12-31 23:00:00-02"), "accept"},
		{check(WriteInsert, "ts", "2019-12-31 23:00:00+02"), "ts_after"},
	} {
		if c.got != c.want {
			t.Errorf("case %d: %s, want %s", n, c.got, c.want)
		}
	}
	tbl := p.Table("app", "t")
	var reads []string
	for _, r := range tbl.rows {
		var names []string
		for _, ci := range r.reads {
			names = append(names, tbl.cols[ci].name)
		}
		reads = append(reads, r.name+":"+strings.Join(names, ","))
	}
	if got := strings.Join(reads, " "); got != "n_le_m:n,m dates:e,d has_s:s num:f,b ts_after:ts" {
		t.Errorf("reads: %s", got)
	}
}

// decisionValue reads one value of a decision line: 'text' (with ”),
// NULL, DEFAULT, UNKNOWN, or type(text) for a value pgx encodes in binary
// and DecodeBinary turns into its text form.
func decisionValue(t *testing.T, m *pgtype.Map, s string) Value {
	switch s {
	case "NULL":
		return Value{Kind: ValueNull}
	case "DEFAULT":
		return Value{Kind: ValueDefault}
	case "UNKNOWN":
		return Value{Kind: ValueUnknown}
	}
	if strings.HasPrefix(s, "'") && strings.HasSuffix(s, "'") && len(s) >= 2 {
		return Value{Kind: ValueText, Text: []byte(strings.ReplaceAll(s[1:len(s)-1], "''", "'"))}
	}
	open := strings.IndexByte(s, '(')
	if open < 0 || !strings.HasSuffix(s, ")") {
		t.Fatalf("value %q", s)
	}
	typ, arg := s[:open], s[open+1:len(s)-1]
	var oid uint32
	var v any
	var err error
	switch typ {
	case "int2", "int4", "int8":
		oid = map[string]uint32{"int2": oidInt2, "int4": oidInt4, "int8": oidInt8}[typ]
		v, err = strconv.ParseInt(arg, 10, 64)
	case "float4", "float8":
		oid = map[string]uint32{"float4": oidFloat4, "float8": oidFloat8}[typ]
		v, err = strconv.ParseFloat(arg, 64)
	case "numeric":
		var n pgtype.Numeric
		oid, err, v = oidNumeric, n.Scan(arg), &n
	case "bool":
		oid = oidBool
		v, err = strconv.ParseBool(arg)
	case "date":
		oid = oidDate
		v, err = time.Parse("2006-01-02", arg)
	case "timestamptz", "timestamp":
		oid = map[string]uint32{"timestamp": oidTimestamp, "timestamptz": oidTimestamptz}[typ]
		v, err = time.Parse(time.RFC3339Nano, arg)
	case "uuid":
		var u pgtype.UUID
		oid, err, v = oidUUID, u.Scan(arg), &u
	case "text":
		oid, v = oidText, arg
	default:
		t.Fatalf("type %q", typ)
	}
	if err != nil {
		t.Fatalf("value %q: %v", s, err)
	}
	data, err := m.Encode(oid, pgtype.BinaryFormatCode, v, nil)
	if err != nil {
		t.Fatalf("encoding %q: %v", s, err)
	}
	text, err := DecodeBinary(oid, data, nil)
	if err != nil {
		t.Fatalf("decoding %q: %v", s, err)
	}
	return Value{Kind: ValueText, Text: text}
}

// splitValues splits col=value,… at the commas outside quotes and
// parentheses.
func splitValues(s string) []string {
	var parts []string
	depth, quoted, start := 0, false, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\'':
			quoted = !quoted
		case quoted:
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == ',' && depth == 0:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	if start < len(s) {
		parts = append(parts, s[start:])
	}
	return parts
}

func parseWriteKind(t *testing.T, s string) WriteKind {
	switch s {
	case "insert":
		return WriteInsert
	case "update":
		return WriteUpdate
	case "upsert":
		return WriteUpsert
	case "copy":
		return WriteCopy
	}
	t.Fatalf("kind %q", s)
	return 0
}

// TestCheckRowGolden judges the rows of testdata/rules_decisions.txt with
// the example policy: `service table kind col=value,… -> decision`, the
// decision `accept` or `<SQLSTATE> <constraint> <kind>`; kind transition
// judges col=from,col=to with Transition. -update rewrites the decisions.
func TestCheckRowGolden(t *testing.T) {
	const path = "testdata/rules_decisions.txt"
	p := examplePolicy(t)
	policyText, err := os.ReadFile(examplePolicyFile)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := pgtype.NewMap()
	var out strings.Builder
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	for n, line := range lines {
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			out.WriteString(line + "\n")
			continue
		}
		input, want, _ := strings.Cut(line, " -> ")
		input = strings.TrimSpace(input)
		fields := strings.SplitN(input, " ", 4)
		if len(fields) < 3 {
			t.Fatalf("%s:%d: want `service table kind col=value,…`", path, n+1)
		}
		service := fields[0]
		if service == "-" {
			service = ""
		}
		var cols []string
		var vals []Value
		if len(fields) == 4 {
			for _, kv := range splitValues(fields[3]) {
				col, val, ok := strings.Cut(kv, "=")
				if !ok {
					t.Fatalf("%s:%d: %q is not col=value", path, n+1, kv)
				}
				cols = append(cols, col)
				vals = append(vals, decisionValue(t, m, val))
			}
		}
		var v *Violation
		if fields[2] == "transition" {
			// col=from,col=to: Transition, for a caller that knows both.
			if len(vals) != 2 || cols[0] != cols[1] {
				t.Fatalf("%s:%d: a transition is col=from,col=to", path, n+1)
			}
			v = p.Transition("app", service, fields[1], cols[0], vals[0].Text, vals[1].Text)
		} else {
			v = p.CheckRow("app", service, fields[1], parseWriteKind(t, fields[2]), cols, vals)
		}
		got := "accept"
		if v != nil {
			got = v.Code + " " + v.Constraint + " " + v.Kind
			checkViolation(t, fmt.Sprintf("%s:%d", path, n+1), v, fields[1], vals, string(policyText))
		}
		if !rulesUpdating() && got != strings.TrimSpace(want) {
			t.Errorf("%s:%d: %s\n got  %s\n want %s", path, n+1, input, got, want)
		}
		out.WriteString(input + " -> " + got + "\n")
	}
	if rulesUpdating() {
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// checkViolation holds a violation to its contract: the fields set, the
// message naming table, column and rule, and no written value anywhere a
// client or a log sees (a value that is also a word of the policy, such as
// a status, may appear as policy).
func checkViolation(t *testing.T, where string, v *Violation, table string, vals []Value, policyText string) {
	t.Helper()
	if v.Code != "23514" && v.Code != "23502" {
		t.Errorf("%s: code %s", where, v.Code)
	}
	if v.Table != table || v.Constraint == "" || v.Kind == "" {
		t.Errorf("%s: %+v", where, v)
	}
	if !strings.Contains(v.Message, "new row for "+table+" violates rule \""+v.Constraint+"\"") {
		t.Errorf("%s: message %q", where, v.Message)
	}
	if v.Column != "" && !strings.Contains(v.Message, "column "+v.Column) {
		t.Errorf("%s: message %q does not name column %s", where, v.Message, v.Column)
	}
	for _, val := range vals {
		s := string(val.Text)
		if val.Kind != ValueText || len(s) < 3 || strings.Contains(policyText, s) {
			continue
		}
		for _, text := range []string{v.Message, v.Detail, v.Hint} {
			if strings.Contains(text, s) {
				t.Errorf("%s: %q holds the value %q", where, text, s)
			}
		}
	}
}

// rowWithoutCEL is a leads row of every non-CEL rule kind: type, required,
// length, range, pattern (source, for api), enum.
func rowWithoutCEL(t testing.TB, p *Policy) (*TableRules, []int, []Value) {
	leads := p.Table("app", "leads")
	cols := []string{"email", "phone", "first_name", "quality_score", "status", "source", "metadata"}
	texts := []string{"lead@example.com", "+14155550123", "Ada", "87", "RECEIVED", "partner_api", "{}"}
	idx := make([]int, len(cols))
	vals := make([]Value, len(cols))
	for i, c := range cols {
		idx[i] = leads.Index(c)
		vals[i] = Value{Kind: ValueText, Text: []byte(texts[i])}
	}
	if v := leads.CheckValues("api", WriteInsert, idx, vals); v != nil {
		t.Fatal(v)
	}
	return leads, idx, vals
}

func TestCheckValuesDoesNotAllocate(t *testing.T) {
	p := examplePolicy(t)
	leads, idx, vals := rowWithoutCEL(t, p)
	services := []string{"analytics"}
	if !raceEnabledForRules {
		// Pattern rules use regexp, whose matchers come from a sync.Pool,
		// which the race detector empties at random.
		services = append(services, "api")
	}
	for _, service := range services {
		for _, kind := range []WriteKind{WriteInsert, WriteUpdate} {
			if n := testing.AllocsPerRun(100, func() {
				if v := leads.CheckValues(service, kind, idx, vals); v != nil {
					t.Fatal(v)
				}
			}); n != 0 {
				t.Errorf("%s %d: CheckValues allocates %v times", service, kind, n)
			}
		}
	}
	cols := []string{"email", "phone", "quality_score", "status"}
	rowVals := []Value{vals[0], vals[1], vals[3], vals[4]}
	if n := testing.AllocsPerRun(100, func() {
		if v := p.CheckRow("app", "analytics", "leads", WriteInsert, cols, rowVals); v != nil {
			t.Fatal(v)
		}
	}); n != 0 {
		t.Errorf("CheckRow allocates %v times", n)
	}
}

func BenchmarkCheckValues(b *testing.B) {
	p := examplePolicy(b)
	leads, idx, vals := rowWithoutCEL(b, p)
	b.Run("leads", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if v := leads.CheckValues("api", WriteInsert, idx, vals); v != nil {
				b.Fatal(v)
			}
		}
	})
	agents := p.Table("app", "agents")
	cols := []string{"name", "email", "current_lead_count", "max_lead_capacity", "performance_score"}
	texts := []string{"Grace Hopper", "grace@example.com", "3", "50", "97.5"}
	aidx := make([]int, len(cols))
	avals := make([]Value, len(cols))
	for i, c := range cols {
		aidx[i] = agents.Index(c)
		avals[i] = Value{Kind: ValueText, Text: []byte(texts[i])}
	}
	b.Run("agents-with-cel", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if v := agents.CheckValues("api", WriteInsert, aidx, avals); v != nil {
				b.Fatal(v)
			}
		}
	})
}

func TestCheckValuesColumnNumbers(t *testing.T) {
	p := examplePolicy(t)
	leads := p.Table("app", "leads")
	bad := Value{Kind: ValueText, Text: []byte("not an email")}
	// -1 and numbers out of range are skipped; vals and colIdx of
	// different lengths are judged as far as both go.
	if v := leads.CheckValues("api", WriteUpdate, []int{-1, 1000}, []Value{bad, bad}); v != nil {
		t.Error(v)
	}
	if v := leads.CheckValues("api", WriteUpdate, []int{leads.Index("email")}, []Value{bad, bad}); v == nil || v.Constraint != "leads_email_type" {
		t.Error(v)
	}
	var none *TableRules
	if none.CheckValues("api", WriteInsert, nil, nil) != nil || none.Index("x") != -1 || none.Governs("api") {
		t.Error("nil table")
	}
}

func TestMessages(t *testing.T) {
	p := examplePolicy(t)
	for _, c := range []struct {
		table string
		kind  WriteKind
		cols  []string
		vals  []Value
		want  Violation
	}{
		{"leads", WriteInsert, []string{"email"}, []Value{{Kind: ValueText, Text: []byte("nobody")}}, Violation{
			Code: "23514", Message: `new row for leads violates rule "leads_email_type" on column email: not an email address`,
			Table: "leads", Column: "email", Constraint: "leads_email_type", Kind: "type"}},
		{"leads", WriteInsert, []string{"phone"}, nil, Violation{
			Code: "23502", Message: `new row for leads violates rule "leads_email_required" on column email: leads.email is required (the row leaves it out or sets it to DEFAULT)`,
			Table: "leads", Column: "email", Constraint: "leads_email_required", Kind: "required"}},
		{"leads", WriteUpdate, []string{"email"}, []Value{{Kind: ValueNull}}, Violation{
			Code: "23502", Message: `new row for leads violates rule "leads_email_required" on column email: leads.email is required (it is NULL)`,
			Table: "leads", Column: "email", Constraint: "leads_email_required", Kind: "required"}},
		{"leads", WriteUpdate, []string{"status"}, []Value{{Kind: ValueText, Text: []byte("LOST")}}, Violation{
			Code: "23514", Message: `new row for leads violates rule "leads_status_enum" on column status: not one of the allowed values`,
			Hint:  "allowed values: RECEIVED, PROCESSING, QUALIFIED, ROUTED, CONVERTED, REJECTED",
			Table: "leads", Column: "status", Constraint: "leads_status_enum", Kind: "enum"}},
		{"agents", WriteUpdate, []string{"current_lead_count", "max_lead_capacity"}, []Value{{Kind: ValueText, Text: []byte("51")}, {Kind: ValueText, Text: []byte("50")}}, Violation{
			Code: "23514", Message: `new row for agents violates rule "agents_capacity" on columns current_lead_count, max_lead_capacity: an agent cannot hold more leads than max_lead_capacity`,
			Table: "agents", Constraint: "agents_capacity", Kind: "row"}},
		{"partnerships", WriteUpdate, []string{"commission_rate"}, []Value{{Kind: ValueUnknown}}, Violation{
			Code: "23514", Message: `new row for partnerships violates rule "partnerships_commission_rate_type" on column commission_rate: the value is computed by the statement and cannot be checked by pgshield`,
			Hint:  "write the value itself, or set on_unknown: defer to leave it to the database's constraints",
			Table: "partnerships", Column: "commission_rate", Constraint: "partnerships_commission_rate_type", Kind: "type"}},
		{"agents", WriteUpdate, []string{"name"}, []Value{{Kind: ValueText, Text: []byte(" Ada")}}, Violation{
			Code: "23514", Message: `new row for agents violates rule "agents_name_cel" on column name: an agent's name is required, at most 200 characters, without leading or trailing spaces`,
			Table: "agents", Column: "name", Constraint: "agents_name_cel", Kind: "cel"}},
	} {
		v := p.CheckRow("app", "api", c.table, c.kind, c.cols, c.vals)
		if v == nil || *v != c.want {
			t.Errorf("%s %v:\n got  %+v\n want %+v", c.table, c.cols, v, c.want)
		}
	}
}

func TestRangeBoundsAreExactEnough(t *testing.T) {
	p, err := compileYAML(t, `
databases:
  app:
    tables:
      t:
        columns:
          r: {type: number, min: 0.1, max: 0.3}
          i: {type: integer, min: -9223372036854775808, max: 9007199254740993}
`)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		col, text string
		ok        bool
	}{
		{"r", "0.1", true}, {"r", "0.3", true}, {"r", "0.30", true}, {"r", "0.0999", false}, {"r", "0.3001", false},
		{"r", "1e400", false}, {"r", "-1e400", false},
		{"i", "-9223372036854775808", true}, {"i", "9007199254740993", true}, {"i", "9223372036854775807", false},
	} {
		v := p.CheckRow("app", "api", "t", WriteInsert, []string{c.col}, []Value{{Kind: ValueText, Text: []byte(c.text)}})
		if (v == nil) != c.ok {
			t.Errorf("%s=%s: %v", c.col, c.text, v)
		}
	}
}

func TestCELCostIsBounded(t *testing.T) {
	p, err := compileYAML(t, `
databases:
  app:
    tables:
      t:
        columns:
          s: {cel: "value.split('').all(c, c != 'z')"}
`)
	if err != nil {
		t.Fatal(err)
	}
	check := func(s string) *Violation {
		return p.CheckRow("app", "api", "t", WriteUpdate, []string{"s"}, []Value{{Kind: ValueText, Text: []byte(s)}})
	}
	if v := check("abc"); v != nil {
		t.Fatal(v)
	}
	if v := check("abz"); v == nil || v.Kind != "cel" {
		t.Fatalf("abz: %v", v)
	}
	// A value long enough to pass the cost limit is refused rather than
	// evaluated at length.
	v := check(strings.Repeat("a", 1<<20))
	if v == nil || !strings.Contains(v.Message, "cannot be evaluated") {
		t.Fatalf("long value: %v", v)
	}
}

func TestCheckRowConcurrent(t *testing.T) {
	p := examplePolicy(t)
	cols := []string{"name", "email", "current_lead_count", "max_lead_capacity"}
	done := make(chan string)
	for g := range 8 {
		go func() {
			for n := range 200 {
				count := strconv.Itoa((g*200 + n) % 60)
				vals := []Value{{Kind: ValueText, Text: []byte("Grace")}, {Kind: ValueText, Text: []byte("g@example.com")},
					{Kind: ValueText, Text: []byte(count)}, {Kind: ValueText, Text: []byte("50")}}
				v := p.CheckRow("app", "api", "agents", WriteInsert, cols, vals)
				over := (g*200+n)%60 > 50
				if (v != nil) != over || (v != nil && v.Constraint != "agents_capacity") {
					done <- fmt.Sprintf("%s leads: %v", count, v)
					return
				}
			}
			done <- ""
		}()
	}
	for range 8 {
		if msg := <-done; msg != "" {
			t.Error(msg)
		}
	}
}
