package proxy_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgshield/pgshield/proxy"
)

// Statements are timed and kept by fingerprint with their normalized text;
// one past the slow-query threshold is listed and counted.
func TestQueryStatisticsAndSlowQueries(t *testing.T) {
	e := startProxy(t, func(p *proxyConfig, _ *poolConfig) { p.SlowQueryThreshold = 300 * time.Millisecond })
	ctx := ctxT(t)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		c := e.connect(t, "app", "")
		for i := 0; i < 5; i++ {
			if _, err := c.Exec(ctx, "select 'secret-literal', 1 + $1::int", mode, i); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.Exec(ctx, "select pg_sleep(0.4)", mode); err != nil {
			t.Fatal(err)
		}
	}
	// The session-mode service is timed too.
	sc := e.connect(t, "sess", "")
	if _, err := sc.Exec(ctx, "select pg_sleep(0.35)", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	qs := e.srv.QueryStats()
	var calls int64
	for _, st := range qs.Top(0) {
		if strings.Contains(st.Query, "secret-literal") {
			t.Errorf("statistics keep a literal: %q", st.Query)
		}
		if strings.Contains(st.Query, "::int") {
			calls += st.Calls
			if st.P99 <= 0 || st.Total <= 0 {
				t.Errorf("no latency recorded for %q: %+v", st.Query, st)
			}
		}
	}
	if calls != 10 {
		t.Errorf("%d calls of the literal statement recorded, want 10 (5 simple, 5 extended)", calls)
	}
	slow := qs.Slow()
	if len(slow) != 3 {
		t.Fatalf("%d slow queries, want 3: %+v", len(slow), slow)
	}
	for _, sq := range slow {
		if !strings.Contains(sq.Query, "pg_sleep($1)") || sq.Duration < 300*time.Millisecond {
			t.Errorf("slow query %+v", sq)
		}
	}
	if n := e.m.SlowQueries.Sum("api", "app").Value(); n != 2 {
		t.Errorf("database_slow_queries_total{api} = %v, want 2", n)
	}
	if n := e.m.SlowQueries.Sum("data-service", "app").Value(); n != 1 {
		t.Errorf("database_slow_queries_total{data-service} = %v, want 1", n)
	}
	if n := testutil.CollectAndCount(e.m.QueryDuration); n == 0 {
		t.Error("database_query_duration_seconds has no series")
	}
	if n := testutil.CollectAndCount(e.m.PoolWait); n == 0 {
		t.Error("pgshield_pool_wait_seconds has no series")
	}
}

// Transactions are counted by outcome and timed; SHOW STATS' totals follow.
func TestTransactionCounts(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	for _, sql := range []string{"begin", "select 1", "commit", "begin", "select 1", "rollback", "select 1", "select 1/0"} {
		_, _ = c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	}
	// begin…commit and the autocommit select 1 commit; begin…rollback and
	// the failing select roll back. The last one is counted just after its
	// ReadyForQuery reached the client.
	var commits, rollbacks float64
	pollFor(t, "4 transactions counted", 5*time.Second, func() bool {
		commits = float64(e.m.Transactions.Sum("api", "app", "commit").Value())
		rollbacks = float64(e.m.Transactions.Sum("api", "app", "rollback").Value())
		return commits+rollbacks >= 4
	})
	if commits != 2 || rollbacks != 2 {
		t.Errorf("commits %v rollbacks %v, want 2 and 2", commits, rollbacks)
	}
	var tr *struct{ q, tx, errs int64 }
	for _, s := range e.srv.Traffic() {
		if s.Service == "api" && s.Database == "app" {
			tr = &struct{ q, tx, errs int64 }{s.Queries, s.Transactions, s.Errors}
			if s.BytesIn == 0 || s.BytesOut == 0 || s.Commits != 2 || s.Rollbacks != 2 {
				t.Errorf("traffic %+v", s)
			}
		}
	}
	if tr == nil || tr.q != 8 || tr.tx != 4 || tr.errs != 1 {
		t.Errorf("traffic of api/app: %+v, want 8 queries, 4 transactions, 1 error", tr)
	}
}

// An open transaction shows its age, isolation level, the tables it wrote
// and the rows it changed, and is flagged once past the threshold.
func TestOpenTransactions(t *testing.T) {
	e := startProxy(t, func(p *proxyConfig, _ *poolConfig) { p.LongTransactionThreshold = 300 * time.Millisecond })
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "drop table if exists tx_a, tx_b; create table tx_a (id int); create table tx_b (id int); grant all on tx_a, tx_b to public"); err != nil {
		t.Fatal(err)
	}
	c := e.connect(t, "app", "")
	for _, sql := range []string{"begin isolation level repeatable read", "insert into tx_a select generate_series(1, 3)", "update tx_a set id = id + 1 where id > 1", "insert into tx_b values (1)"} {
		if _, err := c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
	}
	// The client may see the last ReadyForQuery a moment before the proxy
	// has recorded its statement.
	var txs []proxy.TxInfo
	pollFor(t, "the fourth statement recorded", 5*time.Second, func() bool {
		txs = e.srv.Transactions()
		return len(txs) == 1 && txs[0].Statements == 4
	})
	tx := txs[0]
	if !slices.Equal(tx.Tables, []string{"tx_a", "tx_b"}) || tx.Rows != 6 || tx.Isolation != "repeatable read" || tx.Statements != 4 || tx.State != "idle in transaction" {
		t.Errorf("open transaction %+v", tx)
	}
	if tx.Long {
		t.Error("a fresh transaction is flagged long")
	}
	pollFor(t, "the transaction to be flagged long", 5*time.Second, func() bool {
		txs := e.srv.Transactions()
		return len(txs) == 1 && txs[0].Long
	})
	if _, err := c.Exec(ctx, "commit"); err != nil {
		t.Fatal(err)
	}
	// The client may see ReadyForQuery a moment before the proxy has done
	// its bookkeeping.
	pollFor(t, "no open transaction after commit", 5*time.Second, func() bool { return len(e.srv.Transactions()) == 0 })
}

func withLimits(tx, idle time.Duration) func(*proxyConfig, *poolConfig) {
	return func(_ *proxyConfig, m *poolConfig) {
		api := m.Services["api"]
		api.TransactionTimeout, api.IdleInTransactionTimeout = tx, idle
		m.Services["api"] = api
	}
}

// transaction_timeout cancels the running statement with an error naming
// the limit, fails a transaction idle past it at its next statement, and
// leaves the client connected and other clients alone.
func TestTransactionTimeout(t *testing.T) {
	e := startProxy(t, withLimits(time.Second, 0))
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	other := e.connect(t, "app", "")
	if _, err := c.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "select pg_sleep(20)")
		done <- err
	}()
	// Others run on meanwhile.
	for i := 0; i < 20; i++ {
		if _, err := other.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	err := <-done
	if pgCode(err) != "25P04" || !strings.Contains(err.Error(), "transaction_timeout") {
		t.Fatalf("running statement past transaction_timeout: %v, want 25P04 naming the limit", err)
	}
	if _, err := c.Exec(ctx, "select 1"); pgCode(err) != "25P02" {
		t.Errorf("statement in the aborted transaction: %v, want 25P02", err)
	}
	if _, err := c.Exec(ctx, "rollback"); err != nil {
		t.Fatal(err)
	}
	// Idle past the limit: the next statement fails, the transaction with it.
	if _, err := c.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := c.Exec(ctx, "select 1"); pgCode(err) != "25P04" {
		t.Fatalf("statement after the limit passed while idle: %v, want 25P04", err)
	}
	if _, err := c.Exec(ctx, "rollback"); err != nil {
		t.Fatal(err)
	}
	var one int
	if err := c.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after rollback: %v", err)
	}
}

// idle_in_transaction_timeout disconnects the client with the reason; its
// server is rolled back and reused; others run on.
func TestIdleInTransactionTimeout(t *testing.T) {
	e := startProxy(t, withLimits(0, 500*time.Millisecond))
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "drop table if exists idle_tx; create table idle_tx (id int); grant all on idle_tx to public"); err != nil {
		t.Fatal(err)
	}
	c := e.connect(t, "app", "")
	other := e.connect(t, "app", "")
	if _, err := c.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "insert into idle_tx values (1)"); err != nil {
		t.Fatal(err)
	}
	// A client that keeps working inside its transaction is not idle.
	for i := 0; i < 4; i++ {
		time.Sleep(200 * time.Millisecond)
		if _, err := other.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	_, err := c.Exec(ctx, "select 1")
	if pgCode(err) != "25P03" || !strings.Contains(err.Error(), "idle_in_transaction_timeout") {
		t.Fatalf("client idle in transaction: %v, want FATAL 25P03 naming the limit", err)
	}
	var n int
	if err := d.QueryRow(ctx, "select count(*) from idle_tx").Scan(&n); err != nil || n != 0 {
		t.Errorf("rows of the ended transaction: %d (%v), want 0", n, err)
	}
	pollFor(t, "no server idle in transaction", 5*time.Second, func() bool {
		var open int
		_ = d.QueryRow(ctx, "select count(*) from pg_stat_activity where state like 'idle in transaction%'").Scan(&open)
		return open == 0
	})
	if _, err := other.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
}

// KILL ends an idle client with 57P01; PAUSE waits for running
// transactions and holds new ones until RESUME.
func TestKillPauseResume(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	victim := e.connect(t, "app", "")
	var id uint32
	for _, ci := range e.srv.Clients() {
		id = ci.ID
	}
	if err := e.srv.Kill(id); err != nil {
		t.Fatal(err)
	}
	if _, err := victim.Exec(ctx, "select 1"); err == nil {
		t.Fatal("killed client still runs statements")
	}
	if err := e.srv.Kill(999999); err == nil {
		t.Error("killing an unknown client succeeded")
	}

	a := e.connect(t, "app", "")
	if _, err := a.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	paused := make(chan error, 1)
	go func() { paused <- e.srv.Pause(ctx, "app") }()
	select {
	case err := <-paused:
		t.Fatalf("PAUSE returned with a transaction open: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := a.Exec(ctx, "commit"); err != nil {
		t.Fatal(err)
	}
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	if !e.srv.Paused("app") {
		t.Fatal("not paused")
	}
	held := make(chan error, 1)
	go func() {
		_, err := a.Exec(ctx, "select 1")
		held <- err
	}()
	select {
	case err := <-held:
		t.Fatalf("a statement ran while paused: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := e.srv.Resume("app"); err != nil {
		t.Fatal(err)
	}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Resume("app"); err == nil {
		t.Error("resuming a database that is not paused succeeded")
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := a.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Pause(short, ""); err == nil {
		t.Error("PAUSE with a transaction open did not report it when its time ran out")
	}
	_ = e.srv.Resume("")
	_, _ = a.Exec(ctx, "rollback")
}

// disable_stats changes at run time: while it is set nothing is timed or
// counted, and what was recorded before stays; set back, recording goes on.
func TestStatsToggle(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	traffic := func() (queries, txs int64) {
		for _, s := range e.srv.Traffic() {
			if s.Service == "api" && s.Database == "app" {
				return s.Queries, s.Transactions
			}
		}
		return 0, 0
	}
	calls := func() (n int64) {
		for _, q := range e.srv.QueryStats().Top(0) {
			n += q.Calls
		}
		return n
	}
	run := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			if _, err := c.Exec(ctx, "select $1::int", i); err != nil { // extended protocol
				t.Fatal(err)
			}
			if _, err := c.Exec(ctx, "select 1", pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
		}
	}
	setStats := func(off bool) {
		t.Helper()
		cfg := e.srv.Settings()
		cfg.DisableStats = off
		if err := e.srv.Reload(cfg); err != nil {
			t.Fatal(err)
		}
	}

	run(3)
	pollFor(t, "6 statements and transactions recorded", 5*time.Second, func() bool {
		q, tx := traffic()
		return q == 6 && tx == 6
	})
	before := calls()
	commits := e.m.Transactions.Sum("api", "app", "commit").Value()
	if before != 6 || commits != 6 {
		t.Fatalf("%d calls in the query statistics and %d commits, want 6 each", before, commits)
	}

	setStats(true)
	run(5)
	if _, err := c.Exec(ctx, "begin; select 1; commit", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // time for anything wrongly recorded to show
	if q, tx := traffic(); q != 6 || tx != 6 {
		t.Errorf("with disable_stats: %d queries, %d transactions counted, want still 6 and 6", q, tx)
	}
	if n := calls(); n != before {
		t.Errorf("with disable_stats: %d calls in the query statistics, want still %d", n, before)
	}
	if n := e.m.Transactions.Sum("api", "app", "commit").Value(); n != commits {
		t.Errorf("with disable_stats: %d commits in database_transactions_total, want still %d", n, commits)
	}

	setStats(false)
	run(2)
	pollFor(t, "recording again", 5*time.Second, func() bool {
		q, tx := traffic()
		return q == 10 && tx == 10
	})
	if n := calls(); n != before+4 {
		t.Errorf("after disable_stats is cleared: %d calls, want %d", n, before+4)
	}
}

// The query statistics count the rows each statement returned or changed,
// from its CommandComplete tag, in both protocols.
func TestQueryStatsRows(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "drop table if exists qs_rows; create table qs_rows (id int); insert into qs_rows select generate_series(1, 3); grant all on qs_rows to public"); err != nil {
		t.Fatal(err)
	}
	c := e.connect(t, "app", "")
	for i := 0; i < 2; i++ {
		if _, err := c.Exec(ctx, "update qs_rows set id = id", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "select id from qs_rows where id > $1", 0); err != nil {
			t.Fatal(err)
		}
	}
	rows := func(prefix string) int64 {
		for _, q := range e.srv.QueryStats().Top(0) {
			if strings.HasPrefix(q.Query, prefix) && q.Calls == 2 {
				return q.Rows
			}
		}
		return -1
	}
	pollFor(t, "both statements recorded twice", 5*time.Second, func() bool {
		return rows("update qs_rows") >= 0 && rows("select id from qs_rows") >= 0
	})
	if u, s := rows("update qs_rows"), rows("select id from qs_rows"); u != 6 || s != 6 {
		t.Errorf("rows: update %d, select %d; want 6 and 6 (3 per call)", u, s)
	}
}

// In session pooling, extended-protocol statements are attributed to their
// fingerprint as in transaction pooling.
func TestSessionModeExtendedStatementsFingerprinted(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	c := e.connect(t, "sess", "")
	for i := 0; i < 3; i++ {
		var n int
		if err := c.QueryRow(ctx, "select $1::int * 2 as session_fp", i).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	pollFor(t, "the statement in the query statistics", 5*time.Second, func() bool {
		for _, q := range e.srv.QueryStats().Top(0) {
			if strings.Contains(q.Query, "session_fp") && q.Calls == 3 {
				return true
			}
		}
		return false
	})
}
