package main

import (
	"math"
	"net"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func TestHistogramCounts(t *testing.T) {
	reg := prometheus.NewRegistry()
	q := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: queryDurationMetric}, []string{"backend"})
	other := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "unrelated_seconds"})
	reg.MustRegister(q, other)
	q.WithLabelValues("primary").Observe(0.001)
	q.WithLabelValues("primary").Observe(0.002)
	q.WithLabelValues("replica").Observe(0.003)
	other.Observe(1)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port

	got, err := histogramCounts(port, queryDurationMetric, txDurationMetric)
	if err != nil {
		t.Fatal(err)
	}
	if got[queryDurationMetric] != 3 || got[txDurationMetric] != 0 || len(got) != 2 {
		t.Fatalf("counts = %v, want 3 for %s and 0 for %s", got, queryDurationMetric, txDurationMetric)
	}
}

func TestStatsMarkdownSaysWhenNothingWasRecorded(t *testing.T) {
	s := statsResult{rounds: 1, onTxns: 100, offTxns: 100,
		on:     map[string][]measure{"simple": {{tps: 99}, {tps: 97}}},
		off:    map[string][]measure{"simple": {{tps: 100}, {tps: 100}}},
		ratios: map[string][]float64{"simple": {0.98}}}
	md := s.markdown()
	for _, want := range []string{"## Statistics cost", "| simple | 98 | 100 | 0.980 | 2.0 % | 0.980–0.980 (0 %: too few rounds for 95) | 0.980–0.980 | met, and shown", "Statistics were not recorded", "does not measure", "did not move"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	s.onRecorded = 100
	if md := s.markdown(); strings.Contains(md, "not recorded") || !strings.Contains(md, "1.00 per transaction") {
		t.Errorf("with statements recorded:\n%s", md)
	}
	s.offRecorded = 5
	if md := s.markdown(); !strings.Contains(md, "they were not off") {
		t.Errorf("with statements recorded while off:\n%s", md)
	}
	s.ratios["simple"] = []float64{0.99, 0.98, 0.99, 0.95, 1.01, 0.99, 1.0, 0.985, 0.975}
	if md := s.markdown(); !strings.Contains(md, "| 0.990 | 1.0 % | 0.975–1.000 |") || !strings.Contains(md, "met, and shown") {
		t.Errorf("nine rounds:\n%s", md)
	}
	s.ratios["simple"] = []float64{0.99, 0.98, 0.99, 0.95, 1.01, 0.99, 1.0, 0.985, 0.96}
	if md := s.markdown(); !strings.Contains(md, "0.960–1.000") || !strings.Contains(md, "met by the median; not shown") {
		t.Errorf("nine rounds, wider:\n%s", md)
	}
	s.ratios["simple"] = []float64{0.96}
	if md := s.markdown(); !strings.Contains(md, "| 4.0 % | 0.960–0.960 (0 %: too few rounds for 95) | 0.960–0.960 | missed |") {
		t.Errorf("a 4 %% drop is not shown missed:\n%s", md)
	}
}

// The median's confidence interval: ranks from the binomial distribution.
func TestMedianCI(t *testing.T) {
	xs := []float64{9, 1, 8, 2, 7, 3, 6, 4, 5} // 1…9
	lo, hi, cov := medianCI(xs, 0.95)
	// n = 9: P(B ≤ 1) = 10/512, so k = 2, coverage 1 − 20/512.
	if lo != 2 || hi != 8 || math.Abs(cov-(1-20.0/512)) > 1e-9 {
		t.Errorf("n=9: [%v, %v] coverage %v, want [2, 8] and %v", lo, hi, cov, 1-20.0/512)
	}
	// n = 5: even the extremes cover only 1 − 2/32.
	lo, hi, cov = medianCI([]float64{3, 1, 2, 5, 4}, 0.95)
	if lo != 1 || hi != 5 || math.Abs(cov-(1-2.0/32)) > 1e-9 {
		t.Errorf("n=5: [%v, %v] coverage %v", lo, hi, cov)
	}
	// n = 18: P(B ≤ 4) = 4048/262144 ≤ 0.025 < P(B ≤ 5), so k = 5.
	var ys []float64
	for i := 18; i >= 1; i-- {
		ys = append(ys, float64(i))
	}
	if lo, hi, _ := medianCI(ys, 0.95); lo != 5 || hi != 14 {
		t.Errorf("n=18: [%v, %v], want [5, 14]", lo, hi)
	}
}
