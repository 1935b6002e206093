package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
	"gopkg.in/yaml.v3"
)

func loadFirewall(t *testing.T) *Firewall {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "firewall_rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Firewall map[string]FirewallRules `yaml:"firewall"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil {
		t.Fatal(err)
	}
	fw, err := CompileFirewall(file.Firewall)
	if err != nil {
		t.Fatal(err)
	}
	return fw
}

// checkText analyzes sql and asks the firewall, as the proxy does.
func checkText(t *testing.T, fw *Firewall, service, sql string) *Violation {
	t.Helper()
	tree, err := pg.Parse(sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	stmts, err := Analyze(tree, exampleCatalog())
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	fp, err := pg.Fingerprint(sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return fw.Check(service, stmts, fp, len(sql))
}

func renderDecision(v *Violation) string {
	if v == nil {
		return "allow"
	}
	s := fmt.Sprintf("refuse %s %s: %s", v.Code, v.Kind, v.Message)
	if v.Detail != "" {
		s += "\ndetail: " + v.Detail
	}
	if v.Hint != "" {
		s += "\nhint: " + v.Hint
	}
	return s
}

func TestFirewallGolden(t *testing.T) {
	fw := loadFirewall(t)
	path := filepath.Join("testdata", "firewall_decisions.txt")
	cases := readGolden(t, path)
	got := make([]string, len(cases))
	for i, c := range cases {
		first, sql, _ := strings.Cut(c.input, "\n")
		service, ok := strings.CutPrefix(first, "service: ")
		if !ok {
			t.Fatalf("case %q: no service line", c.name)
		}
		got[i] = renderDecision(checkText(t, fw, service, sql))
	}
	checkGolden(t, path, cases, got)
	if got := fw.Learned("learning"); len(got) != 1 {
		t.Errorf("learning learned %v, want the one allowed SELECT", got)
	}
	for service, want := range map[string]string{"api": "off", "locked": "enforce", "learning": "learn", "open": "off", "unknown": "off"} {
		if got := fw.Mode(service); got != want {
			t.Errorf("Mode(%s) = %s, want %s", service, got, want)
		}
	}
}

func TestFirewallLearnThenEnforce(t *testing.T) {
	learn, err := CompileFirewall(map[string]FirewallRules{"api": {Mode: "learn", DenyKinds: []string{"DROP"}}})
	if err != nil {
		t.Fatal(err)
	}
	seen := []string{
		"SELECT * FROM leads WHERE id = 1",
		"SELECT * FROM leads WHERE id = 2", // same fingerprint
		"INSERT INTO leads (email) VALUES ('a@example.com')",
		"UPDATE leads SET status = 'x' WHERE id = 5",
	}
	for _, sql := range seen {
		if v := checkText(t, learn, "api", sql); v != nil {
			t.Fatalf("learn mode refused %s: %v", sql, v)
		}
	}
	if v := checkText(t, learn, "api", "DROP TABLE leads"); v == nil {
		t.Fatal("learn mode allowed a denied DROP")
	}
	learned := learn.Learned("api")
	if len(learned) != 3 {
		t.Fatalf("learned %v, want 3 fingerprints", learned)
	}
	for i := 1; i < len(learned); i++ {
		if learned[i-1] >= learned[i] {
			t.Fatalf("Learned not sorted: %v", learned)
		}
	}
	// The refused DROP was not learned.
	dropFP, _ := pg.Fingerprint("DROP TABLE leads")
	for _, fp := range learned {
		if fp == dropFP {
			t.Fatal("a refused statement was learned")
		}
	}

	enforce, err := CompileFirewall(map[string]FirewallRules{"api": {Mode: "enforce", Allow: learned}})
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range append(seen, "SELECT * FROM leads WHERE id = 99", "update leads set status = 'y' where id = 6") {
		if v := checkText(t, enforce, "api", sql); v != nil {
			t.Errorf("enforce refused learned %s: %v", sql, v)
		}
	}
	for _, sql := range []string{"SELECT * FROM agents", "DELETE FROM leads WHERE id = 1", "SELECT * FROM leads WHERE email = 'x'"} {
		v := checkText(t, enforce, "api", sql)
		if v == nil || v.Code != "42501" || v.Kind != "firewall" || !strings.Contains(v.Message, "allow list") {
			t.Errorf("enforce allowed %s: %v", sql, v)
		}
	}
	if enforce.Learned("api") != nil {
		t.Error("enforce mode learned")
	}
}

func TestFirewallLearnBound(t *testing.T) {
	fw, err := CompileFirewall(map[string]FirewallRules{"api": {Mode: "learn"}})
	if err != nil {
		t.Fatal(err)
	}
	stmts := []Statement{{Kind: "SELECT"}}
	for i := 0; i < MaxLearnedFingerprints+50; i++ {
		if v := fw.Check("api", stmts, fmt.Sprintf("%016x", i), 10); v != nil {
			t.Fatal(v)
		}
	}
	if n := len(fw.Learned("api")); n != MaxLearnedFingerprints {
		t.Errorf("learned %d, want %d", n, MaxLearnedFingerprints)
	}
}

func TestFirewallConcurrent(t *testing.T) {
	fw, err := CompileFirewall(map[string]FirewallRules{
		"api":  {Mode: "learn", DenyDeleteWithoutWhere: true},
		"lock": {Mode: "enforce", Allow: []string{"0000000000000001"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				fp := fmt.Sprintf("%016x", i%100)
				fw.Check("api", []Statement{{Kind: "SELECT"}}, fp, 10)
				fw.Check("lock", []Statement{{Kind: "SELECT"}}, fp, 10)
				if i%50 == 0 {
					fw.Learned("api")
				}
			}
		}()
	}
	wg.Wait()
	if n := len(fw.Learned("api")); n != 100 {
		t.Errorf("learned %d, want 100", n)
	}
}

func TestFirewallCheckDoesNotAllocate(t *testing.T) {
	fw, err := CompileFirewall(map[string]FirewallRules{
		"api": {DenyKinds: []string{"DROP", "ROLE", "COPY PROGRAM"}, DenyFunctions: []string{"pg_read_file"},
			DenyDeleteWithoutWhere: true, DenyUpdateWithoutWhere: true, DenyMultipleStatements: true, MaxStatementBytes: 1000},
		"learn":   {Mode: "learn"},
		"enforce": {Mode: "enforce", Allow: []string{"00000000000000aa"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	stmts := []Statement{{Kind: "INSERT", Functions: []string{"lower", "now"}}}
	fw.Check("learn", stmts, "00000000000000aa", 10)
	for _, service := range []string{"api", "learn", "enforce", "none"} {
		if n := testing.AllocsPerRun(100, func() {
			if v := fw.Check(service, stmts, "00000000000000aa", 10); v != nil {
				t.Fatal(v)
			}
		}); n != 0 {
			t.Errorf("%s: Check allocates %v times", service, n)
		}
	}
}

func TestCompileFirewallErrors(t *testing.T) {
	for _, c := range []struct {
		rules map[string]FirewallRules
		want  string
	}{
		{map[string]FirewallRules{"api": {DenyKinds: []string{"DROP", "TRUNCATE", "DORP"}}}, `firewall.api.deny[2]: unknown kind "DORP"`},
		{map[string]FirewallRules{"api": {DenyKinds: []string{"DRO"}}}, `firewall.api.deny[0]: unknown kind "DRO"`},
		{map[string]FirewallRules{"api": {DenyKinds: []string{" "}}}, `firewall.api.deny[0]: empty kind`},
		{map[string]FirewallRules{"api": {DenyFunctions: []string{"pg read"}}}, `firewall.api.deny_functions[0]: "pg read" is not a function name`},
		{map[string]FirewallRules{"api": {DenyFunctions: []string{""}}}, `firewall.api.deny_functions[0]`},
		{map[string]FirewallRules{"api": {MaxStatementBytes: -1}}, `firewall.api.max_statement_bytes: -1 is negative`},
		{map[string]FirewallRules{"api": {Mode: "block"}}, `firewall.api.mode: unknown mode "block"`},
		{map[string]FirewallRules{"api": {Mode: "enforce"}}, `firewall.api.allow: mode enforce with no fingerprint`},
		{map[string]FirewallRules{"api": {Mode: "enforce", Allow: []string{"abc"}}}, `firewall.api.allow[0]: "abc" is not a statement fingerprint`},
		{map[string]FirewallRules{"api": {Allow: []string{"zzzzzzzzzzzzzzzz"}}}, `firewall.api.allow[0]`},
		{map[string]FirewallRules{"": {}}, `firewall: a service has an empty name`},
		{map[string]FirewallRules{"b": {Mode: "x"}, "a": {DenyKinds: []string{"NOPE"}}}, "firewall.a.deny[0]: unknown kind \"NOPE\" (a statement kind or its first words, such as DROP, DROP TABLE, TRUNCATE, ALTER, GRANT, REVOKE, ROLE or COPY PROGRAM)\nfirewall.b.mode"},
	} {
		_, err := CompileFirewall(c.rules)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.rules, err, c.want)
		}
	}
	// Every kind and its first words are valid entries.
	var deny []string
	for _, k := range Kinds() {
		deny = append(deny, k, strings.Fields(k)[0], strings.ToLower(k))
	}
	deny = append(deny, "ROLE", "copy  program", "CREATE USER", "drop group", "USER")
	if _, err := CompileFirewall(map[string]FirewallRules{"api": {DenyKinds: deny, Mode: "LEARN"}}); err != nil {
		t.Error(err)
	}
	if _, err := CompileFirewall(nil); err != nil {
		t.Error(err)
	}
}

func TestFirewallNil(t *testing.T) {
	var fw *Firewall
	if v := fw.Check("api", []Statement{{Kind: "DROP TABLE"}}, "", 10); v != nil {
		t.Error(v)
	}
	if fw.Mode("api") != "off" || fw.Learned("api") != nil {
		t.Error("nil firewall has state")
	}
}
