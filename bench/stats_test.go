package main

import (
	"math"
	"net"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

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

// Transactions are counted in the phase they completed in, phases are
// summed per setting within a block, and a block's ratios follow.
func TestStatsBlocksOf(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// One block: on 0–1 s, off 1–2 s, off 2–3 s, on 3–4 s, then the end.
	bs := []boundary{
		{at: at(0), on: true, cpu: 0, recorded: 0},
		{at: at(1000), on: false, cpu: 100 * time.Millisecond, recorded: 40},
		{at: at(2000), on: false, cpu: 180 * time.Millisecond, recorded: 41},
		{at: at(3000), on: true, cpu: 260 * time.Millisecond, recorded: 41},
		{at: at(4000), on: true, cpu: 360 * time.Millisecond, recorded: 81},
	}
	var times []time.Time
	times = append(times, at(-5)) // before the first phase: not counted
	for i := 0; i < 10; i++ {
		times = append(times, at(i*100))      // on: 10
		times = append(times, at(1000+i*100)) // off: 10
		times = append(times, at(3000+i*100)) // on: 10
	}
	for i := 0; i < 10; i++ {
		times = append(times, at(2000+i*100)) // off: 10
	}
	times = append(times, at(4000)) // at the end: not counted
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	blocks := statsBlocksOf(bs, times, 0.5)
	if len(blocks) != 1 {
		t.Fatalf("%d blocks, want 1", len(blocks))
	}
	b := blocks[0]
	if b.on.txns != 40 || b.off.txns != 40 || b.on.dur != 2*time.Second || b.off.dur != 2*time.Second {
		t.Errorf("on %+v off %+v; want 40 transactions in 2 s each (20 logged at sampling 0.5)", b.on, b.off)
	}
	if b.on.cpu != 200*time.Millisecond || b.off.cpu != 160*time.Millisecond || b.on.recorded != 80 || b.off.recorded != 1 {
		t.Errorf("on %+v off %+v", b.on, b.off)
	}
	if b.ratio != 1 || math.Abs(b.cpuPer-1.25) > 1e-9 {
		t.Errorf("ratio %v cpu ratio %v, want 1 and 1.25", b.ratio, b.cpuPer)
	}
}

func TestStatsMarkdown(t *testing.T) {
	blk := func(onTxns, offTxns float64, recorded uint64) statsBlock {
		on := statsTotals{dur: 2 * time.Second, cpu: time.Second, txns: onTxns, recorded: recorded}
		off := statsTotals{dur: 2 * time.Second, cpu: time.Second, txns: offTxns}
		return statsBlock{on: on, off: off, ratio: on.tps() / off.tps(), cpuPer: on.cpuPerTx() / off.cpuPerTx()}
	}
	var blocks []statsBlock
	for _, r := range []float64{0.99, 0.98, 0.99, 0.95, 1.01, 0.99, 1.0, 0.985, 0.975} {
		blocks = append(blocks, blk(1000*r, 1000, 0))
	}
	s := statsResult{nBlock: 9, blocks: map[string][]statsBlock{"simple": blocks}, runs: map[string]measure{}}
	md := s.markdown()
	for _, want := range []string{"## Statistics cost", "| simple | 495 | 500 | 0.990 | 1.0 % | 0.975–1.000 | 0.950–1.010 | met, and shown", "| prepared | n/a", "Statistics were not recorded", "does not measure"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	blocks[8] = blk(960, 1000, 1000)
	if md := s.markdown(); !strings.Contains(md, "0.960–1.000") || !strings.Contains(md, "met by the median; not shown") || !strings.Contains(md, "Statistics were recorded") {
		t.Errorf("nine blocks, wider:\n%s", md)
	}
	s.blocks["simple"] = []statsBlock{blk(960, 1000, 1)}
	if md := s.markdown(); !strings.Contains(md, "| 4.0 % | 0.960–0.960 (0 %: too few blocks for 95) | 0.960–0.960 | missed |") {
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

// A block in which one setting saw no transaction (pgbench not running)
// is left out rather than counted as a ratio of 0.
func TestStatsBlocksOfSkipsIdleBlocks(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var bs []boundary
	for i := 0; i <= 8; i++ {
		bs = append(bs, boundary{at: t0.Add(time.Duration(i) * time.Second), on: i%4 == 0 || i%4 == 3})
	}
	var times []time.Time
	for i := 0; i < 40; i++ { // the first block only
		times = append(times, t0.Add(time.Duration(i)*100*time.Millisecond))
	}
	if blocks := statsBlocksOf(bs, times, 1); len(blocks) != 1 || blocks[0].ratio != 1 {
		t.Errorf("blocks %+v, want the first one only, ratio 1", blocks)
	}
}
