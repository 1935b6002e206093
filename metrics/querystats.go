package metrics

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
)

// Quantile sketches: 1 % relative accuracy, at most 512 bins (about 4 KiB)
// per statement; the lowest bins collapse first, so the tail stays exact.
const (
	sketchAccuracy = 0.01
	sketchBins     = 512
)

// QueryStat is one statement's statistics, keyed by its pg_query
// fingerprint.
type QueryStat struct {
	Fingerprint string
	// Query is the normalized text (literals replaced by $n), safe to show
	// and log.
	Query         string
	Calls         int64
	Rows          int64
	Errors        int64
	Slow          int64
	Total         time.Duration
	Mean          time.Duration
	P50, P95, P99 time.Duration
	Max           time.Duration
	LastSeen      time.Time
}

type queryEntry struct {
	mu     sync.Mutex
	query  string
	calls  int64
	rows   int64
	errors int64
	slow   int64
	total  time.Duration
	max    time.Duration
	last   time.Time
	sketch *ddsketch.DDSketch
	// evicted: the LRU dropped it; handles holding it look it up again.
	evicted atomic.Bool
}

// SlowQuery is a statement that ran longer than the threshold.
type SlowQuery struct {
	At          time.Time
	Fingerprint string
	Query       string // normalized
	Duration    time.Duration
	Service     string
	Database    string
	Backend     string
	Error       string // SQLSTATE, when it failed
}

// QueryStats keeps per-fingerprint statistics for a bounded number of
// statements (least recently run forgotten first) and the most recent slow
// queries. It is safe for concurrent use.
type QueryStats struct {
	threshold atomic.Int64 // time.Duration; the admin console may change it
	log       *zap.Logger
	entries   *lru.Cache[string, *queryEntry]

	mu      sync.Mutex
	slow    []SlowQuery // ring, newest last
	slowMax int
}

// NewQueryStats keeps up to max fingerprints and the last slowKeep slow
// queries; statements slower than threshold are logged through log.
func NewQueryStats(max, slowKeep int, threshold time.Duration, log *zap.Logger) *QueryStats {
	if max <= 0 {
		max = 5000
	}
	if slowKeep <= 0 {
		slowKeep = 200
	}
	c, _ := lru.NewWithEvict[string, *queryEntry](max, func(_ string, e *queryEntry) { e.evicted.Store(true) })
	q := &QueryStats{log: log, entries: c, slowMax: slowKeep}
	q.threshold.Store(int64(threshold))
	return q
}

// Threshold is the slow-query threshold.
func (q *QueryStats) Threshold() time.Duration { return time.Duration(q.threshold.Load()) }

// SetThreshold changes the slow-query threshold (0: nothing is slow).
func (q *QueryStats) SetThreshold(d time.Duration) { q.threshold.Store(int64(d)) }

// Observation is one finished statement.
type Observation struct {
	Fingerprint string
	Query       string // normalized
	Duration    time.Duration
	Rows        int64
	ErrorCode   string // SQLSTATE; "" on success
	Service     string
	Database    string
	Backend     string
	At          time.Time // when it finished; zero: now
}

// Observe records a finished statement and reports whether it was slow.
func (q *QueryStats) Observe(o Observation) (slow bool) {
	return q.record(q.entry(o.Fingerprint, o.Query), o)
}

// entry finds or adds the entry of a fingerprint, marking it recently used.
func (q *QueryStats) entry(fp, query string) *queryEntry {
	e, ok := q.entries.Get(fp)
	if !ok {
		sk, _ := ddsketch.LogCollapsingLowestDenseDDSketch(sketchAccuracy, sketchBins)
		e = &queryEntry{query: query, sketch: sk}
		if prev, found, _ := q.entries.PeekOrAdd(fp, e); found {
			e = prev
		}
	}
	return e
}

// Handles remember the entries of the few statements one caller (a
// client session) ran last, so that recording them skips the LRU, whose
// lock every client shares. Every 64th use of a handle goes through the
// LRU anyway, to keep the statement's place there. Not safe for
// concurrent use: one per caller.
type Handles struct {
	slots [4]handle
	next  int
}

type handle struct {
	fp   string
	e    *queryEntry
	uses uint8
}

// ObserveWith is Observe through the caller's handles.
func (q *QueryStats) ObserveWith(h *Handles, o Observation) (slow bool) {
	var hd *handle
	for i := range h.slots {
		if s := &h.slots[i]; s.e != nil && s.fp == o.Fingerprint {
			hd = s
			break
		}
	}
	if hd == nil {
		hd = &h.slots[h.next]
		h.next = (h.next + 1) % len(h.slots)
		hd.fp, hd.e, hd.uses = o.Fingerprint, nil, 0
	}
	if hd.e == nil || hd.e.evicted.Load() || hd.uses%64 == 0 {
		hd.e = q.entry(o.Fingerprint, o.Query)
	}
	hd.uses++
	return q.record(hd.e, o)
}

// record adds o to e.
func (q *QueryStats) record(e *queryEntry, o Observation) (slow bool) {
	threshold := q.Threshold()
	slow = threshold > 0 && o.Duration >= threshold
	now := o.At
	if now.IsZero() {
		now = time.Now()
	}
	e.mu.Lock()
	e.calls++
	e.rows += o.Rows
	if o.ErrorCode != "" {
		e.errors++
	}
	if slow {
		e.slow++
	}
	e.total += o.Duration
	if o.Duration > e.max {
		e.max = o.Duration
	}
	e.last = now
	_ = e.sketch.Add(o.Duration.Seconds())
	e.mu.Unlock()
	if slow {
		sq := SlowQuery{At: now, Fingerprint: o.Fingerprint, Query: o.Query, Duration: o.Duration,
			Service: o.Service, Database: o.Database, Backend: o.Backend, Error: o.ErrorCode}
		q.mu.Lock()
		if len(q.slow) >= q.slowMax {
			copy(q.slow, q.slow[1:])
			q.slow = q.slow[:len(q.slow)-1]
		}
		q.slow = append(q.slow, sq)
		q.mu.Unlock()
		if q.log != nil {
			// The normalized text only: literal values never reach a log.
			q.log.Warn("slow query", zap.String("fingerprint", o.Fingerprint), zap.String("query", o.Query),
				zap.Duration("duration", o.Duration), zap.String("service", o.Service),
				zap.String("database", o.Database), zap.String("backend", o.Backend), zap.String("error", o.ErrorCode))
		}
	}
	return slow
}

// Top returns up to n statements by total time, highest first.
func (q *QueryStats) Top(n int) []QueryStat {
	keys := q.entries.Keys()
	out := make([]QueryStat, 0, len(keys))
	for _, k := range keys {
		e, ok := q.entries.Peek(k)
		if !ok {
			continue
		}
		out = append(out, e.stat(k))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Total > out[j].Total })
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out
}

func (e *queryEntry) stat(fp string) QueryStat {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := QueryStat{Fingerprint: fp, Query: e.query, Calls: e.calls, Rows: e.rows, Errors: e.errors, Slow: e.slow,
		Total: e.total, Max: e.max, LastSeen: e.last}
	if e.calls > 0 {
		s.Mean = e.total / time.Duration(e.calls)
	}
	if qs, err := e.sketch.GetValuesAtQuantiles([]float64{0.5, 0.95, 0.99}); err == nil {
		s.P50, s.P95, s.P99 = seconds(qs[0]), seconds(qs[1]), seconds(qs[2])
	}
	return s
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// Slow returns the recent slow queries, newest first.
func (q *QueryStats) Slow() []SlowQuery {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]SlowQuery, len(q.slow))
	for i, s := range q.slow {
		out[len(q.slow)-1-i] = s
	}
	return out
}

// Len is the number of fingerprints kept.
func (q *QueryStats) Len() int { return q.entries.Len() }

// Latency is a quantile sketch of durations (1 % relative error, bounded
// memory), safe for concurrent use; for the pool wait percentiles.
type Latency struct {
	mu     sync.Mutex
	sketch *ddsketch.DDSketch
}

// NewLatency returns an empty sketch.
func NewLatency() *Latency {
	sk, _ := ddsketch.LogCollapsingLowestDenseDDSketch(sketchAccuracy, sketchBins)
	return &Latency{sketch: sk}
}

// Add records one duration.
func (l *Latency) Add(d time.Duration) {
	l.mu.Lock()
	_ = l.sketch.Add(d.Seconds())
	l.mu.Unlock()
}

// Quantiles returns the 50th, 95th and 99th percentiles (zero when empty).
func (l *Latency) Quantiles() (p50, p95, p99 time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sketch.IsEmpty() {
		return 0, 0, 0
	}
	qs, err := l.sketch.GetValuesAtQuantiles([]float64{0.5, 0.95, 0.99})
	if err != nil {
		return 0, 0, 0
	}
	return seconds(qs[0]), seconds(qs[1]), seconds(qs[2])
}
