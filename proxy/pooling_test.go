package proxy_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Simple and extended protocol, a pipelined batch of unnamed statements,
// and results of every size come back intact in transaction mode.
func TestProtocolsInTransactionMode(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			c := e.connect(t, "app", "default_query_exec_mode="+strings.ReplaceAll(mode.String(), " ", "_"))
			var n int
			var s string
			if err := c.QueryRow(ctx, "select $1::int + 1, repeat('x', $2::int)", 41, 100000).Scan(&n, &s); err != nil {
				t.Fatal(err)
			}
			if n != 42 || len(s) != 100000 {
				t.Fatalf("got %d, %d bytes", n, len(s))
			}
			rows, err := c.Query(ctx, "select g from generate_series(1, 5000) g")
			if err != nil {
				t.Fatal(err)
			}
			sum := 0
			for rows.Next() {
				var g int
				if err := rows.Scan(&g); err != nil {
					t.Fatal(err)
				}
				sum += g
			}
			if rows.Err() != nil || sum != 5000*5001/2 {
				t.Fatalf("sum %d err %v", sum, rows.Err())
			}
			b := &pgx.Batch{}
			for i := 0; i < 50; i++ {
				b.Queue("select $1::int * 2", i)
			}
			br := c.SendBatch(ctx, b)
			for i := 0; i < 50; i++ {
				var v int
				if err := br.QueryRow().Scan(&v); err != nil || v != i*2 {
					t.Fatalf("batch item %d: %d %v", i, v, err)
				}
			}
			if err := br.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// An error inside a pipeline skips the rest up to Sync, as on PostgreSQL,
// and the session goes on.
func TestPipelineErrorSkipsToSync(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	c := e.connect(t, "app", "default_query_exec_mode=exec")
	pc := c.PgConn()
	batch := &pgconn.Batch{}
	batch.ExecParams("select 1", nil, nil, nil, nil)
	batch.ExecParams("select 1/0", nil, nil, nil, nil)
	batch.ExecParams("select 3", nil, nil, nil, nil)
	_, err := pc.ExecBatch(ctx, batch).ReadAll()
	if pgCode(err) != "22012" {
		t.Fatalf("want division_by_zero, got %v", err)
	}
	var v int
	if err := c.QueryRow(ctx, "select 7").Scan(&v); err != nil || v != 7 {
		t.Fatalf("session unusable after pipeline error: %v", err)
	}
}

// Explicit transactions with isolation levels, savepoints and ROLLBACK TO
// behave as on PostgreSQL and keep one server for the whole transaction.
func TestTransactionsSavepointsIsolation(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	if _, err := c.Exec(ctx, "create table if not exists tx_t (id int primary key, v text)"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "truncate tx_t"); err != nil {
		t.Fatal(err)
	}
	for _, iso := range []string{"SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED"} {
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SET TRANSACTION ISOLATION LEVEL "+iso); err != nil {
			t.Fatal(err)
		}
		var got string
		var pid1, pid2 int
		if err := tx.QueryRow(ctx, "select current_setting('transaction_isolation'), pg_backend_pid()").Scan(&got, &pid1); err != nil {
			t.Fatal(err)
		}
		if got != map[string]string{"SERIALIZABLE": "serializable", "REPEATABLE READ": "repeatable read", "READ COMMITTED": "read committed"}[iso] {
			t.Fatalf("isolation %s: server says %s", iso, got)
		}
		if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid2); err != nil || pid1 != pid2 {
			t.Fatalf("transaction moved between servers: %d -> %d (%v)", pid1, pid2, err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Exec(ctx, "BEGIN ISOLATION LEVEL SERIALIZABLE"); err != nil {
		t.Fatal(err)
	}
	steps := []string{
		"insert into tx_t values (1, 'a')",
		"savepoint s1",
		"insert into tx_t values (2, 'b')",
		"rollback to savepoint s1",
		"insert into tx_t values (3, 'c')",
	}
	for _, s := range steps {
		if _, err := c.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if _, err := c.Exec(ctx, "insert into tx_t values (1, 'dup')"); pgCode(err) != "23505" {
		t.Fatalf("want unique_violation, got %v", err)
	}
	if _, err := c.Exec(ctx, "select 1"); pgCode(err) != "25P02" {
		t.Fatalf("want in_failed_sql_transaction, got %v", err)
	}
	if _, err := c.Exec(ctx, "rollback"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "begin; insert into tx_t values (1, 'a'); savepoint s; insert into tx_t values (2, 'b'); rollback to s; commit"); err != nil {
		t.Fatal(err)
	}
	var ids []int
	rows, _ := c.Query(ctx, "select id from tx_t order by id")
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil || fmt.Sprint(ids) != "[1]" {
		t.Fatalf("committed rows %v (%v)", ids, err)
	}
}

// Startup settings are replayed on every server a client uses and never
// seen by another client sharing the same servers.
func TestSettingsDoNotLeak(t *testing.T) {
	e := startProxy(t, func(_ *proxyConfig, m *poolConfig) {
		svc := m.Services["api"]
		svc.MaxConnections, svc.MinConnections = 2, 0
		m.Services["api"] = svc
	})
	ctx := ctxT(t)
	var defTZ string
	if err := direct(t).QueryRow(ctx, "show timezone").Scan(&defTZ); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tz := defTZ
			appName := fmt.Sprintf("client-%d", i)
			extra := fmt.Sprintf("application_name=%s options='-c search_path=s%d'", appName, i)
			if i%2 == 0 {
				extra = "" // no settings: must see server defaults
				appName = ""
			} else {
				extra += " timezone=Asia/Tokyo"
				tz = "Asia/Tokyo"
			}
			c := e.connect(t, "app", extra)
			for j := 0; j < 40; j++ {
				var gotApp, gotPath, gotTZ string
				if err := c.QueryRow(ctx, "select current_setting('application_name'), current_setting('search_path'), current_setting('TimeZone')").Scan(&gotApp, &gotPath, &gotTZ); err != nil {
					errs <- err
					return
				}
				wantPath := `"$user", public`
				if i%2 == 1 {
					wantPath = fmt.Sprintf("s%d", i)
				}
				if gotApp != appName || gotPath != wantPath || gotTZ != tz {
					errs <- fmt.Errorf("client %d saw app=%q path=%q tz=%q", i, gotApp, gotPath, gotTZ)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
