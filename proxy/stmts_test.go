package proxy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Two clients use the same statement name for different texts; each gets
// its own, whichever server runs it.
func TestSameNameDifferentText(t *testing.T) {
	e := startProxy(t, func(_ *proxyConfig, m *poolConfig) { setMax(m, "api", 1) })
	ctx := ctxT(t)
	a, b := e.connect(t, "app", ""), e.connect(t, "app", "")
	if _, err := a.PgConn().Prepare(ctx, "s", "select 'a:' || $1::text", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.PgConn().Prepare(ctx, "s", "select 'b:' || $1::int * 2", nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		for name, c := range map[string]*pgx.Conn{"a": a, "b": b} {
			res := c.PgConn().ExecPrepared(ctx, "s", [][]byte{[]byte("21")}, nil, nil).Read()
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			got := string(res.Rows[0][0])
			want := map[string]string{"a": "a:21", "b": "b:42"}[name]
			if got != want {
				t.Fatalf("client %s ran %q, want %q", name, got, want)
			}
		}
	}
}

// With room for two statements per server, a third evicts the least
// recently used, which is prepared again when next used.
func TestStatementLRUEviction(t *testing.T) {
	e := startProxy(t, func(p *proxyConfig, m *poolConfig) {
		p.MaxPreparedStatements = 2
		setMax(m, "api", 1)
	})
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	d := direct(t)
	for round := 0; round < 3; round++ {
		for i := 0; i < 4; i++ {
			var v int
			if err := c.QueryRow(ctx, fmt.Sprintf("select %d + $1::int", i), 1).Scan(&v); err != nil || v != i+1 {
				t.Fatalf("round %d stmt %d: %d %v", round, i, v, err)
			}
		}
	}
	// The server keeps at most two of ours.
	var n int
	var pid int
	if err := c.QueryRow(ctx, "select count(*), pg_backend_pid() from pg_prepared_statements", pgx.QueryExecModeSimpleProtocol).Scan(&n, &pid); err != nil {
		t.Fatal(err)
	}
	if n > 2 {
		t.Fatalf("server holds %d prepared statements, limit 2", n)
	}
	_ = d
}

// A client's Close affects only that client; Describe of a statement
// returns its parameter and result types.
func TestCloseAndDescribe(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	a, b := e.connect(t, "app", ""), e.connect(t, "app", "")
	sd, err := a.PgConn().Prepare(ctx, "q", "select $1::int as n, 'x'::text as s", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sd.ParamOIDs) != 1 || sd.ParamOIDs[0] != 23 || len(sd.Fields) != 2 || sd.Fields[1].Name != "s" {
		t.Fatalf("describe: %+v", sd)
	}
	if _, err := b.PgConn().Prepare(ctx, "q", "select $1::int as n, 'x'::text as s", nil); err != nil {
		t.Fatal(err)
	}
	if err := a.PgConn().Deallocate(ctx, "q"); err != nil {
		t.Fatal(err)
	}
	res := a.PgConn().ExecPrepared(ctx, "q", [][]byte{[]byte("1")}, nil, nil).Read()
	if pgCode(res.Err) != "26000" {
		t.Fatalf("closed statement still usable by its client: %v", res.Err)
	}
	res = b.PgConn().ExecPrepared(ctx, "q", [][]byte{[]byte("2")}, nil, nil).Read()
	if res.Err != nil || string(res.Rows[0][0]) != "2" {
		t.Fatalf("another client's Close affected this one: %v", res.Err)
	}
	// Preparing the same name twice fails as on PostgreSQL.
	if _, err := b.PgConn().Prepare(ctx, "q", "select 1", nil); pgCode(err) != "42P05" {
		t.Fatalf("duplicate name: want 42P05, got %v", err)
	}
}

// Errors in a pipeline: a failing named Parse leaves no statement behind,
// and messages after an error are skipped to Sync.
func TestPipelineErrorsWithNamedStatements(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	pc := c.PgConn()
	if _, err := pc.Prepare(ctx, "bad", "select * from no_such_table", nil); pgCode(err) != "42P01" {
		t.Fatalf("want 42P01, got %v", err)
	}
	if _, err := pc.Prepare(ctx, "bad", "select 1", nil); err != nil {
		t.Fatalf("the failed statement's name is still taken: %v", err)
	}
	if _, err := pc.Prepare(ctx, "syntax", "selec 1", nil); pgCode(err) != "42601" {
		t.Fatalf("want 42601, got %v", err)
	}
	// Pipeline: error first, then a Parse that the server skips.
	batch := &pgconn.Batch{}
	batch.ExecParams("select 1/0", nil, nil, nil, nil)
	batch.ExecPrepared("bad", nil, nil, nil)
	_, err := pc.ExecBatch(ctx, batch).ReadAll()
	if pgCode(err) != "22012" {
		t.Fatalf("want 22012, got %v", err)
	}
	res := pc.ExecPrepared(ctx, "bad", nil, nil, nil).Read()
	if res.Err != nil || string(res.Rows[0][0]) != "1" {
		t.Fatalf("statement unusable after a skipped pipeline: %v", res.Err)
	}
	// Inside a transaction, an error aborts it as on PostgreSQL.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select 1/0"); pgCode(err) != "22012" {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select $1::int", 1); pgCode(err) != "25P02" {
		t.Fatalf("want 25P02, got %v", err)
	}
	_ = tx.Rollback(ctx)
}

// pgx in its default mode (statement cache with named statements), 50
// goroutines on 5 servers, mixed reads and writes: no error, and nobody
// sees another client's settings or rows.
func TestPgxDefaultModeManyClients(t *testing.T) {
	e := startProxy(t, nil) // api: 5 servers
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		t.Logf("pools: %+v", e.pools.Stats())
		rows, _ := direct(t).Query(context.Background(), "select pid, state, coalesce(wait_event,''), left(query, 80) from pg_stat_activity where datname = 'app' and pid <> pg_backend_pid()")
		for rows.Next() {
			var pid int
			var st, we, q string
			_ = rows.Scan(&pid, &st, &we, &q)
			t.Logf("backend %d %s %s %q", pid, st, we, q)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	if _, err := direct(t).Exec(ctx, "drop table if exists mix; create table mix (client int, n int)"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.connect(t, "app", fmt.Sprintf("application_name=c%d", i))
			if _, err := c.Exec(ctx, fmt.Sprintf("set search_path = s%d, public", i)); err != nil {
				errs <- err
				return
			}
			for j := 0; j < 20; j++ {
				switch rand.IntN(4) {
				case 0:
					if _, err := c.Exec(ctx, "insert into mix values ($1, $2)", i, j); err != nil {
						errs <- err
						return
					}
				case 1:
					tx, err := c.Begin(ctx)
					if err != nil {
						errs <- err
						return
					}
					if _, err := tx.Exec(ctx, "insert into mix values ($1, $2)", i, -j); err != nil {
						errs <- err
						return
					}
					var n int
					if err := tx.QueryRow(ctx, "select count(*) from mix where client = $1 and n = $2", i, -j).Scan(&n); err != nil || n != 1 {
						errs <- fmt.Errorf("client %d: own uncommitted row: %d %v", i, n, err)
						return
					}
					if err := tx.Commit(ctx); err != nil {
						errs <- err
						return
					}
				default:
					var app, path string
					if err := c.QueryRow(ctx, "select current_setting('application_name'), current_setting('search_path')").Scan(&app, &path); err != nil {
						errs <- err
						return
					}
					if app != fmt.Sprintf("c%d", i) || path != fmt.Sprintf("s%d, public", i) {
						errs <- fmt.Errorf("client %d saw application_name=%q search_path=%q", i, app, path)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	failed := false
	for err := range errs {
		t.Error(err)
		failed = true
	}
	_ = failed
}

func setMax(m *poolConfig, service string, n int) {
	s := m.Services[service]
	s.MaxConnections = n
	if s.MinConnections > n {
		s.MinConnections = n
	}
	m.Services[service] = s
}
