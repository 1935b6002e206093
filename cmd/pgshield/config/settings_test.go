package config

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func parsed(t *testing.T, doc string) *File {
	t.Helper()
	f, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// set applies one override and fails the test on an error.
func set(t *testing.T, f *File, key, value string) *File {
	t.Helper()
	next, skipped, err := f.Apply([]Override{{Key: key, Value: value}})
	if err != nil || len(skipped) > 0 {
		t.Fatalf("SET %s = %s: %v (skipped %v)", key, value, err, skipped)
	}
	return next
}

// Every setting the console's SET took before it went through the file's
// keys is still taken, with the same value syntax; the original File is
// not changed.
func TestSetTakesTheKeysOfTheFile(t *testing.T) {
	f := parsed(t, minimal+"services:\n  api: {max_connections: 8, min_connections: 2}\n")
	before := f.Clone()
	for _, tc := range []struct {
		key, value string
		got        func(*File) any
		want       any
	}{
		{"slow_query_threshold", "2s", func(f *File) any { return f.Proxy.SlowQueryThreshold }, 2 * time.Second},
		{"long_transaction_threshold", "1500", func(f *File) any { return f.Proxy.LongTransactionThreshold }, 1500 * time.Millisecond},
		{"client_login_timeout", "5s", func(f *File) any { return f.Proxy.ClientLoginTimeout }, 5 * time.Second},
		{"max_client_connections", "50", func(f *File) any { return f.Proxy.MaxClientConnections }, 50},
		{"max_retries", "5", func(f *File) any { return f.Proxy.MaxRetries }, 5},
		{"max_retries", "0", func(f *File) any { return f.Proxy.MaxRetries }, -1},
		{"disable_stats", "on", func(f *File) any { return f.Proxy.DisableStats }, true},
		{"disable_stats", "yes", func(f *File) any { return f.Proxy.DisableStats }, true},
		{"pool.wait_timeout", "500ms", func(f *File) any { return f.Pools.Pool.WaitTimeout }, 500 * time.Millisecond},
		{"wait_timeout", "750", func(f *File) any { return f.Pools.Pool.WaitTimeout }, 750 * time.Millisecond},
		{"pool.idle_timeout", "1m", func(f *File) any { return f.Pools.Pool.IdleTimeout }, time.Minute},
		{"idle_timeout", "2m", func(f *File) any { return f.Pools.Pool.IdleTimeout }, 2 * time.Minute},
		{"services.api.max_connections", "7", func(f *File) any { return f.Pools.Services["api"].MaxConnections }, 7},
		{"services.api.min_connections", "0", func(f *File) any { return f.Pools.Services["api"].MinConnections }, 0},
		{"services.api.transaction_timeout", "1s", func(f *File) any { return f.Pools.Services["api"].TransactionTimeout }, time.Second},
		{"services.api.idle_in_transaction_timeout", "0", func(f *File) any { return f.Pools.Services["api"].IdleInTransactionTimeout }, time.Duration(0)},
		{"Pool.Wait_Timeout", "3s", func(f *File) any { return f.Pools.Pool.WaitTimeout }, 3 * time.Second},
		// Keys SET did not take before: routing, logging, the parse cache.
		{"routing.max_replica_lag", "3s", func(f *File) any { return f.Routing.MaxReplicaLag }, 3 * time.Second},
		{"routing.read_your_writes", "off", func(f *File) any { return f.Routing.ReadYourWrites }, "off"},
		{"log.level", "debug", func(f *File) any { return f.Log.Level }, "debug"},
		{"parse_cache_size", "100", func(f *File) any { return f.Proxy.ParseCacheSize }, 100},
	} {
		next := set(t, f, tc.key, tc.value)
		if got := tc.got(next); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SET %s = %s: got %v, want %v", tc.key, tc.value, got, tc.want)
		}
	}
	if !reflect.DeepEqual(f, before) {
		t.Error("Apply changed the File it was called on")
	}
	if k, err := f.Key("Wait_Timeout"); err != nil || k != "pool.wait_timeout" {
		t.Errorf("Key(Wait_Timeout) = %q, %v", k, err)
	}
}

// A default service nobody configured stays on demand when a SET sizes it,
// as it did when SET changed the pools directly.
func TestSetKeepsWhatTheFileDoesNotSay(t *testing.T) {
	f := parsed(t, minimal)
	next := set(t, f, "services.analytics.max_connections", "3")
	if a := next.Pools.Services["analytics"]; a.MaxConnections != 3 || !a.MinOnDemand || a.MinConnections != 2 {
		t.Errorf("analytics after SET: %+v", a)
	}
}

func TestSetRefusals(t *testing.T) {
	f := parsed(t, minimal)
	for _, tc := range []struct {
		key, value string
		want       string // in the message
		hint       string
	}{
		{"pool.wait_timout", "1s", `unknown setting "pool.wait_timout"; did you mean pool.wait_timeout?`, "SHOW CONFIG"},
		{"frobnicate", "1", `unknown setting "frobnicate"`, "SHOW CONFIG"},
		{"services.nope.max_connections", "3", `unknown service in "services.nope.max_connections"`, "api, "},
		{"databases.nope.user", "x", `unknown database in "databases.nope.user"`, "leads"},
		{"pool.wait_timeout", "soon", `invalid value "soon" for pool.wait_timeout: want a duration such as 500ms or 30s`, ""},
		{"pool.wait_timeout", "-5", "want a duration that is not negative", ""},
		{"pool.wait_timeout", "0", "must be positive, not 0s (0 would mean the default, 30s)", ""},
		{"max_client_connections", "lots", `invalid value "lots" for max_client_connections: want an integer`, ""},
		{"disable_stats", "maybe", "want on or off", ""},
		{"users", "x", "users is a list", ""},
		{"pool", "x", "pool is a section: SET takes one of its keys, such as pool.connect_timeout", ""},
		{"services", "x", "services is a section: SET takes a key of one of its entries, such as services.<name>.max_connections", ""},
		{"pool.wait_timeout.x", "1", "pool.wait_timeout has no keys", ""},
		{"services.api.min_on_demand", "true", `unknown setting "services.api.min_on_demand"`, ""},
		{"services.api.pool_mode", "statement", `services.api.pool_mode "statement": want session or transaction`, ""},
		{"services.api.min_connections", "50", "services.api.min_connections must be between 0 and max_connections (20)", ""},
		{"log.level", "loud", `log.level "loud"`, ""},
	} {
		// As the console's SET does: the key first, then the value.
		_, err := f.Key(tc.key)
		if err == nil {
			_, _, err = f.Apply([]Override{{Key: tc.key, Value: tc.value}})
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SET %s = %s: %v, want %q", tc.key, tc.value, err, tc.want)
			continue
		}
		var se *SettingError
		if tc.hint != "" && (!errors.As(err, &se) || !strings.Contains(se.Hint, tc.hint)) {
			t.Errorf("SET %s = %s: hint %v, want %q", tc.key, tc.value, err, tc.hint)
		}
	}
}

// On a reload, a SET naming a service the file no longer has is left
// out; the others apply.
func TestApplySkipsEntriesTheFileNoLongerHas(t *testing.T) {
	f := parsed(t, minimal)
	sets := []Override{{"services.gone.max_connections", "3"}, {"pool.wait_timeout", "2s"}}
	next, skipped, err := f.Apply(sets)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(skipped, sets[:1]) || next.Pools.Pool.WaitTimeout != 2*time.Second {
		t.Errorf("skipped %v, wait_timeout %s", skipped, next.Pools.Pool.WaitTimeout)
	}
}

func TestRestartNeeded(t *testing.T) {
	f := parsed(t, minimal)
	other := parsed(t, minimal+"listen: 127.0.0.1:7000\nlog: {format: console, level: debug}\nmax_retries: 5\n")
	err := f.RestartNeeded(other)
	var re *RestartError
	if !errors.As(err, &re) {
		t.Fatalf("listen and log.format changed: %v", err)
	}
	want := `listen changed from "127.0.0.1:6432" to "127.0.0.1:7000"; log.format changed from "json" to "console": only a restart changes those settings`
	if err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
	if err := f.RestartNeeded(parsed(t, minimal+"log: {level: debug}\nmax_retries: 5\nrouting: {read_your_writes: off}\n")); err != nil {
		t.Errorf("only run-time keys changed: %v", err)
	}
	for _, k := range []string{"listen", "admin_listen", "metrics_listen", "log.format", "disable_classification", "query_stats_size"} {
		if !Fixed(k) {
			t.Errorf("%s is not fixed", k)
		}
	}
	if Fixed("log.level") || Fixed("parse_cache_size") {
		t.Error("log.level or parse_cache_size fixed")
	}
}

func TestCloneIsDeep(t *testing.T) {
	f := parsed(t, "users: [{name: app, password: x}]\ndatabases:\n  leads: {primary: 127.0.0.1:5432, replicas: [127.0.0.1:5433], user: postgres}\n")
	c := f.Clone()
	c.Proxy.Users[0].Name = "changed"
	db := c.Pools.Databases["leads"]
	db.Replicas[0] = "changed"
	c.Pools.Services["api"] = c.Pools.Services["analytics"]
	if f.Proxy.Users[0].Name == "changed" || f.Pools.Databases["leads"].Replicas[0] == "changed" || f.Pools.Services["api"].MaxConnections != 20 {
		t.Error("the clone shares lists or maps with the original")
	}
}
