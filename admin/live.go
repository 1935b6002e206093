package admin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/metrics"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
	"github.com/pgshield/pgshield/router"
)

// Live is the Source of a running pgshield: the proxy, its pool manager
// and topology, the alert evaluator, and the configuration's Settings.
type Live struct {
	srv      *proxy.Server
	pools    *poolmgr.Manager
	topo     *router.Topology
	alerter  *metrics.Alerter
	settings Settings
	version  string
	extra    func() [][2]string      // settings only the caller knows (listen addresses, logging)
	keys     keyState                // the key commands' configuration and last scan (keys.go)
	backups  atomic.Pointer[Backups] // SetBackups (backupcmds.go); nil: none
}

// Settings changes the configuration of a running pgshield: the console's
// RELOAD, SET and RESET, and a reload on SIGHUP, go through it one at a
// time, and each applies a whole configuration or nothing. cmd/pgshield
// implements it over its configuration file. An error that is an *Error
// keeps its SQLSTATE (55000 for a change that needs a restart); any other
// is reported as 22023.
type Settings interface {
	// Reload reads the configuration file again and applies it, with the
	// console's SETs on top.
	Reload() error
	// Set gives key (as written in the file: pool.wait_timeout,
	// services.api.max_connections) the value, until RESET or restart:
	// it stays over every reloaded file.
	Set(key, value string) error
	// Reset drops the SET of key, so that the file's value applies; ""
	// drops every SET.
	Reset(key string) error
	// Overridden lists the keys whose value comes from a console SET.
	Overridden() []string
}

// NewLive joins the parts of a running pgshield. settings (nil: none)
// reloads and changes the configuration; extra (nil: none) returns the
// settings SHOW CONFIG lists first, such as the admin and metrics listen
// addresses.
func NewLive(srv *proxy.Server, pools *poolmgr.Manager, topo *router.Topology, alerter *metrics.Alerter,
	settings Settings, version string, extra func() [][2]string) *Live {
	return &Live{srv: srv, pools: pools, topo: topo, alerter: alerter, settings: settings, version: version, extra: extra}
}

var _ Source = (*Live)(nil)

// Pools joins the pool manager's pools with the clients of each.
func (l *Live) Pools() []PoolRow {
	active, idle := l.srv.ClientsByPool()
	stats := l.pools.Stats()
	slices.SortFunc(stats, func(a, b poolmgr.Stat) int { return a.Key.Compare(b.Key) })
	cfg := l.pools.Config()
	out := make([]PoolRow, 0, len(stats))
	for _, st := range stats {
		row := PoolRow{Service: st.Service, Database: st.Database, Backend: st.Backend, Mode: string(st.Mode),
			ClientsActive: active[st.Key], ClientsWaiting: st.Waiting,
			ServersActive: st.Active, ServersIdle: st.Idle, ServersOpening: st.Opening, Max: st.Max, Min: st.Min,
			Acquires: st.Acquires, WaitTimeouts: st.WaitTimeout, Paused: l.srv.Paused(st.Database)}
		// Clients without a server count at the primary's pool, where
		// their next transaction starts.
		if st.Backend == l.primaryOf(cfg, st.Database) {
			row.ClientsIdle = idle[poolmgr.Key{Service: st.Service, Database: st.Database}]
		}
		row.WaitP50, row.WaitP95, row.WaitP99 = l.srv.WaitQuantiles(st.Key)
		out = append(out, row)
	}
	return out
}

// primaryOf is the primary in service of database: the healthy one the
// topology found, else the configured one.
func (l *Live) primaryOf(cfg poolmgr.Config, database string) string {
	if p, ok := l.topo.HealthyPrimary(database); ok {
		return p
	}
	return cfg.Databases[database].Primary
}

// Clients lists the connected clients.
func (l *Live) Clients() []ClientRow {
	cs := l.srv.Clients()
	out := make([]ClientRow, 0, len(cs))
	for _, c := range cs {
		out = append(out, ClientRow{ID: c.ID, User: c.User, Database: c.Database, Service: c.Service, Mode: c.Mode,
			Remote: c.Remote, ApplicationName: c.ApplicationName, TLS: c.TLS, State: c.State, Backend: c.Backend,
			ServerPID: c.ServerPID, ConnectedAt: c.ConnectedAt, TxStart: c.TxStart, Queries: c.Queries,
			Transactions: c.Transactions, BytesIn: c.BytesIn, BytesOut: c.BytesOut, Pinned: c.Pins})
	}
	return out
}

// Servers lists the server connections, with the client holding each.
func (l *Live) Servers() []ServerRow {
	holder := map[[2]any]uint32{}
	for _, c := range l.srv.Clients() {
		if c.Backend != "" {
			holder[[2]any{c.Backend, c.ServerPID}] = c.ID
		}
	}
	now := time.Now()
	var out []ServerRow
	for _, s := range l.pools.Servers() {
		row := ServerRow{Service: s.Service, Database: s.Database, Backend: s.Backend, PID: s.PID, ConnectedAt: s.Created, State: "idle"}
		if s.InUse {
			row.State = "active"
			row.ClientID = holder[[2]any{s.Backend, s.PID}]
		} else if !s.IdleSince.IsZero() {
			row.IdleFor = now.Sub(s.IdleSince)
		} else {
			row.IdleFor = now.Sub(s.Created)
		}
		out = append(out, row)
	}
	return out
}

// Backends reports the topology with each backend's breaker.
func (l *Live) Backends() []BackendRow {
	var out []BackendRow
	for _, n := range l.topo.Status() {
		out = append(out, BackendRow{Database: n.Database, Backend: n.Addr, Role: string(n.Role), InService: n.IsPrimary,
			Healthy: n.Healthy, Fenced: n.Fenced, Breaker: string(l.pools.Breaker(n.Addr)), LagBytes: n.LagBytes,
			LagSeconds: n.ReplayDelay.Seconds(), LastCheck: n.LastCheck, LastError: n.LastError, Clients: n.Outstanding})
	}
	return out
}

// Stats reports each pool's traffic since start.
func (l *Live) Stats() []StatsRow {
	ts := l.srv.Traffic()
	out := make([]StatsRow, 0, len(ts))
	for _, t := range ts {
		row := StatsRow{Service: t.Service, Database: t.Database, Queries: t.Queries, Transactions: t.Transactions,
			Commits: t.Commits, Rollbacks: t.Rollbacks, Errors: t.Errors, BytesIn: t.BytesIn, BytesOut: t.BytesOut,
			QueryTime: t.QueryTime}
		if t.Queries > 0 {
			row.AvgQuery = t.QueryTime / time.Duration(t.Queries)
		}
		if t.Transactions > 0 {
			row.AvgTransaction = t.TransactionTime / time.Duration(t.Transactions)
		}
		out = append(out, row)
	}
	return out
}

// Config lists the configuration in force, without passwords; a value
// that comes from a console SET has the source "set".
func (l *Live) Config() []ConfigRow {
	pc := l.srv.Settings()
	mc := l.pools.Config()
	set := map[string]bool{}
	if l.settings != nil {
		for _, k := range l.settings.Overridden() {
			set[k] = true
		}
	}
	var out []ConfigRow
	add := func(k string, v any) {
		row := ConfigRow{Key: k, Value: fmt.Sprint(v)}
		if set[k] {
			row.Source = "set"
		}
		out = append(out, row)
	}
	if l.extra != nil {
		for _, kv := range l.extra() {
			add(kv[0], kv[1])
		}
	}
	add("listen", pc.Listen)
	add("auth_type", pc.AuthType)
	add("tls.client", pc.TLS.Client)
	var users []string
	for _, u := range pc.Users {
		n := u.Name
		switch {
		case u.Admin && u.ClientLogin:
			n += " (admin, client_login)"
		case u.Admin:
			n += " (admin)"
		}
		users = append(users, n)
	}
	add("users", strings.Join(users, ", "))
	add("max_client_connections", pc.MaxClientConnections)
	add("max_message_size", pc.MaxMessageSize)
	add("client_login_timeout", pc.ClientLoginTimeout)
	add("shutdown_timeout", pc.ShutdownTimeout)
	add("max_prepared_statements", pc.MaxPreparedStatements)
	add("max_retries", max(pc.MaxRetries, 0)) // negative: never
	add("long_transaction_threshold", pc.LongTransactionThreshold)
	add("slow_query_threshold", l.SlowThreshold())
	add("query_stats_size", pc.QueryStatsSize)
	add("parse_cache_size", pc.ParseCacheSize)
	add("disable_classification", pc.DisableClassification)
	add("disable_stats", pc.DisableStats)
	add("default_service", mc.DefaultService)
	add("pool.connect_timeout", mc.Pool.ConnectTimeout)
	add("pool.idle_timeout", mc.Pool.IdleTimeout)
	add("pool.max_lifetime", mc.Pool.MaxLifetime)
	add("pool.health_check_interval", mc.Pool.HealthCheckInterval)
	add("pool.wait_timeout", mc.Pool.WaitTimeout)
	add("pool.breaker_failures", mc.Pool.BreakerFailures)
	add("pool.breaker_timeout", mc.Pool.BreakerTimeout)
	for _, name := range sortedKeys(mc.Services) {
		s := mc.Services[name]
		p := "services." + name + "."
		add(p+"pool_mode", s.PoolMode)
		add(p+"max_connections", s.MaxConnections)
		add(p+"min_connections", s.MinConnections)
		add(p+"min_on_demand", s.MinOnDemand) // not in the file: the minimum opens once a client uses the service
		add(p+"reads", orDefault(s.Reads, "replica"))
		add(p+"transaction_timeout", s.TransactionTimeout)
		add(p+"idle_in_transaction_timeout", s.IdleInTransactionTimeout)
	}
	rc := l.topo.Config()
	add("routing.lag_check_interval", rc.LagCheckInterval)
	add("routing.max_replica_lag", rc.MaxReplicaLag)
	add("routing.max_replica_lag_bytes", rc.MaxReplicaLagBytes)
	add("routing.read_your_writes", rc.ReadYourWrites)
	add("routing.read_your_writes_window", rc.ReadYourWritesWindow)
	add("routing.failover", rc.Failover)
	add("routing.failover_after", rc.FailoverAfter)
	for _, name := range sortedKeys(mc.Databases) {
		d := mc.Databases[name]
		p := "databases." + name + "."
		add(p+"primary", d.Primary)
		add(p+"replicas", strings.Join(d.Replicas, ", "))
		add(p+"dbname", orDefault(d.DBName, name))
		add(p+"user", d.User)
		add(p+"server_tls.mode", d.ServerTLS.Mode)
	}
	return out
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// Version is the pgshield version.
func (l *Live) Version() string { return "pgshield " + l.version }

// Queries returns the top statements by total time.
func (l *Live) Queries(n int) []metrics.QueryStat { return l.srv.QueryStats().Top(n) }

// SlowQueries returns the recent slow statements, newest first.
func (l *Live) SlowQueries() []metrics.SlowQuery { return l.srv.QueryStats().Slow() }

// SlowThreshold is the slow-query threshold in force.
func (l *Live) SlowThreshold() time.Duration { return l.srv.QueryStats().Threshold() }

// Transactions lists the open transactions.
func (l *Live) Transactions() []TransactionRow {
	now := time.Now()
	var out []TransactionRow
	for _, t := range l.srv.Transactions() {
		out = append(out, TransactionRow{ClientID: t.ClientID, User: t.User, Service: t.Service, Database: t.Database,
			Backend: t.Backend, Started: t.Started, Age: now.Sub(t.Started), State: t.State,
			Isolation: orDefault(t.Isolation, "default"), Statements: t.Statements, Tables: t.Tables, Rows: t.Rows, Long: t.Long})
	}
	return out
}

// Pinned lists the clients pinned to their server by session state.
func (l *Live) Pinned() []PinnedRow {
	var out []PinnedRow
	for _, c := range l.srv.Clients() {
		if c.Pins != "" {
			out = append(out, PinnedRow{ClientID: c.ID, User: c.User, Service: c.Service, Database: c.Database,
				Backend: c.Backend, ServerPID: c.ServerPID, Reasons: c.Pins})
		}
	}
	return out
}

// Alerts evaluates the alert conditions now.
func (l *Live) Alerts() []metrics.Alert {
	if l.alerter == nil {
		return nil
	}
	return l.alerter.Firing()
}

// Databases lists the configured databases, by name.
func (l *Live) Databases() []string { return sortedKeys(l.pools.Config().Databases) }

// pauseWait bounds how long PAUSE waits for running transactions (the
// console cannot cancel a command); the pause stays in force after it.
const pauseWait = 30 * time.Second

// Pause holds new transactions of database and waits for the running ones.
func (l *Live) Pause(ctx context.Context, database string) error {
	ctx, cancel := context.WithTimeout(ctx, pauseWait)
	defer cancel()
	return controlError(l.srv.Pause(ctx, database))
}

// Resume releases what PAUSE holds.
func (l *Live) Resume(database string) error { return controlError(l.srv.Resume(database)) }

// Reload re-reads the configuration file; the console's SETs stay on top.
func (l *Live) Reload() error {
	if l.settings == nil {
		return noSettings()
	}
	if err := l.settings.Reload(); err != nil {
		e := settingsError(err)
		e.Message = "configuration reload refused; the previous configuration stays: " + e.Message
		return e
	}
	return nil
}

// Set changes a setting of the configuration, validated and applied as a
// reload is, until RESET or restart.
func (l *Live) Set(name, value string) error {
	if l.settings == nil {
		return noSettings()
	}
	if err := l.settings.Set(name, value); err != nil {
		return settingsError(err)
	}
	return nil
}

// Reset drops the SET of name ("" every SET): the file's value applies.
func (l *Live) Reset(name string) error {
	if l.settings == nil {
		return noSettings()
	}
	if err := l.settings.Reset(name); err != nil {
		return settingsError(err)
	}
	return nil
}

func noSettings() *Error {
	return &Error{Code: CodeObjectNotInPrerequisiteState, Message: "this pgshield has no configuration file to reload or change"}
}

// settingsError is an error of Settings as the console reports it: an
// *Error as it is (copied, as the caller may change its message), anything
// else as 22023.
func settingsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		c := *e
		return &c
	}
	return &Error{Code: CodeInvalidParameterValue, Message: err.Error(), Err: err}
}

// Kill ends a client's session.
func (l *Live) Kill(id uint32) error { return controlError(l.srv.Kill(id)) }

// Readmit lets a fenced backend serve again.
func (l *Live) Readmit(database, backend string) error {
	if err := l.topo.Readmit(database, backend); err != nil {
		if errors.Is(err, router.ErrNotFenced) {
			return &Error{Code: CodeObjectNotInPrerequisiteState, Message: err.Error(),
				Hint: "only a backend SHOW BACKENDS lists as fenced can be readmitted"}
		}
		return &Error{Code: CodeInvalidParameterValue, Message: err.Error(), Hint: "SHOW BACKENDS lists each database's backends"}
	}
	return nil
}

// controlError gives the proxy's control errors their SQLSTATEs.
func controlError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, proxy.ErrNotFound):
		return &Error{Code: CodeInvalidParameterValue, Message: err.Error()}
	case errors.Is(err, proxy.ErrNotPaused), errors.Is(err, proxy.ErrStillRunning):
		return &Error{Code: CodeObjectNotInPrerequisiteState, Message: err.Error()}
	}
	return err
}

// ConnectPrimary opens a connection of its own to the primary of
// database (the healthy one the topology found, else the configured
// one), outside the pools: the backup scheduler's leader lock
// (BackupConfig.Leader) holds one.
func (l *Live) ConnectPrimary(ctx context.Context, database string) (*pgconn.PgConn, error) {
	return l.connectPrimary(ctx, database)
}

// DatabaseQuery runs a statistics query on the primary of database, on a
// connection of its own (not a pooled one: the query must not wait for a
// busy pool, nor leave anything on a server a client gets next).
func (l *Live) DatabaseQuery(ctx context.Context, database, sql string) (Result, error) {
	addr, _ := l.topo.HealthyPrimary(database)
	conn, err := l.pools.Connect(ctx, database, addr)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close(context.Background())
	return queryStats(ctx, conn, sql)
}
