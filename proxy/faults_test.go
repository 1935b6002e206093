package proxy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
)

// poll retries cond for up to 10 s.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A client that vanishes mid-transaction never leaves a dirty server: the
// transaction is rolled back and the next client gets a clean connection.
func TestClientVanishesMidTransaction(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "create table if not exists vanish (who text)"); err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"tiny", "sess"} {
		t.Run(user, func(t *testing.T) {
			c := e.connect(t, user, "application_name=vanisher")
			if _, err := c.Exec(ctx, "begin; insert into vanish values ('"+user+"')"); err != nil {
				t.Fatal(err)
			}
			_ = c.PgConn().Conn().Close() // no Terminate, no ROLLBACK
			poll(t, "the abandoned transaction to end", func() bool {
				var n int
				_ = d.QueryRow(ctx, "select count(*) from pg_stat_activity where state like 'idle in transaction%' and datname = 'app'").Scan(&n)
				return n == 0
			})
			var n int
			if err := d.QueryRow(ctx, "select count(*) from vanish where who = $1", user).Scan(&n); err != nil || n != 0 {
				t.Fatalf("abandoned insert committed: %d %v", n, err)
			}
			// tiny's pool has one server: the next client must get it clean.
			next := e.connect(t, user, "")
			var app string
			var xid *int64
			if err := next.QueryRow(ctx, "select current_setting('application_name'), txid_current_if_assigned()").Scan(&app, &xid); err != nil {
				t.Fatal(err)
			}
			if app == "vanisher" || xid != nil {
				t.Fatalf("next client inherited state: app=%q xid=%v", app, xid)
			}
		})
	}
}

// A server killed mid-query: the client gets an error at once, the pool
// drops that connection, and new work succeeds.
func TestServerKilledMidQuery(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	c := e.connect(t, "app", "")
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), "select pg_sleep(30) /* victim */")
		errc <- err
	}()
	var pid int
	poll(t, "the query to start", func() bool {
		return d.QueryRow(ctx, "select pid from pg_stat_activity where query like '%/* victim */' and pid <> pg_backend_pid()").Scan(&pid) == nil
	})
	start := time.Now()
	if _, err := d.Exec(ctx, "select pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		code := pgCode(err)
		if err == nil || (code != "57P01" && code != "08006" && !strings.Contains(err.Error(), "closed") && !strings.Contains(err.Error(), "EOF")) {
			t.Fatalf("want a connection error, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("client hangs after its server was killed")
	}
	t.Logf("client told after %s", time.Since(start))
	next := e.connect(t, "app", "")
	var v int
	if err := next.QueryRow(ctx, "select 1").Scan(&v); err != nil {
		t.Fatalf("pool unusable after a server died: %v", err)
	}
	for _, st := range e.pools.Stats() {
		if st.Service == "api" && st.Active != 0 {
			t.Errorf("dead connection still counted active: %+v", st)
		}
	}
}

// With the pool exhausted, a client waits up to wait_timeout and gets
// 53300; it recovers once a server is free.
func TestWaitTimeout(t *testing.T) {
	e := startProxy(t, func(_ *proxyConfig, m *poolConfig) { m.Pool.WaitTimeout = 500 * time.Millisecond })
	ctx := ctxT(t)
	a := e.connect(t, "tiny", "")
	b := e.connect(t, "tiny", "")
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = b.Exec(ctx, "select 1")
	if pgCode(err) != "53300" || !strings.Contains(err.Error(), "analytics") {
		t.Fatalf("want 53300 naming the pool, got %v", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("waited %s for a 500ms wait_timeout", waited)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := b.QueryRow(ctx, "select 3").Scan(&v); err != nil || v != 3 {
		t.Fatalf("after the server freed up: %v", err)
	}
}

func TestMaxClientConnections(t *testing.T) {
	e := startProxy(t, func(p *proxyConfig, _ *poolConfig) { p.MaxClientConnections = 3 })
	var conns []*pgx.Conn
	for i := 0; i < 3; i++ {
		conns = append(conns, e.connect(t, "app", ""))
	}
	if err := tryConnect(e, "app", "", "app"); pgCode(err) != "53300" {
		t.Fatalf("fourth client: want 53300, got %v", err)
	}
	_ = conns[0].Close(context.Background())
	poll(t, "a client slot", func() bool { return tryConnect(e, "app", "", "app") == nil })
}

// Reload swaps users and limits at once and refuses a bad configuration
// whole.
func TestReload(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	kept := e.connect(t, "sess", "")
	cfg := e.pcfg
	cfg.Users = []proxy.User{{Name: "app", Password: "app-secret", Service: "api"}, {Name: "newbie", Password: "n", Service: "api"}}
	if err := e.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if err := tryConnect(e, "newbie", "n", "app"); err != nil {
		t.Fatalf("added user: %v", err)
	}
	if err := tryConnect(e, "sess", "", "app"); pgCode(err) != "28000" {
		t.Fatalf("removed user: want 28000, got %v", err)
	}
	var v int
	if err := kept.QueryRow(ctx, "select 1").Scan(&v); err != nil {
		t.Fatalf("a removed user's open session must go on: %v", err)
	}
	bad := cfg
	bad.AuthType = "bogus"
	if err := e.srv.Reload(bad); err == nil {
		t.Fatal("bad auth_type accepted")
	}
	bad = cfg
	bad.Users = append(bad.Users, proxy.User{Name: "x", Password: "x", Service: "no-such-service"})
	if err := e.srv.Reload(bad); err == nil || !strings.Contains(err.Error(), "no-such-service") {
		t.Fatalf("unknown service accepted: %v", err)
	}
	if err := tryConnect(e, "newbie", "n", "app"); err != nil {
		t.Fatalf("previous configuration lost: %v", err)
	}

	// Pool resize: analytics from 1 to 2 servers.
	m := e.mcfg
	m.Services = make(map[string]poolmgr.ServiceConfig)
	for k, v := range e.mcfg.Services {
		m.Services[k] = v
	}
	svc := m.Services["analytics"]
	svc.MaxConnections = 2
	m.Services["analytics"] = svc
	if err := e.pools.Update(m); err != nil {
		t.Fatal(err)
	}
	cfg.Users = append(cfg.Users, proxy.User{Name: "tiny", Password: "tiny-secret", Service: "analytics"})
	if err := e.srv.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	a, b := e.connect(t, "tiny", ""), e.connect(t, "tiny", "")
	txa, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer txa.Rollback(ctx)
	if _, err := txa.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	if err := b.QueryRow(ctx, "select 1").Scan(&v); err != nil {
		t.Fatalf("second server after resize: %v", err)
	}
}

// Shutdown: idle clients are told 57P01 at once, a running transaction may
// commit, then everyone is gone and Shutdown returns.
func TestGracefulShutdown(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	idle := e.connect(t, "app", "")
	idleSess := e.connect(t, "sess", "")
	busy := e.connect(t, "app", "")
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(sctx) }()
	time.Sleep(300 * time.Millisecond)
	for name, c := range map[string]*pgx.Conn{"transaction mode": idle, "session mode": idleSess} {
		if _, err := c.Exec(ctx, "select 1"); err == nil {
			t.Errorf("idle %s client still served during shutdown", name)
		} else if code := pgCode(err); code != "57P01" && code != "" {
			t.Errorf("idle %s client: want 57P01, got %v", name, err)
		}
	}
	if err := tryConnect(e, "app", "", "app"); err == nil {
		t.Error("new client accepted during shutdown")
	}
	if _, err := tx.Exec(ctx, "select 2"); err != nil {
		t.Fatalf("running transaction cut short: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit during shutdown: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("shutdown did not finish after the last transaction")
	}
}

// A transaction that never ends is cut off when the shutdown deadline
// passes, and Shutdown still returns.
func TestShutdownDeadline(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	if _, err := c.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	if err := e.srv.Shutdown(sctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("shutdown took %s with a 1s deadline", d)
	}
	if _, err := c.Exec(ctx, "select 1"); err == nil {
		t.Fatal("client still served after shutdown")
	}
	// The abandoned transaction is not left open on the server.
	d := direct(t)
	poll(t, "the transaction to be rolled back", func() bool {
		var n int
		_ = d.QueryRow(ctx, "select count(*) from pg_stat_activity where state like 'idle in transaction%' and datname = 'app'").Scan(&n)
		return n == 0
	})
}

// Invalid connection settings get a clear error, not a hang.
func TestInvalidStartupSetting(t *testing.T) {
	e := startProxy(t, nil)
	for _, user := range []string{"app", "sess"} {
		_, err := func() (*pgx.Conn, error) {
			cfg, _ := pgx.ParseConfig(e.url(user, "options='-c statement_timeout=banana' default_query_exec_mode=exec"))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				return nil, err
			}
			defer c.Close(ctx)
			_, err = c.Exec(ctx, "select 1")
			return c, err
		}()
		if pgCode(err) != "22023" {
			t.Errorf("%s: want 22023, got %v", user, err)
		}
	}
}
