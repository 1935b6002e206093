package pgcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func queryString(ctx context.Context, t *testing.T, connString, sql string) string {
	t.Helper()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestPrimaryReplicaAndStop(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := StartForTest(t, Options{})
	if c.Host != "127.0.0.1" || c.User != "postgres" || c.Addr() != "127.0.0.1:"+strconv.Itoa(c.Port) {
		t.Fatalf("cluster %+v", c)
	}
	for range 2 { // both idempotent
		if err := c.CreateRole(ctx, "app", `app's pw\`, true); err != nil {
			t.Fatal(err)
		}
		if err := c.CreateDatabase(ctx, "appdb", "app"); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app:app's%%20pw%%5C@%s/appdb?sslmode=disable", c.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}

	r, err := c.AddReplica(ctx, ReplicaOptions{Name: "standby1", Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Dir != filepath.Join(c.Dir, "standby1") || r.Port == c.Port {
		t.Fatalf("replica in %s on %d; primary in %s on %d", r.Dir, r.Port, c.Dir, c.Port)
	}
	if in, err := r.InRecovery(ctx); err != nil || !in {
		t.Fatalf("replica in recovery: %v %v", in, err)
	}
	if in, err := c.InRecovery(ctx); err != nil || in {
		t.Fatalf("primary in recovery: %v %v", in, err)
	}
	if s := queryString(ctx, t, c.ConnString("postgres"),
		"SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'"); s != "sync" {
		t.Fatalf("sync_state %q", s)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO t VALUES (43)"); err != nil {
		t.Fatal(err)
	}
	rc, err := pgx.Connect(ctx, r.ConnString("appdb"))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(context.Background())
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := rc.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err == nil && n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the row never reached the replica")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := rc.Exec(ctx, "INSERT INTO t VALUES (44)"); err == nil {
		t.Fatal("the replica took a write")
	}

	if err := c.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx, "immediate"); err != nil {
		t.Fatalf("Stop is not idempotent: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", c.Addr(), time.Second); err == nil {
		conn.Close()
		t.Fatal("the primary still accepts connections after Stop")
	}
	if err := c.Stop(ctx, "sometimes"); err == nil {
		t.Fatal("Stop took an unknown mode")
	}
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(ctx, "fast"); err != nil {
		t.Fatalf("the primary's Remove left the replica running: %v", err)
	}
	for _, d := range []string{c.Dir, r.Dir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Fatalf("%s left behind: %v", d, err)
		}
	}
}

func TestSSLVerifyFull(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := StartForTest(t, Options{SSL: true})
	if c.CAFile == "" {
		t.Fatal("no CAFile")
	}
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=verify-full sslrootcert=%s",
		c.Port, c.Password, c.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var ssl bool
	if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Fatalf("not over TLS: %v %v", ssl, err)
	}
	// The plain ConnString still works.
	if s := queryString(ctx, t, c.ConnString("postgres"), "SELECT current_user"); s != "postgres" {
		t.Fatalf("current_user %q", s)
	}
}

// TestReuseRestartAndLongDir covers `pgshield dev`'s case: a cluster in a
// directory of its own (here too long for a socket path beside it),
// restarted, stopped and started again from the same data directory.
func TestReuseRestartAndLongDir(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100), "primary")
	c, err := Start(ctx, Options{Dir: dir, Settings: map[string]string{"work_mem": "8MB"}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove()
	if c.SocketDir == c.Dir || len(c.SocketDir)+len(socketName) > maxSocketPath {
		t.Fatalf("socket directory %s", c.SocketDir)
	}
	// The Unix socket works (trust auth).
	sock := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", c.SocketDir, c.Port)
	if s := queryString(ctx, t, sock, "SHOW work_mem"); s != "8MB" {
		t.Fatalf("work_mem %s", s)
	}
	if err := c.Exec(ctx, "postgres", "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('x')"); err != nil {
		t.Fatal(err)
	}
	r, err := c.AddReplica(ctx, ReplicaOptions{Name: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	if r.SocketDir == r.Dir {
		t.Fatalf("replica socket directory %s", r.SocketDir)
	}
	port := c.Port
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Port != port {
		t.Fatalf("Restart moved from port %d to %d", port, c.Port)
	}
	if s := queryString(ctx, t, c.ConnString("postgres"), "SELECT v FROM kept"); s != "x" {
		t.Fatalf("kept %q", s)
	}

	// Start again on the same directory while the first servers still run
	// (as after a crash of `pgshield dev`): the old servers are stopped, the
	// data is kept, the ports are kept, and the settings are this Start's,
	// on the replica too (a standby needs max_connections at least as high
	// as its primary's).
	c2, err := Start(ctx, Options{Dir: dir, Logf: t.Logf, Settings: map[string]string{"max_connections": "250"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Remove()
	if c2.Port != port || c2.LastPort != port {
		t.Fatalf("reused directory on port %d (last %d), want its port %d", c2.Port, c2.LastPort, port)
	}
	if s := queryString(ctx, t, c2.ConnString("postgres"), "SELECT v FROM kept"); s != "x" {
		t.Fatalf("kept %q", s)
	}
	if s := queryString(ctx, t, c2.ConnString("postgres"), "SHOW work_mem"); s != "4MB" {
		t.Fatalf("work_mem %s after a Start without settings", s)
	}
	r2, err := c2.AddReplica(ctx, ReplicaOptions{Name: "r1", Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	if r2.Port != r.Port {
		t.Fatalf("reused replica directory on port %d, want its port %d", r2.Port, r.Port)
	}
	// remote_apply: the commit returns once the standby has replayed it.
	if err := c2.Exec(ctx, "postgres", "SET synchronous_commit = remote_apply; INSERT INTO kept VALUES ('y')"); err != nil {
		t.Fatal(err)
	}
	if s := queryString(ctx, t, r2.ConnString("postgres"), "SELECT string_agg(v, ',' ORDER BY v) FROM kept"); s != "x,y" {
		t.Fatalf("replica has %q", s)
	}
	if s := queryString(ctx, t, r2.ConnString("postgres"), "SHOW max_connections"); s != "250" {
		t.Fatalf("replica max_connections %s", s)
	}
	if err := c2.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "PG_VERSION")); err != nil {
		t.Fatalf("Remove deleted a directory it did not create: %v", err)
	}
	if _, err := os.Stat(c2.SocketDir); !os.IsNotExist(err) {
		t.Fatalf("temporary socket directory left behind: %v", err)
	}
	if err := c.Remove(); err != nil {
		t.Fatalf("removing the cluster whose server was stopped by another Start: %v", err)
	}
}

// A reused directory starts on the port it had last time, the replica's
// too, so that a configuration written against them keeps working; only
// when that port is taken does it move to a free one.
func TestReusedDirectoryKeepsItsPorts(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "primary")
	start := func() (*Cluster, *Cluster) {
		t.Helper()
		c, err := Start(ctx, Options{Dir: dir, Logf: t.Logf})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Remove() })
		r, err := c.AddReplica(ctx, ReplicaOptions{Name: "r1", Sync: true})
		if err != nil {
			t.Fatal(err)
		}
		return c, r
	}
	c, r := start()
	if c.LastPort != 0 || r.LastPort != 0 {
		t.Fatalf("new directories with a last port: %d, %d", c.LastPort, r.LastPort)
	}
	primaryPort, replicaPort := c.Port, r.Port
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}

	c, r = start()
	if c.Port != primaryPort || r.Port != replicaPort {
		t.Fatalf("after a restart: primary on %d, replica on %d; want %d and %d", c.Port, r.Port, primaryPort, replicaPort)
	}
	if c.LastPort != primaryPort || r.LastPort != replicaPort {
		t.Fatalf("last ports %d, %d; want %d and %d", c.LastPort, r.LastPort, primaryPort, replicaPort)
	}
	if in, err := r.InRecovery(ctx); err != nil || !in {
		t.Fatalf("replica in recovery: %v %v", in, err)
	}
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}

	// The primary's port is taken now: it moves, and says where it was.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(primaryPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, r = start()
	if c.Port == primaryPort || c.LastPort != primaryPort {
		t.Fatalf("primary on %d (last %d) while %d is taken", c.Port, c.LastPort, primaryPort)
	}
	if r.Port != replicaPort {
		t.Fatalf("replica moved from %d to %d", replicaPort, r.Port)
	}
	if s := queryString(ctx, t, c.ConnString("postgres"),
		"SELECT sync_state FROM pg_stat_replication WHERE application_name = 'r1'"); s != "sync" {
		t.Fatalf("replica of the moved primary: sync_state %q", s)
	}
}

func TestStartFailureShowsLog(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	dir := filepath.Join(t.TempDir(), "pg")
	_, err = Start(ctx, Options{Dir: dir, Port: port})
	if err == nil {
		t.Fatal("started on a port in use")
	}
	if !strings.Contains(err.Error(), "server log:") || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("error without the server log: %v", err)
	}
	// Nothing left running: the directory starts on a free port.
	c, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}
}

// cleanupTB records Cleanup functions instead of running them at the end of
// the test, so that the test can check what they do.
type cleanupTB struct {
	testing.TB
	cleanups []func()
}

func (tb *cleanupTB) Cleanup(f func()) { tb.cleanups = append(tb.cleanups, f) }

func TestStartForTestCleanup(t *testing.T) {
	t.Parallel()
	tb := &cleanupTB{TB: t}
	c := StartForTest(tb, Options{})
	if len(tb.cleanups) != 1 {
		t.Fatalf("%d cleanups registered", len(tb.cleanups))
	}
	tb.cleanups[0]()
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Fatalf("%s left behind: %v", c.Dir, err)
	}
	if conn, err := net.DialTimeout("tcp", c.Addr(), time.Second); err == nil {
		conn.Close()
		t.Fatal("server still running after cleanup")
	}
}
