package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// reloadFile is a configuration for the reload tests; extra is appended
// as it is (routing, log, pool sections …).
type reloadFile struct {
	listen, admin string
	pg, replica   *pgcluster.Cluster
	users         string // list entries besides app and admin
	extra         string
}

func (f reloadFile) write(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(f.render()), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (f reloadFile) render() string {
	replicas := ""
	if f.replica != nil {
		replicas = ", replicas: [" + f.replica.Addr() + "]"
	}
	return fmt.Sprintf(`listen: %s
admin_listen: %s
metrics_listen: 127.0.0.1:0
users:
  - {name: app, password: one}
  - {name: admin, password: secret, admin: true}
%sdatabases:
  app: {primary: %s%s, dbname: postgres, user: %s, password: %s, server_tls: {mode: disable}}
services:
  api: {max_connections: 4, min_connections: 1}
%s`, f.listen, f.admin, f.users, f.pg.Addr(), replicas, f.pg.User, f.pg.Password, f.extra)
}

// console is one connection to the admin console.
type console struct {
	t *testing.T
	c *pgconn.PgConn
}

func dialConsole(ctx context.Context, t *testing.T, addr string) *console {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	c, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=admin password=secret dbname=pgshield sslmode=disable connect_timeout=10", host, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return &console{t: t, c: c}
}

// exec runs one command; the error, if any, is the console's.
func (c *console) exec(ctx context.Context, sql string) error {
	_, err := c.c.Exec(ctx, sql).ReadAll()
	return err
}

func (c *console) must(ctx context.Context, sql string) {
	c.t.Helper()
	if err := c.exec(ctx, sql); err != nil {
		c.t.Fatalf("%s: %v", sql, err)
	}
}

// config is SHOW CONFIG: key → value and source.
func (c *console) config(ctx context.Context) map[string][2]string {
	c.t.Helper()
	res, err := c.c.Exec(ctx, "SHOW CONFIG").ReadAll()
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string][2]string{}
	for _, r := range res[0].Rows {
		var source string
		if len(r) > 2 {
			source = string(r[2])
		}
		out[string(r[0])] = [2]string{string(r[1]), source}
	}
	return out
}

// consoleErr is the SQLSTATE and message of a console error.
func consoleErr(err error) (code, message string) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code, pe.Message
	}
	return "", fmt.Sprint(err)
}

// A reload applies every section: routing (read-your-writes, lag limit),
// the log level and the parse cache size, besides pools and proxy.
func TestReloadAppliesRoutingAndLogging(t *testing.T) {
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	replica, err := pg.AddReplica(ctx, pgcluster.ReplicaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t)
	cfgPath := filepath.Join(t.TempDir(), "pgshield.yaml")
	// The lag checks are an hour apart: after the first, no primary
	// position is newer than a write, so with read_your_writes lsn every
	// read after a write stays on the primary.
	f := reloadFile{listen: freeAddr(t), admin: freeAddr(t), pg: pg, replica: replica,
		extra: "pool: {health_check_interval: 1h}\nrouting: {lag_check_interval: 1h, read_your_writes: lsn}\nlog: {level: info, format: json}\n"}
	f.write(t, cfgPath)
	_, logs, _ := startServe(t, bin, cfgPath)
	waitFor(t, "the proxy to listen", func() bool { return query(ctx, f.listen, "app", "one") == nil })
	a := dialConsole(ctx, t, f.admin)

	app := connectApp(ctx, t, f.listen)
	readAfterWrite := func() bool {
		t.Helper()
		if _, err := app.Exec(ctx, "insert into reload_t values (1)"); err != nil {
			t.Fatal(err)
		}
		var standby bool
		if err := app.QueryRow(ctx, "select pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol).Scan(&standby); err != nil {
			t.Fatal(err)
		}
		return standby
	}
	// Before its first write, the client's reads go to the replica.
	waitFor(t, "reads to reach the replica", func() bool {
		var standby bool
		err := app.QueryRow(ctx, "select pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol).Scan(&standby)
		return err == nil && standby
	})
	if _, err := app.Exec(ctx, "create table if not exists reload_t (id int)"); err != nil {
		t.Fatal(err)
	}
	if readAfterWrite() {
		t.Fatal("read_your_writes lsn: a read right after a write went to the replica")
	}
	cfg := a.config(ctx)
	if cfg["routing.read_your_writes"][0] != "lsn" || cfg["routing.max_replica_lag"][0] != "10s" {
		t.Fatalf("SHOW CONFIG before the reload: %v %v", cfg["routing.read_your_writes"], cfg["routing.max_replica_lag"])
	}

	f.extra = "pool: {health_check_interval: 1h}\nrouting: {lag_check_interval: 1h, read_your_writes: off, max_replica_lag: 3s}\n" +
		"log: {level: warn, format: json}\nparse_cache_size: 500\n"
	f.write(t, cfgPath)
	a.must(ctx, "RELOAD")
	cfg = a.config(ctx)
	for k, want := range map[string]string{"routing.read_your_writes": "off", "routing.max_replica_lag": "3s", "log.level": "warn", "parse_cache_size": "500"} {
		if cfg[k][0] != want {
			t.Errorf("SHOW CONFIG %s = %q after the reload, want %q", k, cfg[k][0], want)
		}
	}
	if !readAfterWrite() {
		t.Error("read_your_writes off after the reload: a read right after a write stayed on the primary")
	}

	// At level warn the console's commands (info) are no longer logged;
	// back at info they are.
	commands := func() int { return strings.Count(logs.String(), `"admin command"`) }
	time.Sleep(300 * time.Millisecond) // the RELOAD's own line, logged before it ran
	before := commands()
	a.must(ctx, "SHOW VERSION")
	a.must(ctx, "SHOW POOLS")
	time.Sleep(300 * time.Millisecond)
	if n := commands(); n != before {
		t.Errorf("log.level warn: %d info lines logged after the reload", n-before)
	}
	f.extra = "log: {level: info, format: json}\n"
	f.write(t, cfgPath)
	a.must(ctx, "RELOAD")
	a.must(ctx, "SHOW VERSION")
	waitFor(t, "info lines again at log.level info", func() bool { return commands() > before })
}

// A reload that changes a key read only at start (listen) is refused
// with the reason, and nothing else of that file applies.
func TestReloadRefusesWhatNeedsARestart(t *testing.T) {
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	bin := buildBinary(t)
	cfgPath := filepath.Join(t.TempDir(), "pgshield.yaml")
	f := reloadFile{listen: freeAddr(t), admin: freeAddr(t), pg: pg, extra: "max_client_connections: 50\n"}
	f.write(t, cfgPath)
	cmd, logs, _ := startServe(t, bin, cfgPath)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	waitFor(t, "the proxy to listen", func() bool { return query(ctx, f.listen, "app", "one") == nil })
	a := dialConsole(ctx, t, f.admin)

	moved := f
	moved.listen = freeAddr(t)
	moved.users = "  - {name: bob, password: b}\n"
	moved.extra = "max_client_connections: 77\nrouting: {read_your_writes: off}\n"
	moved.write(t, cfgPath)
	code, msg := consoleErr(a.exec(ctx, "RELOAD"))
	if code != "55000" || !strings.Contains(msg, "configuration reload refused") ||
		!strings.Contains(msg, fmt.Sprintf("listen changed from %q to %q", f.listen, moved.listen)) {
		t.Errorf("RELOAD with listen changed: %s %q, want 55000 naming listen", code, msg)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the SIGHUP refusal", func() bool { return strings.Count(logs.String(), "configuration reload refused") == 2 })
	if !strings.Contains(logs.String(), "only a restart changes that setting") {
		t.Errorf("the refusal in the log does not say why:\n%s", logs.String())
	}

	cfg := a.config(ctx)
	if cfg["listen"][0] != f.listen || cfg["max_client_connections"][0] != "50" || cfg["routing.read_your_writes"][0] != "lsn" {
		t.Errorf("a refused reload applied part of the file: listen %v, max_client_connections %v, read_your_writes %v",
			cfg["listen"], cfg["max_client_connections"], cfg["routing.read_your_writes"])
	}
	if err := query(ctx, f.listen, "bob", "b"); err == nil {
		t.Error("a user of the refused file logs in")
	}
	if err := query(ctx, f.listen, "app", "one"); err != nil {
		t.Errorf("the configuration in force was lost: %v", err)
	}

	// SET takes the same path: a key read at start is 55000, an unknown
	// key or a bad value 22023.
	for _, tc := range []struct{ sql, code, message string }{
		{"SET listen = '127.0.0.1:1'", "55000", "listen is read at start only: only a restart changes that setting"},
		{"SET log.format = console", "55000", "log.format is read at start only"},
		{"SET pool.wait_timout = 1s", "22023", "did you mean pool.wait_timeout?"},
		{"SET services.nope.max_connections = 3", "22023", `unknown service in "services.nope.max_connections"`},
		{"SET pool.wait_timeout = soon", "22023", `invalid value "soon" for pool.wait_timeout`},
		{"SET services.api.min_connections = 9", "22023", "services.api.min_connections must be between 0 and max_connections (4)"},
		{"RESET frobnicate", "22023", `unknown setting "frobnicate"`},
	} {
		code, msg := consoleErr(a.exec(ctx, tc.sql))
		if code != tc.code || !strings.Contains(msg, tc.message) {
			t.Errorf("%s: %s %q, want %s %q", tc.sql, code, msg, tc.code, tc.message)
		}
	}
}

// A console SET is not lost to a RELOAD running at the same time: the SET
// stays on top of every reloaded file, until RESET.
func TestSetAndReloadBothHold(t *testing.T) {
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	bin := buildBinary(t)
	cfgPath := filepath.Join(t.TempDir(), "pgshield.yaml")
	f := reloadFile{listen: freeAddr(t), admin: freeAddr(t), pg: pg, extra: "max_client_connections: 100\n"}
	f.write(t, cfgPath)
	startServe(t, bin, cfgPath)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	waitFor(t, "the proxy to listen", func() bool { return query(ctx, f.listen, "app", "one") == nil })
	setter, reloader := dialConsole(ctx, t, f.admin), dialConsole(ctx, t, f.admin)

	for i := range 50 {
		wait := time.Duration(1000+i) * time.Millisecond
		var wg sync.WaitGroup
		var setErr, reloadErr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			setErr = setter.exec(ctx, fmt.Sprintf("SET pool.wait_timeout = '%dms'", 1000+i))
		}()
		go func() {
			defer wg.Done()
			next := f
			next.extra = fmt.Sprintf("max_client_connections: %d\n", 200+i)
			if reloadErr = os.WriteFile(cfgPath, []byte(next.render()), 0o600); reloadErr == nil {
				reloadErr = reloader.exec(ctx, "RELOAD")
			}
		}()
		wg.Wait()
		if setErr != nil || reloadErr != nil {
			t.Fatalf("iteration %d: SET %v, RELOAD %v", i, setErr, reloadErr)
		}
		cfg := setter.config(ctx)
		if got := cfg["pool.wait_timeout"]; got != [2]string{wait.String(), "set"} {
			t.Fatalf("iteration %d: pool.wait_timeout %v, want %s from the SET", i, got, wait)
		}
		if got := cfg["max_client_connections"]; got != [2]string{strconv.Itoa(200 + i), ""} {
			t.Fatalf("iteration %d: max_client_connections %v, want %d from the file", i, got, 200+i)
		}
	}

	// RESET drops the SET: the file's value (the default) applies, and
	// stays over the next reload.
	setter.must(ctx, "SET services.api.max_connections = 3")
	setter.must(ctx, "RESET pool.wait_timeout")
	cfg := setter.config(ctx)
	if got := cfg["pool.wait_timeout"]; got != [2]string{"30s", ""} {
		t.Errorf("after RESET pool.wait_timeout: %v, want 30s from the file", got)
	}
	if got := cfg["services.api.max_connections"]; got != [2]string{"3", "set"} {
		t.Errorf("the other SET after RESET of one: %v", got)
	}
	reloader.must(ctx, "RELOAD")
	if got := setter.config(ctx)["pool.wait_timeout"]; got != [2]string{"30s", ""} {
		t.Errorf("a RESET SET came back with RELOAD: %v", got)
	}
	setter.must(ctx, "RESET ALL")
	if got := setter.config(ctx)["services.api.max_connections"]; got != [2]string{"4", ""} {
		t.Errorf("after RESET ALL: services.api.max_connections %v, want 4 from the file", got)
	}
}
