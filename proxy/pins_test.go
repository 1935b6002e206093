package proxy_test

import (
	"context"
	"testing"
	"time"
)

// Each kind of unreplayable session state pins the client to its server
// (on a one-server pool another client then times out waiting) until the
// state is cleared, when the server is shared again.
func TestPinningAndRelease(t *testing.T) {
	e := startProxy(t, func(_ *proxyConfig, m *poolConfig) { m.Pool.WaitTimeout = 300 * time.Millisecond })
	ctx := ctxT(t)
	if _, err := direct(t).Exec(ctx, "create extension if not exists plpgsql"); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, pin, release string }{
		{"listen", "listen pin_ch", "unlisten *"},
		{"advisory lock", "select pg_advisory_lock(4242)", "select pg_advisory_unlock_all()"},
		{"temp table", "create temp table pin_tmp (x int)", "discard temp"},
		{"cursor with hold", "declare pin_cur cursor with hold for select 1", "close all"},
		{"sql prepare", "prepare pin_p as select 1", "deallocate all"},
		{"set_config", "select set_config('pin.x', 'y', false)", "discard all"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			owner := e.connect(t, "tiny", "default_query_exec_mode=simple_protocol")
			other := e.connect(t, "tiny", "")
			if _, err := owner.Exec(ctx, c.pin); err != nil {
				t.Fatal(err)
			}
			waitPinned(t, e, 1)
			var pid1, pid2 int
			if err := owner.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid1); err != nil {
				t.Fatal(err)
			}
			if err := owner.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid2); err != nil || pid1 != pid2 {
				t.Fatalf("pinned client moved between servers: %d %d %v", pid1, pid2, err)
			}
			if _, err := other.Exec(ctx, "select 1"); pgCode(err) != "53300" {
				t.Fatalf("another client got the pinned server: %v", err)
			}
			if _, err := owner.Exec(ctx, c.release); err != nil {
				t.Fatal(err)
			}
			waitPinned(t, e, 0)
			if _, err := other.Exec(ctx, "select 1"); err != nil {
				t.Fatalf("server not shared after %q: %v", c.release, err)
			}
		})
	}

	// LOAD cannot be undone: the client stays pinned, and its server is
	// closed, not reused, when it leaves.
	t.Run("load", func(t *testing.T) {
		owner := e.connect(t, "tiny", "default_query_exec_mode=simple_protocol")
		if _, err := owner.Exec(ctx, "load 'auto_explain'"); err != nil {
			t.Skipf("auto_explain not available: %v", err)
		}
		waitPinned(t, e, 1)
		var pid int
		if err := owner.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		if _, err := owner.Exec(ctx, "discard all"); err != nil {
			t.Fatal(err)
		}
		waitPinned(t, e, 1) // DISCARD ALL does not unload a library
		_ = owner.Close(context.Background())
		waitPinned(t, e, 0)
		next := e.connect(t, "tiny", "")
		var nextPid int
		if err := next.QueryRow(ctx, "select pg_backend_pid()").Scan(&nextPid); err != nil {
			t.Fatal(err)
		}
		if nextPid == pid {
			t.Fatal("the server that loaded a library was reused")
		}
	})

	// A pinned client that disconnects leaves nothing behind: the next
	// client finds no listener, lock, temporary table or setting.
	t.Run("disconnect", func(t *testing.T) {
		owner := e.connect(t, "tiny", "default_query_exec_mode=simple_protocol")
		for _, q := range []string{"listen gone_ch", "select pg_advisory_lock(777)", "create temp table gone_tmp (x int)", "select set_config('pin.x', 'leak', false)"} {
			if _, err := owner.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		_ = owner.Close(context.Background())
		waitPinned(t, e, 0)
		next := e.connect(t, "tiny", "")
		var listeners, locks, temps int
		var setting string
		if err := next.QueryRow(ctx, `select (select count(*) from pg_listening_channels()),
			(select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()),
			(select count(*) from pg_class where relname = 'gone_tmp'),
			coalesce(current_setting('pin.x', true), '')`).Scan(&listeners, &locks, &temps, &setting); err != nil {
			t.Fatal(err)
		}
		if listeners != 0 || locks != 0 || temps != 0 || setting == "leak" {
			t.Fatalf("state leaked to the next client: listeners %d locks %d temp %d setting %q", listeners, locks, temps, setting)
		}
	})

	// A SET inside a transaction that rolls back is not replayed; one that
	// commits is, on whichever server the client gets next.
	t.Run("set in transactions", func(t *testing.T) {
		c := e.connect(t, "app", "")
		for _, q := range []string{"begin", "set work_mem = '7MB'", "rollback", "begin", "set statement_timeout = '77s'", "commit"} {
			if _, err := c.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < 10; i++ {
			var wm, st string
			if err := c.QueryRow(ctx, "select current_setting('work_mem'), current_setting('statement_timeout')").Scan(&wm, &st); err != nil {
				t.Fatal(err)
			}
			if wm == "7MB" || st != "77s" {
				t.Fatalf("work_mem %s statement_timeout %s", wm, st)
			}
		}
	})
}

func waitPinned(t *testing.T, e *env, n int) {
	t.Helper()
	poll(t, "the pinned count", func() bool { return e.srv.PinnedCount() == n })
}
