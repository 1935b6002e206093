package metrics

import (
	"context"
	"math"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// stateSource is pgshield's own state as the collectors see it; tests set
// its fields.
type stateSource struct {
	mu       sync.Mutex
	pools    []PoolSample
	backends []BackendSample
	longTx   []LongTxSample
	dbs      []DatabaseSample
}

func (s *stateSource) Pools() []PoolSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]PoolSample(nil), s.pools...)
}

func (s *stateSource) Backends() []BackendSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]BackendSample(nil), s.backends...)
}

func (s *stateSource) PinnedClients() int                { return 0 }
func (s *stateSource) ParseCache() (hits, misses uint64) { return 0, 0 }

func (s *stateSource) LongTransactions() []LongTxSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]LongTxSample(nil), s.longTx...)
}

func (s *stateSource) Databases() []DatabaseSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]DatabaseSample(nil), s.dbs...)
}

func (s *stateSource) set(f func(s *stateSource)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var alertEpoch = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func newTestAlerter(t *testing.T) (*Alerter, *Metrics, *stateSource, *testClock) {
	t.Helper()
	src := &stateSource{}
	m := New(src)
	clk := &testClock{t: alertEpoch}
	return NewAlerter(m, AlertConfig{}, clk.now), m, src, clk
}

func findAlert(alerts []Alert, name, subject string) *Alert {
	for i := range alerts {
		if alerts[i].Name == name && alerts[i].Subject == subject {
			return &alerts[i]
		}
	}
	return nil
}

func countAlerts(alerts []Alert, name string) int {
	n := 0
	for _, a := range alerts {
		if a.Name == name {
			n++
		}
	}
	return n
}

// expectAlert checks a firing alert's severity, value and threshold, and
// that its message points at an admin command.
func expectAlert(t *testing.T, alerts []Alert, name, subject, severity string, value, threshold float64) *Alert {
	t.Helper()
	a := findAlert(alerts, name, subject)
	if a == nil {
		t.Fatalf("%s on %q not firing; firing: %+v", name, subject, alerts)
	}
	if a.Severity != severity {
		t.Errorf("%s severity %q, want %q", name, a.Severity, severity)
	}
	if math.Abs(a.Value-value) > 1e-6*math.Max(1, math.Abs(value)) || a.Threshold != threshold {
		t.Errorf("%s on %q: value %v threshold %v, want %v and %v", name, subject, a.Value, a.Threshold, value, threshold)
	}
	if !regexp.MustCompile(`SHOW [A-Z_]+`).MatchString(a.Message) || strings.Count(a.Message, ". ") > 0 {
		t.Errorf("%s message %q: want one sentence naming an admin command", name, a.Message)
	}
	return a
}

func TestAlertRulesMatchShippedFile(t *testing.T) {
	raw, err := os.ReadFile("../monitoring/prometheus/database-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	// The backup rules are Prometheus's only (the console shows backups
	// with SHOW BACKUPS, SHOW WAL and SHOW SCHEDULE).
	text, _, _ := strings.Cut(string(raw), "- name: pgshield-backups")
	rules := map[string]string{}
	for _, block := range strings.Split(text, "- alert: ")[1:] {
		name, rest, _ := strings.Cut(block, "\n")
		rules[strings.TrimSpace(name)] = rest
	}
	c := DefaultAlertConfig()
	for _, r := range []struct{ name, severity, expr string }{
		{AlertPoolUtilizationHigh, SeverityWarning, "> 0.7"},
		{AlertQueryLatencyP95High, SeverityWarning, "histogram_quantile(0.95"},
		{AlertQueryLatencyP99High, SeverityCritical, "histogram_quantile(0.99"},
		{AlertSlowQueries, SeverityWarning, "* 60 > 5"},
		{AlertCacheHitRatioLow, SeverityWarning, "< 0.99"},
		{AlertRollbackRateHigh, SeverityWarning, "> 0.1"},
		{AlertReplicationLagHigh, SeverityWarning, "> 10"},
		{AlertLongTransactions, SeverityWarning, "> 0"},
		{AlertDeadlocks, SeverityWarning, "[10m])) > 0"},
		{AlertBackendDown, SeverityCritical, "== 0"},
		{AlertBreakerOpen, SeverityCritical, "== 2"},
	} {
		body, ok := rules[r.name]
		if !ok {
			t.Errorf("%s is not in the rules file", r.name)
			continue
		}
		if !strings.Contains(body, "severity: "+r.severity) || !strings.Contains(body, r.expr) {
			t.Errorf("%s: rules file does not have severity %s and %q", r.name, r.severity, r.expr)
		}
		delete(rules, r.name)
	}
	for name := range rules {
		t.Errorf("rule %s has no condition in the Alerter", name)
	}
	if c.PoolUtilization != 0.7 || c.LatencyP95 != 100*time.Millisecond || c.LatencyP99 != 500*time.Millisecond ||
		c.SlowQueriesPerMinute != 5 || c.CacheHitRatio != 0.99 || c.RollbackRatio != 0.1 || c.ReplicaLag != 10*time.Second ||
		c.LongTransactions != 0 || c.Deadlocks != 0 || c.Window != 5*time.Minute || c.DeadlockWindow != 10*time.Minute {
		t.Errorf("defaults %+v differ from the rules file", c)
	}
}

func TestHistogramQuantileAsPrometheus(t *testing.T) {
	inf := math.Inf(1)
	for _, c := range []struct {
		name          string
		q             float64
		bounds, count []float64
		want          float64
	}{
		// The cases of database-alerts.test.yml, which promtool checks.
		{"p95 in 0.25–0.5", 0.95, []float64{0.05, 0.25, 0.5, inf}, []float64{90, 90, 100, 100}, 0.375},
		{"p99 in 0.25–0.5", 0.99, []float64{0.05, 0.25, 0.5, inf}, []float64{90, 90, 100, 100}, 0.475},
		{"p99 in 0.5–1", 0.99, []float64{0.5, 1, inf}, []float64{0, 60, 60}, 0.995},
		{"lowest bucket starts at 0", 0.5, []float64{1, 2, inf}, []float64{10, 10, 10}, 0.5},
		{"rank in +Inf: highest finite bound", 0.99, []float64{1, 2, inf}, []float64{50, 50, 100}, 2},
	} {
		if got := histogramQuantile(c.q, c.bounds, c.count); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	if got := histogramQuantile(0.99, []float64{1, inf}, []float64{0, 0}); !math.IsNaN(got) {
		t.Errorf("no observations: %v, want NaN", got)
	}
}

func TestAlertPoolUtilization(t *testing.T) {
	a, _, src, _ := newTestAlerter(t)
	src.set(func(s *stateSource) {
		s.pools = []PoolSample{
			{Service: "api", Database: "leads", Backend: "pg1:5432", Active: 8, Idle: 2, Max: 10},
			{Service: "analytics", Database: "leads", Backend: "pg1:5432", Active: 6, Idle: 4, Max: 10},
			{Service: "batch", Database: "leads", Backend: "pg1:5432", Active: 0, Max: 0},
		}
	})
	alerts := a.Firing()
	expectAlert(t, alerts, AlertPoolUtilizationHigh, "api/leads@pg1:5432", SeverityWarning, 0.8, 0.7)
	if n := countAlerts(alerts, AlertPoolUtilizationHigh); n != 1 {
		t.Errorf("%d pools over 70 %%, want only api (analytics is 6/10, batch has no limit): %+v", n, alerts)
	}
}

func TestAlertQueryLatency(t *testing.T) {
	a, m, _, clk := newTestAlerter(t)
	// 100 fast queries on one backend: nothing to report.
	for i := 0; i < 100; i++ {
		m.QueryDuration.Local("api", "leads", "pg1:5432").Observe(seconds(0.001))
		m.QueryDuration.Local("analytics", "leads", "pg2:5432").Observe(seconds(0.001))
	}
	clk.advance(time.Minute)
	if alerts := a.Firing(); countAlerts(alerts, AlertQueryLatencyP95High)+countAlerts(alerts, AlertQueryLatencyP99High) != 0 {
		t.Fatalf("fast queries only, yet %+v", alerts)
	}
	// 10 at 2 s on another backend of the same pool: the rules aggregate by
	// service and database, so 110 queries, p99 rank 108.9 lands in the
	// 1–2.5 s bucket: 1 + 1.5 × 8.9/10 s; p95 (rank 104.5): 1 + 1.5 × 4.5/10.
	for i := 0; i < 10; i++ {
		m.QueryDuration.Local("api", "leads", "pg2:5432").Observe(seconds(2))
	}
	clk.advance(time.Minute)
	alerts := a.Firing()
	expectAlert(t, alerts, AlertQueryLatencyP99High, "api/leads", SeverityCritical, 2.335, 0.5)
	expectAlert(t, alerts, AlertQueryLatencyP95High, "api/leads", SeverityWarning, 1.675, 0.1)
	if n := countAlerts(alerts, AlertQueryLatencyP99High) + countAlerts(alerts, AlertQueryLatencyP95High); n != 2 {
		t.Errorf("%d latency alerts, want one p95 and one p99 for api/leads only: %+v", n, alerts)
	}

	// Six minutes of fast queries later the slow ones are out of the 5 m
	// window.
	for i := 0; i < 6; i++ {
		m.QueryDuration.Local("api", "leads", "pg1:5432").Observe(seconds(0.001))
		clk.advance(time.Minute)
		a.Sample()
	}
	if alerts := a.Firing(); countAlerts(alerts, AlertQueryLatencyP99High) != 0 {
		t.Errorf("p99 still firing after the slow queries left the window: %+v", alerts)
	}
}

func TestAlertSlowQueries(t *testing.T) {
	a, m, _, clk := newTestAlerter(t)
	for i := 0; i < 5; i++ {
		m.SlowQueries.Local("api", "leads").Add(10)
		m.SlowQueries.Local("analytics", "leads").Add(1)
		clk.advance(time.Minute)
		a.Sample()
	}
	alerts := a.Firing()
	expectAlert(t, alerts, AlertSlowQueries, "api/leads", SeverityWarning, 10, 5)
	if findAlert(alerts, AlertSlowQueries, "analytics/leads") != nil {
		t.Errorf("analytics at 1 a minute fires: %+v", alerts)
	}
}

func TestAlertRollbackRatio(t *testing.T) {
	a, m, _, clk := newTestAlerter(t)
	m.Transactions.Local("api", "leads", "commit").Add(160)
	m.Transactions.Local("api", "leads", "rollback").Add(40)
	m.Transactions.Local("analytics", "leads", "commit").Add(200)
	m.Transactions.Local("analytics", "leads", "rollback")
	// Below the minimum of transactions a ratio does not count.
	m.Transactions.Local("batch-operations", "leads", "commit").Add(8)
	m.Transactions.Local("batch-operations", "leads", "rollback").Add(2)
	clk.advance(time.Minute)
	alerts := a.Firing()
	expectAlert(t, alerts, AlertRollbackRateHigh, "api/leads", SeverityWarning, 0.2, 0.1)
	if findAlert(alerts, AlertRollbackRateHigh, "analytics/leads") != nil {
		t.Errorf("0 rollbacks of 200 fires: %+v", alerts)
	}
	if findAlert(alerts, AlertRollbackRateHigh, "batch-operations/leads") != nil {
		t.Errorf("2 rollbacks of 10 transactions fire: %+v", alerts)
	}
}

func TestAlertDeadlocks(t *testing.T) {
	a, m, _, clk := newTestAlerter(t)
	clk.advance(time.Minute)
	if alerts := a.Firing(); countAlerts(alerts, AlertDeadlocks) != 0 {
		t.Fatalf("no deadlock yet: %+v", alerts)
	}
	m.Deadlocks.WithLabelValues("api", "leads").Inc()
	clk.advance(time.Minute)
	first := expectAlert(t, a.Firing(), AlertDeadlocks, "api/leads", SeverityWarning, 1, 0).Since
	for i := 1; i <= 11; i++ {
		clk.advance(time.Minute)
		alerts := a.Firing()
		d := findAlert(alerts, AlertDeadlocks, "api/leads")
		switch {
		case i <= 8 && d == nil:
			t.Fatalf("%d min after the deadlock it no longer fires", i)
		case i <= 8 && !d.Since.Equal(first):
			t.Fatalf("Since moved from %v to %v while firing", first, d.Since)
		case i >= 10 && d != nil:
			t.Fatalf("%d min after the deadlock it still fires: %+v", i, d)
		}
	}
}

// The cache hit ratio is taken over the window, and only once the window
// holds enough block reads: a bulk load right after startup reads its
// blocks from disk without the working set being too large.
func TestAlertCacheHitRatio(t *testing.T) {
	a, _, src, clk := newTestAlerter(t)
	var leadsHit, leadsRead, billingHit, billingRead uint64
	tick := func(dHit, dRead uint64) {
		leadsHit, leadsRead = leadsHit+dHit, leadsRead+dRead
		billingHit, billingRead = billingHit+99_900, billingRead+100
		src.set(func(s *stateSource) {
			s.dbs = []DatabaseSample{
				{Database: "leads", BlocksHit: leadsHit, BlocksRead: leadsRead},
				{Database: "billing", BlocksHit: billingHit, BlocksRead: billingRead},
			}
		})
		clk.advance(time.Minute)
		a.Sample()
	}
	tick(0, 0)
	tick(200, 5000) // the cold start: mostly misses, but few of them
	if alerts := a.Firing(); countAlerts(alerts, AlertCacheHitRatioLow) != 0 {
		t.Fatalf("fires after a cold start of 5,200 block reads: %+v", alerts)
	}
	for i := 0; i < 6; i++ {
		tick(95_000, 5_000)
	}
	alerts := a.Firing()
	expectAlert(t, alerts, AlertCacheHitRatioLow, "leads", SeverityWarning, 0.95, 0.99)
	if findAlert(alerts, AlertCacheHitRatioLow, "billing") != nil {
		t.Errorf("billing at 99.9 %% fires: %+v", alerts)
	}
	for i := 0; i < 6; i++ {
		tick(100_000, 0) // the working set fits again
	}
	if alerts := a.Firing(); findAlert(alerts, AlertCacheHitRatioLow, "leads") != nil {
		t.Errorf("still fires once the last window hit every block: %+v", alerts)
	}
}

func TestAlertBackendGauges(t *testing.T) {
	a, _, src, _ := newTestAlerter(t)
	src.set(func(s *stateSource) {
		s.backends = []BackendSample{
			{Database: "leads", Backend: "pg1:5432", Role: "primary", Up: true, Breaker: 2},
			{Database: "leads", Backend: "pg2:5432", Role: "replica", Up: false, Breaker: 1, LagSeconds: 20},
			{Database: "leads", Backend: "pg3:5432", Role: "replica", Up: true, LagSeconds: 5},
		}
		s.longTx = []LongTxSample{{Service: "api", Database: "leads", Count: 1}, {Service: "analytics", Database: "leads", Count: 0}}
	})
	alerts := a.Firing()
	expectAlert(t, alerts, AlertBreakerOpen, "pg1:5432", SeverityCritical, 2, 2)
	expectAlert(t, alerts, AlertBackendDown, "pg2:5432", SeverityCritical, 0, 0)
	expectAlert(t, alerts, AlertReplicationLagHigh, "pg2:5432", SeverityWarning, 20, 10)
	expectAlert(t, alerts, AlertLongTransactions, "api/leads", SeverityWarning, 1, 0)
	for _, c := range []struct{ name, subject string }{
		{AlertBreakerOpen, "pg2:5432"}, // half-open
		{AlertBackendDown, "pg1:5432"},
		{AlertReplicationLagHigh, "pg3:5432"},
		{AlertLongTransactions, "analytics/leads"},
	} {
		if findAlert(alerts, c.name, c.subject) != nil {
			t.Errorf("%s fires for %s: %+v", c.name, c.subject, alerts)
		}
	}
	if len(alerts) != 4 {
		t.Errorf("%d alerts, want 4: %+v", len(alerts), alerts)
	}

	// The order: critical first, then by name and subject.
	var got []string
	for _, al := range alerts {
		got = append(got, al.Name+" "+al.Subject)
	}
	want := []string{
		"DatabaseBackendDown pg2:5432", "DatabaseBreakerOpen pg1:5432",
		"DatabaseLongTransactions api/leads", "DatabaseReplicationLagHigh pg2:5432",
	}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("order %q, want %q", got, want)
	}
}

func TestAlertSinceHoldsWhileFiringAndResets(t *testing.T) {
	a, _, src, clk := newTestAlerter(t)
	pool := func(active int) {
		src.set(func(s *stateSource) {
			s.pools = []PoolSample{{Service: "api", Database: "leads", Backend: "pg1:5432", Active: active, Max: 10}}
		})
	}
	const subject = "api/leads@pg1:5432"
	pool(8)
	clk.advance(time.Minute)
	start := clk.now()
	for i := 0; i < 3; i++ {
		al := findAlert(a.Firing(), AlertPoolUtilizationHigh, subject)
		if al == nil || !al.Since.Equal(start) {
			t.Fatalf("after %d min: %+v, want firing since %v", i, al, start)
		}
		clk.advance(time.Minute)
	}
	pool(5)
	if al := findAlert(a.Firing(), AlertPoolUtilizationHigh, subject); al != nil {
		t.Fatalf("5/10 still fires: %+v", al)
	}
	clk.advance(time.Minute)
	pool(9)
	again := clk.now()
	al := findAlert(a.Firing(), AlertPoolUtilizationHigh, subject)
	if al == nil || !al.Since.Equal(again) {
		t.Fatalf("firing again: %+v, want Since reset to %v", al, again)
	}
}

func TestAlertRingBounded(t *testing.T) {
	a, m, _, clk := newTestAlerter(t)
	capacity := len(a.ring)
	// 25 minutes sampled every second: far more samples than fit.
	for i := 0; i < 1500; i++ {
		clk.advance(time.Second)
		a.Sample()
	}
	if n := a.samples(); n != capacity {
		t.Fatalf("ring holds %d samples, want it full at its bound %d", n, capacity)
	}
	// Asking many times within one resolution keeps nothing more.
	oldest := a.ring[a.head].at
	for i := 0; i < 50; i++ {
		clk.advance(time.Millisecond)
		a.Firing()
	}
	if n := a.samples(); n != capacity {
		t.Fatalf("ring holds %d samples, want %d", n, capacity)
	}
	if got := a.ring[a.head].at; !got.Equal(oldest) {
		t.Errorf("frequent asking evicted samples: oldest %v, was %v", got, oldest)
	}
	// The bounded ring still covers the 10 m deadlock window.
	m.Deadlocks.WithLabelValues("api", "leads").Inc()
	for i := 0; i < 9*60; i++ {
		clk.advance(time.Second)
		a.Sample()
	}
	if findAlert(a.Firing(), AlertDeadlocks, "api/leads") == nil {
		t.Fatal("a deadlock 9 minutes ago no longer fires: the ring does not cover the window")
	}
	for i := 0; i < 2*60; i++ {
		clk.advance(time.Second)
		a.Sample()
	}
	if al := findAlert(a.Firing(), AlertDeadlocks, "api/leads"); al != nil {
		t.Fatalf("a deadlock 11 minutes ago still fires: %+v", al)
	}
}

func TestAlertConcurrentUse(t *testing.T) {
	a, m, src, clk := newTestAlerter(t)
	src.set(func(s *stateSource) {
		s.backends = []BackendSample{{Database: "leads", Backend: "pg1:5432", Role: "primary", Up: true, Breaker: 2}}
	})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		a.Run(ctx, time.Millisecond)
		close(ran)
	}()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				m.QueryDuration.Local("api", "leads", "pg1:5432").Observe(seconds(0.002))
				clk.advance(time.Second)
				if al := findAlert(a.Firing(), AlertBreakerOpen, "pg1:5432"); al == nil {
					t.Error("breaker alert missing")
					return
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	<-ran
}
