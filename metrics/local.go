package metrics

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Per-session metrics, summed at each scrape.
//
// A Prometheus histogram or counter shared by every client is written by
// every statement of every client: its cache lines move between cores on
// each one. Here each client session records into series of its own, with
// plain loads and stores (one writer at a time: the session), and a scrape
// adds up the live series and what ended sessions left behind. Reading is
// as cheap as the number of sessions; writing touches nothing shared.

// latencyBuckets are the upper bounds of the duration histograms' buckets,
// 0.5 ms to 10 s.
var latencyBuckets = [...]time.Duration{500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
	250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second}

// Histogram is one session's latency histogram, with the buckets of
// pgshield's duration metrics. One writer at a time; any number of readers.
type Histogram struct {
	// nanos first: with the lowest buckets, where most statements fall,
	// it shares the first cache line.
	nanos  atomic.Int64
	counts [len(latencyBuckets) + 1]atomic.Uint64 // the last one: above every bound
}

// Observe records one duration.
func (h *Histogram) Observe(d time.Duration) {
	i := 0
	for i < len(latencyBuckets) && d > latencyBuckets[i] {
		i++
	}
	c := &h.counts[i]
	c.Store(c.Load() + 1)
	h.nanos.Store(h.nanos.Load() + int64(d))
}

// addTo adds h into sum, whose writes the caller serializes.
func (h *Histogram) addTo(sum *Histogram) {
	for i := range h.counts {
		if n := h.counts[i].Load(); n != 0 {
			sum.counts[i].Store(sum.counts[i].Load() + n)
		}
	}
	sum.nanos.Store(sum.nanos.Load() + h.nanos.Load())
}

func (h *Histogram) metric(desc *prometheus.Desc, labels []string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(latencyBuckets))
	var n uint64
	for i, le := range latencyBuckets {
		n += h.counts[i].Load()
		buckets[le.Seconds()] = n
	}
	n += h.counts[len(latencyBuckets)].Load()
	return prometheus.MustNewConstHistogram(desc, n, time.Duration(h.nanos.Load()).Seconds(), buckets, labels...)
}

// Counter is one session's counter. One writer at a time.
type Counter struct{ n atomic.Uint64 }

// Inc adds one.
func (c *Counter) Inc() { c.n.Store(c.n.Load() + 1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.n.Store(c.n.Load() + n) }

func (c *Counter) addTo(sum *Counter) { sum.n.Store(sum.n.Load() + c.n.Load()) }

func (c *Counter) metric(desc *prometheus.Desc, labels []string) prometheus.Metric {
	return prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(c.n.Load()), labels...)
}

// local is what a per-session series provides.
type local[T any] interface {
	*T
	addTo(*T)
	metric(*prometheus.Desc, []string) prometheus.Metric
}

// series is one label set: the sum of the released locals and the live ones.
type series[T any, P local[T]] struct {
	labels []string
	done   T
	live   map[*T]struct{}
}

// sum adds up the released and live series; the family's lock is held.
func (s *series[T, P]) sum() *T {
	sum := new(T)
	P(&s.done).addTo(sum)
	for t := range s.live {
		P(t).addTo(sum)
	}
	return sum
}

// family is a metric whose series are kept per session.
type family[T any, P local[T]] struct {
	desc   *prometheus.Desc
	mu     sync.Mutex
	series map[string]*series[T, P]
	owner  map[*T]*series[T, P]
}

func newFamily[T any, P local[T]](name, help string, labels ...string) *family[T, P] {
	return &family[T, P]{desc: prometheus.NewDesc(name, help, labels, nil),
		series: map[string]*series[T, P]{}, owner: map[*T]*series[T, P]{}}
}

// Local returns a new series of the label values, for one writer; it
// counts until Release.
func (f *family[T, P]) Local(labels ...string) *T {
	key := seriesKey(labels)
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.series[key]
	if !ok {
		s = &series[T, P]{labels: append([]string(nil), labels...), live: map[*T]struct{}{}}
		f.series[key] = s
	}
	t := new(T)
	s.live[t] = struct{}{}
	f.owner[t] = s
	return t
}

// seriesKey is the map key of a label set.
func seriesKey(labels []string) string { return strings.Join(labels, "\xff") }

// Release folds a local series into its label set's total; its writer
// must be done with it. Releasing twice, or nil, does nothing.
func (f *family[T, P]) Release(t *T) {
	if t == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.owner[t]
	if !ok {
		return
	}
	delete(f.owner, t)
	delete(s.live, t)
	P(t).addTo(&s.done)
}

// Describe implements prometheus.Collector.
func (f *family[T, P]) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }

// Collect implements prometheus.Collector: one sample per label set, the
// sum of its released and live series.
func (f *family[T, P]) Collect(ch chan<- prometheus.Metric) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.series {
		ch <- P(s.sum()).metric(f.desc, s.labels)
	}
}

// Histograms is a histogram metric kept per session (see Histogram).
type Histograms = family[Histogram, *Histogram]

// Counters is a counter metric kept per session (see Counter).
type Counters = family[Counter, *Counter]

// Count is the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

// Value is the count.
func (c *Counter) Value() uint64 { return c.n.Load() }

// Sum returns the total of a label set: its released and live series.
func (f *family[T, P]) Sum(labels ...string) *T {
	sum := new(T)
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.series[seriesKey(labels)]; ok {
		return s.sum()
	}
	return sum
}
