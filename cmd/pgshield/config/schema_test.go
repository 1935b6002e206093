package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The lines of minimal: 1 is empty, 2 users, 3 the user, 4 databases,
// 5 leads; what a test appends starts at line 6.

// Each problem is one line naming the key as written, its line and what
// the key takes; all problems of the file come at once.
func TestReadableErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		want []string // exactly the lines of the error, in order
	}{
		{"misspelled key", minimal + "pool:\n  wait_timout: 30s\n",
			[]string{"pool.wait_timout (line 7): unknown key; did you mean wait_timeout?"}},
		{"key at the wrong level", minimal + "wait_timeout: 30s\n",
			[]string{"wait_timeout (line 6): unknown key; did you mean pool.wait_timeout?"}},
		{"unknown top-level key", minimal + "lisen: 127.0.0.1:1\nfrobnicate: 1\n",
			[]string{"lisen (line 6): unknown key; did you mean listen?", "frobnicate (line 7): unknown key"}},
		{"unknown key in a service", minimal + "services:\n  analytics: {max_conections: 3}\n",
			[]string{"services.analytics.max_conections (line 7): unknown key; did you mean max_connections?"}},
		{"unknown key in a user", "users:\n  - name: app\n    servce: api\n",
			[]string{"users[0].servce (line 3): unknown key; did you mean service?"}},
		{"unknown key in server_tls", "databases:\n  leads:\n    primary: 127.0.0.1:5432\n    server_tls: {mode: disable, ca_fle: ca.crt}\n",
			[]string{"databases.leads.server_tls.ca_fle (line 4): unknown key; did you mean ca_file?"}},
		{"wrong duration", minimal + "pool:\n  connect_timeout: 5 seconds\n",
			[]string{`pool.connect_timeout (line 7): want a duration such as 30s, got "5 seconds"`}},
		{"duration without a unit", minimal + "shutdown_timeout: 30\n",
			[]string{`shutdown_timeout (line 6): want a duration such as 30s, got "30" (a duration needs a unit: 30s)`}},
		{"wrong integer", minimal + "max_client_connections: lots\nservices: {api: {max_connections: 2.5}}\n",
			[]string{`max_client_connections (line 6): want a whole number, got "lots"`,
				`services.api.max_connections (line 7): want a whole number, got "2.5"`}},
		{"wrong boolean", minimal + "disable_stats: maybe\n",
			[]string{`disable_stats (line 6): want true or false, got "maybe"`}},
		{"list where a mapping is needed", minimal + "pool: [30s]\nservices: [api]\n",
			[]string{"pool (line 6): want a mapping of keys, got a list",
				"services (line 7): want a mapping of names to their settings, got a list"}},
		{"mapping where a string is needed", "databases:\n  leads: {primary: 127.0.0.1:5432, replicas: [{host: b}]}\n",
			[]string{"databases.leads.replicas[0] (line 2): want a string, got a mapping"}},
		{"setting one level too high", minimal + "services:\n  max_connections: 4\n",
			[]string{`services.max_connections (line 7): want the settings of an entry named "max_connections", got "4"; max_connections is set per entry: services.<name>.max_connections`}},
		{"key given twice", minimal + "pool:\n  wait_timeout: 1s\n  wait_timeout: 2s\n",
			[]string{"pool.wait_timeout (line 8): given twice (first at line 7)"}},
		{"not a mapping", "just text\n",
			[]string{`line 1: want a mapping of keys, got "just text"`}},
		{"several problems at once", "users:\n  - {name: a, admn: true}\npool: {wait_timout: 1s, breaker_failures: x}\nlog: {level: [debug]}\n",
			[]string{
				"users[0].admn (line 2): unknown key; did you mean admin?",
				"pool.wait_timout (line 3): unknown key; did you mean wait_timeout?",
				`pool.breaker_failures (line 3): want a whole number, got "x"`,
				"log.level (line 4): want a string, got a list",
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatal("want an error")
			}
			if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, tc.want) {
				t.Errorf("got\n%s\nwant\n%s", err, strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestMergesAndAliasesAreAccepted(t *testing.T) {
	doc := minimal + "services:\n  reports: &small {max_connections: 3, min_connections: 1}\n  exports: {<<: *small, min_connections: 0}\n"
	f, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if e := f.Pools.Services["exports"]; e.MaxConnections != 3 || e.MinConnections != 0 {
		t.Errorf("exports: %+v", e)
	}
}

func TestSecretValuesAreNotEchoed(t *testing.T) {
	for _, doc := range []string{
		"users:\n  - {name: app, password: !!int hunter2}\n",
		"users:\n  - {name: app, pasword: hunter2}\n",
		"databases:\n  leads: {primary: 127.0.0.1:5432, password: [hunter2]}\n",
		"databases:\n  leads: {primary: 127.0.0.1:5432, password: {hunter2: x}}\n",
	} {
		_, err := Parse([]byte(doc))
		if err == nil {
			t.Fatalf("%q: want an error", doc)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("password echoed: %v", err)
		}
		if !strings.Contains(err.Error(), "password") && !strings.Contains(err.Error(), "pasword") {
			t.Errorf("error does not name the key: %v", err)
		}
	}
}

// A key present with 0 means 0 where 0 means something, and is refused
// where it does not, instead of silently becoming the default.
func TestExplicitZeros(t *testing.T) {
	f, err := Parse([]byte(minimal + "max_retries: 0\nservices:\n  analytics: {min_connections: 0}\n  api: {min_connections: ~}\n  reports: {max_connections: 1, min_connections: 0}\nrouting: {max_replica_lag_bytes: 0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a := f.Pools.Services["analytics"]; a.MinConnections != 0 || a.MaxConnections != 5 {
		t.Errorf("analytics with min_connections 0: %+v", a)
	}
	if a := f.Pools.Services["api"]; a.MinConnections != 5 {
		t.Errorf("api with a null min_connections: %+v", a)
	}
	if r := f.Pools.Services["reports"]; r.MinConnections != 0 || r.MaxConnections != 1 {
		t.Errorf("reports: %+v", r)
	}
	if f.Proxy.MaxRetries != -1 {
		t.Errorf("max_retries 0: got %d, want -1 (never)", f.Proxy.MaxRetries)
	}
	if f.Routing.MaxReplicaLagBytes != 0 {
		t.Errorf("max_replica_lag_bytes 0: %d", f.Routing.MaxReplicaLagBytes)
	}

	f, err = Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if a := f.Pools.Services["analytics"]; a.MinConnections != 2 {
		t.Errorf("analytics by default: %+v", a)
	}
	if f.Proxy.MaxRetries != 3 {
		t.Errorf("max_retries by default: %d", f.Proxy.MaxRetries)
	}

	// An explicit min above an explicit max is not lowered.
	if _, err := Parse([]byte(minimal + "services: {analytics: {max_connections: 1, min_connections: 2}}\n")); err == nil ||
		!strings.Contains(err.Error(), "services.analytics.min_connections must be between 0 and max_connections (1) (line 6)") {
		t.Errorf("min above max: %v", err)
	}

	_, err = Parse([]byte(minimal + "pool:\n  wait_timeout: 0s\n  breaker_failures: 0\nmax_client_connections: 0\nservices: {reports: {max_connections: 0}}\nauth_type: kerberos\n"))
	if err == nil {
		t.Fatal("explicit zeros accepted")
	}
	want := []string{
		"pool.wait_timeout (line 7): must be positive, not 0s; remove the key for the default 30s",
		"pool.breaker_failures (line 8): must be positive, not 0; remove the key for the default 5",
		"max_client_connections (line 9): must be positive, not 0; remove the key for the default 10000",
		"services.reports.max_connections (line 10): must be positive, not 0; remove the key for the default 10",
		`auth_type "kerberos": want scram-sha-256, md5 or trust (line 11)`,
	}
	if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", err, strings.Join(want, "\n"))
	}
}

func TestValidateErrorsGetTheirLine(t *testing.T) {
	_, err := Parse([]byte(minimal + "pool: {wait_timeout: -1s}\nservices:\n  api: {pool_mode: statement}\n"))
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{
		"pool.wait_timeout must be positive (line 6)",
		`services.api.pool_mode "statement": want session or transaction (line 8)`,
	} {
		if !slices.Contains(strings.Split(err.Error(), "\n"), want) {
			t.Errorf("no line %q in\n%v", want, err)
		}
	}
	// Not in the file: the nearest enclosing key gives the line.
	_, err = Parse([]byte("databases:\n  leads: {primary: 127.0.0.1:5432}\n"))
	if err == nil || !strings.Contains(err.Error(), "databases.leads.user is required (line 2)") {
		t.Errorf("missing user: %v", err)
	}
}

func TestLoadPutsEachProblemOnItsOwnLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pgshield.yaml")
	if err := os.WriteFile(path, []byte("lisen: x\nlog: {levl: info}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	want := path + ":\nlisen (line 1): unknown key; did you mean listen?\nlog.levl (line 2): unknown key; did you mean level?"
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"", "abc", 3}, {"abc", "abc", 0},
		{"wait_timout", "wait_timeout", 1}, {"tsl", "tls", 1},
		{"lisen", "listen", 1}, {"kitten", "sitting", 3}, {"ca", "abc", 3},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if got := editDistance(tc.b, tc.a); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.b, tc.a, got, tc.want)
		}
	}
	if got := suggest("frobnicate", []string{"listen", "pool.wait_timeout"}); got != "" {
		t.Errorf("far-off key got a suggestion: %q", got)
	}
}

// Whatever the bytes, Parse returns a configuration or an error: it never
// panics (the schema walk follows the node tree the YAML parser built).
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte(minimal + "pool: {wait_timout: 5 seconds}\nservices: {analytics: {min_connections: 0}}\n"))
	f.Add([]byte("users: [{name: a, password: b}, [1, 2]]\ndatabases: {x: {replicas: [{a: 1}]}}\n"))
	f.Add([]byte("a: &x {b: *x}\n<<: *x\n"))
	f.Add([]byte("services:\n  api:\n    max_connections: 2.5\n  api:\n    pool_mode: session\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err == nil && cfg == nil {
			t.Fatal("no configuration and no error")
		}
	})
}
