package metrics

import (
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
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

// queryEntry is one statement's statistics, split into stripes so that
// clients running the same statement at once mostly lock and write
// different cache lines; reading adds the stripes up.
type queryEntry struct {
	query   string
	stripes []entryStripe
	// evicted: the LRU dropped it; handles holding it look it up again.
	evicted atomic.Bool
}

type entryStripe struct {
	mu     sync.Mutex
	calls  int64
	rows   int64
	errors int64
	slow   int64
	total  time.Duration
	max    time.Duration
	last   time.Time
	sketch *ddsketch.DDSketch // nil until the stripe's first call
	_      [40]byte           // 128 bytes: a stripe does not share a cache line
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
	stripes   int          // per entry
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
	q := &QueryStats{log: log, entries: c, slowMax: slowKeep, stripes: stripeCount()}
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

// stripeCount is how many stripes a shared statistic has: as many as
// goroutines can run at once, from 2 to 8.
func stripeCount() int { return min(max(runtime.GOMAXPROCS(0), 2), 8) }

// Observe records a finished statement and reports whether it was slow.
func (q *QueryStats) Observe(o Observation) (slow bool) {
	return q.record(q.entry(o.Fingerprint, o.Query), 0, o)
}

// entry finds or adds the entry of a fingerprint, marking it recently used.
func (q *QueryStats) entry(fp, query string) *queryEntry {
	e, ok := q.entries.Get(fp)
	if !ok {
		e = &queryEntry{query: query, stripes: make([]entryStripe, q.stripes)}
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
	// Stripe picks the part of the shared statistics this caller writes
	// (any number: callers with different ones rarely meet).
	Stripe int
	slots  [4]handle
	next   int
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
	return q.record(hd.e, h.Stripe, o)
}

// record adds o to a stripe of e.
func (q *QueryStats) record(e *queryEntry, stripe int, o Observation) (slow bool) {
	threshold := q.Threshold()
	slow = threshold > 0 && o.Duration >= threshold
	now := o.At
	if now.IsZero() {
		now = time.Now()
	}
	st := &e.stripes[uint(stripe)%uint(len(e.stripes))]
	st.mu.Lock()
	st.calls++
	st.rows += o.Rows
	if o.ErrorCode != "" {
		st.errors++
	}
	if slow {
		st.slow++
	}
	st.total += o.Duration
	st.max = max(st.max, o.Duration)
	st.last = now
	if st.sketch == nil {
		st.sketch = newSketch()
	}
	_ = st.sketch.Add(o.Duration.Seconds())
	st.mu.Unlock()
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
	s := QueryStat{Fingerprint: fp, Query: e.query}
	var sk *ddsketch.DDSketch
	for i := range e.stripes {
		st := &e.stripes[i]
		st.mu.Lock()
		s.Calls += st.calls
		s.Rows += st.rows
		s.Errors += st.errors
		s.Slow += st.slow
		s.Total += st.total
		s.Max = max(s.Max, st.max)
		if st.last.After(s.LastSeen) {
			s.LastSeen = st.last
		}
		sk = mergeSketch(sk, st.sketch)
		st.mu.Unlock()
	}
	if s.Calls > 0 {
		s.Mean = s.Total / time.Duration(s.Calls)
	}
	s.P50, s.P95, s.P99 = quantiles(sk)
	return s
}

// newSketch returns an empty sketch. Its index mapping interpolates the
// logarithm cubically between powers of two rather than calling math.Log
// on every value: a few more bins for the same accuracy, and cheaper to
// add to, which every statement does.
func newSketch() *ddsketch.DDSketch {
	m, _ := mapping.NewCubicallyInterpolatedMapping(sketchAccuracy)
	return ddsketch.NewDDSketch(m, store.NewCollapsingLowestDenseStore(sketchBins), store.NewCollapsingLowestDenseStore(sketchBins))
}

// mergeSketch adds from (nil: nothing) to into (nil: a new sketch), and
// returns into. from's lock must be held.
func mergeSketch(into, from *ddsketch.DDSketch) *ddsketch.DDSketch {
	if from == nil {
		return into
	}
	if into == nil {
		return from.Copy()
	}
	_ = into.MergeWith(from)
	return into
}

// quantiles are the 50th, 95th and 99th percentiles of sk (zero when
// empty or nil).
func quantiles(sk *ddsketch.DDSketch) (p50, p95, p99 time.Duration) {
	if sk == nil || sk.IsEmpty() {
		return 0, 0, 0
	}
	qs, err := sk.GetValuesAtQuantiles([]float64{0.5, 0.95, 0.99})
	if err != nil {
		return 0, 0, 0
	}
	return seconds(qs[0]), seconds(qs[1]), seconds(qs[2])
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
// memory), safe for concurrent use; for the pool wait percentiles. Like a
// statement's statistics it is striped: writers name their stripe.
type Latency struct {
	stripes []latencyStripe
}

type latencyStripe struct {
	mu     sync.Mutex
	sketch *ddsketch.DDSketch // nil until the first Add
	_      [48]byte           // a stripe does not share a cache line
}

// NewLatency returns an empty sketch.
func NewLatency() *Latency {
	return &Latency{stripes: make([]latencyStripe, stripeCount())}
}

// Add records one duration in a stripe (any number).
func (l *Latency) Add(stripe int, d time.Duration) {
	st := &l.stripes[uint(stripe)%uint(len(l.stripes))]
	st.mu.Lock()
	if st.sketch == nil {
		st.sketch = newSketch()
	}
	_ = st.sketch.Add(d.Seconds())
	st.mu.Unlock()
}

// Quantiles returns the 50th, 95th and 99th percentiles (zero when empty).
func (l *Latency) Quantiles() (p50, p95, p99 time.Duration) {
	var sk *ddsketch.DDSketch
	for i := range l.stripes {
		st := &l.stripes[i]
		st.mu.Lock()
		sk = mergeSketch(sk, st.sketch)
		st.mu.Unlock()
	}
	return quantiles(sk)
}
