package admin

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// TestDBStats runs the statistics queries of SHOW HEALTH, LOCKS, TABLES and
// INDEXES against one real server; each subtest has a database of its own,
// so the per-database counters of one do not move another's.
func TestDBStats(t *testing.T) {
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	newDB := func(t *testing.T, name, setup string) {
		t.Helper()
		ctx := context.Background()
		if err := pg.CreateDatabase(ctx, name, pg.User); err != nil {
			t.Fatal(err)
		}
		if setup != "" {
			if err := pg.Exec(ctx, name, setup); err != nil {
				t.Fatal(err)
			}
		}
	}
	connect := func(t *testing.T, db string) *pgconn.PgConn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		pc, err := pgconn.Connect(ctx, pg.ConnString(db))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close(context.Background()) })
		return pc
	}

	t.Run("QueryDatabaseTypes", func(t *testing.T) { testDBQueryTypes(t, connect(t, "postgres")) })
	t.Run("Locks", func(t *testing.T) {
		newDB(t, "locks_db", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
		testDBLocks(t, connect(t, "locks_db"), connect(t, "locks_db"), connect(t, "locks_db"))
	})
	t.Run("Tables", func(t *testing.T) {
		newDB(t, "tables_db", `CREATE TABLE big (id int PRIMARY KEY, v text);
			INSERT INTO big SELECT i, 'row ' || i FROM generate_series(1, 1000) i;
			CREATE TABLE small (id int);`)
		testDBTables(t, connect(t, "tables_db"), connect(t, "tables_db"))
	})
	t.Run("Indexes", func(t *testing.T) {
		newDB(t, "indexes_db", `CREATE TABLE t (id int PRIMARY KEY, a int, b int, c int);
			CREATE INDEX t_a_idx ON t (a);
			CREATE UNIQUE INDEX t_b_key ON t (b);
			CREATE INDEX t_c_idx ON t (c);
			INSERT INTO t SELECT i, i, i, i FROM generate_series(1, 100) i;`)
		testDBIndexes(t, connect(t, "indexes_db"), connect(t, "indexes_db"))
	})
	t.Run("Health", func(t *testing.T) {
		newDB(t, "health_db", "CREATE TABLE d (id int PRIMARY KEY, v int); INSERT INTO d VALUES (1, 0), (2, 0)")
		testDBHealth(t, connect(t, "health_db"), connect(t, "health_db"), connect(t, "health_db"), connect(t, "health_db"))
	})
}

func testDBQueryTypes(t *testing.T, pc *pgconn.PgConn) {
	ctx := context.Background()
	// An empty result keeps its columns, so the console prints a header.
	empty, err := QueryDatabase(ctx, pc, "SELECT 1::int8 AS a, 'x' AS b WHERE false")
	if err != nil {
		t.Fatal(err)
	}
	if len(empty.Columns) != 2 || empty.Columns[0].Name != "a" || len(empty.Rows) != 0 {
		t.Errorf("empty result: %+v", empty)
	}
	r, err := QueryDatabase(ctx, pc, `SELECT 'ignored' AS first;
		SELECT 1::int8 AS i8, 2::int4 AS i4, 3::int2 AS i2, 4::oid AS o,
			1.5::float4 AS f4, 2.5::float8 AS f8, 3.25::numeric AS num,
			true AS b, '2024-01-02 03:04:05+00'::timestamptz AS ts,
			'x'::text AS txt, '{1,2}'::int[] AS arr, NULL::int8 AS null_i8, NULL::text AS null_txt`)
	if err != nil {
		t.Fatal(err)
	}
	want := Cols("i8", TypeInt8, "i4", TypeInt8, "i2", TypeInt8, "o", TypeInt8,
		"f4", TypeFloat8, "f8", TypeFloat8, "num", TypeFloat8,
		"b", TypeBool, "ts", TypeTimestamptz, "txt", TypeText, "arr", TypeText,
		"null_i8", TypeInt8, "null_txt", TypeText)
	if fmt.Sprint(r.Columns) != fmt.Sprint(want) {
		t.Fatalf("columns (of the last result set):\n got %v\nwant %v", r.Columns, want)
	}
	if len(r.Rows) != 1 {
		t.Fatalf("rows: %v", r.Rows)
	}
	row := r.Rows[0]
	wantVals := []any{"1", "2", "3", "4", "1.5", "2.5", "3.25", "t", "(any)", "x", "{1,2}", nil, nil}
	for i, v := range wantVals {
		if v != "(any)" && row[i] != v {
			t.Errorf("column %s: got %#v, want %#v", r.Columns[i].Name, row[i], v)
		}
	}
	// The timestamp's text depends on the session time zone.
	if ts, ok := row[8].(string); !ok || !strings.HasPrefix(ts, "2024-01-0") {
		t.Errorf("timestamptz value %#v", row[8])
	}

	_, err = QueryDatabase(ctx, pc, "SELECT 1/0")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
		t.Fatalf("want a wrapped division_by_zero PgError, got %v", err)
	}
	// The connection is still usable after a server error.
	if r, err := QueryDatabase(ctx, pc, "SELECT 42 AS answer"); err != nil || r.Rows[0][0] != "42" {
		t.Fatalf("after an error: %v %v", r, err)
	}

	// Statement columns are normalized by queryStats, not by QueryDatabase;
	// normalizing twice changes nothing; an unparsable one is withheld.
	const sql = `SELECT 'SELECT * FROM users WHERE email = ''a@b.example''' AS my_statement,
		'SELECT ''kept''' AS statement_note, NULL::text AS other_statement, 'SELECT * FROM (' AS bad_statement`
	raw, err := QueryDatabase(ctx, pc, sql)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Rows[0][0] != "SELECT * FROM users WHERE email = 'a@b.example'" {
		t.Fatalf("QueryDatabase changed a value: %#v", raw.Rows[0][0])
	}
	r, err = queryStats(ctx, pc, sql)
	if err != nil {
		t.Fatal(err)
	}
	wantRow := []any{"SELECT * FROM users WHERE email = $1", "SELECT 'kept'", nil, notParsable}
	if fmt.Sprint(r.Rows[0]) != fmt.Sprint(wantRow) {
		t.Fatalf("queryStats row: got %#v, want %#v", r.Rows[0], wantRow)
	}
	if again := redactStatements(r); fmt.Sprint(again.Rows[0]) != fmt.Sprint(wantRow) {
		t.Fatalf("normalizing twice: %#v", again.Rows[0])
	}
}

func testDBLocks(t *testing.T, a, b, admin *pgconn.PgConn) {
	ctx := context.Background()
	statsExec(t, a, "BEGIN")
	statsExec(t, a, "UPDATE t SET v = 'secret-value' WHERE id = 1")
	done := make(chan error, 1)
	go func() {
		_, err := b.Exec(ctx, "UPDATE t SET v = 'secret-value' || 'b' WHERE id = 1").ReadAll()
		done <- err
	}()

	aPID, bPID := strconv.Itoa(int(a.PID())), strconv.Itoa(int(b.PID()))
	var r Result
	var row []any
	statsEventually(t, "B blocked by A in SHOW LOCKS", func() string {
		var err error
		if r, err = LocksResult(ctx, admin); err != nil {
			t.Fatal(err)
		}
		for _, rw := range r.Rows {
			if statsGet(t, r, rw, "blocked_pid") == bPID && statsGet(t, r, rw, "blocking_pid") == aPID {
				row = rw
				return ""
			}
		}
		return fmt.Sprintf("rows %v", r.Rows)
	})
	wantCols := []string{"blocked_pid", "blocked_user", "blocked_application", "blocked_wait_seconds",
		"lock_type", "lock_mode", "relation", "blocked_statement", "blocking_pid", "blocking_user",
		"blocking_application", "blocking_state", "blocking_xact_seconds", "blocking_statement"}
	if got := statsColumns(r); strings.Join(got, ",") != strings.Join(wantCols, ",") {
		t.Fatalf("columns %v", got)
	}
	for _, c := range []string{"blocked_pid", "blocking_pid"} {
		if typ := r.Columns[statsColIndex(t, r, c)].Type; typ != TypeInt8 {
			t.Errorf("%s has type %d", c, typ)
		}
	}
	for _, c := range []string{"blocked_statement", "blocking_statement"} {
		s, _ := statsGet(t, r, row, c).(string)
		if strings.Contains(s, "secret-value") || !strings.Contains(s, "$1") || !strings.HasPrefix(s, "UPDATE t SET v = ") {
			t.Errorf("%s not normalized: %q", c, s)
		}
	}
	if s := statsGet(t, r, row, "blocking_state"); s != "idle in transaction" {
		t.Errorf("blocking_state %v", s)
	}
	if s := statsGet(t, r, row, "blocked_user"); s != "postgres" {
		t.Errorf("blocked_user %v", s)
	}
	if lt := statsGet(t, r, row, "lock_type"); lt != "transactionid" && lt != "tuple" {
		t.Errorf("lock_type %v", lt)
	}
	for _, c := range []string{"blocked_wait_seconds", "blocking_xact_seconds"} {
		if f := statsFloat(t, r, row, c); f < 0 || f > 600 {
			t.Errorf("%s = %v", c, f)
		}
	}

	statsExec(t, a, "ROLLBACK")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("B after A rolled back: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("B still blocked after A rolled back")
	}
	r, err := LocksResult(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Rows) != 0 {
		t.Fatalf("locks left after the rollback: %v", r.Rows)
	}
}

func testDBTables(t *testing.T, w, admin *pgconn.PgConn) {
	ctx := context.Background()
	tableRow := func(r Result, name string) []any {
		for _, row := range r.Rows {
			if statsGet(t, r, row, "schema") == "public" && statsGet(t, r, row, "table") == name {
				return row
			}
		}
		return nil
	}
	var r Result
	poll := func(what string, cond func(big, small []any) bool) {
		t.Helper()
		statsFlush(t, w)
		statsEventually(t, what, func() string {
			var err error
			if r, err = queryStats(ctx, admin, sqlTables); err != nil {
				t.Fatal(err)
			}
			big, small := tableRow(r, "big"), tableRow(r, "small")
			if big != nil && small != nil && cond(big, small) {
				return ""
			}
			return fmt.Sprintf("big %v, small %v", big, small)
		})
	}
	poll("the inserted rows", func(big, _ []any) bool { return statsInt(t, r, big, "live_rows") == 1000 })
	big := tableRow(r, "big")
	seq0, idx0 := statsInt(t, r, big, "seq_scan"), statsInt(t, r, big, "idx_scan")
	seqRead0, idxFetch0 := statsInt(t, r, big, "seq_tup_read"), statsInt(t, r, big, "idx_tup_fetch")

	for range 3 {
		statsExec(t, w, "SELECT count(*) FROM big WHERE v LIKE '%7%'") // no index on v
	}
	statsExec(t, w, "SET enable_seqscan = off; SET enable_bitmapscan = off")
	for i := range 2 {
		statsExec(t, w, fmt.Sprintf("SELECT v FROM big WHERE id = %d", i+10))
	}
	statsExec(t, w, "RESET enable_seqscan; RESET enable_bitmapscan")
	poll("the scans", func(big, _ []any) bool {
		return statsInt(t, r, big, "seq_scan") >= seq0+3 && statsInt(t, r, big, "idx_scan") >= idx0+2
	})
	big = tableRow(r, "big")
	seq, idx := statsInt(t, r, big, "seq_scan"), statsInt(t, r, big, "idx_scan")
	if got := statsInt(t, r, big, "seq_tup_read"); got < seqRead0+3000 {
		t.Errorf("seq_tup_read %d, want at least %d", got, seqRead0+3000)
	}
	if got := statsInt(t, r, big, "idx_tup_fetch"); got < idxFetch0+2 {
		t.Errorf("idx_tup_fetch %d, want at least %d", got, idxFetch0+2)
	}
	if got, want := statsFloat(t, r, big, "seq_scan_ratio"), round4(float64(seq)/float64(seq+idx)); math.Abs(got-want) > 1e-9 {
		t.Errorf("seq_scan_ratio %v, want %v", got, want)
	}
	// The small table has no index: idx_scan is NULL, the ratio is all
	// sequential once it has been scanned, and before, undefined.
	small := tableRow(r, "small")
	if v := statsGet(t, r, small, "idx_scan"); v != nil {
		t.Errorf("small.idx_scan = %v", v)
	}
	if v := statsGet(t, r, small, "seq_scan_ratio"); statsInt(t, r, small, "seq_scan") == 0 && v != nil {
		t.Errorf("small.seq_scan_ratio = %v without scans", v)
	}

	statsExec(t, w, "DELETE FROM big WHERE id <= 100")
	poll("the dead rows", func(big, _ []any) bool { return statsInt(t, r, big, "dead_rows") >= 100 })
	big = tableRow(r, "big")
	live, dead := statsInt(t, r, big, "live_rows"), statsInt(t, r, big, "dead_rows")
	if live != 900 {
		t.Errorf("live_rows %d after deleting 100 of 1000", live)
	}
	if got, want := statsFloat(t, r, big, "dead_ratio"), round4(float64(dead)/float64(live+dead)); math.Abs(got-want) > 1e-9 {
		t.Errorf("dead_ratio %v, want %v", got, want)
	}

	statsExec(t, w, "VACUUM small")
	statsExec(t, w, "ANALYZE small")
	poll("the vacuum and analyze", func(_, small []any) bool {
		return statsGet(t, r, small, "last_vacuum") != nil && statsGet(t, r, small, "last_analyze") != nil
	})
	if typ := r.Columns[statsColIndex(t, r, "last_vacuum")].Type; typ != TypeTimestamptz {
		t.Errorf("last_vacuum type %d", typ)
	}

	// Sizes, largest first.
	big, small = tableRow(r, "big"), tableRow(r, "small")
	if b, s := statsInt(t, r, big, "total_bytes"), statsInt(t, r, small, "total_bytes"); b <= s || b < 8192 {
		t.Errorf("total_bytes big %d, small %d", b, s)
	}
	if s, _ := statsGet(t, r, big, "size").(string); !strings.HasSuffix(s, "kB") && !strings.HasSuffix(s, "MB") {
		t.Errorf("size %q", s)
	}
	if statsGet(t, r, r.Rows[0], "table") != "big" {
		t.Errorf("first row is %v, want the largest table", r.Rows[0])
	}
	wantCols := "schema,table,seq_scan,seq_tup_read,idx_scan,idx_tup_fetch,seq_scan_ratio,live_rows,dead_rows," +
		"dead_ratio,last_vacuum,last_analyze,total_bytes,size"
	if got := strings.Join(statsColumns(r), ","); got != wantCols {
		t.Errorf("columns %s", got)
	}
}

func testDBIndexes(t *testing.T, w, admin *pgconn.PgConn) {
	ctx := context.Background()
	statsExec(t, w, "SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT c FROM t WHERE c = 5; RESET ALL")
	statsFlush(t, w)
	var r Result
	rows := map[string][]any{}
	statsEventually(t, "the scan of t_c_idx", func() string {
		var err error
		if r, err = queryStats(ctx, admin, sqlIndexes); err != nil {
			t.Fatal(err)
		}
		clear(rows)
		for _, row := range r.Rows {
			if statsGet(t, r, row, "table") == "t" {
				rows[statsGet(t, r, row, "index").(string)] = row
			}
		}
		if c := rows["t_c_idx"]; c != nil && statsInt(t, r, c, "idx_scan") >= 1 {
			return ""
		}
		return fmt.Sprintf("rows %v", r.Rows)
	})
	for _, tc := range []struct {
		index, unique, primary, unused string
	}{
		{"t_a_idx", "f", "f", "t"}, // never used: could go
		{"t_pkey", "t", "t", "f"},
		{"t_b_key", "t", "f", "f"}, // enforces uniqueness even if never scanned
		{"t_c_idx", "f", "f", "f"}, // scanned
	} {
		row := rows[tc.index]
		if row == nil {
			t.Errorf("index %s missing", tc.index)
			continue
		}
		got := fmt.Sprint(statsGet(t, r, row, "unique"), statsGet(t, r, row, "primary"), statsGet(t, r, row, "unused"))
		if want := fmt.Sprint(tc.unique, tc.primary, tc.unused); got != want {
			t.Errorf("%s: unique, primary, unused = %s, want %s", tc.index, got, want)
		}
		if statsInt(t, r, row, "total_bytes") <= 0 || statsGet(t, r, row, "size") == nil {
			t.Errorf("%s: size %v", tc.index, row)
		}
	}
	if statsGet(t, r, r.Rows[0], "index") != "t_a_idx" {
		t.Errorf("the unused index is not listed first: %v", r.Rows)
	}
	if typ := r.Columns[statsColIndex(t, r, "unused")].Type; typ != TypeBool {
		t.Errorf("unused has type %d", typ)
	}
	wantCols := "schema,table,index,idx_scan,idx_tup_read,idx_tup_fetch,total_bytes,size,unique,primary,unused"
	if got := strings.Join(statsColumns(r), ","); got != wantCols {
		t.Errorf("columns %s", got)
	}
}

func testDBHealth(t *testing.T, idleTx, p, q, admin *pgconn.PgConn) {
	ctx := context.Background()
	health := func() (Result, []any) {
		t.Helper()
		r, err := queryStats(ctx, admin, sqlHealth)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Rows) != 1 {
			t.Fatalf("SHOW HEALTH rows: %v", r.Rows)
		}
		return r, r.Rows[0]
	}
	wantCols := "total,active,idle,idle_in_transaction,waiting,max_connections,cache_hit_ratio,commits,rollbacks," +
		"rollback_ratio,deadlocks,conflicts,temp_files,replicas,max_replication_lag_seconds,stats_reset"
	r, _ := health()
	if got := strings.Join(statsColumns(r), ","); got != wantCols {
		t.Fatalf("columns %s", got)
	}
	for name, typ := range map[string]uint32{"total": TypeInt8, "deadlocks": TypeInt8, "max_connections": TypeInt8,
		"cache_hit_ratio": TypeFloat8, "rollback_ratio": TypeFloat8, "max_replication_lag_seconds": TypeFloat8,
		"stats_reset": TypeTimestamptz} {
		if got := r.Columns[statsColIndex(t, r, name)].Type; got != typ {
			t.Errorf("%s has type %d, want %d", name, got, typ)
		}
	}

	statsExec(t, idleTx, "BEGIN")
	statsExec(t, idleTx, "SELECT 1")
	var row []any
	statsEventually(t, "the idle transaction", func() string {
		r, row = health()
		if statsInt(t, r, row, "idle_in_transaction") >= 1 {
			return ""
		}
		return fmt.Sprint(row)
	})
	total := statsInt(t, r, row, "total")
	if total < 3 || total < statsInt(t, r, row, "active")+statsInt(t, r, row, "idle")+statsInt(t, r, row, "idle_in_transaction") {
		t.Errorf("total %d in %v", total, row)
	}
	// Nothing runs in this database but the health query itself, which
	// does not count.
	if active := statsInt(t, r, row, "active"); active != 0 {
		t.Errorf("active %d: the admin's own backend is counted", active)
	}
	if mc := statsInt(t, r, row, "max_connections"); mc < 1 {
		t.Errorf("max_connections %d", mc)
	}
	if statsGet(t, r, row, "replicas") != "0" || statsGet(t, r, row, "max_replication_lag_seconds") != nil {
		t.Errorf("replicas without a standby: %v", row)
	}
	if v := statsGet(t, r, row, "cache_hit_ratio"); v != nil {
		if f := statsFloat(t, r, row, "cache_hit_ratio"); f < 0 || f > 1 {
			t.Errorf("cache_hit_ratio %v", f)
		}
	}
	statsExec(t, idleTx, "ROLLBACK")
	deadlocks0 := statsInt(t, r, row, "deadlocks")

	// A real deadlock: p and q each hold the row the other wants.
	statsExec(t, p, "BEGIN; UPDATE d SET v = 1 WHERE id = 1")
	statsExec(t, q, "BEGIN; UPDATE d SET v = 2 WHERE id = 2")
	pDone := make(chan error, 1)
	go func() {
		_, err := p.Exec(ctx, "UPDATE d SET v = 1 WHERE id = 2").ReadAll()
		pDone <- err
	}()
	statsEventually(t, "p to wait for q", func() string {
		r, row = health()
		if statsInt(t, r, row, "waiting") >= 1 {
			return ""
		}
		return fmt.Sprint(row)
	})
	_, qErr := q.Exec(ctx, "UPDATE d SET v = 2 WHERE id = 1").ReadAll()
	var pErr error
	select {
	case pErr = <-pDone:
	case <-time.After(60 * time.Second):
		t.Fatal("no deadlock detected")
	}
	var pgErr *pgconn.PgError
	if !errors.As(errors.Join(pErr, qErr), &pgErr) || pgErr.Code != "40P01" {
		t.Fatalf("want a deadlock_detected error, got p: %v, q: %v", pErr, qErr)
	}
	statsExec(t, p, "ROLLBACK")
	statsExec(t, q, "ROLLBACK")
	statsFlush(t, p)
	statsFlush(t, q)
	statsEventually(t, "the deadlock to be counted", func() string {
		r, row = health()
		if statsInt(t, r, row, "deadlocks") >= deadlocks0+1 {
			return ""
		}
		return fmt.Sprint(row)
	})
	if statsInt(t, r, row, "rollbacks") < 1 || statsFloat(t, r, row, "rollback_ratio") <= 0 {
		t.Errorf("rollbacks not counted: %v", row)
	}
}

// mustExec runs sql on pc, failing the test on error.
func statsExec(t *testing.T, pc *pgconn.PgConn, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pc.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// flushStats makes pc report its pending statistics now rather than
// within the next second. pg_stat_force_next_flush exists from
// PostgreSQL 15; before, the statistics collector is fed every half
// second anyway.
func statsFlush(t *testing.T, pc *pgconn.PgConn) {
	t.Helper()
	major, _ := strconv.Atoi(strings.SplitN(pc.ParameterStatus("server_version"), ".", 2)[0])
	if major >= 15 {
		statsExec(t, pc, "SELECT pg_stat_force_next_flush()")
	}
}

// eventually polls cond until it returns "" or 30 s have passed; cond
// returns what it saw, for the failure message.
func statsEventually(t *testing.T, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		saw := cond()
		if saw == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last saw %s", what, saw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func statsColumns(r Result) []string {
	out := make([]string, len(r.Columns))
	for i, c := range r.Columns {
		out[i] = c.Name
	}
	return out
}

func statsColIndex(t *testing.T, r Result, name string) int {
	t.Helper()
	for i, c := range r.Columns {
		if c.Name == name {
			return i
		}
	}
	t.Fatalf("no column %s in %v", name, statsColumns(r))
	return -1
}

func statsGet(t *testing.T, r Result, row []any, name string) any {
	t.Helper()
	return row[statsColIndex(t, r, name)]
}

func statsInt(t *testing.T, r Result, row []any, name string) int64 {
	t.Helper()
	s, ok := statsGet(t, r, row, name).(string)
	if !ok {
		t.Fatalf("%s is %#v, want an integer", name, statsGet(t, r, row, name))
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return n
}

func statsFloat(t *testing.T, r Result, row []any, name string) float64 {
	t.Helper()
	s, ok := statsGet(t, r, row, name).(string)
	if !ok {
		t.Fatalf("%s is %#v, want a number", name, statsGet(t, r, row, name))
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return f
}

// round4 is how the statistics queries round ratios: 4 decimals, so the
// console shows 0.976, not 0.9760204081632653.
func round4(f float64) float64 { return math.Round(f*1e4) / 1e4 }
