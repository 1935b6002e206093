package metrics

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// The alert names and severities of monitoring/prometheus/database-alerts.yml.
const (
	AlertPoolUtilizationHigh = "DatabasePoolUtilizationHigh"
	AlertQueryLatencyP95High = "DatabaseQueryLatencyP95High"
	AlertQueryLatencyP99High = "DatabaseQueryLatencyP99High"
	AlertSlowQueries         = "DatabaseSlowQueries"
	AlertCacheHitRatioLow    = "DatabaseCacheHitRatioLow"
	AlertRollbackRateHigh    = "DatabaseRollbackRateHigh"
	AlertReplicationLagHigh  = "DatabaseReplicationLagHigh"
	AlertLongTransactions    = "DatabaseLongTransactions"
	AlertDeadlocks           = "DatabaseDeadlocks"
	AlertBackendDown         = "DatabaseBackendDown"
	AlertBreakerOpen         = "DatabaseBreakerOpen"

	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// AlertConfig holds the thresholds of SHOW ALERTS. A zero field takes the
// value of DefaultAlertConfig, which matches the shipped Prometheus rules.
type AlertConfig struct {
	PoolUtilization      float64       // active/max above this
	LatencyP95           time.Duration // p95 of database_query_duration_seconds above this
	LatencyP99           time.Duration
	SlowQueriesPerMinute float64 // rate of database_slow_queries_total above this
	CacheHitRatio        float64 // block hits / block reads over Window below this
	RollbackRatio        float64 // rollbacks / transactions over Window above this
	// A ratio counts only over a window with at least this much traffic,
	// so that a cold start (a bulk load right after startup) or a single
	// rolled-back transaction does not raise an alert.
	CacheHitMinBlocks       float64 // block reads (hits and misses)
	RollbackMinTransactions float64
	ReplicaLag              time.Duration
	LongTransactions        int // pgshield_long_transactions above this
	Deadlocks               int // deadlocks in DeadlockWindow above this

	Window         time.Duration // of rates and quantiles
	DeadlockWindow time.Duration
}

// DefaultAlertConfig is the thresholds of database-alerts.yml.
func DefaultAlertConfig() AlertConfig {
	return AlertConfig{
		PoolUtilization:         0.7,
		LatencyP95:              100 * time.Millisecond,
		LatencyP99:              500 * time.Millisecond,
		SlowQueriesPerMinute:    5,
		CacheHitRatio:           0.99,
		RollbackRatio:           0.1,
		CacheHitMinBlocks:       10000,
		RollbackMinTransactions: 100,
		ReplicaLag:              10 * time.Second,
		Window:                  5 * time.Minute,
		DeadlockWindow:          10 * time.Minute,
	}
}

func (c AlertConfig) withDefaults() AlertConfig {
	d := DefaultAlertConfig()
	if c.PoolUtilization <= 0 {
		c.PoolUtilization = d.PoolUtilization
	}
	if c.LatencyP95 <= 0 {
		c.LatencyP95 = d.LatencyP95
	}
	if c.LatencyP99 <= 0 {
		c.LatencyP99 = d.LatencyP99
	}
	if c.SlowQueriesPerMinute <= 0 {
		c.SlowQueriesPerMinute = d.SlowQueriesPerMinute
	}
	if c.CacheHitRatio <= 0 {
		c.CacheHitRatio = d.CacheHitRatio
	}
	if c.RollbackRatio <= 0 {
		c.RollbackRatio = d.RollbackRatio
	}
	if c.CacheHitMinBlocks <= 0 {
		c.CacheHitMinBlocks = d.CacheHitMinBlocks
	}
	if c.RollbackMinTransactions <= 0 {
		c.RollbackMinTransactions = d.RollbackMinTransactions
	}
	if c.ReplicaLag <= 0 {
		c.ReplicaLag = d.ReplicaLag
	}
	if c.Window <= 0 {
		c.Window = d.Window
	}
	if c.DeadlockWindow <= 0 {
		c.DeadlockWindow = d.DeadlockWindow
	}
	return c
}

// ringSlots is how many samples span the longest window: samples closer
// together than longest/ringSlots are evaluated but not kept, so the ring
// stays bounded however often the console asks.
const ringSlots = 120

// pairKey is the (service, database) the rules aggregate by.
type pairKey struct{ service, database string }

func (k pairKey) String() string { return k.service + "/" + k.database }

// alertSample is what the rate conditions need from one gather: cumulative
// counter values and cumulative query-duration bucket counts, summed by
// (service, database). A key missing from a sample counts as zero.
type alertSample struct {
	at         time.Time
	slow       map[pairKey]float64
	deadlocks  map[pairKey]float64
	txAll      map[pairKey]float64
	txRollback map[pairKey]float64
	latency    map[pairKey][]float64 // aligned to Alerter.bounds, +Inf last
	blksHit    map[string]float64    // by database
	blksRead   map[string]float64
}

func newAlertSample() alertSample {
	return alertSample{
		slow:       map[pairKey]float64{},
		deadlocks:  map[pairKey]float64{},
		txAll:      map[pairKey]float64{},
		txRollback: map[pairKey]float64{},
		latency:    map[pairKey][]float64{},
		blksHit:    map[string]float64{},
		blksRead:   map[string]float64{},
	}
}

func (s *alertSample) reset(at time.Time) {
	s.at = at
	clear(s.slow)
	clear(s.deadlocks)
	clear(s.txAll)
	clear(s.txRollback)
	clear(s.latency)
	clear(s.blksHit)
	clear(s.blksRead)
}

// gaugeState is the gauges of the latest gather; they are never kept.
type gaugeState struct {
	active, max map[poolKey]float64
	down        map[string]*backendInfo // by backend address
	lag         map[string]*backendInfo
	breaker     map[string]float64
	longTx      map[pairKey]float64
}

type poolKey struct{ service, database, backend string }

type backendInfo struct {
	role      string
	databases []string
	value     float64
}

func newGaugeState() gaugeState {
	return gaugeState{
		active: map[poolKey]float64{}, max: map[poolKey]float64{},
		down: map[string]*backendInfo{}, lag: map[string]*backendInfo{},
		breaker: map[string]float64{}, longTx: map[pairKey]float64{},
	}
}

// Alerter evaluates the conditions of the shipped Prometheus rules against
// pgshield's own registry, for SHOW ALERTS. It keeps a bounded ring of
// samples covering the longest window and reads only the registry, so it
// costs nothing per proxied statement. It is safe for concurrent use.
//
// There is no "for:" hold: the console shows what holds now, and Since says
// for how long; Prometheus adds the rules' "for:" durations before paging.
type Alerter struct {
	m          *Metrics
	cfg        AlertConfig
	now        func() time.Time
	resolution time.Duration

	mu      sync.Mutex
	ring    []alertSample // fixed length; oldest at ring[head]
	head, n int
	scratch alertSample // the fresh sample, swapped into the ring when kept
	bounds  []float64   // query-duration bucket upper bounds, +Inf last
	since   map[string]time.Time
	firing  []Alert // of the latest evaluation
}

// NewAlerter evaluates m with the thresholds of cfg (zero fields: the
// defaults) on the clock now (nil: time.Now). Build it when m is built:
// counters start at zero with the process, so the Alerter starts with a
// zero sample and rates in the first window are measured from it.
func NewAlerter(m *Metrics, cfg AlertConfig, now func() time.Time) *Alerter {
	if now == nil {
		now = time.Now
	}
	cfg = cfg.withDefaults()
	longest := max(cfg.Window, cfg.DeadlockWindow)
	a := &Alerter{
		m: m, cfg: cfg, now: now,
		resolution: max(longest/ringSlots, time.Millisecond),
		// Samples at least resolution apart: ringSlots+1 of them span the
		// longest window, one more is the baseline just inside it.
		ring:    make([]alertSample, ringSlots+2),
		scratch: newAlertSample(),
		since:   map[string]time.Time{},
	}
	for i := range a.ring {
		a.ring[i] = newAlertSample()
	}
	a.ring[0].at = now()
	a.n = 1
	return a
}

// Sample gathers the registry, keeps the sample when it is due and
// evaluates the conditions, so that Since counts from the first sample that
// saw an alert rather than from the first time someone asked.
func (a *Alerter) Sample() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sampleLocked()
}

// Run samples every interval until ctx ends.
func (a *Alerter) Run(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = a.resolution
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.Sample()
		}
	}
}

// Firing takes a fresh sample and returns the conditions that hold now:
// critical first, then by name and subject.
func (a *Alerter) Firing() []Alert {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sampleLocked()
	return append([]Alert(nil), a.firing...)
}

// samples is how many samples the ring holds (for tests and SHOW ALERTS
// diagnostics).
func (a *Alerter) samples() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

func (a *Alerter) sampleLocked() {
	now := a.now()
	cur := &a.scratch
	cur.reset(now)
	g := newGaugeState()
	// A failed gather still returns what it could collect; evaluate that.
	families, _ := a.m.Registry.Gather()
	for _, mf := range families {
		a.extractLocked(mf, cur, &g)
	}
	a.firing = a.evaluateLocked(cur, &g)
	a.keepLocked(now)
}

// keepLocked stores scratch in the ring when the newest stored sample is
// at least a resolution older, overwriting the oldest when full.
func (a *Alerter) keepLocked(now time.Time) {
	newest := &a.ring[(a.head+a.n-1)%len(a.ring)]
	if now.Sub(newest.at) < a.resolution {
		return
	}
	var slot int
	if a.n < len(a.ring) {
		slot = (a.head + a.n) % len(a.ring)
		a.n++
	} else {
		slot = a.head
		a.head = (a.head + 1) % len(a.ring)
	}
	// Swap, so the evicted sample's maps are reused for the next gather.
	a.ring[slot], a.scratch = a.scratch, a.ring[slot]
}

// baselineLocked is the oldest stored sample no older than window, or nil
// when none is (nothing kept recently: no rate can be told yet).
func (a *Alerter) baselineLocked(now time.Time, window time.Duration) *alertSample {
	from := now.Add(-window)
	for i := 0; i < a.n; i++ {
		s := &a.ring[(a.head+i)%len(a.ring)]
		if !s.at.Before(from) {
			return s
		}
	}
	return nil
}

func dtoLabel(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func pairOfMetric(m *dto.Metric) pairKey {
	return pairKey{dtoLabel(m, "service"), dtoLabel(m, "database")}
}

func dtoGauge(m *dto.Metric) float64 {
	if g := m.GetGauge(); g != nil {
		return g.GetValue()
	}
	return m.GetUntyped().GetValue()
}

func (a *Alerter) extractLocked(mf *dto.MetricFamily, s *alertSample, g *gaugeState) {
	for _, m := range mf.GetMetric() {
		switch mf.GetName() {
		case "database_slow_queries_total":
			s.slow[pairOfMetric(m)] += m.GetCounter().GetValue()
		case "database_deadlocks_total":
			s.deadlocks[pairOfMetric(m)] += m.GetCounter().GetValue()
		case "database_transactions_total":
			k := pairOfMetric(m)
			v := m.GetCounter().GetValue()
			s.txAll[k] += v
			if dtoLabel(m, "outcome") == "rollback" {
				s.txRollback[k] += v
			}
		case "database_query_duration_seconds":
			a.addBucketsLocked(s, pairOfMetric(m), m.GetHistogram())
		case "database_connections_active":
			g.active[poolKey{dtoLabel(m, "service"), dtoLabel(m, "database"), dtoLabel(m, "backend")}] += dtoGauge(m)
		case "database_connections_max":
			g.max[poolKey{dtoLabel(m, "service"), dtoLabel(m, "database"), dtoLabel(m, "backend")}] += dtoGauge(m)
		case "pgshield_backend_up":
			if dtoGauge(m) == 0 {
				addBackend(g.down, m, 0)
			}
		case "pgshield_replica_lag_seconds":
			addBackend(g.lag, m, dtoGauge(m))
		case "pgshield_breaker_state":
			g.breaker[dtoLabel(m, "backend")] = dtoGauge(m)
		case "pgshield_long_transactions":
			g.longTx[pairOfMetric(m)] += dtoGauge(m)
		case "database_blocks_hit_total":
			s.blksHit[dtoLabel(m, "database")] += m.GetCounter().GetValue()
		case "database_blocks_read_total":
			s.blksRead[dtoLabel(m, "database")] += m.GetCounter().GetValue()
		}
	}
}

// addBackend folds the series of one backend address (one per database it
// serves) into one subject, keeping the largest value.
func addBackend(into map[string]*backendInfo, m *dto.Metric, v float64) {
	addr := dtoLabel(m, "backend")
	b := into[addr]
	if b == nil {
		b = &backendInfo{role: dtoLabel(m, "role"), value: v}
		into[addr] = b
	}
	b.value = max(b.value, v)
	if db := dtoLabel(m, "database"); db != "" && !slices.Contains(b.databases, db) {
		b.databases = append(b.databases, db)
		sort.Strings(b.databases)
	}
}

// addBucketsLocked adds a histogram's cumulative bucket counts to the sum
// of its (service, database). Every series of the vector shares the
// buckets of New; one that does not is skipped rather than misread.
func (a *Alerter) addBucketsLocked(s *alertSample, k pairKey, h *dto.Histogram) {
	if h == nil {
		return
	}
	bs := h.GetBucket()
	if a.bounds == nil {
		a.bounds = make([]float64, 0, len(bs)+1)
		for _, b := range bs {
			if !math.IsInf(b.GetUpperBound(), 1) {
				a.bounds = append(a.bounds, b.GetUpperBound())
			}
		}
		a.bounds = append(a.bounds, math.Inf(1))
	}
	finite := 0
	for _, b := range bs {
		if !math.IsInf(b.GetUpperBound(), 1) {
			if finite >= len(a.bounds)-1 || b.GetUpperBound() != a.bounds[finite] {
				return
			}
			finite++
		}
	}
	if finite != len(a.bounds)-1 {
		return
	}
	counts := s.latency[k]
	if counts == nil {
		counts = make([]float64, len(a.bounds))
		s.latency[k] = counts
	}
	i := 0
	for _, b := range bs {
		if !math.IsInf(b.GetUpperBound(), 1) {
			counts[i] += float64(b.GetCumulativeCount())
			i++
		}
	}
	counts[len(counts)-1] += float64(h.GetSampleCount())
}

// counterIncrease is cur-base as Prometheus counts it: a counter that went down
// was reset, and all of cur is new.
func counterIncrease(cur, base float64) float64 {
	if cur < base {
		return cur
	}
	return cur - base
}

// histogramQuantile is PromQL's histogram_quantile on a classic histogram:
// find the bucket holding rank q*count and interpolate linearly inside it,
// the lowest bucket starting at 0; a rank in the +Inf bucket yields the
// highest finite bound. counts are cumulative and aligned to bounds (+Inf
// last). NaN when there is nothing to tell.
func histogramQuantile(q float64, bounds, counts []float64) float64 {
	if len(bounds) < 2 || len(bounds) != len(counts) {
		return math.NaN()
	}
	total := counts[len(counts)-1]
	if !(total > 0) {
		return math.NaN()
	}
	rank := q * total
	b := sort.Search(len(counts)-1, func(i int) bool { return counts[i] >= rank })
	if b == len(counts)-1 {
		return bounds[len(bounds)-2]
	}
	if b == 0 && bounds[0] <= 0 {
		return bounds[0]
	}
	start, end, count := 0.0, bounds[b], counts[b]
	if b > 0 {
		start = bounds[b-1]
		count -= counts[b-1]
		rank -= counts[b-1]
	}
	return start + (end-start)*(rank/count)
}

func (a *Alerter) evaluateLocked(cur *alertSample, g *gaugeState) []Alert {
	c := a.cfg
	var out []Alert
	add := func(name, severity, subject string, value, threshold float64, msg string) {
		out = append(out, Alert{Name: name, Severity: severity, Subject: subject, Value: value, Threshold: threshold, Message: msg})
	}

	for k, limit := range g.max {
		active := g.active[k]
		if limit <= 0 {
			continue // no limit to be near
		}
		if u := active / limit; u > c.PoolUtilization {
			add(AlertPoolUtilizationHigh, SeverityWarning, k.service+"/"+k.database+"@"+k.backend, u, c.PoolUtilization,
				fmt.Sprintf("Pool %s/%s on %s has %.0f of %.0f server connections in use (%s, threshold %s), so clients will soon wait and get 53300 after wait_timeout; SHOW POOLS shows the pool and SHOW TRANSACTIONS what holds its connections.",
					k.service, k.database, k.backend, active, limit, fmtPercent(u), fmtPercent(c.PoolUtilization)))
		}
	}

	win := shortDuration(c.Window)
	if base := a.baselineLocked(cur.at, c.Window); base != nil {
		delta := make([]float64, len(a.bounds))
		for k, counts := range cur.latency {
			prev := base.latency[k]
			for i := range counts {
				var p float64
				if prev != nil {
					p = prev[i]
				}
				delta[i] = counterIncrease(counts[i], p)
				if i > 0 && delta[i] < delta[i-1] {
					delta[i] = delta[i-1] // a reset mid-window; keep it cumulative
				}
			}
			if p95, t := histogramQuantile(0.95, a.bounds, delta), c.LatencyP95.Seconds(); p95 > t {
				add(AlertQueryLatencyP95High, SeverityWarning, k.String(), p95, t,
					fmt.Sprintf("p95 query latency of %s is %s over the last %s (threshold %s); SHOW QUERIES lists the statements by total time.",
						k, fmtSeconds(p95), win, fmtSeconds(t)))
			}
			if p99, t := histogramQuantile(0.99, a.bounds, delta), c.LatencyP99.Seconds(); p99 > t {
				add(AlertQueryLatencyP99High, SeverityCritical, k.String(), p99, t,
					fmt.Sprintf("p99 query latency of %s is %s over the last %s (threshold %s); SHOW SLOW_QUERIES lists the slowest recent statements.",
						k, fmtSeconds(p99), win, fmtSeconds(t)))
			}
		}

		if elapsed := cur.at.Sub(base.at); elapsed > 0 {
			for k, v := range cur.slow {
				perMin := counterIncrease(v, base.slow[k]) / elapsed.Minutes()
				if perMin > c.SlowQueriesPerMinute {
					add(AlertSlowQueries, SeverityWarning, k.String(), perMin, c.SlowQueriesPerMinute,
						fmt.Sprintf("%.1f statements a minute on %s ran past the slow-query threshold over the last %s (threshold %g); SHOW SLOW_QUERIES lists them.",
							perMin, k, win, c.SlowQueriesPerMinute))
				}
			}
		}

		for k, v := range cur.txAll {
			all := counterIncrease(v, base.txAll[k])
			if all < c.RollbackMinTransactions {
				continue // too few to tell a rate from chance
			}
			rb := counterIncrease(cur.txRollback[k], base.txRollback[k])
			if r := rb / all; r > c.RollbackRatio {
				add(AlertRollbackRateHigh, SeverityWarning, k.String(), r, c.RollbackRatio,
					fmt.Sprintf("%s of the %.0f transactions on %s over the last %s rolled back (threshold %s); SHOW STATS counts commits and rollbacks and SHOW QUERIES shows which statements fail.",
						fmtPercent(r), all, k, win, fmtPercent(c.RollbackRatio)))
			}
		}
	}

	if base := a.baselineLocked(cur.at, c.DeadlockWindow); base != nil {
		for k, v := range cur.deadlocks {
			if n := counterIncrease(v, base.deadlocks[k]); n > float64(c.Deadlocks) {
				add(AlertDeadlocks, SeverityWarning, k.String(), n, float64(c.Deadlocks),
					fmt.Sprintf("%.0f statement(s) on %s failed with deadlock_detected (40P01) in the last %s; SHOW LOCKS shows who blocks whom, and taking locks in one order prevents it.",
						n, k, shortDuration(c.DeadlockWindow)))
			}
		}
	}

	if base := a.baselineLocked(cur.at, c.Window); base != nil {
		for db, hit := range cur.blksHit {
			hits := counterIncrease(hit, base.blksHit[db])
			all := hits + counterIncrease(cur.blksRead[db], base.blksRead[db])
			if all < c.CacheHitMinBlocks {
				continue // too little traffic for the ratio to mean anything
			}
			if r := hits / all; r < c.CacheHitRatio {
				add(AlertCacheHitRatioLow, SeverityWarning, db, r, c.CacheHitRatio,
					fmt.Sprintf("Only %s of the %.0f block reads in database %s over the last %s hit shared buffers (threshold %s), so its working set may no longer fit in memory; SHOW HEALTH shows the ratio since the statistics were reset and SHOW TABLES the tables read by sequential scans.",
						fmtPercent(r), all, db, win, fmtPercent(c.CacheHitRatio)))
			}
		}
	}

	for addr, b := range g.lag {
		if t := c.ReplicaLag.Seconds(); b.value > t {
			add(AlertReplicationLagHigh, SeverityWarning, addr, b.value, t,
				fmt.Sprintf("Replica %s of %s is %s behind (threshold %s) and gets no reads past max_replica_lag; SHOW BACKENDS shows its lag.",
					addr, strings.Join(b.databases, ", "), fmtSeconds(b.value), fmtSeconds(t)))
		}
	}

	for k, n := range g.longTx {
		if n > float64(c.LongTransactions) {
			add(AlertLongTransactions, SeverityWarning, k.String(), n, float64(c.LongTransactions),
				fmt.Sprintf("%.0f transaction(s) on %s are open past long_transaction_threshold, holding server connections, locks and vacuum back; SHOW TRANSACTIONS shows their age and the tables they wrote.",
					n, k))
		}
	}

	for addr, b := range g.down {
		role := b.role
		if role == "" {
			role = "backend"
		}
		add(AlertBackendDown, SeverityCritical, addr, b.value, 0,
			fmt.Sprintf("The %s %s of %s fails its health checks; SHOW BACKENDS gives the last error.",
				role, addr, strings.Join(b.databases, ", ")))
	}

	for addr, state := range g.breaker {
		if state == 2 {
			add(AlertBreakerOpen, SeverityCritical, addr, state, 2,
				fmt.Sprintf("The circuit breaker of %s is open, so clients needing it get 08006 at once until a probe succeeds; SHOW BACKENDS gives the last error.", addr))
		}
	}

	sort.Slice(out, func(i, j int) bool {
		x, y := out[i], out[j]
		if (x.Severity == SeverityCritical) != (y.Severity == SeverityCritical) {
			return x.Severity == SeverityCritical
		}
		if x.Name != y.Name {
			return x.Name < y.Name
		}
		return x.Subject < y.Subject
	})

	// Since: the first evaluation of an unbroken run that saw the alert.
	since := make(map[string]time.Time, len(out))
	for i := range out {
		key := out[i].Name + "\x00" + out[i].Subject
		t, ok := a.since[key]
		if !ok {
			t = cur.at
		}
		since[key] = t
		out[i].Since = t
	}
	a.since = since
	return out
}

func fmtPercent(r float64) string { return fmt.Sprintf("%.1f%%", r*100) }

func fmtSeconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}

// shortDuration writes 5m rather than 5m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
