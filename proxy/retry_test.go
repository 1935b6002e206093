package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgshield/pgshield/poolmgr"
)

// simple opens a pgx connection through the proxy that uses the simple
// query protocol, as psql does.
func (e *env) simple(t *testing.T, user string) *pgx.Conn {
	t.Helper()
	return e.connect(t, user, "default_query_exec_mode=simple_protocol")
}

// TestRetrySerializationFailure: an autocommit UPDATE under REPEATABLE
// READ that loses to a concurrent update fails with 40001 on PostgreSQL;
// through the proxy it is run again and succeeds. Inside BEGIN … COMMIT the
// client gets the error.
func TestRetrySerializationFailure(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "DROP TABLE IF EXISTS retry_ser; CREATE TABLE retry_ser (id int PRIMARY KEY, v int); INSERT INTO retry_ser VALUES (1, 0)"); err != nil {
		t.Fatal(err)
	}
	c := e.simple(t, "app")
	if _, err := c.Exec(ctx, "SET default_transaction_isolation = 'repeatable read'"); err != nil {
		t.Fatal(err)
	}

	// conflict holds a row lock from another transaction, runs stmt through
	// the proxy (which blocks on the lock), then commits so that stmt's
	// snapshot is stale.
	conflict := func(run func() error) error {
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "UPDATE retry_ser SET v = v + 1 WHERE id = 1"); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- run() }()
		waitBlocked(t, "retry_ser")
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		return <-errc
	}

	err := conflict(func() error {
		_, err := c.Exec(ctx, "UPDATE retry_ser SET v = v + 10 WHERE id = 1")
		return err
	})
	if err != nil {
		t.Fatalf("autocommit statement after a serialization failure: %v (want success by retry)", err)
	}
	var v int
	if err := d.QueryRow(ctx, "SELECT v FROM retry_ser WHERE id = 1").Scan(&v); err != nil || v != 11 {
		t.Fatalf("v = %d, %v; want 11 (both updates applied once)", v, err)
	}

	// The same inside an explicit transaction block: the client decides.
	err = conflict(func() error {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil { // takes the snapshot
			return err
		}
		_, err = tx.Exec(ctx, "UPDATE retry_ser SET v = v + 100 WHERE id = 1")
		return err
	})
	if pgCode(err) != "40001" {
		t.Fatalf("in a transaction block: %v, want 40001 passed to the client", err)
	}
	// pgx's Begin issues BEGIN with the session's isolation level; the
	// first statement took the snapshot before the other commit, so the
	// error is PostgreSQL's own.
}

// TestRetryDeadlock: an autocommit statement chosen as the deadlock victim
// is run again and succeeds; in a transaction block the client gets 40P01.
func TestRetryDeadlock(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "DROP TABLE IF EXISTS retry_dl; CREATE TABLE retry_dl (id int PRIMARY KEY, v int); INSERT INTO retry_dl VALUES (1, 0), (2, 0)"); err != nil {
		t.Fatal(err)
	}
	// The direct session waits longer before checking for deadlocks, so
	// the proxied statement is the one PostgreSQL aborts.
	if _, err := d.Exec(ctx, "SET deadlock_timeout = '20s'"); err != nil {
		t.Fatal(err)
	}
	c := e.simple(t, "app")
	if _, err := c.Exec(ctx, "SET deadlock_timeout = '200ms'"); err != nil {
		t.Fatal(err)
	}

	deadlock := func(run func() error) error {
		tx, err := d.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, "UPDATE retry_dl SET v = v + 1 WHERE id = 2"); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- run() }()
		// The proxied statement locks row 1, then waits for row 2.
		waitBlocked(t, "retry_dl")
		// Now wait for row 1: a cycle. The proxied statement (shorter
		// deadlock_timeout) is aborted; this one gets row 1 and commits.
		done := make(chan error, 1)
		go func() {
			_, err := tx.Exec(ctx, "UPDATE retry_dl SET v = v + 1 WHERE id = 1")
			if err == nil {
				err = tx.Commit(ctx)
			}
			done <- err
		}()
		if err := <-done; err != nil {
			t.Fatalf("direct transaction: %v", err)
		}
		return <-errc
	}

	err := deadlock(func() error {
		_, err := c.Exec(ctx, lockBoth)
		return err
	})
	if err != nil {
		t.Fatalf("autocommit deadlock victim: %v (want success by retry)", err)
	}

	err = deadlock(func() error {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		_, err = tx.Exec(ctx, lockBoth)
		return err
	})
	if pgCode(err) != "40P01" {
		t.Fatalf("deadlock in a transaction block: %v, want 40P01 passed to the client", err)
	}
	// Both deadlocks count, the retried one too; errors by class as well.
	if n := testutil.ToFloat64(e.m.Deadlocks.WithLabelValues("api", "app")); n != 2 {
		t.Errorf("database_deadlocks_total = %v, want 2", n)
	}
	if n := testutil.ToFloat64(e.m.QueryErrors.WithLabelValues("api", "app", "40")); n != 2 {
		t.Errorf("database_query_errors_total{class=\"40\"} = %v, want 2", n)
	}
	// Only the autocommit one was run again.
	if n := testutil.ToFloat64(e.m.Retries.WithLabelValues("api", "app", "40P01")); n != 1 {
		t.Errorf("pgshield_statement_retries_total{code=\"40P01\"} = %v, want 1", n)
	}
	// The session is usable afterwards.
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// lockBoth locks row 1, then row 2, and sends its one row only once both
// are locked: a statement failing on row 2 has sent the client nothing but
// its row description.
const lockBoth = "SELECT count(*) FROM (SELECT id FROM retry_dl WHERE id IN (1, 2) ORDER BY id FOR UPDATE) s"

// waitBlocked waits until some session waits for a lock while running a
// statement on table. It asks on a connection of its own: inside a
// transaction pg_stat_activity is a snapshot that never changes.
func waitBlocked(t *testing.T, table string) {
	t.Helper()
	d := direct(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		var n int
		err := d.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()`, table).Scan(&n)
		if err != nil {
			t.Fatalf("waiting for a blocked statement: %v", err)
		}
		if n > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDeadIdleConnectionsNotUsed: server connections closed by the server
// while idle in the pool (here pg_terminate_backend; a restart or failover
// alike) are found dead before use, and the client's statement goes on a
// fresh connection instead of failing with 08006.
func TestDeadIdleConnectionsNotUsed(t *testing.T) {
	e := startProxy(t, func(_ *proxyConfig, m *poolConfig) {
		m.Services["api"] = poolmgr.ServiceConfig{MaxConnections: 3, MinConnections: 3, PoolMode: poolmgr.ModeTransaction}
	})
	ctx := ctxT(t)
	c := e.simple(t, "app")
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	d := direct(t)
	var killed int
	if err := d.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = 'app' AND usename = 'postgres' AND pid <> pg_backend_pid() AND backend_type = 'client backend'`).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatal("no pooled server connection to terminate")
	}
	// Past the idle time after which a connection is checked before use.
	time.Sleep(1500 * time.Millisecond)
	for i := 0; i < 5; i++ {
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("statement %d after %d idle server connections were terminated: %v", i, killed, err)
		}
	}
}

// TestParseCacheMetric: repeated texts are counted as parse cache hits,
// new ones as misses, in pgshield_parse_cache_lookups_total.
func TestParseCacheMetric(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	c := e.simple(t, "app")
	for i := 0; i < 5; i++ {
		if _, err := c.Exec(ctx, "SELECT 'parse cache metric'"); err != nil {
			t.Fatal(err)
		}
	}
	families, err := e.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if f.GetName() == "pgshield_parse_cache_lookups_total" {
			for _, m := range f.GetMetric() {
				got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if got["hit"] < 4 || got["miss"] < 1 {
		t.Errorf("parse cache lookups %v; want at least 4 hits and 1 miss", got)
	}
}
