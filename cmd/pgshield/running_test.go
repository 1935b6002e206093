package main

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/admin"
	"github.com/pgshield/pgshield/cmd/pgshield/config"
)

const runningBase = `
users:
  - {name: app, password: secret}
databases:
  leads: {primary: 127.0.0.1:5432, user: postgres, password: pw}
`

// fakeFile is a configuration file in memory, and the parts: what was
// applied last.
type fakeFile struct {
	mu      sync.Mutex
	text    string
	applied *config.File
	applies int
	fail    error
}

func (f *fakeFile) write(text string) {
	f.mu.Lock()
	f.text = text
	f.mu.Unlock()
}

func (f *fakeFile) load() (*config.File, error) {
	f.mu.Lock()
	text := f.text
	f.mu.Unlock()
	return config.Parse([]byte(text))
}

func (f *fakeFile) apply(_, next *config.File) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.applied = next
	f.applies++
	return nil
}

func newFakeRunning(t *testing.T, text string) (*running, *fakeFile) {
	t.Helper()
	ff := &fakeFile{text: text}
	cfg, err := ff.load()
	if err != nil {
		t.Fatal(err)
	}
	ff.applied = cfg
	return newRunning(cfg, ff.load, ff.apply, zap.NewNop()), ff
}

// A SET and a reload at the same time both hold, whichever runs first,
// and what the parts were given is what is in force.
func TestRunningSetAndReloadConcurrently(t *testing.T) {
	r, ff := newFakeRunning(t, runningBase)
	for i := range 50 {
		var wg sync.WaitGroup
		var setErr, reloadErr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			setErr = r.set("pool.wait_timeout", fmt.Sprint(1000+i))
		}()
		go func() {
			defer wg.Done()
			ff.write(runningBase + fmt.Sprintf("max_client_connections: %d\n", 200+i))
			reloadErr = r.reload("test")
		}()
		wg.Wait()
		if setErr != nil || reloadErr != nil {
			t.Fatalf("iteration %d: SET %v, reload %v", i, setErr, reloadErr)
		}
		cur := r.current()
		if cur.Pools.Pool.WaitTimeout != time.Duration(1000+i)*time.Millisecond || cur.Proxy.MaxClientConnections != 200+i {
			t.Fatalf("iteration %d: wait_timeout %s, max_client_connections %d", i, cur.Pools.Pool.WaitTimeout, cur.Proxy.MaxClientConnections)
		}
		ff.mu.Lock()
		applied := ff.applied
		ff.mu.Unlock()
		if applied != cur {
			t.Fatalf("iteration %d: the parts were given another configuration than the one in force", i)
		}
	}
	if got := r.overridden(); len(got) != 1 || got[0] != "pool.wait_timeout" {
		t.Errorf("overridden %q", got)
	}
}

func TestRunningReset(t *testing.T) {
	r, ff := newFakeRunning(t, runningBase+"pool: {wait_timeout: 10s}\n")
	for _, kv := range [][2]string{{"wait_timeout", "2s"}, {"services.api.max_connections", "6"}, {"max_retries", "0"}} {
		if err := r.set(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.reset("pool.wait_timeout"); err != nil {
		t.Fatal(err)
	}
	cur := r.current()
	if cur.Pools.Pool.WaitTimeout != 10*time.Second || cur.Pools.Services["api"].MaxConnections != 6 || cur.Proxy.MaxRetries != -1 {
		t.Errorf("after RESET pool.wait_timeout: %s %d %d", cur.Pools.Pool.WaitTimeout, cur.Pools.Services["api"].MaxConnections, cur.Proxy.MaxRetries)
	}
	// A reload keeps the remaining SETs, and drops one whose service the
	// file no longer has.
	if err := r.set("services.reports.max_connections", "2"); err == nil {
		t.Error("SET of an unknown service accepted")
	}
	ff.write(runningBase + "pool: {wait_timeout: 11s}\nservices: {reports: {max_connections: 4}}\n")
	if err := r.reload("test"); err != nil {
		t.Fatal(err)
	}
	if err := r.set("services.reports.max_connections", "2"); err != nil {
		t.Fatal(err)
	}
	ff.write(runningBase + "pool: {wait_timeout: 11s}\n")
	if err := r.reload("test"); err != nil {
		t.Fatal(err)
	}
	if got := r.overridden(); len(got) != 2 || got[0] != "services.api.max_connections" || got[1] != "max_retries" {
		t.Errorf("SETs after the service went: %q", got)
	}
	if err := r.reset(""); err != nil {
		t.Fatal(err)
	}
	cur = r.current()
	if len(r.overridden()) != 0 || cur.Pools.Services["api"].MaxConnections != 20 || cur.Proxy.MaxRetries != 3 || cur.Pools.Pool.WaitTimeout != 11*time.Second {
		t.Errorf("after RESET ALL: %q %d %d %s", r.overridden(), cur.Pools.Services["api"].MaxConnections, cur.Proxy.MaxRetries, cur.Pools.Pool.WaitTimeout)
	}
}

// A reload that changes a key fixed at start, or that a part refuses,
// changes nothing; the console gets 55000 for it, 22023 for a bad value.
func TestRunningRefusesWhole(t *testing.T) {
	r, ff := newFakeRunning(t, runningBase)
	old := r.current()
	ff.write(runningBase + "listen: 127.0.0.1:7000\nmax_client_connections: 5\n")
	err := r.reload("test")
	var re *config.RestartError
	if !errors.As(err, &re) || ff.applies != 0 || r.current() != old {
		t.Fatalf("listen changed: %v, %d applies", err, ff.applies)
	}
	if code := consoleCode(t, consoleSettings{r}.Reload()); code != admin.CodeObjectNotInPrerequisiteState {
		t.Errorf("RELOAD with listen changed: %s", code)
	}

	ff.write(runningBase + "max_client_connections: 5\n")
	ff.fail = errors.New("certificate gone")
	if err := r.reload("test"); err == nil || r.current() != old {
		t.Fatalf("a part refused: %v", err)
	}
	if code := consoleCode(t, consoleSettings{r}.Set("max_retries", "2")); code != admin.CodeObjectNotInPrerequisiteState {
		t.Errorf("SET a part refused: %s", code)
	}
	ff.fail = nil
	for _, tc := range []struct{ key, value, code string }{
		{"listen", "127.0.0.1:1", admin.CodeObjectNotInPrerequisiteState},
		{"nope", "1", admin.CodeInvalidParameterValue},
		{"pool.wait_timeout", "soon", admin.CodeInvalidParameterValue},
		{"services.api.min_connections", "99", admin.CodeInvalidParameterValue},
	} {
		if code := consoleCode(t, consoleSettings{r}.Set(tc.key, tc.value)); code != tc.code {
			t.Errorf("SET %s = %s: %s, want %s", tc.key, tc.value, code, tc.code)
		}
	}
	if len(r.overridden()) != 0 || r.current() != old {
		t.Error("a refused SET was kept")
	}
}

func consoleCode(t *testing.T, err error) string {
	t.Helper()
	var e *admin.Error
	if !errors.As(err, &e) {
		t.Fatalf("%v is not an admin.Error", err)
	}
	return e.Code
}
