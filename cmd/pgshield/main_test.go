package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// buildBinary compiles pgshield for the process-level tests.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pgshield")
	out, err := exec.Command("go", "build", "-race", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// appConfigHead is the start of a configuration the job tests share: the
// client and admin listeners, the app and admin users, one database
// (named name, dbname dbname on pg) and the api service.
func appConfigHead(addr, admin, name, dbname string, pg *pgcluster.Cluster) string {
	return fmt.Sprintf(`listen: %s
admin_listen: %s
metrics_listen: 127.0.0.1:0
users:
  - {name: app, password: app, service: api}
  - {name: admin, password: admin, admin: true}
databases:
  %s: {primary: %s, dbname: %s, user: %s, password: %s, server_tls: {mode: disable}}
services:
  api: {max_connections: 4, min_connections: 1}
log: {level: info, format: json}
`, addr, admin, name, pg.Addr(), dbname, pg.User, pg.Password)
}

// syncBuffer collects a child's output for inspection while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForLong(t, 20*time.Second, what, cond)
}

// startServe runs `pgshield serve` on cfgPath; it is killed when the test
// ends. exited receives its exit once (put it back to let the cleanup see
// it).
func startServe(t *testing.T, bin, cfgPath string) (cmd *exec.Cmd, logs *syncBuffer, exited chan error) {
	t.Helper()
	cmd = exec.Command(bin, "serve", "--config", cfgPath)
	logs = &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited = make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	return cmd, logs, exited
}

func writeConfig(t *testing.T, path, listen string, pg *pgcluster.Cluster, users string) {
	t.Helper()
	writeConfigMetrics(t, path, listen, "127.0.0.1:0", pg, users)
}

func writeConfigMetrics(t *testing.T, path, listen, metricsListen string, pg *pgcluster.Cluster, users string) {
	t.Helper()
	cfg := fmt.Sprintf(`listen: %s
metrics_listen: %s
admin_listen: 127.0.0.1:0
users:
%s
databases:
  app: {primary: %s, dbname: postgres, user: %s, password: %s, server_tls: {mode: disable}}
services:
  api: {max_connections: 4, min_connections: 1}
log: {level: info, format: json}
shutdown_timeout: 10s
`, listen, metricsListen, users, pg.Addr(), pg.User, pg.Password)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// connectApp opens a pgx connection to the proxy at addr as app (password
// one), closed when the test ends.
func connectApp(ctx context.Context, t *testing.T, addr string) *pgx.Conn {
	t.Helper()
	return connectAs(ctx, t, addr, "app", "one", "app")
}

func query(ctx context.Context, addr, user, pw string) error {
	return queryDB(ctx, addr, user, pw, "app")
}

// queryDB runs select 1 through the proxy at addr in database db.
func queryDB(ctx context.Context, addr, user, pw, db string) error {
	host, port, _ := net.SplitHostPort(addr)
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable", host, port, user, pw, db))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, "select 1")
	return err
}

// The binary serves, reloads on SIGHUP (refusing a bad file and keeping the
// old configuration) and shuts down cleanly on SIGTERM.
func TestServeReloadAndTerminate(t *testing.T) {
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	bin := buildBinary(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pgshield.yaml")
	addr := freeAddr(t)
	writeConfig(t, cfgPath, addr, pg, "  - {name: app, password: one}")

	cmd, logs, exited := startServe(t, bin, cfgPath)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitFor(t, "the proxy to listen", func() bool { return query(ctx, addr, "app", "one") == nil })

	// Add a user and change a password.
	writeConfig(t, cfgPath, addr, pg, "  - {name: app, password: two}\n  - {name: bob, password: b}")
	_ = cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload", func() bool { return strings.Contains(logs.String(), "configuration reloaded") })
	if err := query(ctx, addr, "bob", "b"); err != nil {
		t.Fatalf("new user after reload: %v", err)
	}
	if err := query(ctx, addr, "app", "one"); pgCodeOf(err) != "28P01" {
		t.Fatalf("old password after reload: want 28P01, got %v", err)
	}

	// A bad file is refused; the previous configuration stays.
	if err := os.WriteFile(cfgPath, []byte("listen: [\nnot yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the refusal", func() bool { return strings.Contains(logs.String(), "configuration reload refused") })
	writeConfig(t, cfgPath, addr, pg, "  - {name: app, password: two, service: no-such-service}")
	_ = cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the second refusal", func() bool { return strings.Count(logs.String(), "configuration reload refused") == 2 })
	if !strings.Contains(logs.String(), "no-such-service") {
		t.Errorf("refusal does not say why:\n%s", logs.String())
	}
	if err := query(ctx, addr, "bob", "b"); err != nil {
		t.Fatalf("previous configuration lost after a refused reload: %v", err)
	}

	// SIGTERM with a transaction open: it may finish, then the process exits 0.
	host, port, _ := net.SplitHostPort(addr)
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=bob password=b dbname=app sslmode=disable", host, port))
	if err != nil {
		t.Fatal(err)
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(300 * time.Millisecond)
	if _, err := tx.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("running transaction cut short by SIGTERM: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit during shutdown: %v", err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("pgshield exited with %v\n%s", err, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("pgshield did not exit after SIGTERM\n%s", logs.String())
	}
	if strings.Contains(strings.ToLower(logs.String()), "select 1") {
		t.Error("SQL text appeared in the logs")
	}
}

func TestUnknownCommandAndBadConfig(t *testing.T) {
	bin := buildBinary(t)
	out, err := exec.Command(bin, "frobnicate").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "unknown command") {
		t.Fatalf("unknown command: %v %s", err, out)
	}
	path := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(path, []byte("listen: 127.0.0.1:0\nlisen: typo\n"), 0o600)
	out, err = exec.Command(bin, "serve", "--config", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "lisen") {
		t.Fatalf("typo in config not reported: %v %s", err, out)
	}
}

func pgCodeOf(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}
