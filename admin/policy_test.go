package admin

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/pgshield/pgshield/policy"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
)

// fakeAllowLists is Settings that can save allow lists: it records what
// FIREWALL SAVE asked and writes nothing.
type fakeAllowLists struct {
	saved []string // "service path fingerprint=query,…"
	err   error
}

func (f *fakeAllowLists) Reload() error         { return nil }
func (f *fakeAllowLists) Set(_, _ string) error { return nil }
func (f *fakeAllowLists) Reset(string) error    { return nil }
func (f *fakeAllowLists) Overridden() []string  { return nil }
func (f *fakeAllowLists) SaveAllowList(path, service string, fps []policy.FingerprintInfo) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	var s []string
	for _, fp := range fps {
		s = append(s, fp.Fingerprint+"="+fp.Query)
	}
	f.saved = append(f.saved, service+" "+path+" "+strings.Join(s, ","))
	return len(fps) + 1, nil
}

const testPolicy = `
databases:
  app:
    tables:
      leads:
        columns:
          email: {type: email, required: true}
          source: {pattern: '^[a-z]+$', services: [api]}
        rows:
          - {name: leads_named, cel: "row.email != ''"}
firewall:
  api: {mode: learn, allow_file: /policies/allow-api.txt, deny: [DROP]}
  web: {mode: learn}
  jobs: {deny_functions: [dblink]}
  batch: {mode: enforce, allow: [00000000000000aa]}
`

// liveWithPolicy is a Live over a proxy with the policy src in force (""
// none) and services api and reports configured.
func liveWithPolicy(t *testing.T, src string, settings Settings) (*Live, *policy.Policy) {
	t.Helper()
	log := zap.NewNop()
	mcfg := poolmgr.Config{
		Databases: map[string]poolmgr.DatabaseConfig{
			"app": {Primary: "127.0.0.1:1", DBName: "app", User: "u", Password: "p", ServerTLS: poolmgr.ServerTLS{Mode: "disable"}},
		},
		Services: map[string]poolmgr.ServiceConfig{"api": {}, "reports": {}},
	}.WithDefaults()
	pools, err := poolmgr.New(mcfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pools.Close(context.Background()) })
	srv, err := proxy.New(proxy.Config{Listen: "127.0.0.1:0", Users: []proxy.User{{Name: "admin", Password: "x", Admin: true}}}, pools, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	var p *policy.Policy
	if src != "" {
		var f policy.File
		if err := yaml.Unmarshal([]byte(src), &f); err != nil {
			t.Fatal(err)
		}
		if p, err = policy.Compile(f); err != nil {
			t.Fatal(err)
		}
		srv.SetPolicy(p, proxy.NewPolicyCounts(nil))
	}
	return NewLive(srv, pools, nil, nil, settings, "test", nil), p
}

func TestLivePolicyAndFirewall(t *testing.T) {
	l, _ := liveWithPolicy(t, "", nil)
	if rows := l.Policy(); rows != nil {
		t.Errorf("SHOW POLICY without a policy: %v, want no rows", rows)
	}
	if rows := l.Firewall(); rows != nil {
		t.Errorf("SHOW FIREWALL without a policy: %v, want no rows", rows)
	}

	l, p := liveWithPolicy(t, testPolicy, nil)
	var rules []string
	for _, r := range l.Policy() {
		rules = append(rules, strings.Join([]string{r.Table, r.Column, r.Rule, r.Kind, r.Services}, "|"))
		if r.Checks != 0 || r.Refusals != 0 {
			t.Errorf("%s: checks %d refusals %d before any statement", r.Rule, r.Checks, r.Refusals)
		}
	}
	want := []string{
		"leads||leads_named|row|",
		"leads|email|leads_email_required|required|",
		"leads|email|leads_email_type|type|",
		"leads|source|leads_source_pattern|pattern|api",
	}
	if !slices.Equal(rules, want) {
		t.Errorf("SHOW POLICY rules\n got %q\nwant %q", rules, want)
	}

	fw := p.Firewall()
	fw.CheckNormalized("api", []policy.Statement{{Kind: "SELECT"}}, "0123456789abcdef", "SELECT * FROM leads WHERE id = $1", 40)
	var rows []string
	for _, r := range l.Firewall() {
		rows = append(rows, strings.Join([]string{r.Service, r.Mode, r.Fingerprint, r.Source, r.Query, r.Rules}, "|"))
	}
	want = []string{
		"api|learn|0123456789abcdef|learned|SELECT * FROM leads WHERE id = $1|deny: DROP",
		"batch|enforce|00000000000000aa|allowed||",
		"jobs|off||||deny_functions: dblink",
		"web|learn||||",
	}
	if !slices.Equal(rows, want) {
		t.Errorf("SHOW FIREWALL\n got %q\nwant %q", rows, want)
	}
}

func TestLiveFirewallSave(t *testing.T) {
	code := func(err error) string {
		var e *Error
		if !errors.As(err, &e) {
			return "not an *Error: " + err.Error()
		}
		return e.Code
	}
	l, _ := liveWithPolicy(t, "", &fakeAllowLists{})
	if _, err := l.FirewallSave("api"); err == nil || code(err) != CodeObjectNotInPrerequisiteState {
		t.Errorf("without a policy: %v, want 55000", err)
	}

	settings := &fakeAllowLists{}
	l, p := liveWithPolicy(t, testPolicy, settings)
	for _, tc := range []struct{ service, code, message string }{
		{"nope", CodeInvalidParameterValue, `unknown service "nope"`},
		{"reports", CodeObjectNotInPrerequisiteState, "service reports has no firewall rules"},
		{"jobs", CodeObjectNotInPrerequisiteState, "the firewall of service jobs is in mode off, not learn"},
		{"batch", CodeObjectNotInPrerequisiteState, "in mode enforce, not learn"},
		{"web", CodeObjectNotInPrerequisiteState, "firewall.web has no allow_file"},
		// Every service in learn mode: web has no allow_file, so none is written.
		{"", CodeObjectNotInPrerequisiteState, "firewall.web has no allow_file"},
	} {
		_, err := l.FirewallSave(tc.service)
		if err == nil || code(err) != tc.code || !strings.Contains(err.Error(), tc.message) {
			t.Errorf("FIREWALL SAVE %q: %v, want %s %q", tc.service, err, tc.code, tc.message)
		}
	}
	if len(settings.saved) != 0 {
		t.Errorf("refused saves wrote %q", settings.saved)
	}

	fw := p.Firewall()
	fw.CheckNormalized("api", []policy.Statement{{Kind: "SELECT"}}, "0123456789abcdef", "SELECT $1", 10)
	fw.CheckNormalized("api", []policy.Statement{{Kind: "DROP TABLE"}}, "00000000000000ff", "DROP TABLE t", 10) // refused: not learned
	saved, err := l.FirewallSave("api")
	if err != nil {
		t.Fatal(err)
	}
	if want := []SavedAllowList{{Service: "api", Path: "/policies/allow-api.txt", Learned: 1, Total: 2}}; !slices.Equal(saved, want) {
		t.Errorf("saved %+v, want %+v", saved, want)
	}
	if want := []string{"api /policies/allow-api.txt 0123456789abcdef=SELECT $1"}; !slices.Equal(settings.saved, want) {
		t.Errorf("SaveAllowList calls %q, want %q", settings.saved, want)
	}

	settings.err = errors.New("permission denied")
	if _, err := l.FirewallSave("api"); err == nil || code(err) != CodeObjectNotInPrerequisiteState || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("a failed write: %v, want 55000 with the cause", err)
	}

	l, _ = liveWithPolicy(t, testPolicy, nil) // Settings that cannot save
	if _, err := l.FirewallSave("api"); err == nil || code(err) != CodeObjectNotInPrerequisiteState {
		t.Errorf("without AllowLists: %v, want 55000", err)
	}
}
