package admin

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgshield/pgshield/internal/pgcluster"
	"github.com/pgshield/pgshield/metrics"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
)

const testAdminPassword = "console-secret"

// fakeSource stands in for pgshield's own state (pools, clients, topology):
// canned rows, and a record of the control calls. It is not a database:
// DatabaseQuery answers with canned results keyed by the statement.
type fakeSource struct {
	mu        sync.Mutex
	pools     []PoolRow
	clients   []ClientRow
	dbResults map[string]Result // by SQL
	dbErr     map[string]error  // by database
	ctlErr    map[string]error  // by control command
	calls     []string          // "PAUSE leads", "SET name=value" …
	queriesN  []int
}

func newFakeSource() *fakeSource {
	return &fakeSource{
		pools: []PoolRow{{
			Service: "api", Database: "leads", Backend: "127.0.0.1:5432", Mode: "transaction",
			ClientsActive: 2, ClientsIdle: 3, ClientsWaiting: 1, ServersActive: 2, ServersIdle: 4, ServersOpening: 0,
			Max: 20, Min: 5, WaitP50: 1500 * time.Microsecond, WaitP95: 12 * time.Millisecond, WaitP99: 250 * time.Millisecond,
			Acquires: 1234, WaitTimeouts: 7, Paused: false,
		}},
		clients: []ClientRow{{
			ID: 9, User: "app", Database: "leads", Service: "api", Mode: "transaction", Remote: "127.0.0.1:40000",
			ApplicationName: "web", TLS: true, State: "idle",
			ConnectedAt: time.Date(2024, 5, 6, 9, 8, 9, 123_000_000, time.FixedZone("CEST", 2*3600)),
			Queries:     10, Transactions: 4, BytesIn: 100, BytesOut: 2000,
		}},
		dbResults: map[string]Result{
			sqlHealth:  {Columns: Cols("total", TypeInt8, "cache_hit_ratio", TypeFloat8), Rows: [][]any{{int64(3), 0.99}}},
			sqlLocks:   {Columns: Cols("blocked_pid", TypeInt8, "blocking_pid", TypeInt8)},
			sqlTables:  {Columns: Cols("table", TypeText, "dead_tuples", TypeInt8), Rows: [][]any{{"public.leads", int64(5)}}},
			sqlIndexes: {Columns: Cols("index", TypeText, "scans", TypeInt8), Rows: [][]any{{"leads_pkey", int64(0)}}},
		},
		dbErr:  map[string]error{},
		ctlErr: map[string]error{},
	}
}

func (f *fakeSource) record(call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	return f.ctlErr[strings.Fields(call)[0]]
}

func (f *fakeSource) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeSource) Pools() []PoolRow     { return f.pools }
func (f *fakeSource) Clients() []ClientRow { return f.clients }
func (f *fakeSource) Servers() []ServerRow {
	return []ServerRow{{Service: "api", Database: "leads", Backend: "127.0.0.1:5432", PID: 4242, State: "idle", IdleFor: 1500 * time.Millisecond}}
}
func (f *fakeSource) Backends() []BackendRow {
	return []BackendRow{{Database: "leads", Backend: "127.0.0.1:5432", Role: "primary", InService: true, Healthy: true, Breaker: "closed"}}
}
func (f *fakeSource) Stats() []StatsRow {
	return []StatsRow{{Service: "api", Database: "leads", Queries: 5, QueryTime: 10 * time.Millisecond, AvgQuery: 2 * time.Millisecond}}
}
func (f *fakeSource) Config() []ConfigRow {
	return []ConfigRow{{Key: "listen", Value: "127.0.0.1:6432"}, {Key: "pool.wait_timeout", Value: "30s", Source: "set"}}
}
func (f *fakeSource) Version() string { return "pgshield test" }
func (f *fakeSource) Queries(n int) []metrics.QueryStat {
	f.mu.Lock()
	f.queriesN = append(f.queriesN, n)
	f.mu.Unlock()
	var out []metrics.QueryStat
	for i := range 30 {
		out = append(out, metrics.QueryStat{Fingerprint: fmt.Sprintf("fp%02d", i), Query: "SELECT $1", Calls: int64(30 - i)})
	}
	return out
}
func (f *fakeSource) SlowQueries() []metrics.SlowQuery {
	return []metrics.SlowQuery{{At: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), Duration: 750 * time.Millisecond, Query: "SELECT pg_sleep($1)"}}
}
func (f *fakeSource) SlowThreshold() time.Duration { return 500 * time.Millisecond }
func (f *fakeSource) Transactions() []TransactionRow {
	return []TransactionRow{{ClientID: 9, User: "app", Age: 1234567 * time.Microsecond, Tables: []string{"leads", "notes"}, Long: true}}
}
func (f *fakeSource) Pinned() []PinnedRow { return []PinnedRow{{ClientID: 9, Reasons: "LISTEN"}} }
func (f *fakeSource) Alerts() []metrics.Alert {
	return []metrics.Alert{{Name: "PoolUtilizationHigh", Severity: "warning", Subject: "api/leads", Value: 0.95, Threshold: 0.9}}
}
func (f *fakeSource) Databases() []string { return []string{"leads", "reports"} }
func (f *fakeSource) DatabaseQuery(ctx context.Context, database, sql string) (Result, error) {
	if _, ok := ctx.Deadline(); !ok {
		return Result{}, errors.New("DatabaseQuery called without a deadline")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.dbErr[database]; err != nil {
		return Result{}, err
	}
	res, ok := f.dbResults[sql]
	if !ok {
		return Result{}, errors.New("unexpected statistics query")
	}
	return res, nil
}
func (f *fakeSource) Pause(_ context.Context, database string) error {
	return f.record("PAUSE " + database)
}
func (f *fakeSource) Resume(database string) error { return f.record("RESUME " + database) }
func (f *fakeSource) Reload() error                { return f.record("RELOAD") }
func (f *fakeSource) Kill(id uint32) error         { return f.record(fmt.Sprintf("KILL %d", id)) }
func (f *fakeSource) Set(name, value string) error { return f.record("SET " + name + "=" + value) }
func (f *fakeSource) Reset(name string) error      { return f.record("RESET " + name) }
func (f *fakeSource) Readmit(database, backend string) error {
	return f.record("READMIT " + database + " " + backend)
}
func (f *fakeSource) Policy() []PolicyRow {
	return []PolicyRow{
		{Database: "app", Table: "agents", Rule: "agents_capacity", Kind: "row", Checks: 12, Refusals: 1},
		{Database: "app", Table: "leads", Column: "email", Rule: "leads_email_type", Kind: "type", Checks: 40, Refusals: 3},
		{Database: "app", Table: "leads", Column: "source", Rule: "leads_source_pattern", Kind: "pattern", Services: "api", Checks: 40},
	}
}
func (f *fakeSource) Firewall() []FirewallRow {
	return []FirewallRow{
		{Service: "api", Mode: "learn", Fingerprint: "0123456789abcdef", Source: "learned", Query: "SELECT * FROM leads WHERE id = $1", Rules: "deny: DROP"},
		{Service: "api", Mode: "learn", Fingerprint: "fedcba9876543210", Source: "allowed", Rules: "deny: DROP"},
		{Service: "jobs", Mode: "off", Rules: "deny_functions: dblink"},
	}
}
func (f *fakeSource) FirewallSave(service string) ([]SavedAllowList, error) {
	if err := f.record("FIREWALL SAVE " + service); err != nil {
		return nil, err
	}
	if service == "" {
		return []SavedAllowList{{Service: "api", Path: "policy/allow-api.txt", Learned: 2, Total: 3},
			{Service: "web", Path: "policy/allow-web.txt", Learned: 1, Total: 1}}, nil
	}
	return []SavedAllowList{{Service: service, Path: "policy/allow-" + service + ".txt", Learned: 2, Total: 3}}, nil
}

// consoleEnv is a console behind a real proxy handshake.
type consoleEnv struct {
	addr    string
	src     *fakeSource
	console *Console
	logs    *observer.ObservedLogs
	served  chan error
}

// startConsole serves a Console on loopback over a fake source.
func startConsole(t *testing.T) *consoleEnv {
	t.Helper()
	fake := newFakeSource()
	return serveConsole(t, fake, fake, nil)
}

// serveConsole serves a Console over src (fake is the fake source in it)
// on loopback, with setup run on it before it serves. The pool manager
// names a database at an unreachable port: AcceptAdmin never dials a
// server, and the manager is not started.
func serveConsole(t *testing.T, src Source, fake *fakeSource, setup func(*Console), opts ...ConsoleOption) *consoleEnv {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	mcfg := poolmgr.Config{Databases: map[string]poolmgr.DatabaseConfig{
		"leads": {Primary: "127.0.0.1:1", DBName: "leads", User: "u", Password: "p", ServerTLS: poolmgr.ServerTLS{Mode: "disable"}},
	}}.WithDefaults()
	pools, err := poolmgr.New(mcfg, log)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(proxy.Config{Listen: "127.0.0.1:0", Users: []proxy.User{
		{Name: "admin", Password: testAdminPassword, Admin: true},
		{Name: "app", Password: "app-secret", Service: "api"},
	}}, pools, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	c := NewConsole(srv.AcceptAdmin, src, zap.New(core), opts...)
	if setup != nil {
		setup(c)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &consoleEnv{addr: ln.Addr().String(), src: fake, console: c, logs: logs, served: make(chan error, 1)}
	go func() { e.served <- c.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-e.served; err != nil {
			t.Errorf("serve: %v", err)
		}
		pools.Close(ctx)
	})
	return e
}

func (e *consoleEnv) connString() string {
	host, port, _ := net.SplitHostPort(e.addr)
	return fmt.Sprintf("host=%s port=%s user=admin password=%s dbname=pgshield sslmode=disable connect_timeout=10", host, port, testAdminPassword)
}

// notices collects the NoticeResponses a connection received.
type notices struct {
	mu   sync.Mutex
	msgs []string
}

func (n *notices) take() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := n.msgs
	n.msgs = nil
	return out
}

// connect opens a pgx connection; simple selects the simple protocol (the
// console's) as the default exec mode.
func (e *consoleEnv) connect(t *testing.T, simple bool) (*pgx.Conn, *notices) {
	t.Helper()
	cfg, err := pgx.ParseConfig(e.connString())
	if err != nil {
		t.Fatal(err)
	}
	if simple {
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	}
	ns := &notices{}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		ns.mu.Lock()
		ns.msgs = append(ns.msgs, n.Severity+": "+n.Message)
		ns.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("admin connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c, ns
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// exec1 runs sql as one Query message and returns every result.
func exec1(t *testing.T, c *pgx.Conn, sql string) []*pgconn.Result {
	t.Helper()
	res, err := readAll(c.PgConn().Exec(ctxT(t), sql))
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return res
}

// readAll is MultiResultReader.ReadAll keeping the columns of results
// without rows too.
func readAll(mrr *pgconn.MultiResultReader) ([]*pgconn.Result, error) {
	var out []*pgconn.Result
	for mrr.NextResult() {
		rr := mrr.ResultReader()
		fields := slices.Clone(rr.FieldDescriptions())
		r := rr.Read()
		if r.FieldDescriptions == nil {
			r.FieldDescriptions = fields
		}
		out = append(out, r)
	}
	return out, mrr.Close()
}

func columnNames(r *pgconn.Result) []string {
	out := make([]string, len(r.FieldDescriptions))
	for i, f := range r.FieldDescriptions {
		out[i] = f.Name
	}
	return out
}

func pgErr(t *testing.T, err error) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is not a PostgreSQL error", err)
	}
	return pe
}

func TestConsoleShowColumns(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, true)
	for _, tc := range []struct {
		cmd  string
		cols string
		rows int
	}{
		{"SHOW POOLS", "service database backend mode cl_active cl_idle cl_waiting sv_active sv_idle sv_opening max min wait_p50_ms wait_p95_ms wait_p99_ms acquires wait_timeouts paused", 1},
		{"SHOW CLIENTS", "id user database service mode remote application_name tls state backend server_pid connected_at tx_start queries transactions bytes_in bytes_out pinned", 1},
		{"SHOW SERVERS", "service database backend pid state client_id connected_at idle_s", 1},
		{"SHOW BACKENDS", "database backend role in_service healthy fenced breaker lag_bytes lag_s last_check last_error clients", 1},
		{"SHOW STATS", "service database queries transactions commits rollbacks errors bytes_in bytes_out total_query_ms avg_query_ms avg_transaction_ms", 1},
		{"SHOW CONFIG", "key value source", 2},
		{"SHOW VERSION", "version", 1},
		{"SHOW QUERIES", "fingerprint calls rows errors total_ms mean_ms p50_ms p95_ms p99_ms max_ms query", 20},
		{"SHOW QUERIES 3", "fingerprint calls rows errors total_ms mean_ms p50_ms p95_ms p99_ms max_ms query", 3},
		{"SHOW SLOW_QUERIES", "at duration_ms service database backend error fingerprint query", 1},
		{"SHOW TRANSACTIONS", "client_id user service database backend state isolation age_s statements rows tables long", 1},
		{"SHOW PINNED", "client_id user service database backend server_pid reasons", 1},
		{"SHOW ALERTS", "severity alert subject value threshold since message", 1},
		{"SHOW POLICY", "database table column rule kind services checks refusals", 3},
		{"SHOW FIREWALL", "service mode fingerprint source query rules", 3},
		{"SHOW HEALTH", "database total cache_hit_ratio", 2},
		{"SHOW LOCKS", "database blocked_pid blocking_pid", 0},
		{"SHOW TABLES", "database table dead_tuples", 2},
		{"SHOW INDEXES", "database index scans", 2},
		{"SHOW HELP", "command description", len(helpLines())},
		{"HELP", "command description", len(helpLines())},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			res := exec1(t, c, tc.cmd)
			if len(res) != 1 {
				t.Fatalf("%d results, want 1", len(res))
			}
			if got := strings.Join(columnNames(res[0]), " "); got != tc.cols {
				t.Errorf("columns\n got %s\nwant %s", got, tc.cols)
			}
			if len(res[0].Rows) != tc.rows {
				t.Errorf("%d rows, want %d", len(res[0].Rows), tc.rows)
			}
			if tag := res[0].CommandTag.String(); tag != "SHOW" {
				t.Errorf("tag %q, want SHOW", tag)
			}
		})
	}
	e.src.mu.Lock()
	got := slices.Clone(e.src.queriesN)
	e.src.mu.Unlock()
	if !slices.Equal(got, []int{20, 3}) {
		t.Errorf("Queries called with %v, want [20 3]", got)
	}
	// Every SHOW item and command appears in SHOW HELP.
	help := exec1(t, c, "SHOW HELP")[0]
	var lines []string
	for _, r := range help.Rows {
		lines = append(lines, string(r[0]))
	}
	for _, item := range strings.Split(strings.TrimPrefix(showHint, "SHOW items: "), ", ") {
		if !slices.Contains(lines, "SHOW "+item) {
			t.Errorf("SHOW HELP does not list SHOW %s", item)
		}
	}
}

func TestConsoleTypesAndValues(t *testing.T) {
	e := startConsole(t)
	c, ns := e.connect(t, true)

	pools := exec1(t, c, "SHOW POOLS")[0]
	want := map[string]uint32{"service": TypeText, "cl_active": TypeInt8, "max": TypeInt8, "wait_p50_ms": TypeFloat8, "acquires": TypeInt8, "paused": TypeBool}
	for _, f := range pools.FieldDescriptions {
		if oid, ok := want[f.Name]; ok && f.DataTypeOID != oid {
			t.Errorf("column %s has type %d, want %d", f.Name, f.DataTypeOID, oid)
		}
		if f.Format != 0 {
			t.Errorf("column %s has format %d, want text", f.Name, f.Format)
		}
	}
	row := pools.Rows[0]
	for i, v := range map[int]string{0: "api", 4: "2", 12: "1.500", 13: "12.000", 14: "250.000", 15: "1234", 17: "f"} {
		if string(row[i]) != v {
			t.Errorf("SHOW POOLS %s = %q, want %q", pools.FieldDescriptions[i].Name, row[i], v)
		}
	}

	clients := exec1(t, c, "SHOW CLIENTS")[0]
	row = clients.Rows[0]
	for i, v := range map[int]string{7: "t", 11: "2024-05-06 07:08:09.123+00"} {
		if string(row[i]) != v {
			t.Errorf("SHOW CLIENTS %s = %q, want %q", clients.FieldDescriptions[i].Name, row[i], v)
		}
	}
	for _, i := range []int{9, 10, 12, 17} { // backend, server_pid, tx_start, pinned
		if row[i] != nil {
			t.Errorf("SHOW CLIENTS %s = %q, want NULL", clients.FieldDescriptions[i].Name, row[i])
		}
	}

	tx := exec1(t, c, "SHOW TRANSACTIONS")[0].Rows[0]
	if string(tx[7]) != "1.235" || string(tx[10]) != "leads,notes" || string(tx[11]) != "t" {
		t.Errorf("SHOW TRANSACTIONS age_s, tables, long = %q %q %q; want 1.235 leads,notes t", tx[7], tx[10], tx[11])
	}
	srv := exec1(t, c, "SHOW SERVERS")[0].Rows[0]
	if string(srv[7]) != "1.5" || srv[5] != nil || srv[6] != nil {
		t.Errorf("SHOW SERVERS idle_s, client_id, connected_at = %q %v %v; want 1.5 NULL NULL", srv[7], srv[5], srv[6])
	}

	ns.take()
	slow := exec1(t, c, "SHOW SLOW_QUERIES")[0].Rows[0]
	if string(slow[0]) != "2024-01-02 03:04:05.000+00" || string(slow[1]) != "750.000" || slow[5] != nil {
		t.Errorf("SHOW SLOW_QUERIES at, duration_ms, error = %q %q %v", slow[0], slow[1], slow[5])
	}
	if got := ns.take(); !slices.Equal(got, []string{"NOTICE: slow-query threshold: 500.000 ms"}) {
		t.Errorf("notices %q, want the threshold", got)
	}

	// Through pgx's own decoding: the declared types are what the text is.
	var p50 float64
	var paused bool
	var connected time.Time
	if err := c.QueryRow(ctxT(t), "SHOW POOLS").Scan(nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, &p50, nil, nil, nil, nil, &paused); err != nil {
		t.Fatalf("scanning SHOW POOLS: %v", err)
	}
	if p50 != 1.5 || paused {
		t.Errorf("wait_p50_ms %v paused %v, want 1.5 false", p50, paused)
	}
	rows, err := c.Query(ctxT(t), "SHOW CLIENTS")
	if err != nil {
		t.Fatal(err)
	}
	if !rows.Next() {
		t.Fatalf("SHOW CLIENTS: no row: %v", rows.Err())
	}
	vals, err := rows.Values()
	rows.Close()
	if err != nil {
		t.Fatal(err)
	}
	connected, _ = vals[11].(time.Time)
	if id, ok := vals[0].(int64); !ok || id != 9 || !connected.Equal(e.src.clients[0].ConnectedAt) || vals[9] != nil {
		t.Errorf("SHOW CLIENTS decoded: id %v, connected_at %v, backend %v", vals[0], vals[11], vals[9])
	}
}

func TestConsoleSyntax(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, true)

	for _, q := range []string{"show pools", "  Show   Pools ;  ", "SHOW POOLS;", "-- a comment; with a semicolon\nshow pools", "/* block; */ show pools;;"} {
		res := exec1(t, c, q)
		if len(res) != 1 || len(res[0].FieldDescriptions) != 18 {
			t.Errorf("%q: %d results, want SHOW POOLS", q, len(res))
		}
	}

	res := exec1(t, c, "SHOW VERSION; show config")
	if len(res) != 2 || string(res[0].Rows[0][0]) != "pgshield test" || columnNames(res[1])[0] != "key" {
		t.Fatalf("two commands in one Query: %d results", len(res))
	}

	exec1(t, c, `SET "Quoted;Name" = 'a;b '' c'`)
	exec1(t, c, "set X to 1")
	if got := e.src.recorded(); !slices.Equal(got, []string{"SET Quoted;Name=a;b ' c", "SET x=1"}) {
		t.Errorf("Set calls %q", got)
	}

	// EmptyQueryResponse: pgconn reports one result with no tag and no columns.
	if res := exec1(t, c, " ; "); len(res) != 1 || res[0].CommandTag.String() != "" || res[0].FieldDescriptions != nil {
		t.Errorf("empty query: %d results, want one empty result", len(res))
	}
	if err := c.Ping(ctxT(t)); err != nil { // pgx pings with an empty query
		t.Errorf("ping: %v", err)
	}
}

func TestConsoleErrors(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, true)
	for _, tc := range []struct {
		sql, code, message, hint string
	}{
		{"FOO", "42601", `unknown command "FOO"`, "SHOW <item>"},
		{"SHOW FOO", "42704", `unknown SHOW item "FOO"`, "POOLS"},
		{"SHOW", "42601", "SHOW needs an item", "POOLS"},
		{"SHOW POOLS extra", "42601", "SHOW POOLS takes no arguments", ""},
		{"SHOW QUERIES x", "22023", "SHOW QUERIES takes a number", ""},
		{"SHOW QUERIES 0", "22023", "SHOW QUERIES takes a number", ""},
		{"KILL abc", "22023", `invalid client id "abc"`, "SHOW CLIENTS"},
		{"KILL", "42601", "KILL needs a client id", "SHOW CLIENTS"},
		{"KILL 1 2", "42601", "KILL takes one client id", ""},
		{"SET x", "42601", "SET needs a setting and a value", ""},
		{"SET x = 1 min", "42601", "SET needs a setting and a value", "quote"},
		{"SET x = 'open", "42601", "unterminated quoted string", ""},
		{"PAUSE nope", "22023", `database "nope" is not configured`, "leads, reports"},
		{"RESUME a b", "42601", "RESUME takes at most one database", ""},
		{"RELOAD now", "42601", "RELOAD takes no arguments", ""},
		{"READMIT leads", "42601", "READMIT needs a database and a backend", ""},
		{"READMIT leads nohost", "22023", `invalid backend "nohost"`, ""},
		{"FIREWALL", "42601", "FIREWALL needs SAVE", "SHOW FIREWALL"},
		{"FIREWALL LOAD api", "42601", "FIREWALL needs SAVE", ""},
		{"FIREWALL 'SAVE'", "42601", "FIREWALL needs SAVE", ""},
		{"FIREWALL SAVE api web", "42601", "FIREWALL SAVE takes at most one service, got 2 arguments", ""},
		{"FIREWALL SAVE ''", "42601", "FIREWALL SAVE needs a service name or nothing", ""},
		{"SHOW POLICY leads", "42601", "SHOW POLICY takes no arguments", ""},
		{"SHOW FIREWALL api", "42601", "SHOW FIREWALL takes no arguments", ""},
	} {
		t.Run(tc.sql, func(t *testing.T) {
			_, err := c.PgConn().Exec(ctxT(t), tc.sql).ReadAll()
			pe := pgErr(t, err)
			if pe.Code != tc.code || pe.Severity != "ERROR" || !strings.Contains(pe.Message, tc.message) || !strings.Contains(pe.Hint, tc.hint) {
				t.Errorf("%s %s %q (hint %q), want ERROR %s %q (hint with %q)", pe.Severity, pe.Code, pe.Message, pe.Hint, tc.code, tc.message, tc.hint)
			}
		})
	}
	if got := e.src.recorded(); len(got) != 0 {
		t.Errorf("refused commands reached the Source: %q", got)
	}

	// An error ends the rest of its Query, not the connection.
	res, err := readAll(c.PgConn().Exec(ctxT(t), "SHOW VERSION; FOO; RELOAD"))
	if pe := pgErr(t, err); pe.Code != "42601" {
		t.Errorf("error %s, want 42601", pe.Code)
	}
	if len(res) != 1 || string(res[0].Rows[0][0]) != "pgshield test" {
		t.Errorf("%d results before the error, want SHOW VERSION's alone", len(res))
	}
	if got := e.src.recorded(); len(got) != 0 {
		t.Errorf("the command after the error ran: %q", got)
	}
	if res := exec1(t, c, "SHOW VERSION"); len(res) != 1 {
		t.Error("connection not usable after an error")
	}
}

func TestConsoleControl(t *testing.T) {
	e := startConsole(t)
	c, ns := e.connect(t, true)
	for _, tc := range []struct{ sql, tag, notice string }{
		{"PAUSE", "PAUSE", "paused every database"},
		{"pause leads;", "PAUSE", "paused database leads"},
		{"RESUME leads", "RESUME", "resumed database leads"},
		{"RESUME", "RESUME", "resumed every database"},
		{"RELOAD", "RELOAD", "configuration reloaded"},
		{"KILL 42", "KILL", "client 42 disconnected"},
		{"SET pool.wait_timeout TO '10s'", "SET", `pool.wait_timeout set to "10s"`},
		{"READMIT leads 127.0.0.1:5432", "READMIT", "backend 127.0.0.1:5432 of database leads readmitted"},
		{"firewall save api", "FIREWALL SAVE", "service api: 3 fingerprints written to policy/allow-api.txt (2 learned); to allow only these, set firewall.api.mode: enforce in the policy file and RELOAD"},
	} {
		res := exec1(t, c, tc.sql)
		if len(res) != 1 || res[0].CommandTag.String() != tc.tag || len(res[0].FieldDescriptions) != 0 {
			t.Errorf("%s: %d results, want one with tag %s", tc.sql, len(res), tc.tag)
			continue
		}
		if got := ns.take(); len(got) != 1 || !strings.Contains(got[0], tc.notice) {
			t.Errorf("%s: notices %q, want %q", tc.sql, got, tc.notice)
		}
	}
	// FIREWALL SAVE without a service: a notice per service saved.
	res := exec1(t, c, "FIREWALL SAVE")
	if len(res) != 1 || res[0].CommandTag.String() != "FIREWALL SAVE" {
		t.Errorf("FIREWALL SAVE: %d results, want one with tag FIREWALL SAVE", len(res))
	}
	if got := ns.take(); len(got) != 2 || !strings.Contains(got[0], "service api: 3 fingerprints written to policy/allow-api.txt") ||
		!strings.Contains(got[1], "service web: 1 fingerprint written to policy/allow-web.txt (1 learned)") ||
		!strings.Contains(got[1], "set firewall.web.mode: enforce") {
		t.Errorf("FIREWALL SAVE notices %q", got)
	}
	want := []string{"PAUSE ", "PAUSE leads", "RESUME leads", "RESUME ", "RELOAD", "KILL 42", "SET pool.wait_timeout=10s", "READMIT leads 127.0.0.1:5432",
		"FIREWALL SAVE api", "FIREWALL SAVE "}
	if got := e.src.recorded(); !slices.Equal(got, want) {
		t.Errorf("Source calls\n got %q\nwant %q", got, want)
	}
}

// SHOW POLICY and SHOW FIREWALL render what Source returns: counts as
// numbers, a row rule's column as ”, what is not known as NULL.
func TestConsolePolicyValues(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, true)
	pol := exec1(t, c, "SHOW POLICY")[0]
	want := map[string]uint32{"database": TypeText, "column": TypeText, "checks": TypeInt8, "refusals": TypeInt8}
	for _, f := range pol.FieldDescriptions {
		if oid, ok := want[f.Name]; ok && f.DataTypeOID != oid {
			t.Errorf("SHOW POLICY %s has type %d, want %d", f.Name, f.DataTypeOID, oid)
		}
	}
	var got []string
	for _, r := range pol.Rows {
		var vals []string
		for _, v := range r {
			if v == nil {
				vals = append(vals, "NULL")
				continue
			}
			vals = append(vals, string(v))
		}
		got = append(got, strings.Join(vals, "|"))
	}
	wantRows := []string{
		"app|agents||agents_capacity|row||12|1",
		"app|leads|email|leads_email_type|type||40|3",
		"app|leads|source|leads_source_pattern|pattern|api|40|0",
	}
	if !slices.Equal(got, wantRows) {
		t.Errorf("SHOW POLICY\n got %q\nwant %q", got, wantRows)
	}

	fw := exec1(t, c, "SHOW FIREWALL")[0]
	if r := fw.Rows[0]; string(r[3]) != "learned" || string(r[4]) != "SELECT * FROM leads WHERE id = $1" || string(r[5]) != "deny: DROP" {
		t.Errorf("SHOW FIREWALL learned row %q", r)
	}
	if r := fw.Rows[1]; string(r[3]) != "allowed" || r[4] != nil {
		t.Errorf("SHOW FIREWALL allowed row %q, want the query NULL", r)
	}
	if r := fw.Rows[2]; string(r[0]) != "jobs" || string(r[1]) != "off" || r[2] != nil || r[3] != nil || string(r[5]) != "deny_functions: dblink" {
		t.Errorf("SHOW FIREWALL row of a service without fingerprints %q", r)
	}
}

func TestConsoleSourceErrors(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, true)
	e.src.mu.Lock()
	e.src.ctlErr["KILL"] = Errorf(CodeInvalidParameterValue, "no client 77").withHint("see SHOW CLIENTS")
	e.src.ctlErr["RELOAD"] = errors.New("config.yaml: services.api.max_connections must be at least 1")
	e.src.ctlErr["SET"] = fmt.Errorf("setting: %w", &pgconn.PgError{Code: "42704", Message: `unrecognized setting "nope"`})
	e.src.dbErr["reports"] = &pgconn.PgError{Code: "42P01", Message: `relation "pg_stat_x" does not exist`}
	e.src.ctlErr["FIREWALL"] = &Error{Code: CodeObjectNotInPrerequisiteState, Message: "FIREWALL SAVE: the firewall of service api is in mode enforce, not learn"}
	e.src.mu.Unlock()

	for _, tc := range []struct{ sql, code, message string }{
		{"KILL 77", "22023", "no client 77"},
		{"RELOAD", "55000", "RELOAD failed: config.yaml: services.api.max_connections must be at least 1"},
		{"SET nope = 1", "42704", `unrecognized setting "nope"`},
		{"SHOW HEALTH", "42P01", `database "reports": relation "pg_stat_x" does not exist`},
		{"FIREWALL SAVE api", "55000", "the firewall of service api is in mode enforce, not learn"},
	} {
		_, err := c.PgConn().Exec(ctxT(t), tc.sql).ReadAll()
		if pe := pgErr(t, err); pe.Code != tc.code || !strings.Contains(pe.Message, tc.message) {
			t.Errorf("%s: %s %q, want %s %q", tc.sql, pe.Code, pe.Message, tc.code, tc.message)
		}
	}

	e.src.mu.Lock()
	e.src.dbErr["reports"] = fmt.Errorf("acquire: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})
	e.src.mu.Unlock()
	_, err := c.PgConn().Exec(ctxT(t), "SHOW TABLES").ReadAll()
	if pe := pgErr(t, err); pe.Code != "08006" || !strings.Contains(pe.Message, `database "reports"`) {
		t.Errorf("connection failure: %s %q, want 08006 naming the database", pe.Code, pe.Message)
	}
}

func TestConsoleExtendedProtocol(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, false) // pgx's default mode: Parse/Describe/Sync first
	extended := func(args ...any) error {
		rows, err := c.Query(ctxT(t), "SHOW POOLS", args...)
		if err != nil {
			return err
		}
		rows.Close()
		return rows.Err()
	}
	if pe := pgErr(t, extended()); pe.Code != "0A000" || !strings.Contains(pe.Message, "simple query protocol") {
		t.Fatalf("extended protocol: %s %q, want 0A000", pe.Code, pe.Message)
	}
	// The connection stays usable, in simple mode.
	var version string
	if err := c.QueryRow(ctxT(t), "SHOW VERSION", pgx.QueryExecModeSimpleProtocol).Scan(&version); err != nil || version != "pgshield test" {
		t.Fatalf("after the refusal: %q, %v", version, err)
	}
	if pe := pgErr(t, extended(pgx.QueryExecModeExec)); pe.Code != "0A000" {
		t.Errorf("second extended attempt: %s, want 0A000", pe.Code)
	}
	if err := c.Ping(ctxT(t)); err != nil {
		t.Errorf("ping after refusals: %v", err)
	}
}

// hijacked logs in with pgconn and takes over the raw connection, to send
// what no driver would.
func hijacked(t *testing.T, e *consoleEnv) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	pc, err := pgconn.Connect(ctxT(t), e.connString())
	if err != nil {
		t.Fatal(err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hc.Conn.Close() })
	_ = hc.Conn.SetDeadline(time.Now().Add(20 * time.Second))
	return hc.Conn, hc.Frontend
}

func TestConsoleProtocolViolation(t *testing.T) {
	e := startConsole(t)
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"unexpected type", []byte{'d', 0, 0, 0, 5, 'x'}},
		{"oversized", binary.BigEndian.AppendUint32([]byte{'Q'}, 2<<20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, fe := hijacked(t, e)
			if _, err := nc.Write(tc.frame); err != nil {
				t.Fatal(err)
			}
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			er, ok := msg.(*pgproto3.ErrorResponse)
			if !ok || er.Severity != "FATAL" || er.Code != "08P01" {
				t.Fatalf("got %#v, want FATAL 08P01", msg)
			}
			if _, err := fe.Receive(); err == nil {
				t.Error("connection still open after FATAL")
			}
		})
	}
}

func TestConsoleLogsNoSetValues(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, true)
	exec1(t, c, "SET server_password = 'hunter2-secret'; SHOW POOLS")
	var cmds []string
	for _, entry := range e.logs.FilterMessage("admin command").All() {
		m := entry.ContextMap()
		if m["user"] != "admin" {
			t.Errorf("log entry without the admin user: %v", m)
		}
		cmds = append(cmds, fmt.Sprint(m["command"]))
	}
	if !slices.Equal(cmds, []string{"SET", "SHOW POOLS"}) {
		t.Errorf("logged commands %q, want SET and SHOW POOLS", cmds)
	}
	for _, entry := range e.logs.All() {
		if strings.Contains(fmt.Sprint(entry.Message, entry.ContextMap()), "hunter2") {
			t.Errorf("a SET value was logged: %s %v", entry.Message, entry.ContextMap())
		}
	}
}

func TestConsoleShutdown(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.console.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PgConn().Exec(ctxT(t), "SHOW POOLS").ReadAll(); err == nil {
		t.Error("a command ran after Shutdown")
	}
	if _, err := net.DialTimeout("tcp", e.addr, 5*time.Second); err == nil {
		t.Error("the console still accepts connections after Shutdown")
	}
}

// psqlPath finds the psql client: on PATH, else beside the server binaries.
func psqlPath(t *testing.T) string {
	if p, err := exec.LookPath("psql"); err == nil {
		return p
	}
	dir, err := pgcluster.BinDir()
	if err != nil {
		t.Fatalf("psql not found: %v", err)
	}
	return filepath.Join(dir, "psql")
}

func TestConsolePsql(t *testing.T) {
	e := startConsole(t)
	host, port, _ := net.SplitHostPort(e.addr)
	ctx := ctxT(t)
	cmd := exec.CommandContext(ctx, psqlPath(t), "-X", "-A", "-F", ",", "-h", host, "-p", port, "-U", "admin", "-c", "SHOW POOLS", "pgshield")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+testAdminPassword, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	want := []string{
		"service,database,backend,mode,cl_active,cl_idle,cl_waiting,sv_active,sv_idle,sv_opening,max,min,wait_p50_ms,wait_p95_ms,wait_p99_ms,acquires,wait_timeouts,paused",
		"api,leads,127.0.0.1:5432,transaction,2,3,1,2,4,0,20,5,1.500,12.000,250.000,1234,7,f",
		"(1 row)",
	}
	if !slices.Equal(lines, want) {
		t.Errorf("psql printed\n%s\nwant\n%s", out, strings.Join(want, "\n"))
	}
}
