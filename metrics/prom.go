// Package metrics holds pgshield's Prometheus collectors (with the metric
// names of the operations guide), per-fingerprint query statistics with
// latency quantiles from a DDSketch, and the slow-query log. It imports no
// other pgshield package: what it reports comes in through Source and the
// Observe methods.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// PoolSample is one pool's state.
type PoolSample struct {
	Service, Database, Backend string
	Active, Idle, Waiting, Max int
}

// BackendSample is one backend's state.
type BackendSample struct {
	Database, Backend, Role string
	Up                      bool
	Breaker                 int // 0 closed, 1 half-open, 2 open
	LagBytes                float64
	LagSeconds              float64
}

// LongTxSample counts the transactions of a pool open past
// long_transaction_threshold.
type LongTxSample struct {
	Service, Database string
	Count             int
}

// DatabaseSample is what a database's statistics views say.
type DatabaseSample struct {
	Database      string
	CacheHitRatio float64 // blks_hit / (blks_hit + blks_read), pg_stat_database
	// BlocksHit and BlocksRead are pg_stat_database's blks_hit and
	// blks_read, for a ratio over a window that ignores a cold start.
	BlocksHit, BlocksRead uint64
}

// Source reports the state behind the gauges, read at each scrape.
type Source interface {
	Pools() []PoolSample
	Backends() []BackendSample
	PinnedClients() int
	ParseCache() (hits, misses uint64)
	LongTransactions() []LongTxSample
	Databases() []DatabaseSample
}

// Metrics is every collector, on a registry of its own.
type Metrics struct {
	Registry *prometheus.Registry

	// Written by every statement or transaction: kept per session.
	QueryDuration *Histograms // service, database, backend
	TxDuration    *Histograms // service, database
	PoolWait      *Histograms // service, database
	SlowQueries   *Counters   // service, database
	Transactions  *Counters   // service, database, outcome (commit, rollback)

	// Written on errors only.
	QueryErrors *prometheus.CounterVec // service, database, class (SQLSTATE class)
	Deadlocks   *prometheus.CounterVec // service, database
	Retries     *prometheus.CounterVec // service, database, code
	// PolicyRejections counts statements the policy refused, by the kind
	// of rule (type, required, pattern, row, firewall, copy …).
	PolicyRejections *prometheus.CounterVec // service, database, kind
	// DecryptFailures counts values of encrypted columns that did not
	// decrypt.
	DecryptFailures *prometheus.CounterVec // database, table, column

	// Backups (admin's backup jobs, through BackupSucceeded, BackupSize,
	// BackupFailed and WALArchiveLag). kind: full, incremental, verify,
	// retention; wal for the failures of WAL archiving. Gauges of the
	// last backup rather than histograms: a job that runs once a day
	// gives a histogram nothing to spread, and the alerts compare the
	// last value with the one before.
	BackupLastSuccess  *prometheus.GaugeVec   // kind
	BackupSizeBytes    *prometheus.GaugeVec   // kind
	BackupPreviousSize *prometheus.GaugeVec   // kind
	BackupDuration     *prometheus.GaugeVec   // kind
	BackupFailures     *prometheus.CounterVec // kind
	// WALArchiveLagSeconds has no labels; its one series exists only
	// while this pgshield archives WAL (the leader of the schedule).
	WALArchiveLagSeconds *prometheus.GaugeVec
}

// New registers every collector; src provides the gauges (nil: none).
func New(src Source) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.QueryDuration = newFamily[Histogram]("database_query_duration_seconds",
		"Time from a statement reaching the server to its completion, as seen by pgshield.", "service", "database", "backend")
	m.QueryErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "database_query_errors_total", Help: "Statements that failed, by SQLSTATE class (first two characters)."},
		[]string{"service", "database", "class"})
	m.TxDuration = newFamily[Histogram]("database_transaction_duration_seconds",
		"Duration of transactions (explicit blocks and autocommit statements).", "service", "database")
	m.SlowQueries = newFamily[Counter]("database_slow_queries_total",
		"Statements that ran longer than the slow-query threshold.", "service", "database")
	m.Deadlocks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "database_deadlocks_total", Help: "Statements that failed with deadlock_detected (40P01)."},
		[]string{"service", "database"})
	m.PoolWait = newFamily[Histogram]("pgshield_pool_wait_seconds", "Time clients waited for a server connection.", "service", "database")
	m.Retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgshield_statement_retries_total", Help: "Statements run again after a serialization failure or deadlock."},
		[]string{"service", "database", "code"})
	m.PolicyRejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgshield_policy_rejections_total", Help: "Statements the policy (validation rules, firewall) refused, by the kind of rule."},
		[]string{"service", "database", "kind"})
	m.DecryptFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgshield_decrypt_failures_total", Help: "Values of encrypted columns that did not decrypt (the statement failed with XX001)."},
		[]string{"database", "table", "column"})
	m.Transactions = newFamily[Counter]("database_transactions_total",
		"Transactions ended, by outcome: commit, or rollback (explicit or by error).", "service", "database", "outcome")
	m.BackupLastSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgshield_backup_last_success_timestamp_seconds",
		Help: "When the last backup job of the kind that succeeded ended (Unix time); for full and incremental from the repository's catalog, 0 when it has none."},
		[]string{"kind"})
	m.BackupSizeBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgshield_backup_size_bytes", Help: "Size in the repository of the newest backup of the kind."}, []string{"kind"})
	m.BackupPreviousSize = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgshield_backup_previous_size_bytes", Help: "Size of the backup of the kind before the newest; 0 when there is none."}, []string{"kind"})
	m.BackupDuration = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgshield_backup_duration_seconds", Help: "How long the last backup job of the kind that succeeded took."}, []string{"kind"})
	m.BackupFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgshield_backup_failures_total", Help: "Backup jobs that failed, by kind (wal: WAL archiving stopped on an error)."}, []string{"kind"})
	// Each kind at 0 from the start, so that increase() sees the first
	// failure.
	for _, k := range []string{"full", "incremental", "verify", "retention", "wal"} {
		m.BackupFailures.WithLabelValues(k)
	}
	m.WALArchiveLagSeconds = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgshield_wal_archive_lag_seconds",
		Help: "How far WAL archiving is behind the primary; only on the pgshield that archives (the leader of the backup schedule)."}, nil)
	m.Registry.MustRegister(m.QueryDuration, m.QueryErrors, m.TxDuration, m.SlowQueries, m.Deadlocks, m.PoolWait, m.Retries, m.PolicyRejections, m.DecryptFailures, m.Transactions,
		m.BackupLastSuccess, m.BackupSizeBytes, m.BackupPreviousSize, m.BackupDuration, m.BackupFailures, m.WALArchiveLagSeconds,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if src != nil {
		m.Registry.MustRegister(&stateCollector{src: src})
	}
	return m
}

var (
	descActive   = prometheus.NewDesc("database_connections_active", "Server connections in use by clients.", []string{"service", "database", "backend"}, nil)
	descIdle     = prometheus.NewDesc("database_connections_idle", "Idle server connections in the pool.", []string{"service", "database", "backend"}, nil)
	descWaiting  = prometheus.NewDesc("database_connections_waiting", "Clients waiting for a server connection.", []string{"service", "database", "backend"}, nil)
	descMax      = prometheus.NewDesc("database_connections_max", "Pool size limit (max_connections of the service).", []string{"service", "database", "backend"}, nil)
	descUp       = prometheus.NewDesc("pgshield_backend_up", "1 when the backend passes its health checks.", []string{"database", "backend", "role"}, nil)
	descBreaker  = prometheus.NewDesc("pgshield_breaker_state", "Circuit breaker of the backend: 0 closed, 1 half-open, 2 open.", []string{"backend"}, nil)
	descLagBytes = prometheus.NewDesc("pgshield_replica_lag_bytes", "WAL bytes a replica has not replayed yet.", []string{"database", "backend"}, nil)
	descLagSecs  = prometheus.NewDesc("pgshield_replica_lag_seconds", "How far a replica's replay is behind in time.", []string{"database", "backend"}, nil)
	descPinned   = prometheus.NewDesc("pgshield_pinned_clients", "Transaction-mode clients pinned to a server by session state.", nil, nil)
	descParse    = prometheus.NewDesc("pgshield_parse_cache_lookups_total", "SQL classification cache lookups, by result.", []string{"result"}, nil)
	descLongTx   = prometheus.NewDesc("pgshield_long_transactions", "Transactions open past long_transaction_threshold.", []string{"service", "database"}, nil)
	descHitRatio = prometheus.NewDesc("database_cache_hit_ratio", "Share of block reads served from shared buffers (pg_stat_database).", []string{"database"}, nil)
	descBlksHit  = prometheus.NewDesc("database_blocks_hit_total", "Block reads served from shared buffers (pg_stat_database.blks_hit, on the primary).", []string{"database"}, nil)
	descBlksRead = prometheus.NewDesc("database_blocks_read_total", "Block reads that missed shared buffers (pg_stat_database.blks_read, on the primary).", []string{"database"}, nil)
)

// stateCollector turns Source into gauges at each scrape.
type stateCollector struct{ src Source }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descActive, descIdle, descWaiting, descMax, descUp, descBreaker, descLagBytes, descLagSecs, descPinned, descParse, descLongTx, descHitRatio, descBlksHit, descBlksRead} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.src.Pools() {
		l := []string{p.Service, p.Database, p.Backend}
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(p.Active), l...)
		ch <- prometheus.MustNewConstMetric(descIdle, prometheus.GaugeValue, float64(p.Idle), l...)
		ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(p.Waiting), l...)
		ch <- prometheus.MustNewConstMetric(descMax, prometheus.GaugeValue, float64(p.Max), l...)
	}
	breakers := map[string]bool{}
	for _, b := range c.src.Backends() {
		up := 0.0
		if b.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, b.Database, b.Backend, b.Role)
		if !breakers[b.Backend] {
			breakers[b.Backend] = true
			ch <- prometheus.MustNewConstMetric(descBreaker, prometheus.GaugeValue, float64(b.Breaker), b.Backend)
		}
		if b.Role == "replica" {
			ch <- prometheus.MustNewConstMetric(descLagBytes, prometheus.GaugeValue, b.LagBytes, b.Database, b.Backend)
			ch <- prometheus.MustNewConstMetric(descLagSecs, prometheus.GaugeValue, b.LagSeconds, b.Database, b.Backend)
		}
	}
	ch <- prometheus.MustNewConstMetric(descPinned, prometheus.GaugeValue, float64(c.src.PinnedClients()))
	for _, l := range c.src.LongTransactions() {
		ch <- prometheus.MustNewConstMetric(descLongTx, prometheus.GaugeValue, float64(l.Count), l.Service, l.Database)
	}
	for _, d := range c.src.Databases() {
		ch <- prometheus.MustNewConstMetric(descHitRatio, prometheus.GaugeValue, d.CacheHitRatio, d.Database)
		ch <- prometheus.MustNewConstMetric(descBlksHit, prometheus.CounterValue, float64(d.BlocksHit), d.Database)
		ch <- prometheus.MustNewConstMetric(descBlksRead, prometheus.CounterValue, float64(d.BlocksRead), d.Database)
	}
	hits, misses := c.src.ParseCache()
	ch <- prometheus.MustNewConstMetric(descParse, prometheus.CounterValue, float64(hits), "hit")
	ch <- prometheus.MustNewConstMetric(descParse, prometheus.CounterValue, float64(misses), "miss")
}

// ErrorClass is the SQLSTATE class label of a code.
func ErrorClass(code string) string {
	if len(code) < 2 {
		return "XX"
	}
	return code[:2]
}

// DecryptFailed counts a value of an encrypted column that did not
// decrypt.
func (m *Metrics) DecryptFailed(database, table, column string) {
	m.DecryptFailures.WithLabelValues(database, table, column).Inc()
}

// Rejected counts a statement the policy refused.
func (m *Metrics) Rejected(service, database, kind string) {
	m.PolicyRejections.WithLabelValues(service, database, kind).Inc()
}

// BackupSucceeded records the last backup job of kind that succeeded:
// when it ended (zero: none, recorded as 0) and how long it took.
func (m *Metrics) BackupSucceeded(kind string, at time.Time, took time.Duration) {
	ts := 0.0
	if !at.IsZero() {
		ts = float64(at.UnixNano()) / 1e9
	}
	m.BackupLastSuccess.WithLabelValues(kind).Set(ts)
	if !at.IsZero() {
		m.BackupDuration.WithLabelValues(kind).Set(took.Seconds())
	}
}

// BackupSize records the size of the newest backup of kind and of the one
// before it (0: none).
func (m *Metrics) BackupSize(kind string, size, previous int64) {
	m.BackupSizeBytes.WithLabelValues(kind).Set(float64(size))
	m.BackupPreviousSize.WithLabelValues(kind).Set(float64(previous))
}

// BackupFailed counts a backup job of kind that failed.
func (m *Metrics) BackupFailed(kind string) { m.BackupFailures.WithLabelValues(kind).Inc() }

// WALArchiveLag records how far WAL archiving is behind; archiving false
// removes the series (this pgshield no longer archives).
func (m *Metrics) WALArchiveLag(lag time.Duration, archiving bool) {
	if !archiving {
		m.WALArchiveLagSeconds.Reset()
		return
	}
	m.WALArchiveLagSeconds.WithLabelValues().Set(lag.Seconds())
}
