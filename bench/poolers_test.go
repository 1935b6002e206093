package main

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
)

// utime and stime are the 14th and 15th fields, counted from the last ')'
// since the command name may hold spaces and parentheses.
func TestParseStatCPU(t *testing.T) {
	line := "4242 (pg (shi) eld) S 1 4242 4242 0 -1 4194560 1201 0 0 0 250 50 0 0 20 0 9 0 578671 2998272 382 18446744073709551615\n"
	got, err := parseStatCPU([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if want := 3 * time.Second; got != want { // 300 ticks of 10 ms
		t.Errorf("cpu = %v, want %v", got, want)
	}
	for _, bad := range []string{
		"",
		"4242 pgshield S 1 2 3", // no command name
		"4242 (pgshield) S 1 4242 4242 0 -1 4194560 1 0", // too few fields
		"4242 (pgshield) S 1 4242 4242 0 -1 4194560 1201 0 0 0 x 50 0 0",
		"4242 (pgshield) S 1 4242 4242 0 -1 4194560 1201 0 0 0 250 -5 0 0",
	} {
		if d, err := parseStatCPU([]byte(bad)); err == nil {
			t.Errorf("parseStatCPU(%q) = %v, want an error", bad, d)
		}
	}
}

// The reading of a live process works (its value is not checked: no
// timing assertions).
func TestCPUTimeOfSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	p := &proc{pid: os.Getpid()}
	if d, err := p.cpuTime(); err != nil || d < 0 {
		t.Fatalf("cpuTime = %v, %v", d, err)
	}
}

func TestCPUPerTx(t *testing.T) {
	m := measure{txns: 100000, cpu: 2 * time.Second, cpuRead: true}
	if got := m.cpuPerTx(); got != 20 {
		t.Errorf("2 s over 100000 transactions = %v µs, want 20", got)
	}
	if got := (measure{txns: 100000}).cpuPerTx(); got != 0 {
		t.Errorf("without a reading: %v, want 0", got)
	}
	if got := (measure{cpu: time.Second, cpuRead: true}).cpuPerTx(); got != 0 {
		t.Errorf("without transactions: %v, want 0", got)
	}
}

// The CPU median is over the runs with a reading; failures add up.
func TestSummarize(t *testing.T) {
	runs := []measure{
		{tps: 100, latency: 1, txns: 1000, cpu: 10 * time.Millisecond, cpuRead: true}, // 10 µs
		{tps: 300, latency: 3, txns: 1000, failed: 2},                                 // no reading
		{tps: 200, latency: 2, txns: 1000, cpu: 30 * time.Millisecond, cpuRead: true, note: "pgbench failed"},
	}
	s := summarize(runs)
	if s.tps != 200 || s.lat != 2 || s.cpu != 20 || s.failed != 2 || s.note != "pgbench failed" {
		t.Errorf("summary %+v", s)
	}
	if s := summarize(nil); s.cpu != 0 || s.tps != 0 {
		t.Errorf("no runs: %+v", s)
	}
}

func TestRoundOrder(t *testing.T) {
	ts := []string{tShield, tBouncer, tBaseline}
	if got := roundOrder(ts, 0); !slices.Equal(got, ts) {
		t.Errorf("round 0: %v", got)
	}
	if got := roundOrder(ts, 1); !slices.Equal(got, []string{tBaseline, tBouncer, tShield}) {
		t.Errorf("round 1: %v", got)
	}
	if !slices.Equal(ts, []string{tShield, tBouncer, tBaseline}) {
		t.Errorf("roundOrder changed its argument: %v", ts)
	}
	// Over two rounds every target's mean position is the same.
	pos := map[string]int{}
	for r := 0; r < 2; r++ {
		for i, n := range roundOrder(ts, r) {
			pos[n] += i
		}
	}
	for n, p := range pos {
		if p != 2 {
			t.Errorf("%s: positions sum to %d over two rounds, want 2", n, p)
		}
	}
}

func TestPairedRatios(t *testing.T) {
	a := []measure{{tps: 110, txns: 100, cpu: 2 * time.Millisecond, cpuRead: true}, {tps: 90, txns: 100}}
	b := []measure{{tps: 100, txns: 100, cpu: time.Millisecond, cpuRead: true}, {tps: 100, txns: 100, cpu: time.Millisecond, cpuRead: true}, {tps: 5}}
	tps, cpu := pairedRatios(a, b)
	if len(tps) != 2 || tps[0] != 1.1 || tps[1] != 0.9 {
		t.Errorf("tps ratios %v, want [1.1 0.9]", tps)
	}
	if !slices.Equal(cpu, []float64{2}) {
		t.Errorf("cpu ratios %v, want [2] (the second run of a has no reading)", cpu)
	}
	if got := rangeOf(tps); got != "0.90–1.10" {
		t.Errorf("rangeOf = %q", got)
	}
	if got := rangeOf(nil); got != "n/a" {
		t.Errorf("rangeOf(nil) = %q", got)
	}
}

func poolerResults(baseline bool) *results {
	r := &results{duration: 5 * time.Second, rounds: 2, baseline: baseline}
	run := func(tps float64, cpuMs int) measure {
		// 5 s runs: txns = 5 × tps.
		return measure{tps: tps, latency: 2, txns: int(5 * tps), cpu: time.Duration(cpuMs) * time.Millisecond, cpuRead: true}
	}
	for _, mode := range []string{"simple", "extended", "prepared"} {
		// pgshield: 20000 tps, 2500 ms over 100000 tx = 25 µs/tx.
		r.add(tShield, mode, run(20000, 2500))
		r.add(tShield, mode, run(20000, 2500))
		// PgBouncer: 25000 tps, 1250 ms over 125000 tx = 10 µs/tx.
		r.add(tBouncer, mode, run(25000, 1250))
		r.add(tBouncer, mode, run(25000, 1250))
		r.add(tDirect, mode, measure{tps: 40000, latency: 0.5, txns: 200000})
		r.add(tDirect, mode, measure{tps: 40000, latency: 0.5, txns: 200000})
		if baseline {
			// 16000 and 24000 tps (median 20000 against the new 20000);
			// 2000 ms over 80000 tx and 3600 ms over 120000 tx: 25 and 30
			// µs/tx, median 27.5.
			r.add(tBaseline, mode, run(16000, 2000))
			r.add(tBaseline, mode, run(24000, 3600))
		}
	}
	return r
}

func TestPoolersMarkdown(t *testing.T) {
	md := poolerResults(false).poolersMarkdown()
	for _, want := range []string{
		"## Select-only throughput and pooler CPU",
		"| pgshield CPU µs/tx | PgBouncer CPU µs/tx | pgshield/PgBouncer CPU |",
		"| simple | 20000 | 25000 | 40000 | 0.80 | 0.50 | 25.00 | 10.00 | 2.50 | 2.00 | 2.00 | 0 / 0 |",
		"alternating pgshield and PgBouncer",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "baseline") {
		t.Errorf("a baseline section without a baseline:\n%s", md)
	}

	md = poolerResults(true).poolersMarkdown()
	for _, want := range []string{
		"alternating pgshield, PgBouncer and pgshield (baseline)",
		"## pgshield against its baseline",
		// tps 20000 / 20000; rounds 1.25 and 0.83; CPU 25 / 27.5 = 0.91,
		// rounds 25/25 and 25/30.
		"| simple | 20000 | 20000 | 1.00 | 0.83–1.25 | 25.00 | 27.50 | 0.91 | 0.83–1.00 | 0 / 0 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// A pooler whose CPU could not be read shows n/a, not a ratio of 0.
func TestPoolersMarkdownWithoutCPU(t *testing.T) {
	r := poolerResults(false)
	for _, mode := range []string{"simple", "extended", "prepared"} {
		for i := range r.runs[tBouncer+" "+mode] {
			r.runs[tBouncer+" "+mode][i].cpuRead = false
		}
	}
	md := r.poolersMarkdown()
	if !strings.Contains(md, "| simple | 20000 | 25000 | 40000 | 0.80 | 0.50 | 25.00 | n/a | n/a |") {
		t.Errorf("markdown:\n%s", md)
	}
}

// The configuration the bench writes parses. The -baseline binary reads
// the same file with an earlier parser that refuses unknown keys, so the
// bench keeps to keys of the landed code; this checks it against the
// current one.
func TestPgshieldConfigParses(t *testing.T) {
	for _, opts := range []shieldOptions{{}, {noClassify: true}} {
		cfg := withListeners(7001, 7002, 7003, shieldBody("127.0.0.1:5432", opts))
		f, err := config.Parse([]byte(cfg))
		if err != nil {
			t.Fatalf("%+v: %v\n%s", opts, err, cfg)
		}
		if f.AdminListen != "127.0.0.1:7002" || f.MetricsListen != "127.0.0.1:7003" || f.Proxy.Listen != "127.0.0.1:7001" {
			t.Errorf("listeners %q %q %q", f.Proxy.Listen, f.AdminListen, f.MetricsListen)
		}
		if f.Proxy.DisableClassification != opts.noClassify {
			t.Errorf("disable_classification = %v, want %v", f.Proxy.DisableClassification, opts.noClassify)
		}
	}
}
