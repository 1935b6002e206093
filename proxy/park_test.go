package proxy_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// An idle transaction-mode client is parked (no goroutine, no read
// buffer) and taken up when it sends again, in the simple and extended
// protocol, as often as it goes idle; session-mode clients are not
// parked; a parked client that hangs up is gone.
func TestParkIdleClients(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	const n = 40
	clients := make([]*pgx.Conn, n)
	for i := range clients {
		clients[i] = e.connect(t, "app", "")
		if _, err := clients[i].Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	sess := e.connect(t, "sess", "")
	if _, err := sess.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	before, parkedBefore := runtime.NumGoroutine(), e.srv.ParkedClients()
	pollFor(t, "the idle clients to be parked", 10*time.Second, func() bool { return e.srv.ParkedClients() == n })
	// The session-mode client stays as it is.
	time.Sleep(1500 * time.Millisecond)
	if got := e.srv.ParkedClients(); got != n {
		t.Fatalf("%d clients parked, want the %d in transaction mode", got, n)
	}
	// Each parked client gave back its goroutine.
	if after := runtime.NumGoroutine(); after > before-(n-parkedBefore)+5 {
		t.Errorf("goroutines: %d before parking, %d after parking %d clients", before, after, n)
	}
	for round := 0; round < 2; round++ {
		for i, c := range clients {
			var got int
			if err := c.QueryRow(ctx, "select $1::int", i).Scan(&got); err != nil || got != i {
				t.Fatalf("round %d: parked client %d, extended: %v (got %d)", round, i, err, got)
			}
			if _, err := c.Exec(ctx, "select 1", pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatalf("round %d: parked client %d, simple: %v", round, i, err)
			}
		}
		// A transaction across a park point: the client holds its server,
		// so it is not parked, and its statements stay on one server.
		tx, err := clients[0].Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var pid1, pid2 int
		if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid1); err != nil {
			t.Fatal(err)
		}
		pollFor(t, "the others to be parked again", 10*time.Second, func() bool { return e.srv.ParkedClients() == n-1 })
		time.Sleep(1500 * time.Millisecond)
		if got := e.srv.ParkedClients(); got != n-1 {
			t.Fatalf("%d clients parked while one is in a transaction, want %d", got, n-1)
		}
		if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid2); err != nil {
			t.Fatal(err)
		}
		if pid1 != pid2 {
			t.Fatalf("transaction moved from server %d to %d", pid1, pid2)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		pollFor(t, "every idle client to be parked again", 10*time.Second, func() bool { return e.srv.ParkedClients() == n })
	}
	// A parked client that hangs up is gone, and the rest are served.
	clients[1].PgConn().Conn().Close()
	pollFor(t, "the hung-up client to be gone", 10*time.Second, func() bool { return e.srv.ClientCount() == n })
	if got := e.srv.ParkedClients(); got != n-1 {
		t.Fatalf("%d parked after a hang-up, want %d", got, n-1)
	}
	if _, err := clients[2].Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
}

// A parked client is told why when pgshield shuts down, although it has
// no goroutine.
func TestParkedClientsToldAtShutdown(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	if _, err := c.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	pollFor(t, "the client to be parked", 10*time.Second, func() bool { return e.srv.ParkedClients() == 1 })
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := e.srv.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Shutdown with a parked client took %s", took)
	}
	lcExpectGoodbye(t, "parked client", c)
	if got := e.srv.ClientCount(); got != 0 {
		t.Errorf("ClientCount %d after Shutdown", got)
	}
	if got := e.srv.ParkedClients(); got != 0 {
		t.Errorf("ParkedClients %d after Shutdown", got)
	}
}

// KILL of a parked client reaches it at once: it is told 57P01 and gone,
// and the other parked clients stay parked.
func TestParkedClientKilled(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	victim, other := e.connect(t, "app", ""), e.connect(t, "app", "")
	for _, c := range []*pgx.Conn{victim, other} {
		if _, err := c.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	pollFor(t, "both clients to be parked", 10*time.Second, func() bool { return e.srv.ParkedClients() == 2 })
	if err := e.srv.Kill(victim.PgConn().PID()); err != nil {
		t.Fatal(err)
	}
	lcExpectGoodbye(t, "killed parked client", victim)
	pollFor(t, "the killed client to be gone", 5*time.Second, func() bool { return e.srv.ClientCount() == 1 })
	if got := e.srv.ParkedClients(); got != 1 {
		t.Errorf("%d clients parked after the KILL, want the other one", got)
	}
	if _, err := other.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("the other parked client: %v", err)
	}
}
