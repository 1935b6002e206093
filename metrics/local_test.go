package metrics

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// gatherOne returns the only metric of family name with the label values.
func gatherOne(t *testing.T, reg *prometheus.Registry, name string, labels ...string) *dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for i, l := range m.GetLabel() {
				if l.GetValue() != labels[i] {
					continue metrics
				}
			}
			return m
		}
	}
	t.Fatalf("%s%v not gathered", name, labels)
	return nil
}

// Per-session histograms, some released and some live, add up to exactly
// what one Prometheus histogram with the same buckets reports for the same
// observations, bucket bounds included.
func TestHistogramsMatchPrometheus(t *testing.T) {
	bounds := make([]float64, len(latencyBuckets))
	for i, b := range latencyBuckets {
		bounds[i] = b.Seconds()
	}
	want := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "want", Buckets: bounds})
	fam := newFamily[Histogram]("got", "test", "service")
	reg := prometheus.NewRegistry()
	reg.MustRegister(want, fam)

	durations := []time.Duration{0, time.Microsecond, 500 * time.Microsecond, 500*time.Microsecond + 1, time.Millisecond,
		42 * time.Millisecond, time.Second, 10 * time.Second, 10*time.Second + 1, time.Minute}
	var locals []*Histogram
	for i := 0; i < 5; i++ {
		locals = append(locals, fam.Local("api"))
	}
	other := fam.Local("analytics")
	for i, d := range durations {
		locals[i%len(locals)].Observe(d)
		want.Observe(d.Seconds())
		other.Observe(time.Hour)
	}
	fam.Release(locals[0])
	fam.Release(locals[1])
	fam.Release(locals[1]) // twice: nothing more
	fam.Release(nil)

	wantH := gatherOne(t, reg, "want").GetHistogram()
	gotH := gatherOne(t, reg, "got", "api").GetHistogram()
	if gotH.GetSampleCount() != wantH.GetSampleCount() || gotH.GetSampleSum() != wantH.GetSampleSum() {
		t.Errorf("count %d sum %v, want %d and %v", gotH.GetSampleCount(), gotH.GetSampleSum(), wantH.GetSampleCount(), wantH.GetSampleSum())
	}
	if len(gotH.GetBucket()) != len(wantH.GetBucket()) {
		t.Fatalf("%d buckets, want %d", len(gotH.GetBucket()), len(wantH.GetBucket()))
	}
	for i, b := range wantH.GetBucket() {
		g := gotH.GetBucket()[i]
		if g.GetUpperBound() != b.GetUpperBound() || g.GetCumulativeCount() != b.GetCumulativeCount() {
			t.Errorf("bucket le=%v: %d, want le=%v: %d", g.GetUpperBound(), g.GetCumulativeCount(), b.GetUpperBound(), b.GetCumulativeCount())
		}
	}
	if n := fam.Sum("api").Count(); n != uint64(len(durations)) {
		t.Errorf("Sum(api).Count() = %d, want %d", n, len(durations))
	}
	if n := fam.Sum("analytics").Count(); n != uint64(len(durations)) {
		t.Errorf("Sum(analytics).Count() = %d, want %d", n, len(durations))
	}
	if n := fam.Sum("nobody").Count(); n != 0 {
		t.Errorf("Sum of an unknown label set = %d", n)
	}
}

// Writers on their own series, sessions ending and scrapes, all at once:
// no count is lost or counted twice, and the counter never goes back.
func TestCountersConcurrent(t *testing.T) {
	fam := newFamily[Counter]("c", "test", "outcome")
	reg := prometheus.NewRegistry()
	reg.MustRegister(fam)
	const writers, sessions, incs = 4, 50, 100
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := 0; s < sessions; s++ {
				c := fam.Local("commit")
				for i := 0; i < incs; i++ {
					c.Inc()
				}
				c.Add(2)
				fam.Release(c)
			}
		}()
	}
	stop := make(chan struct{})
	scraped := make(chan error, 1)
	go func() {
		last := 0.0
		for {
			select {
			case <-stop:
				scraped <- nil
				return
			default:
			}
			families, err := reg.Gather()
			if err != nil {
				scraped <- err
				return
			}
			for _, f := range families {
				for _, m := range f.GetMetric() {
					v := m.GetCounter().GetValue()
					if v < last {
						t.Errorf("counter went back from %v to %v", last, v)
					}
					last = v
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	if err := <-scraped; err != nil {
		t.Fatal(err)
	}
	want := float64(writers * sessions * (incs + 2))
	if v := gatherOne(t, reg, "c", "commit").GetCounter().GetValue(); v != want {
		t.Errorf("counter %v, want %v", v, want)
	}
}

// A statement recorded through different stripes is one entry whose
// figures are the sums (calls, rows, errors, time), the maximum and the
// quantiles of all of them.
func TestQueryStatsStripes(t *testing.T) {
	q := NewQueryStats(10, 10, time.Hour, nil)
	handles := make([]Handles, 5)
	for i := range handles {
		handles[i].Stripe = i * 7
	}
	for i := 1; i <= 1000; i++ {
		o := Observation{Fingerprint: "f", Query: "select $1", Duration: time.Duration(i) * time.Millisecond, Rows: 2}
		if i%10 == 0 {
			o.ErrorCode = "22012"
		}
		q.ObserveWith(&handles[i%len(handles)], o)
	}
	top := q.Top(0)
	if len(top) != 1 {
		t.Fatalf("%d entries, want 1", len(top))
	}
	s := top[0]
	if s.Calls != 1000 || s.Rows != 2000 || s.Errors != 100 || s.Max != time.Second || s.Total != 500500*time.Millisecond {
		t.Errorf("calls %d rows %d errors %d max %v total %v", s.Calls, s.Rows, s.Errors, s.Max, s.Total)
	}
	for _, c := range []struct {
		got, want time.Duration
	}{{s.P50, 500 * time.Millisecond}, {s.P95, 950 * time.Millisecond}, {s.P99, 990 * time.Millisecond}} {
		if diff := c.got - c.want; diff < -c.want/50 || diff > c.want/50 {
			t.Errorf("quantile %v, want %v ± 2 %%", c.got, c.want)
		}
	}

	l := NewLatency()
	for i := 1; i <= 100; i++ {
		l.Add(i, time.Duration(i)*time.Millisecond)
	}
	if p50, _, p99 := l.Quantiles(); p50 < 49*time.Millisecond || p50 > 51*time.Millisecond || p99 < 98*time.Millisecond || p99 > 100*time.Millisecond {
		t.Errorf("pool wait p50 %v p99 %v, want about 50 ms and 99 ms", p50, p99)
	}
}
