package metrics

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestQueryStatsQuantiles(t *testing.T) {
	q := NewQueryStats(10, 10, time.Second, nil)
	// 1 ms … 1000 ms, once each: p50 ≈ 500 ms, p95 ≈ 950 ms, p99 ≈ 990 ms.
	for i := 1; i <= 1000; i++ {
		q.Observe(Observation{Fingerprint: "f1", Query: "SELECT $1", Duration: time.Duration(i) * time.Millisecond, Rows: 1})
	}
	top := q.Top(5)
	if len(top) != 1 {
		t.Fatalf("top = %d entries, want 1", len(top))
	}
	s := top[0]
	if s.Calls != 1000 || s.Rows != 1000 || s.Slow != 1 {
		t.Errorf("calls %d rows %d slow %d; want 1000, 1000, 1 (only the 1000 ms one reaches the 1 s threshold)", s.Calls, s.Rows, s.Slow)
	}
	for _, c := range []struct {
		name      string
		got, want time.Duration
	}{{"p50", s.P50, 500 * time.Millisecond}, {"p95", s.P95, 950 * time.Millisecond}, {"p99", s.P99, 990 * time.Millisecond}} {
		if d := c.got - c.want; d < -c.want/40 || d > c.want/40 {
			t.Errorf("%s = %v, want %v ± 2.5 %%", c.name, c.got, c.want)
		}
	}
	if s.Mean < 500*time.Millisecond || s.Mean > 501*time.Millisecond || s.Max != time.Second {
		t.Errorf("mean %v max %v", s.Mean, s.Max)
	}
}

func TestQueryStatsBoundedAndOrdered(t *testing.T) {
	q := NewQueryStats(50, 3, 100*time.Millisecond, nil)
	for i := 0; i < 500; i++ {
		q.Observe(Observation{Fingerprint: fmt.Sprint(i), Query: "q", Duration: time.Duration(i) * time.Millisecond})
	}
	if q.Len() != 50 {
		t.Fatalf("kept %d fingerprints, want the bound 50", q.Len())
	}
	top := q.Top(3)
	if top[0].Fingerprint != "499" || top[1].Fingerprint != "498" {
		t.Errorf("top by total time = %s, %s", top[0].Fingerprint, top[1].Fingerprint)
	}
	slow := q.Slow()
	if len(slow) != 3 || slow[0].Fingerprint != "499" {
		t.Errorf("slow = %+v; want the 3 most recent, newest first", slow)
	}
}

func TestSlowQueryLogged(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	q := NewQueryStats(10, 10, 50*time.Millisecond, zap.New(core))
	q.Observe(Observation{Fingerprint: "f", Query: "SELECT * FROM t WHERE id = $1", Duration: 10 * time.Millisecond})
	q.Observe(Observation{Fingerprint: "f", Query: "SELECT * FROM t WHERE id = $1", Duration: 80 * time.Millisecond, Service: "api"})
	entries := logs.FilterMessage("slow query").All()
	if len(entries) != 1 {
		t.Fatalf("%d slow-query log entries, want 1", len(entries))
	}
	if got := entries[0].ContextMap()["query"]; got != "SELECT * FROM t WHERE id = $1" {
		t.Errorf("logged query %v", got)
	}
}

type fakeSource struct{}

func (fakeSource) Pools() []PoolSample {
	return []PoolSample{{Service: "api", Database: "app", Backend: "127.0.0.1:5432", Active: 3, Idle: 2, Waiting: 1, Max: 20}}
}
func (fakeSource) Backends() []BackendSample {
	return []BackendSample{{Database: "app", Backend: "127.0.0.1:5432", Role: "primary", Up: true},
		{Database: "app", Backend: "127.0.0.1:5433", Role: "replica", Up: true, Breaker: 2, LagBytes: 10, LagSeconds: 0.5}}
}
func (fakeSource) PinnedClients() int                { return 4 }
func (fakeSource) ParseCache() (hits, misses uint64) { return 10, 2 }
func (fakeSource) LongTransactions() []LongTxSample {
	return []LongTxSample{{Service: "api", Database: "app", Count: 1}}
}
func (fakeSource) Databases() []DatabaseSample {
	return []DatabaseSample{{Database: "app", CacheHitRatio: 0.995}}
}

// TestRequiredMetrics: every metric of the operations guide is exported
// with its type once it has a sample.
func TestRequiredMetrics(t *testing.T) {
	m := New(fakeSource{})
	m.QueryDuration.Local("api", "app", "b").Observe(seconds(0.01))
	m.QueryErrors.WithLabelValues("api", "app", ErrorClass("40P01")).Inc()
	m.TxDuration.Local("api", "app").Observe(seconds(0.02))
	m.SlowQueries.Local("api", "app").Inc()
	m.Deadlocks.WithLabelValues("api", "app").Inc()
	m.PoolWait.Local("api", "app").Observe(seconds(0.001))
	m.Transactions.Local("api", "app", "commit").Inc()
	m.Rejected("api", "app", "type")
	m.BackupSucceeded("full", time.Unix(1714960800, 0), time.Minute)
	m.BackupSize("full", 2<<20, 1<<20)
	m.WALArchiveLag(3*time.Second, true)
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]dto.MetricType{}
	for _, f := range families {
		got[f.GetName()] = f.GetType()
	}
	for name, typ := range map[string]dto.MetricType{
		"database_connections_active": dto.MetricType_GAUGE, "database_connections_idle": dto.MetricType_GAUGE,
		"database_connections_waiting": dto.MetricType_GAUGE, "database_query_duration_seconds": dto.MetricType_HISTOGRAM,
		"database_query_errors_total": dto.MetricType_COUNTER, "database_transaction_duration_seconds": dto.MetricType_HISTOGRAM,
		"database_slow_queries_total": dto.MetricType_COUNTER, "database_deadlocks_total": dto.MetricType_COUNTER,
		"pgshield_pool_wait_seconds": dto.MetricType_HISTOGRAM, "pgshield_breaker_state": dto.MetricType_GAUGE,
		"pgshield_backend_up": dto.MetricType_GAUGE, "pgshield_replica_lag_seconds": dto.MetricType_GAUGE,
		"pgshield_pinned_clients": dto.MetricType_GAUGE, "pgshield_parse_cache_lookups_total": dto.MetricType_COUNTER,
		"pgshield_backup_last_success_timestamp_seconds": dto.MetricType_GAUGE, "pgshield_backup_size_bytes": dto.MetricType_GAUGE,
		"pgshield_backup_previous_size_bytes": dto.MetricType_GAUGE, "pgshield_backup_duration_seconds": dto.MetricType_GAUGE,
		"pgshield_backup_failures_total": dto.MetricType_COUNTER, "pgshield_wal_archive_lag_seconds": dto.MetricType_GAUGE,
	} {
		if g, ok := got[name]; !ok || g != typ {
			t.Errorf("%s: type %v present %v, want %v", name, g, ok, typ)
		}
	}
	for name := range got {
		if strings.Contains(name, "query_text") {
			t.Errorf("%s: query text must never be a label", name)
		}
	}
	// The shipped alert rules and dashboard use only exported metrics.
	for _, file := range []string{"../monitoring/prometheus/database-alerts.yml", "../monitoring/grafana/pgshield-dashboard.json"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range metricNameRE.FindAllString(string(data), -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")
			if _, ok := got[base]; !ok {
				t.Errorf("%s uses %s, which pgshield does not export", file, name)
			}
		}
	}
}

var metricNameRE = regexp.MustCompile(`\b(?:database|pgshield)_[a-z_]+\b`)

// Handles record into the same entries as Observe, skip nothing, and find
// an entry again after the LRU evicted it.
func TestObserveWithHandles(t *testing.T) {
	q := NewQueryStats(2, 10, time.Second, nil)
	var h Handles
	for i := 0; i < 200; i++ {
		q.ObserveWith(&h, Observation{Fingerprint: "a", Query: "select $1", Duration: time.Millisecond})
		q.Observe(Observation{Fingerprint: "a", Query: "select $1", Duration: time.Millisecond})
	}
	top := q.Top(0)
	if len(top) != 1 || top[0].Calls != 400 {
		t.Fatalf("after 200 calls each way: %+v", top)
	}
	// b and c push a out of the LRU of two.
	q.Observe(Observation{Fingerprint: "b", Query: "b", Duration: time.Millisecond})
	q.Observe(Observation{Fingerprint: "c", Query: "c", Duration: time.Millisecond})
	q.ObserveWith(&h, Observation{Fingerprint: "a", Query: "select $1", Duration: time.Millisecond})
	var calls int64 = -1
	for _, s := range q.Top(0) {
		if s.Fingerprint == "a" {
			calls = s.Calls
		}
	}
	if calls != 1 {
		t.Errorf("a after its eviction: %d calls recorded in the LRU, want 1 (a fresh entry)", calls)
	}
	// More statements than slots still record every call.
	var h2 Handles
	for i := 0; i < 100; i++ {
		q.ObserveWith(&h2, Observation{Fingerprint: string(rune('p' + i%6)), Query: "x", Duration: time.Millisecond})
	}
	if q.Len() != 2 {
		t.Errorf("%d entries kept, want the LRU bound 2", q.Len())
	}
}
