package proxy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// KILL of a client whose statement waits on a row lock cancels that
// statement on its server and ends its transaction: the statement does not
// commit once the lock is released, the client is told 57P01, and no
// server is left in a transaction. Both an autocommit statement and one
// inside a block, in both pool modes.
func TestKillCancelsRunningStatement(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "drop table if exists kill_lock; create table kill_lock (id int primary key, v int); insert into kill_lock values (1, 0); grant all on kill_lock to public"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, user string
		block      bool
		simple     bool
	}{
		{"autocommit, transaction mode", "app", false, true},
		{"autocommit, extended protocol", "app", false, false},
		{"in a block, transaction mode", "app", true, true},
		{"autocommit, session mode", "sess", false, true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			holder, err := pgx.Connect(ctx, pg.ConnString("app"))
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Close(context.Background())
			tx, err := holder.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "update kill_lock set v = v where id = 1"); err != nil {
				t.Fatal(err)
			}

			victim := e.connect(t, tc.user, "")
			if tc.block {
				if _, err := victim.Exec(ctx, "begin"); err != nil {
					t.Fatal(err)
				}
			}
			var id uint32
			for _, ci := range e.srv.Clients() {
				if ci.User == tc.user {
					id = max(id, ci.ID)
				}
			}
			mode := pgx.QueryExecModeSimpleProtocol
			if !tc.simple {
				mode = pgx.QueryExecModeExec
			}
			blocked := make(chan error, 1)
			go func() {
				_, err := victim.Exec(ctx, fmt.Sprintf("update kill_lock set v = %d where id = 1", 100+i), mode)
				blocked <- err
			}()
			pollFor(t, "the update to wait on the row lock", 10*time.Second, func() bool {
				var n int
				_ = d.QueryRow(ctx, "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and query like 'update kill_lock set v = 10_ %'").Scan(&n)
				return n == 1
			})

			start := time.Now()
			if err := e.srv.Kill(id); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-blocked:
				if code := pgCode(err); code != "57P01" {
					t.Errorf("the killed client got %v (SQLSTATE %q), want 57P01", err, code)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the killed client's statement is still running")
			}
			t.Logf("KILL took %s", time.Since(start).Round(time.Millisecond))
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			var v int
			if err := d.QueryRow(ctx, "select v from kill_lock where id = 1").Scan(&v); err != nil {
				t.Fatal(err)
			}
			if v != 0 {
				t.Errorf("the killed client's update committed after the lock was released (v = %d)", v)
			}
			pollFor(t, "no server left in a transaction", 5*time.Second, func() bool {
				var n int
				_ = d.QueryRow(ctx, "select count(*) from pg_stat_activity where datname = 'app' and state <> 'idle' and pid <> pg_backend_pid() and backend_type = 'client backend'").Scan(&n)
				return n == 0
			})
			// The pool still serves.
			other := e.connect(t, tc.user, "")
			if _, err := other.Exec(ctx, "select 1"); err != nil {
				t.Errorf("another client after the KILL: %v", err)
			}
		})
	}
}
