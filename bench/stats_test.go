package main

import (
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
	s := statsResult{rounds: 1, onTxns: 100,
		on:       map[string][]measure{"simple": {{tps: 99}, {tps: 97}}},
		off:      map[string][]measure{"simple": {{tps: 100}, {tps: 100}}},
		ratios:   map[string][]float64{"simple": {0.98}},
		onCounts: map[string]uint64{queryDurationMetric: 0}, offCounts: map[string]uint64{queryDurationMetric: 0}}
	md := s.markdown()
	for _, want := range []string{"## Statistics cost", "| simple | 98 | 100 | 0.980 | 2.0 % | 0.980–0.980 | met |", "Statistics were not recorded", "does not measure"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	s.onCounts[queryDurationMetric] = 100
	if md := s.markdown(); strings.Contains(md, "not recorded") || !strings.Contains(md, "1.00 per pgbench transaction") {
		t.Errorf("with statements recorded:\n%s", md)
	}
}
