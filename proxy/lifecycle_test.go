package proxy_test

// Lifecycle tests: how sessions, server connections and the proxy itself
// end, against a real PostgreSQL. Each test watches what a client or the
// server can observe (SQLSTATEs, pg_stat_activity, committed rows, pool
// statistics), never the proxy's internals.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
)

// lcDial connects to the proxy as user with password and extra libpq
// parameters, without failing the test, and closes the connection when the
// test ends.
func lcDial(t *testing.T, e *env, user, password, extra string) (*pgx.Conn, error) {
	t.Helper()
	host, port, _ := net.SplitHostPort(e.addr)
	s := fmt.Sprintf("host=%s port=%s user=%s password='%s' dbname=app sslmode=disable connect_timeout=10", host, port, user, password)
	if extra != "" {
		s += " " + extra
	}
	cfg, err := pgx.ParseConfig(s)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c, nil
}

// lcLoginAndQuery logs in and runs one query; it returns the first error.
func lcLoginAndQuery(t *testing.T, e *env, user, password, extra string) error {
	t.Helper()
	c, err := lcDial(t, e, user, password, extra)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.Exec(ctx, "select 1")
	return err
}

// lcPassword is the password of a harness test user.
func lcPassword(user string) string {
	for _, u := range testUsers {
		if u.Name == user {
			return u.Password
		}
	}
	return ""
}

// lcConnEnded reports whether err says the connection was ended: the
// proxy's or the server's FATAL (57P01 shutdown, 08006 server lost) or a
// closed socket.
func lcConnEnded(err error) bool {
	if err == nil {
		return false
	}
	switch pgCode(err) {
	case "57P01", "08006":
		return true
	case "":
	default:
		return false
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return true
	}
	s := err.Error()
	for _, frag := range []string{"closed", "EOF", "reset by peer", "broken pipe"} {
		if strings.Contains(s, frag) {
			return true
		}
	}
	return false
}

// lcStat returns the statistics of the pool of service for database app.
func lcStat(e *env, service string) (poolmgr.Stat, bool) {
	for _, st := range e.pools.Stats() {
		if st.Service == service && st.Database == "app" {
			return st, true
		}
	}
	return poolmgr.Stat{}, false
}

// lcBackendState is the pg_stat_activity state of pid ("" when the backend
// is gone).
func lcBackendState(ctx context.Context, d *pgx.Conn, pid int) string {
	var state *string
	err := d.QueryRow(ctx, "select state from pg_stat_activity where pid = $1", pid).Scan(&state)
	if err != nil || state == nil {
		return ""
	}
	return *state
}

// lcIdleInTx counts backends of database app left idle in a transaction.
func lcIdleInTx(ctx context.Context, d *pgx.Conn) int {
	n := -1
	_ = d.QueryRow(ctx, "select count(*) from pg_stat_activity where datname = 'app' and state like 'idle in transaction%' and pid <> pg_backend_pid()").Scan(&n)
	return n
}

// lcMarker returns a value unique to this test run.
func lcMarker(t *testing.T) string {
	return fmt.Sprintf("%s/%d", t.Name(), time.Now().UnixNano())
}

func lcCount(t *testing.T, ctx context.Context, d *pgx.Conn, table, who string) int {
	t.Helper()
	var n int
	if err := d.QueryRow(ctx, "select count(*) from "+table+" where who = $1", who).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// lcFindActive waits for the backend running a query that contains marker
// and returns its pid.
func lcFindActive(t *testing.T, ctx context.Context, d *pgx.Conn, marker string) int {
	t.Helper()
	var pid int
	pollFor(t, "the query to start on a server", 10*time.Second, func() bool {
		return d.QueryRow(ctx, "select pid from pg_stat_activity where state = 'active' and position($1 in query) > 0 and pid <> pg_backend_pid()", marker).Scan(&pid) == nil
	})
	return pid
}

// lcCloneServices copies a pool configuration deeply enough to change its
// services.
func lcCloneServices(m poolmgr.Config) poolmgr.Config {
	svcs := make(map[string]poolmgr.ServiceConfig, len(m.Services))
	for k, v := range m.Services {
		svcs[k] = v
	}
	m.Services = svcs
	return m
}

// lcExpectGoodbye reads, without sending anything, what the proxy sent an
// idle client: a FATAL 57P01 ErrorResponse, then end of stream. The pgx
// connection is unusable afterwards.
func lcExpectGoodbye(t *testing.T, who string, c *pgx.Conn) {
	t.Helper()
	nc := c.PgConn().Conn()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	fe := pgproto3.NewFrontend(nc, io.Discard)
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Errorf("%s: connection ended (%v) without a 57P01 ErrorResponse", who, err)
			return
		}
		if er, ok := m.(*pgproto3.ErrorResponse); ok {
			if er.Code != "57P01" || er.Severity != "FATAL" {
				t.Errorf("%s: want FATAL 57P01, got %s %s: %s", who, er.Severity, er.Code, er.Message)
			}
			if _, err := fe.Receive(); err == nil {
				t.Errorf("%s: connection still open after 57P01", who)
			}
			return
		}
	}
}

// A client whose TCP connection vanishes in the middle of a transaction
// (no Terminate, no ROLLBACK), idle or while a statement runs, in
// transaction and session mode: its work is never committed, no server is
// left idle in transaction, and the next client gets a clean server.
func TestLifecycleClientVanishesMidTransaction(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "create table if not exists lifecycle_vanish (who text)"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, user, service string
		running             bool // a statement is running when the client vanishes
	}{
		{"transaction mode idle in transaction", "tiny", "analytics", false},
		{"transaction mode statement running", "tiny", "analytics", true},
		{"session mode idle in transaction", "sess", "data-service", false},
		{"session mode statement running", "sess", "data-service", true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			appName := fmt.Sprintf("lc_vanished_%d", i)
			marker := lcMarker(t)
			c := e.connect(t, tc.user, "application_name="+appName)
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "insert into lifecycle_vanish values ($1)", marker); err != nil {
				t.Fatal(err)
			}
			var pid int
			if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			if st := lcBackendState(ctx, d, pid); !strings.HasPrefix(st, "idle in transaction") {
				t.Fatalf("precondition: server %d should be idle in transaction, is %q", pid, st)
			}
			var running chan error
			if tc.running {
				running = make(chan error, 1)
				go func() {
					_, err := tx.Exec(context.Background(), "select pg_sleep(1) /* lc-running */")
					running <- err
				}()
				pollFor(t, "the statement to run", 10*time.Second, func() bool { return lcBackendState(ctx, d, pid) == "active" })
			}
			_ = c.PgConn().Conn().Close() // abrupt: no Terminate, no ROLLBACK
			if running != nil {
				select {
				case <-running:
				case <-time.After(10 * time.Second):
					t.Fatal("the client's own call did not return after its socket closed")
				}
			}

			pollFor(t, "the server to leave the abandoned transaction", 10*time.Second, func() bool {
				st := lcBackendState(ctx, d, pid)
				return st == "" || st == "idle"
			})
			pollFor(t, "no server idle in transaction", 5*time.Second, func() bool { return lcIdleInTx(ctx, d) == 0 })
			if n := lcCount(t, ctx, d, "lifecycle_vanish", marker); n != 0 {
				t.Fatalf("the vanished client's insert was committed (%d rows)", n)
			}
			pollFor(t, "the pool to see its server back", 10*time.Second, func() bool {
				st, ok := lcStat(e, tc.service)
				return ok && st.Active == 0
			})

			// tiny's pool has a single server: the next client necessarily
			// gets the one the vanished client used, or a new one if it was
			// closed. Either way it must be clean.
			next := e.connect(t, tc.user, "")
			var app string
			var xid *int64
			var nextPid int
			if err := next.QueryRow(ctx, "select current_setting('application_name'), txid_current_if_assigned(), pg_backend_pid()").Scan(&app, &xid, &nextPid); err != nil {
				t.Fatalf("pool unusable after a client vanished: %v", err)
			}
			if app == appName || xid != nil {
				t.Fatalf("next client inherited the vanished client's state: application_name=%q xid=%v", app, xid)
			}
			if _, err := next.Exec(ctx, "insert into lifecycle_vanish values ($1)", marker+"/next"); err != nil {
				t.Fatalf("next client cannot write: %v", err)
			}
			if n := lcCount(t, ctx, d, "lifecycle_vanish", marker+"/next"); n != 1 {
				t.Fatalf("next client's autocommit insert not committed (%d rows)", n)
			}
			if st, ok := lcStat(e, tc.service); !ok || st.Active+st.Idle > st.Max {
				t.Fatalf("pool over its size: %+v", st)
			}
			t.Logf("vanished client's server %d, next client's server %d", pid, nextPid)
		})
	}
}

// A server backend terminated while it runs a client's query: the client
// gets an error at once (the server's 57P01 and/or the proxy's 08006), the
// pool forgets the dead connection, and a new client is served.
func TestLifecycleServerTerminatedMidQuery(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	for _, tc := range []struct{ name, user, service string }{
		{"transaction mode", "tiny", "analytics"},
		{"session mode", "sess", "data-service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.connect(t, tc.user, "")
			marker := fmt.Sprintf("/* lc-victim-%s-%d */", tc.user, time.Now().UnixNano())
			errc := make(chan error, 1)
			go func() {
				_, err := c.Exec(context.Background(), "select pg_sleep(30) "+marker)
				errc <- err
			}()
			pid := lcFindActive(t, ctx, d, marker)
			if st, ok := lcStat(e, tc.service); !ok || st.Active != 1 {
				t.Fatalf("precondition: one active server in %s, got %+v", tc.service, st)
			}
			start := time.Now()
			var killed bool
			if err := d.QueryRow(ctx, "select pg_terminate_backend($1)", pid).Scan(&killed); err != nil || !killed {
				t.Fatalf("pg_terminate_backend(%d): %v %v", pid, killed, err)
			}
			select {
			case err := <-errc:
				if !lcConnEnded(err) {
					t.Fatalf("want 57P01, 08006 or a closed connection, got %v (SQLSTATE %q)", err, pgCode(err))
				}
				t.Logf("client told %q (%v) after %s", pgCode(err), err, time.Since(start))
			case <-time.After(10 * time.Second):
				t.Fatal("client hangs after its server was terminated")
			}
			if _, err := c.Exec(ctx, "select 1"); err == nil {
				t.Fatal("the client whose server died is still served on the same connection")
			}
			// The pool may open a replacement to keep its minimum (a zero
			// min_connections means the default), but the dead connection
			// must no longer count as acquired, and the backend is gone.
			pollFor(t, "the pool to drop the dead connection", 10*time.Second, func() bool {
				st, ok := lcStat(e, tc.service)
				return ok && st.Active == 0 && st.Active+st.Idle+st.Opening <= st.Max && lcBackendState(ctx, d, pid) == ""
			})

			next := e.connect(t, tc.user, "")
			var nextPid int
			if err := next.QueryRow(ctx, "select pg_backend_pid()").Scan(&nextPid); err != nil {
				t.Fatalf("pool unusable after a server died: %v", err)
			}
			if nextPid == pid {
				t.Fatalf("new client served by the terminated backend %d", pid)
			}
		})
	}
}

// With the only server of analytics held by a transaction, another client
// gets 53300 naming the pool after wait_timeout, keeps its connection, and
// is served as soon as the server is free.
func TestLifecycleWaitTimeout(t *testing.T) {
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
	before, _ := lcStat(e, "analytics")
	if before.Active != 1 || before.Max != 1 {
		t.Fatalf("precondition: analytics holds its one server, got %+v", before)
	}

	start := time.Now()
	_, err = b.Exec(ctx, "select 2")
	waited := time.Since(start)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53300" {
		t.Fatalf("want 53300, got %v", err)
	}
	if !strings.Contains(pe.Message, "pool") || !strings.Contains(pe.Message, "analytics") {
		t.Errorf("53300 message does not name the pool: %q", pe.Message)
	}
	if waited < 250*time.Millisecond {
		t.Errorf("gave up after %s, before wait_timeout (500ms)", waited)
	}
	if waited > 5*time.Second {
		t.Errorf("waited %s for a 500ms wait_timeout", waited)
	}
	t.Logf("53300 after %s: %s (hint %q)", waited, pe.Message, pe.Hint)
	if after, _ := lcStat(e, "analytics"); after.WaitTimeout < before.WaitTimeout+1 || after.Waiting != 0 {
		t.Errorf("pool statistics do not show the timeout: before %+v after %+v", before, after)
	}
	if b.IsClosed() {
		t.Fatal("a wait timeout closed the client's connection")
	}

	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := b.QueryRow(ctx, "select 3").Scan(&v); err != nil || v != 3 {
		t.Fatalf("after the server freed up: %d %v", v, err)
	}
}

// Clients waiting for the one server of a pool get it in the order they
// started waiting.
func TestLifecycleWaitersServedInOrder(t *testing.T) {
	e := startProxy(t, func(_ *proxyConfig, m *poolConfig) { m.Pool.WaitTimeout = 20 * time.Second })
	ctx := ctxT(t)
	if _, err := direct(t).Exec(ctx, "create sequence if not exists lifecycle_fifo_seq"); err != nil {
		t.Fatal(err)
	}
	holder := e.connect(t, "tiny", "")
	const n = 4
	waiters := make([]*pgx.Conn, n)
	for i := range waiters {
		waiters[i] = e.connect(t, "tiny", "default_query_exec_mode=simple_protocol")
	}
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	type result struct {
		seq int64
		err error
	}
	results := make([]chan result, n)
	for i, w := range waiters {
		results[i] = make(chan result, 1)
		go func() {
			var r result
			r.err = w.QueryRow(ctx, "select nextval('lifecycle_fifo_seq')").Scan(&r.seq)
			results[i] <- r
		}()
		pollFor(t, fmt.Sprintf("%d clients waiting", i+1), 10*time.Second, func() bool {
			st, _ := lcStat(e, "analytics")
			return st.Waiting == i+1
		})
		time.Sleep(100 * time.Millisecond) // let it queue behind the ones before
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var prev int64
	for i := range results {
		select {
		case r := <-results[i]:
			if r.err != nil {
				t.Fatalf("waiter %d: %v", i, r.err)
			}
			if i > 0 && r.seq <= prev {
				t.Errorf("waiter %d ran after waiter %d had started waiting later (sequence %d after %d)", i, i-1, r.seq, prev)
			}
			prev = r.seq
		case <-time.After(15 * time.Second):
			t.Fatalf("waiter %d never served", i)
		}
	}
}

// max_client_connections: the client over the limit is refused with 53300
// at login, refusals do not use up slots, and a slot freed by an orderly or
// abrupt disconnect can be taken again.
func TestLifecycleMaxClientConnections(t *testing.T) {
	e := startProxy(t, func(p *proxyConfig, _ *poolConfig) { p.MaxClientConnections = 3 })
	ctx := ctxT(t)
	conns := []*pgx.Conn{e.connect(t, "app", ""), e.connect(t, "sess", ""), e.connect(t, "tiny", "")}
	if got := e.srv.ClientCount(); got != 3 {
		t.Fatalf("ClientCount %d, want 3", got)
	}
	refused := func() {
		t.Helper()
		_, err := lcDial(t, e, "app", lcPassword("app"), "")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "53300" {
			t.Fatalf("client over the limit: want 53300 at connect, got %v", err)
		}
		if !strings.Contains(pe.Message, "max_client_connections") {
			t.Errorf("53300 message does not name the limit: %q", pe.Message)
		}
	}
	for i := 0; i < 3; i++ {
		refused()
	}
	if got := e.srv.ClientCount(); got != 3 {
		t.Fatalf("refused clients changed ClientCount to %d", got)
	}
	for _, c := range conns {
		if _, err := c.Exec(ctx, "select 1"); err != nil {
			t.Fatalf("admitted client disturbed by refusals: %v", err)
		}
	}

	_ = conns[0].Close(context.Background())
	pollFor(t, "a slot after an orderly close", 10*time.Second, func() bool { return e.srv.ClientCount() == 2 })
	if err := lcLoginAndQuery(t, e, "app", lcPassword("app"), ""); err != nil {
		t.Fatalf("client after a slot freed: %v", err)
	}
	pollFor(t, "the short-lived client to leave", 10*time.Second, func() bool { return e.srv.ClientCount() == 2 })
	fourth, err := lcDial(t, e, "app", lcPassword("app"), "")
	if err != nil {
		t.Fatal(err)
	}
	refused()

	_ = conns[2].PgConn().Conn().Close() // abrupt
	pollFor(t, "a slot after an abrupt close", 10*time.Second, func() bool { return e.srv.ClientCount() == 2 })
	if err := lcLoginAndQuery(t, e, "tiny", lcPassword("tiny"), ""); err != nil {
		t.Fatalf("client after an abrupt disconnect freed a slot: %v", err)
	}
	if _, err := fourth.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
}

// Reload: added users log in at once, removed users cannot log in while
// their open sessions go on, a bad configuration is refused whole and the
// previous one stays. Pool resize through the pool manager.
func TestLifecycleReload(t *testing.T) {
	e := startProxy(t, func(_ *proxyConfig, m *poolConfig) { m.Pool.WaitTimeout = 500 * time.Millisecond })
	ctx := ctxT(t)
	keptSess := e.connect(t, "sess", "")
	if _, err := keptSess.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	if err := lcLoginAndQuery(t, e, "lc_added", "lc-added-secret", ""); pgCode(err) != "28000" {
		t.Fatalf("precondition: unknown user refused with 28000, got %v", err)
	}

	good := e.pcfg
	good.Users = []proxy.User{
		{Name: "app", Password: "app-secret", Service: "api"},
		{Name: "tiny", Password: "tiny-secret", Service: "analytics"},
		{Name: "lc_added", Password: "lc-added-secret", Service: "api"},
	} // sess removed
	if err := e.srv.Reload(good); err != nil {
		t.Fatal(err)
	}
	checkGoodInForce := func(t *testing.T) {
		t.Helper()
		if err := lcLoginAndQuery(t, e, "lc_added", "lc-added-secret", ""); err != nil {
			t.Fatalf("added user cannot log in: %v", err)
		}
		if err := lcLoginAndQuery(t, e, "lc_added", "wrong", ""); pgCode(err) != "28P01" {
			t.Fatalf("added user with a wrong password: want 28P01, got %v", err)
		}
		if err := lcLoginAndQuery(t, e, "sess", lcPassword("sess"), ""); pgCode(err) != "28000" {
			t.Fatalf("removed user: want 28000, got %v", err)
		}
		if err := lcLoginAndQuery(t, e, "app", lcPassword("app"), ""); err != nil {
			t.Fatalf("kept user cannot log in: %v", err)
		}
	}
	checkGoodInForce(t)
	var v int
	if err := keptSess.QueryRow(ctx, "select 41 + 1").Scan(&v); err != nil || v != 42 {
		t.Fatalf("an open session of a removed user must go on: %d %v", v, err)
	}
	tx, err := keptSess.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("removed user's open session cannot commit: %v", err)
	}

	bad := []struct {
		name   string
		mutate func(*proxy.Config)
		want   string // in the error
	}{
		{"bogus auth_type", func(c *proxy.Config) { c.AuthType = "bogus" }, "bogus"},
		{"unknown service", func(c *proxy.Config) {
			c.Users = append(append([]proxy.User(nil), c.Users...), proxy.User{Name: "lc_orphan", Password: "x", Service: "lc-no-such-service"})
		}, "lc-no-such-service"},
		{"duplicate user", func(c *proxy.Config) {
			c.Users = append(append([]proxy.User(nil), c.Users...), proxy.User{Name: "app", Password: "other", Service: "api"})
		}, "app"},
		{"negative max_client_connections", func(c *proxy.Config) { c.MaxClientConnections = -1 }, "max_client_connections"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			cfg := good
			b.mutate(&cfg)
			err := e.srv.Reload(cfg)
			if err == nil {
				t.Fatal("bad configuration accepted")
			}
			if !strings.Contains(err.Error(), b.want) {
				t.Errorf("error does not mention %q: %v", b.want, err)
			}
			checkGoodInForce(t)
		})
	}

	t.Run("pool resize", func(t *testing.T) {
		holder := e.connect(t, "tiny", "")
		other := e.connect(t, "tiny", "")
		htx, err := holder.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var oldPid int
		if err := htx.QueryRow(ctx, "select pg_backend_pid()").Scan(&oldPid); err != nil {
			t.Fatal(err)
		}
		if _, err := other.Exec(ctx, "select 1"); pgCode(err) != "53300" {
			t.Fatalf("precondition: analytics has one server, second client should wait and time out, got %v", err)
		}

		m := lcCloneServices(e.mcfg)
		svc := m.Services["analytics"]
		svc.MaxConnections = 2
		m.Services["analytics"] = svc
		if err := e.pools.Update(m); err != nil {
			t.Fatal(err)
		}
		// The transaction on the old pool is not disturbed, and its server
		// is closed once given back.
		if _, err := htx.Exec(ctx, "select 1"); err != nil {
			t.Fatalf("transaction on the resized pool disturbed: %v", err)
		}
		if err := htx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		d := direct(t)
		pollFor(t, "the retired pool's server to close", 10*time.Second, func() bool { return lcBackendState(ctx, d, oldPid) == "" })

		a, b := e.connect(t, "tiny", ""), e.connect(t, "tiny", "")
		pids := make([]int, 2)
		for i, c := range []*pgx.Conn{a, b} {
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pids[i]); err != nil {
				t.Fatalf("concurrent transaction %d after resize: %v", i+1, err)
			}
		}
		if pids[0] == pids[1] {
			t.Fatalf("two open transactions share server %d", pids[0])
		}
		if st, ok := lcStat(e, "analytics"); !ok || st.Max != 2 || st.Active != 2 {
			t.Fatalf("pool statistics after resize: %+v", st)
		}
		if _, err := other.Exec(ctx, "select 1"); pgCode(err) != "53300" {
			t.Fatalf("third concurrent client: the new limit of 2 should hold, got %v", err)
		}
	})
}

// Shutdown drains: new clients are refused, idle clients (transaction and
// session mode) are told 57P01 at once, clients inside a transaction
// (transaction and session mode) may finish and commit and are then
// disconnected, and Shutdown returns nil before its deadline. A second
// Shutdown is harmless.
func TestLifecycleShutdownDrains(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "create table if not exists lifecycle_shutdown (who text)"); err != nil {
		t.Fatal(err)
	}
	idleTx := e.connect(t, "app", "")
	idleSess := e.connect(t, "sess", "")
	busyTx := e.connect(t, "app", "")
	busySess := e.connect(t, "sess", "")
	marker := lcMarker(t)
	type busyClient struct {
		name string
		c    *pgx.Conn
		tx   pgx.Tx
		who  string
	}
	busy := []*busyClient{{name: "transaction mode", c: busyTx, who: marker + "/tx"}, {name: "session mode", c: busySess, who: marker + "/sess"}}
	for _, b := range busy {
		tx, err := b.c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "insert into lifecycle_shutdown values ($1)", b.who); err != nil {
			t.Fatal(err)
		}
		b.tx = tx
	}
	if got := e.srv.ClientCount(); got != 4 {
		t.Fatalf("precondition: 4 clients, ClientCount %d", got)
	}

	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(sctx) }()

	// Idle clients are ended at once; only the two in a transaction remain.
	pollFor(t, "idle clients to be ended", 5*time.Second, func() bool { return e.srv.ClientCount() == 2 })
	for name, c := range map[string]*pgx.Conn{"transaction mode": idleTx, "session mode": idleSess} {
		lcExpectGoodbye(t, "idle "+name+" client", c)
	}
	if err := lcLoginAndQuery(t, e, "app", lcPassword("app"), ""); err == nil {
		t.Error("new client accepted during shutdown")
	}

	for _, b := range busy {
		if _, err := b.tx.Exec(ctx, "insert into lifecycle_shutdown values ($1)", b.who+"/2"); err != nil {
			t.Fatalf("%s transaction cut short by shutdown: %v", b.name, err)
		}
		if err := b.tx.Commit(ctx); err != nil {
			t.Fatalf("%s commit during shutdown: %v", b.name, err)
		}
		if n := lcCount(t, ctx, d, "lifecycle_shutdown", b.who) + lcCount(t, ctx, d, "lifecycle_shutdown", b.who+"/2"); n != 2 {
			t.Fatalf("%s transaction committed %d of 2 rows", b.name, n)
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if took := time.Since(start); took > 8*time.Second {
			t.Errorf("Shutdown took %s: it waited for its deadline although every client had finished", took)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown did not return after the last transaction ended")
	}
	for _, b := range busy {
		if _, err := b.c.Exec(ctx, "select 1"); !lcConnEnded(err) {
			t.Errorf("%s client still served after its transaction ended during shutdown: %v", b.name, err)
		}
	}
	if got := e.srv.ClientCount(); got != 0 {
		t.Errorf("ClientCount %d after Shutdown", got)
	}
	pollFor(t, "no server idle in transaction", 5*time.Second, func() bool { return lcIdleInTx(ctx, d) == 0 })

	// Again: harmless, and prompt (the harness's cleanup calls it a third
	// time).
	again := time.Now()
	sctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := e.srv.Shutdown(sctx2); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if took := time.Since(again); took > 5*time.Second {
		t.Errorf("second Shutdown took %s", took)
	}
}

// When the shutdown deadline passes, a transaction that never ends and a
// statement still running are cut off, nothing they did is committed, and
// Shutdown returns.
func TestLifecycleShutdownDeadline(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "create table if not exists lifecycle_shutdown (who text)"); err != nil {
		t.Fatal(err)
	}
	marker := lcMarker(t)
	idleInTx := e.connect(t, "app", "")
	if _, err := idleInTx.Exec(ctx, "begin; insert into lifecycle_shutdown values ('"+marker+"/idle')"); err != nil {
		t.Fatal(err)
	}
	sleeper := e.connect(t, "app", "")
	sleepMarker := fmt.Sprintf("/* lc-shutdown-sleeper-%d */", time.Now().UnixNano())
	sleepErr := make(chan error, 1)
	go func() {
		_, err := sleeper.Exec(context.Background(), "begin; insert into lifecycle_shutdown values ('"+marker+"/sleeper'); select pg_sleep(20) "+sleepMarker)
		sleepErr <- err
	}()
	sleeperPid := lcFindActive(t, ctx, d, sleepMarker)
	t.Cleanup(func() {
		_, _ = d.Exec(context.Background(), "select pg_terminate_backend($1)", sleeperPid)
	})

	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	if err := e.srv.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	took := time.Since(start)
	t.Logf("Shutdown with a 1s deadline returned after %s", took)
	if took < 500*time.Millisecond {
		t.Errorf("Shutdown returned after %s without waiting for the open transactions", took)
	}
	if took > 8*time.Second {
		t.Errorf("Shutdown took %s with a 1s deadline", took)
	}
	select {
	case err := <-sleepErr:
		if err == nil {
			t.Error("running statement reported success after being cut off")
		}
	case <-time.After(5 * time.Second):
		t.Error("client with a running statement not disconnected after Shutdown returned")
	}
	if _, err := idleInTx.Exec(ctx, "commit"); err == nil {
		t.Fatal("client in a transaction still served after the shutdown deadline")
	}
	if got := e.srv.ClientCount(); got != 0 {
		t.Errorf("ClientCount %d after Shutdown", got)
	}
	pollFor(t, "the abandoned transaction to be rolled back", 10*time.Second, func() bool { return lcIdleInTx(ctx, d) == 0 })
	if n := lcCount(t, ctx, d, "lifecycle_shutdown", marker+"/idle"); n != 0 {
		t.Fatalf("transaction cut off by shutdown was committed")
	}
	// The sleeper's server was closed under it; once its statement ends
	// PostgreSQL rolls back. Do not wait 20 s for that: end it now.
	if _, err := d.Exec(ctx, "select pg_terminate_backend($1)", sleeperPid); err != nil {
		t.Fatal(err)
	}
	pollFor(t, "the sleeper's backend to exit", 10*time.Second, func() bool { return lcBackendState(ctx, d, sleeperPid) == "" })
	if n := lcCount(t, ctx, d, "lifecycle_shutdown", marker+"/sleeper"); n != 0 {
		t.Fatalf("statement cut off by shutdown was committed")
	}

	sctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := e.srv.Shutdown(sctx2); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
}

// A client whose startup settings the server rejects gets the server's
// SQLSTATE (not a hang and not an internal error), whether the setting is
// applied at login (session mode, or the first login to a database) or at
// its first query (transaction mode), and the server it was tried on goes
// back clean.
func TestLifecycleInvalidStartupSettings(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	cases := []struct {
		name, extra, code, mention string
	}{
		{"bad value", "options='-c statement_timeout=banana'", "22023", "statement_timeout"},
		{"unknown parameter", "options='-c lc_no_such_setting=1'", "42704", "lc_no_such_setting"},
		{"bad startup parameter", "DateStyle=banana", "22023", "DateStyle"},
	}
	check := func(t *testing.T, user string) {
		for _, tc := range cases {
			start := time.Now()
			err := lcLoginAndQuery(t, e, user, lcPassword(user), tc.extra)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != tc.code {
				t.Errorf("%s (%s): want SQLSTATE %s, got %v", user, tc.name, tc.code, err)
				continue
			}
			if !strings.Contains(strings.ToLower(pe.Message), strings.ToLower(tc.mention)) {
				t.Errorf("%s (%s): message does not mention %s: %q", user, tc.name, tc.mention, pe.Message)
			}
			if took := time.Since(start); took > 8*time.Second {
				t.Errorf("%s (%s): error took %s", user, tc.name, took)
			}
		}
	}
	// First login to the database: the proxy attaches a server at login.
	t.Run("first login", func(t *testing.T) { check(t, "app") })
	if err := lcLoginAndQuery(t, e, "app", lcPassword("app"), ""); err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"app", "tiny", "sess"} {
		t.Run(user, func(t *testing.T) { check(t, user) })
	}

	// tiny's one server had the bad settings tried on it: the next client
	// must find it working, with defaults.
	pollFor(t, "analytics to have no active server", 5*time.Second, func() bool {
		st, ok := lcStat(e, "analytics")
		return !ok || st.Active == 0
	})
	next := e.connect(t, "tiny", "")
	var timeout, dateStyle string
	var xid *int64
	if err := next.QueryRow(ctx, "select current_setting('statement_timeout'), current_setting('DateStyle'), txid_current_if_assigned()").Scan(&timeout, &dateStyle, &xid); err != nil {
		t.Fatalf("server unusable after rejected settings: %v", err)
	}
	var defStyle string
	if err := direct(t).QueryRow(ctx, "select current_setting('DateStyle')").Scan(&defStyle); err != nil {
		t.Fatal(err)
	}
	if timeout != "0" || dateStyle != defStyle || xid != nil {
		t.Fatalf("next client sees statement_timeout=%q DateStyle=%q (want %q) xid=%v", timeout, dateStyle, defStyle, xid)
	}
}

// An idle transaction-mode client that holds its server because of session
// state (here LISTEN) is between transactions: Shutdown should tell it 57P01
// at once, like any idle client, not hold the whole shutdown until its
// deadline and then drop it without a word.
func TestLifecycleShutdownPinnedIdleClient(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	pinned := e.connect(t, "app", "default_query_exec_mode=simple_protocol")
	if _, err := pinned.Exec(ctx, "listen lifecycle_ch"); err != nil {
		t.Fatal(err)
	}
	pollFor(t, "the client to be pinned", 5*time.Second, func() bool { return e.srv.PinnedCount() == 1 })
	sctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(sctx) }()
	lcExpectGoodbye(t, "pinned idle client", pinned)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if took := time.Since(start); took > 6*time.Second {
			t.Errorf("Shutdown took %s: the pinned idle client was only cut off at the deadline", took)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

// A client waiting for a server when Shutdown starts is told 57P01 at once;
// the statement it was waiting to run must then not run, whether the server
// it waits for is freed by a commit or by the shutdown deadline.
func TestLifecycleShutdownWhileWaitingForServer(t *testing.T) {
	for _, holderCommits := range []bool{true, false} {
		name := "server freed during shutdown"
		if !holderCommits {
			name = "server never freed"
		}
		t.Run(name, func(t *testing.T) {
			e := startProxy(t, func(_ *proxyConfig, m *poolConfig) { m.Pool.WaitTimeout = 10 * time.Second })
			ctx := ctxT(t)
			d := direct(t)
			if _, err := d.Exec(ctx, "create table if not exists lifecycle_shutdown (who text)"); err != nil {
				t.Fatal(err)
			}
			marker := lcMarker(t)
			holder := e.connect(t, "tiny", "")
			waiter := e.connect(t, "tiny", "default_query_exec_mode=simple_protocol")
			tx, err := holder.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "select 1"); err != nil {
				t.Fatal(err)
			}
			waitErr := make(chan error, 1)
			go func() {
				_, err := waiter.Exec(context.Background(), "insert into lifecycle_shutdown values ('"+marker+"')")
				waitErr <- err
			}()
			pollFor(t, "the client to wait for the server", 5*time.Second, func() bool {
				st, _ := lcStat(e, "analytics")
				return st.Waiting == 1
			})
			deadline := 10 * time.Second
			if !holderCommits {
				deadline = time.Second
			}
			sctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			done := make(chan error, 1)
			go func() { done <- e.srv.Shutdown(sctx) }()
			select {
			case err := <-waitErr:
				if !lcConnEnded(err) {
					t.Fatalf("waiting client: want 57P01 or a closed connection, got %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("waiting client not told about the shutdown")
			}
			if holderCommits {
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Shutdown: %v (after %s)", err, time.Since(start))
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Shutdown did not return")
			}
			if n := lcCount(t, ctx, d, "lifecycle_shutdown", marker); n != 0 {
				t.Errorf("the client was told its connection was terminated, yet its insert ran afterwards (%d rows)", n)
			}
		})
	}
}
