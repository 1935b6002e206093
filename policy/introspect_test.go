package policy

import (
	"cmp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/pgshield/pgshield/internal/example"
)

func introspectCompile(t *testing.T, src string) *Policy {
	t.Helper()
	var f File
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	p, err := Compile(f)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ruleLine(r RuleInfo) string {
	return strings.Join([]string{r.Database, r.Table, r.Column, r.Rule, r.Kind, r.Services}, "|")
}

// text is a written value.
func text(s string) Value { return Value{Kind: ValueText, Text: []byte(s)} }

// Rules lists the example policy's rules, sorted, under the names and
// kinds its Violations carry.
func TestRulesOfExample(t *testing.T) {
	p := introspectCompile(t, example.Policy())
	rules := p.Rules()
	if !slices.IsSortedFunc(rules, func(a, b RuleInfo) int {
		return cmp.Or(strings.Compare(a.Database, b.Database), strings.Compare(a.Table, b.Table),
			strings.Compare(a.Column, b.Column), strings.Compare(a.Rule, b.Rule))
	}) {
		t.Errorf("Rules is not sorted: %q", rules)
	}
	var lines []string
	for _, r := range rules {
		lines = append(lines, ruleLine(r))
	}
	for _, want := range []string{
		"app|agents||agents_capacity|row|",
		"app|agents|name|agents_name_cel|cel|",
		"app|agents|name|agents_name_length|length|",
		"app|agents|name|agents_name_required|required|",
		"app|leads|email|leads_email_length|length|",
		"app|leads|email|leads_email_required|required|",
		"app|leads|email|leads_email_type|type|",
		"app|leads|quality_score|leads_quality_score_range|range|",
		"app|leads|source|leads_source_length|length|api",
		"app|leads|source|leads_source_pattern|pattern|api",
		"app|leads|status|leads_status_enum|enum|",
		"app|leads|status|leads_status_transition|transition|",
		"app|partnerships||partnerships_contract_dates|row|",
		"app|partnerships|commission_rate|partnerships_commission_rate_range|range|",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("Rules has no %q", want)
		}
	}
	seen := map[string]bool{}
	for _, l := range lines {
		if seen[l] {
			t.Errorf("Rules lists %q twice", l)
		}
		seen[l] = true
	}

	// Each refusal names a rule that Rules lists, under its kind.
	listed := func(v *Violation) bool {
		for _, r := range rules {
			if r.Database == "app" && r.Table == v.Table && r.Rule == v.Constraint && slices.Contains(strings.Split(r.Kind, ","), v.Kind) {
				return true
			}
		}
		return false
	}
	unknown := Value{Kind: ValueUnknown}
	for _, tc := range []struct {
		table, service string
		kind           WriteKind
		cols           []string
		vals           []Value
	}{
		{"leads", "api", WriteInsert, []string{"email"}, []Value{text("not an address")}},
		{"leads", "api", WriteInsert, []string{"phone"}, []Value{text("+14155550123")}}, // email left out
		{"leads", "api", WriteInsert, []string{"email"}, []Value{text(strings.Repeat("a", 250) + "@example.com")}},
		{"leads", "api", WriteUpdate, []string{"quality_score"}, []Value{text("101")}},
		{"leads", "api", WriteUpdate, []string{"status"}, []Value{text("LOST")}},
		{"leads", "api", WriteUpdate, []string{"source"}, []Value{text("Not A Word")}},
		{"agents", "api", WriteUpdate, []string{"name"}, []Value{text(" Grace")}},
		{"agents", "api", WriteUpdate, []string{"current_lead_count", "max_lead_capacity"}, []Value{text("51"), text("50")}},
		{"agents", "api", WriteUpdate, []string{"max_lead_capacity"}, []Value{text("5000")}},
		{"partnerships", "api", WriteUpdate, []string{"contract_start", "contract_end"}, []Value{text("2024-05-01"), text("2024-01-01")}},
		{"partnerships", "api", WriteUpdate, []string{"contract_start"}, []Value{unknown}},  // on_unknown refuse
		{"partnerships", "api", WriteUpdate, []string{"commission_rate"}, []Value{unknown}}, // on_unknown refuse
	} {
		v := p.CheckRow("app", tc.service, tc.table, tc.kind, tc.cols, tc.vals)
		if v == nil {
			t.Errorf("%s %v: accepted, want a refusal", tc.table, tc.cols)
			continue
		}
		if !listed(v) {
			t.Errorf("%s %v: refused by %q (%s), which Rules does not list", tc.table, tc.cols, v.Constraint, v.Kind)
		}
	}
	v := p.Transition("app", "api", "leads", "status", []byte("RECEIVED"), []byte("CONVERTED"))
	if v == nil || !listed(v) {
		t.Errorf("a transition refused by %+v, which Rules does not list", v)
	}

	var none *Policy
	if none.Rules() != nil {
		t.Error("a nil Policy has rules")
	}
}

// A named column rule is one constraint for all its kinds; scopes are
// written as SHOW POLICY shows them; under on_unknown refuse a rule that
// judges no content still names the constraint its refusal carries.
func TestRulesNamedScopedAndUnknown(t *testing.T) {
	p := introspectCompile(t, `
on_unknown: refuse
databases:
  crm:
    tables:
      contacts:
        columns:
          name: {name: contact_name, required: true, max_length: 80, cel: "value != 'x'", except_services: [jobs, import]}
          notes: {type: text}
        rows:
          - {name: contacts_row, cel: "row.name != ''", services: [api, web]}
`)
	var lines []string
	for _, r := range p.Rules() {
		lines = append(lines, ruleLine(r))
	}
	want := []string{
		"crm|contacts||contacts_row|row|api, web",
		"crm|contacts|name|contact_name|required,length,cel|except jobs, import",
		"crm|contacts|notes|contacts_notes_type|type|",
	}
	if !slices.Equal(lines, want) {
		t.Errorf("Rules\n got %q\nwant %q", lines, want)
	}
	v := p.CheckRow("crm", "api", "contacts", WriteUpdate, []string{"notes"}, []Value{{Kind: ValueUnknown}})
	if v == nil || v.Constraint != "contacts_notes_type" || v.Kind != "type" {
		t.Errorf("an unknown value of notes: %+v, want contacts_notes_type (type)", v)
	}
	if tr := p.Table("crm", "contacts"); tr.Database() != "crm" || tr.Name() != "contacts" {
		t.Errorf("Database, Name = %q %q", tr.Database(), tr.Name())
	}
}

// The firewall of each service: its deny rules summarized, and the
// fingerprints it allows and learned, with the normalized text learn mode
// recorded.
func TestFirewallIntrospection(t *testing.T) {
	p := introspectCompile(t, `
firewall:
  api:
    deny: [DROP, role, TRUNCATE, COPY PROGRAM]
    deny_functions: [pg_catalog.pg_read_file, dblink]
    deny_delete_without_where: true
    deny_multiple_statements: true
    max_statement_bytes: 4096
    mode: learn
    allow: [00000000000000AA]
    allow_file: allow-api.txt
  batch: {mode: enforce, allow: [00000000000000bb]}
  quiet: {}
`)
	fw := p.Firewall()
	got := fw.Services()
	want := []FirewallInfo{
		{Service: "api", Mode: "learn", AllowFile: "allow-api.txt", Allowed: 1,
			Deny: "deny: DROP, TRUNCATE, role, COPY PROGRAM; deny_functions: dblink, pg_read_file; deny_delete_without_where; deny_multiple_statements; max_statement_bytes: 4096"},
		{Service: "batch", Mode: "enforce", Allowed: 1},
		{Service: "quiet", Mode: "off"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Services\n got %+v\nwant %+v", got, want)
	}

	sel := []Statement{{Kind: "SELECT"}}
	if v := fw.CheckNormalized("api", sel, "00000000000000cc", "SELECT * FROM leads WHERE id = $1", 40); v != nil {
		t.Fatal(v)
	}
	fw.CheckNormalized("api", sel, "00000000000000cc", "SELECT * FROM leads WHERE id = $2", 40) // seen: the first text stays
	fw.CheckNormalized("api", sel, "00000000000000aa", "SELECT $1", 10)
	fw.Check("api", sel, "00000000000000dd", 10) // no normalized text
	fw.CheckNormalized("api", []Statement{{Kind: "DROP TABLE"}}, "00000000000000ee", "DROP TABLE leads", 20)
	fw.CheckNormalized("batch", sel, "00000000000000bb", "SELECT 1", 10) // enforce mode records nothing
	fps := fw.Fingerprints("api")
	wantFPs := []FingerprintInfo{
		{Fingerprint: "00000000000000aa", Query: "SELECT $1", Allowed: true, Learned: true},
		{Fingerprint: "00000000000000cc", Query: "SELECT * FROM leads WHERE id = $1", Learned: true},
		{Fingerprint: "00000000000000dd", Learned: true},
	}
	if !slices.Equal(fps, wantFPs) {
		t.Errorf("Fingerprints(api)\n got %+v\nwant %+v", fps, wantFPs)
	}
	if got := fw.Fingerprints("batch"); !slices.Equal(got, []FingerprintInfo{{Fingerprint: "00000000000000bb", Allowed: true}}) {
		t.Errorf("Fingerprints(batch) = %+v", got)
	}
	if fw.Fingerprints("quiet") == nil || len(fw.Fingerprints("quiet")) != 0 || fw.Fingerprints("nope") != nil {
		t.Error("Fingerprints of a service without fingerprints, or without rules")
	}
	if n := fw.Services()[0].Learned; n != 3 {
		t.Errorf("Learned = %d, want 3", n)
	}
	var none *Firewall
	if none.Services() != nil || none.Fingerprints("api") != nil {
		t.Error("a nil Firewall lists something")
	}
}

// The normalized text kept with a fingerprint is bounded, cut at a
// character.
func TestLearnedQueryBounded(t *testing.T) {
	fw, err := CompileFirewall(map[string]FirewallRules{"api": {Mode: FirewallLearn}})
	if err != nil {
		t.Fatal(err)
	}
	long := "SELECT '" + strings.Repeat("é", MaxLearnedQueryBytes) + "'"
	fw.CheckNormalized("api", []Statement{{Kind: "SELECT"}}, "00000000000000aa", long, len(long))
	q := fw.Fingerprints("api")[0].Query
	if len(q) > MaxLearnedQueryBytes || !utf8.ValidString(q) || !strings.HasSuffix(q, "…") || !strings.HasPrefix(long, strings.TrimSuffix(q, "…")) {
		t.Errorf("kept %d bytes (valid UTF-8 %v), want at most %d ending in …", len(q), utf8.ValidString(q), MaxLearnedQueryBytes)
	}
}
