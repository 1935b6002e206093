package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/internal/example"
	"github.com/pgshield/pgshield/policy"
)

// benchPolicy is the example policy as the scenario writes it, compiled.
func benchPolicy(t *testing.T) *policy.Policy {
	t.Helper()
	pf, err := policyForDatabase([]byte(example.Policy()), examplePolicyDatabase, benchDatabase)
	if err != nil {
		t.Fatal(err)
	}
	p, err := config.ParsePolicy(pf)
	if err != nil {
		t.Fatalf("the rewritten policy does not compile: %v\n%s", err, pf)
	}
	return p
}

func TestPolicyForDatabase(t *testing.T) {
	p := benchPolicy(t)
	for _, table := range []string{"leads", "agents", "partnerships"} {
		if p.Table(benchDatabase, table) == nil {
			t.Errorf("%s.%s has no rules after the rename", benchDatabase, table)
		}
		if p.Table(examplePolicyDatabase, table) != nil {
			t.Errorf("%s.%s still has rules after the rename", examplePolicyDatabase, table)
		}
	}
	pf, _ := policyForDatabase([]byte(example.Policy()), examplePolicyDatabase, benchDatabase)
	if !strings.Contains(string(pf), "CONVERTED and REJECTED are final") {
		t.Errorf("the comments are lost:\n%s", pf)
	}

	for _, tc := range []struct{ src, from, to string }{
		{"databases: {app: {}}", "nosuch", "bench"},
		{"databases: {app: {}, bench: {}}", "app", "bench"},
		{"firewall: {}", "app", "bench"},
		{"- a list", "app", "bench"},
		{"databases: [app]", "app", "bench"},
	} {
		if out, err := policyForDatabase([]byte(tc.src), tc.from, tc.to); err == nil {
			t.Errorf("%q, %s → %s: no error, got\n%s", tc.src, tc.from, tc.to, out)
		}
	}
}

// The configuration of the instance with the policy loads it from beside
// itself; the one without has none.
func TestPolicyConfigLoads(t *testing.T) {
	dir := t.TempDir()
	pf, err := policyForDatabase([]byte(example.Policy()), examplePolicyDatabase, benchDatabase)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), pf, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, opts := range []shieldOptions{{policyFile: "policy.yaml"}, {}} {
		path := filepath.Join(dir, "pgshield.yaml")
		if err := os.WriteFile(path, []byte(withListeners(7001, 7002, 7003, shieldBody("127.0.0.1:5432", opts))), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := config.Load(path)
		if err != nil {
			t.Fatalf("%+v: %v", opts, err)
		}
		if opts.policyFile == "" {
			if f.Policy != nil {
				t.Errorf("a policy without policy_file")
			}
			continue
		}
		if f.Policy == nil {
			t.Fatal("policy_file set, no policy loaded")
		}
		if !f.Policy.Governs(benchDatabase, "api", "leads") {
			t.Error("leads is not governed for the bench's service")
		}
		if f.Policy.Governs(benchDatabase, "api", "audit_log") {
			t.Error("audit_log is governed: the ungoverned workload would not be")
		}
	}
}

// Every value the governed workload writes is one the policy accepts, in
// every column it writes, which the policy governs.
func TestLeadValuesAreValid(t *testing.T) {
	p := benchPolicy(t)
	cols := []string{"email", "phone", "quality_score", "status", "source"}
	tr := p.Table(benchDatabase, "leads")
	for _, c := range cols {
		if tr.Index(c) < 0 {
			t.Errorf("column %s: no rule reads it", c)
		}
	}
	text := func(s string) policy.Value { return policy.Value{Kind: policy.ValueText, Text: []byte(s)} }
	for _, email := range []string{fmt.Sprintf(leadFirstEmail, 1), fmt.Sprintf(leadFirstEmail, 50), fmt.Sprintf(leadNextEmail, 1), fmt.Sprintf(leadNextEmail, int64(1)<<62)} {
		for _, phone := range []int64{leadPhoneMin, leadPhoneMax} {
			for _, score := range []int{leadScoreMin, leadScoreMax} {
				vals := []policy.Value{text(email), text(strconv.FormatInt(phone, 10)), text(strconv.Itoa(score)), text(leadStatus), text(leadSource)}
				if v := p.CheckRow(benchDatabase, "api", "leads", policy.WriteInsert, cols, vals); v != nil {
					t.Errorf("%s %d %d: %v", email, phone, score, v)
				}
			}
		}
	}
	// And the check the scenario relies on is refused.
	vals := []policy.Value{text("not-an-email")}
	if v := p.CheckRow(benchDatabase, "api", "leads", policy.WriteInsert, cols[:1], vals); v == nil || v.Code+" "+v.Constraint != expectedRefusal {
		t.Errorf("a malformed email: %v, want %s", v, expectedRefusal)
	}
}

func TestLeadScript(t *testing.T) {
	for _, tc := range []struct{ mode, values string }{
		{"prepared", "VALUES (:email, :phone, :score, 'RECEIVED', 'web')"},
		{"simple", "VALUES (':email', ':phone', :score, 'RECEIVED', 'web')"},
	} {
		s := leadScript(tc.mode)
		for _, want := range []string{
			tc.values,
			"INSERT INTO leads (email, phone, quality_score, status, source) ",
			"RETURNING 'n' || id || '@example.com' AS email \\gset\n",
			"SELECT 'c' || (:client_id)::text || '@example.com' AS email \\gset\n",
			"\\set phone random(14150000000, 14159999999)\n",
			"\\set score random(0, 100)\n",
			"\\if :started = 0\n",
		} {
			if !strings.Contains(s, want) {
				t.Errorf("%s script lacks %q:\n%s", tc.mode, want, s)
			}
		}
	}
	if s := auditScript("simple"); !strings.Contains(s, "INSERT INTO audit_log") || s != auditScript("prepared") {
		t.Errorf("audit script:\n%s", s)
	}
}

func policyResults() *policyResult {
	r := &policyResult{duration: 8 * time.Second, rounds: 2,
		check: policyCheck{onLiteral: expectedRefusal, onParam: expectedRefusal, offLiteral: "accepted", offParam: "accepted"}}
	run := func(tps float64, cpuMs int) measure {
		return measure{tps: tps, latency: 2, txns: int(8 * tps), cpu: time.Duration(cpuMs) * time.Millisecond, cpuRead: true}
	}
	// leads prepared: on 9600 and 9000 against 10000 and 10000: rounds
	// 0.96 and 0.90, median 0.93 (missed). CPU 2400 ms / 76800 tx = 31.25
	// µs and 2160 / 72000 = 30 against 2000 / 80000 = 25: 1.25 and 1.2.
	r.runs.add("leads", "prepared", tPolicyOn, run(9600, 2400))
	r.runs.add("leads", "prepared", tPolicyOn, run(9000, 2160))
	r.runs.add("leads", "prepared", tPolicyOff, run(10000, 2000))
	r.runs.add("leads", "prepared", tPolicyOff, run(10000, 2000))
	// leads simple: 0.98 and 0.96, met in every round.
	r.runs.add("leads", "simple", tPolicyOn, run(9800, 2000))
	r.runs.add("leads", "simple", tPolicyOn, run(9600, 2000))
	r.runs.add("leads", "simple", tPolicyOff, run(10000, 2000))
	r.runs.add("leads", "simple", tPolicyOff, run(10000, 2000))
	// audit_log: 1.02 and 0.98 (1 within), and 1.05 and 1.04 (beyond).
	r.runs.add("audit_log", "prepared", tPolicyOn, run(10200, 2000))
	r.runs.add("audit_log", "prepared", tPolicyOn, run(9800, 2000))
	r.runs.add("audit_log", "prepared", tPolicyOff, run(10000, 2000))
	r.runs.add("audit_log", "prepared", tPolicyOff, run(10000, 2000))
	r.runs.add("audit_log", "simple", tPolicyOn, run(10500, 2000))
	r.runs.add("audit_log", "simple", tPolicyOn, run(10400, 2000))
	r.runs.add("audit_log", "simple", tPolicyOff, run(10000, 2000))
	r.runs.add("audit_log", "simple", tPolicyOff, run(10000, 2000))
	return r
}

func TestPolicyMarkdown(t *testing.T) {
	md := policyResults().markdown()
	r := policyResults()
	r.firewall = true
	if md := r.markdown(); !strings.Contains(md, "firewall rules for service api, so this statement is still analysed") {
		t.Errorf("with a firewall, markdown:\n%s", md)
	}
	for _, want := range []string{
		"## Validation policy cost",
		"Goal (issue): with the policy, TPS of the governed workload is at least 0.95 × without it.",
		"`pgbench -f <script> -M <mode> -c 50 -j 2 -T 8`, 2 rounds",
		"got `23514 leads_email_type` (as a literal) and `23514 leads_email_type` (as a Bind parameter) from the process with the policy, `accepted` and `accepted`",
		"| leads | prepared | 9300 | 10000 | 0.930 | 0.90–0.96 | 30.62 | 25.00 | 1.225 | 1.20–1.25 | missed | 0 / 0 |",
		"| leads | simple | 9700 | 10000 | 0.970 | 0.96–0.98 | 25.78 | 25.00 | 1.031 | 1.02–1.04 | met in every round | 0 / 0 |",
		"| audit_log | prepared | 10000 | 10000 | 1.000 | 0.98–1.02 |",
		"| none; 1 lies within the rounds' range | 0 / 0 |",
		"| none; 1 lies outside the rounds' range | 0 / 0 |",
		"a table the policy has no rules for: the proxy looks the table up and judges nothing.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestPolicyGoal(t *testing.T) {
	for _, tc := range []struct {
		tps  []float64
		want string
	}{
		{nil, "n/a"},
		{[]float64{0.96, 0.97, 0.99}, "met in every round"},
		{[]float64{0.94, 0.96, 0.97}, "met by the median; not in every round (lowest 0.94)"},
		{[]float64{0.90, 0.94, 0.99}, "missed"},
	} {
		f := policyFigures{tps: tc.tps, medTPS: median(tc.tps)}
		if got := f.goal(true); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.tps, got, tc.want)
		}
	}
}

// A failed scenario says why instead of a table.
func TestPolicyMarkdownFailed(t *testing.T) {
	md := policyResult{err: fmt.Errorf("no pgbench")}.markdown()
	if !strings.Contains(md, "The policy scenario failed: no pgbench") || strings.Contains(md, "| workload |") {
		t.Errorf("markdown:\n%s", md)
	}
}
