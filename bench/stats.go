package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protodelim"
)

// statsGoal is the bound on what statistics may cost: the drop in
// TPS with them on, in percent.
const statsGoal = 3.0

// statsModes are the pgbench query modes of the statistics scenario.
var statsModes = []string{"simple", "prepared"}

// Histograms whose sample counts show whether an instance recorded
// statement statistics.
const (
	queryDurationMetric = "database_query_duration_seconds"
	txDurationMetric    = "database_transaction_duration_seconds"
)

// statsResult compares pgshield with statistics on (the default) against
// an instance with disable_stats: true.
type statsResult struct {
	duration time.Duration
	rounds   int
	on, off  map[string][]measure // mode → measured runs
	ratios   map[string][]float64 // mode → per-round mean on / mean off
	// CPU time the pgshield process spent per pgbench transaction (µs),
	// per run, and per round the ratio on / off: less sensitive than TPS
	// to what else the machine runs, since time spent waiting for a core
	// is not counted.
	onCPU, offCPU map[string][]float64
	cpuRatios     map[string][]float64
	// Side by side: both instances loaded at the same time, 25 clients
	// each, so that whatever else the machine does weighs on both at
	// once; per round the ratio of their TPS.
	sideRatios                map[string][]float64
	onTxns                    int               // transactions pgbench completed through the on instance, warm-up included
	onCounts, offCounts       map[string]uint64 // histogram → sample count from /metrics after the runs
	onScrapeErr, offScrapeErr error
	err                       error // the scenario could not run
}

// statsCost starts two pgshield instances that differ only in
// disable_stats and runs pgbench -S against them in turn: in every round
// and mode in the order on, off, off, on, so that a machine getting faster
// or slower during a round weighs on both alike. Then it reads what the
// instances recorded from their /metrics.
func statsCost(e *env, bin string, d time.Duration, rounds int) statsResult {
	res := statsResult{duration: d, rounds: rounds,
		on: map[string][]measure{}, off: map[string][]measure{}, ratios: map[string][]float64{},
		onCPU: map[string][]float64{}, offCPU: map[string][]float64{}, cpuRatios: map[string][]float64{},
		sideRatios: map[string][]float64{}}
	say("statistics on versus disable_stats: true (simple and prepared), %d rounds of on, off, off, on", rounds)
	on, err := startPgshield(e.dir, "stats-on", bin, e.pg, shieldOptions{})
	if err != nil {
		res.err = fmt.Errorf("pgshield with statistics: %w", err)
		return res
	}
	defer on.stop()
	off, err := startPgshield(e.dir, "stats-off", bin, e.pg, shieldOptions{noStats: true})
	if err != nil {
		res.err = fmt.Errorf("pgshield with disable_stats: %w", err)
		return res
	}
	defer off.stop()

	// Unmeasured warm-up of both instances in both modes, as for the
	// other scenarios.
	for _, mode := range statsModes {
		res.onTxns += e.pgbenchS(on.port, mode, 50, 2*time.Second).txns
		e.pgbenchS(off.port, mode, 50, 2*time.Second)
	}
	for r := 0; r < rounds; r++ {
		for _, mode := range statsModes {
			var onSum, offSum, onCPUSum, offCPUSum float64
			for _, isOn := range []bool{true, false, false, true} {
				p, name := off, "stats off"
				if isOn {
					p, name = on, "stats on"
				}
				c0, err0 := p.cpuTime()
				m := e.pgbenchS(p.port, mode, 50, d)
				c1, err1 := p.cpuTime()
				cpu := 0.0
				if err0 == nil && err1 == nil && m.txns > 0 {
					cpu = float64((c1 - c0).Microseconds()) / float64(m.txns)
				}
				say("round %d %-9s %-9s tps %8.0f  cpu %6.2f µs/tx  failed %d %s", r+1, mode, name, m.tps, cpu, m.failed, m.note)
				if isOn {
					res.on[mode] = append(res.on[mode], m)
					res.onCPU[mode] = append(res.onCPU[mode], cpu)
					res.onTxns += m.txns
					onSum += m.tps
					onCPUSum += cpu
				} else {
					res.off[mode] = append(res.off[mode], m)
					res.offCPU[mode] = append(res.offCPU[mode], cpu)
					offSum += m.tps
					offCPUSum += cpu
				}
			}
			if offSum > 0 {
				res.ratios[mode] = append(res.ratios[mode], onSum/offSum)
			}
			if offCPUSum > 0 && onCPUSum > 0 {
				res.cpuRatios[mode] = append(res.cpuRatios[mode], onCPUSum/offCPUSum)
			}
		}
	}
	for r := 0; r < rounds; r++ {
		for _, mode := range statsModes {
			var offM measure
			done := make(chan struct{})
			go func() { offM = e.pgbenchS(off.port, mode, 25, d); close(done) }()
			onM := e.pgbenchS(on.port, mode, 25, d)
			<-done
			res.onTxns += onM.txns
			say("round %d %-9s side by side: stats on tps %8.0f, off %8.0f", r+1, mode, onM.tps, offM.tps)
			if offM.tps > 0 && onM.failed == 0 && offM.failed == 0 {
				res.sideRatios[mode] = append(res.sideRatios[mode], onM.tps/offM.tps)
			}
		}
	}
	res.onCounts, res.onScrapeErr = histogramCounts(on.metricsPort, queryDurationMetric, txDurationMetric)
	res.offCounts, res.offScrapeErr = histogramCounts(off.metricsPort, queryDurationMetric, txDurationMetric)
	return res
}

// histogramCounts reads pgshield's /metrics and returns, for each named
// histogram, its sample count summed over all label sets (0 when the
// histogram has no series yet). It asks for Prometheus's delimited
// protobuf exposition so that no text format needs parsing here.
func histogramCounts(port int, names ...string) (map[string]uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", port), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/vnd.google.protobuf") {
		return nil, fmt.Errorf("GET /metrics: content type %q, want the protobuf exposition", ct)
	}
	counts := make(map[string]uint64, len(names))
	for _, n := range names {
		counts[n] = 0
	}
	br := bufio.NewReader(resp.Body)
	for {
		var mf dto.MetricFamily
		if err := protodelim.UnmarshalFrom(br, &mf); errors.Is(err, io.EOF) {
			return counts, nil
		} else if err != nil {
			return nil, fmt.Errorf("GET /metrics: %w", err)
		}
		if _, ok := counts[mf.GetName()]; !ok {
			continue
		}
		for _, m := range mf.GetMetric() {
			counts[mf.GetName()] += m.GetHistogram().GetSampleCount()
		}
	}
}

func (s statsResult) markdown() string {
	var b strings.Builder
	b.WriteString("\n## Statistics cost\n\n")
	if s.err != nil {
		fmt.Fprintf(&b, "The statistics scenario failed: %v\n", s.err)
		return b.String()
	}
	fmt.Fprintf(&b, "pgshield with per-statement statistics on (the default) against an instance with `disable_stats: true`, all else equal: transaction mode, 20 server connections, SQL classification on, trust authentication. `pgbench -S -c 50 -j 2 -T %d` per run, %d round(s); in each round and mode the instances run in the order on, off, off, on, so that drift within a round weighs on both alike. TPS are medians over the %d runs of each instance. Each round gives a ratio, the mean TPS with statistics on over the mean with them off in that round; on/off is the median of these ratios (paired within a round, so slower and faster phases of the machine between rounds cancel) and drop is 1 − on/off; the range of the ratios shows how noisy the machine was. Goal (issue): the drop is at most %.0f %%.\n\n",
		int(s.duration.Seconds()), s.rounds, 2*s.rounds, statsGoal)
	b.WriteString("| mode | statistics on tps | off tps | on/off | drop | per-round on/off, min–max | goal | failed (on / off) |\n|---|---|---|---|---|---|---|---|\n")
	var notes []string
	for _, mode := range statsModes {
		onTPS, _, onFailed, onNote := summarize(s.on[mode])
		offTPS, _, offFailed, offNote := summarize(s.off[mode])
		ratioS, drop, spread, goal := "n/a", "n/a", "n/a", "n/a"
		if rs := s.ratios[mode]; len(rs) > 0 {
			q := median(rs)
			d := (1 - q) * 100
			ratioS, drop = fmt.Sprintf("%.3f", q), fmt.Sprintf("%.1f %%", d)
			goal = "met"
			if d > statsGoal {
				goal = "missed"
			}
			lo, hi := rs[0], rs[0]
			for _, x := range rs {
				lo, hi = min(lo, x), max(hi, x)
			}
			spread = fmt.Sprintf("%.3f–%.3f", lo, hi)
			if (hi-lo)*100 > statsGoal {
				goal += " (noise wider than the goal)"
			}
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %s | %s | %s | %s | %s / %s |\n", mode, onTPS, offTPS, ratioS, drop, spread, goal,
			failures(onFailed, onNote), failures(offFailed, offNote))
		for _, n := range []struct{ who, note string }{{"statistics on", onNote}, {"statistics off", offNote}} {
			if n.note != "" {
				notes = append(notes, fmt.Sprintf("%s, %s mode: %s", n.who, mode, n.note))
			}
		}
	}
	for _, n := range notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	fmt.Fprintf(&b, "\nSide by side: both instances under load at the same time, `pgbench -S -c 25 -j 2 -T %d` against each, %d round(s). Whatever else the machine runs then weighs on both at once, and they compete for the same cores, so the ratio of their TPS in a round is the ratio of what a transaction costs each; on/off is the median over the rounds.\n\n", int(s.duration.Seconds()), s.rounds)
	b.WriteString("| mode | on/off | drop | per-round on/off, min–max | goal |\n|---|---|---|---|---|\n")
	for _, mode := range statsModes {
		rs := s.sideRatios[mode]
		if len(rs) == 0 {
			fmt.Fprintf(&b, "| %s | n/a | n/a | n/a | n/a |\n", mode)
			continue
		}
		q := median(rs)
		lo, hi := rs[0], rs[0]
		for _, x := range rs {
			lo, hi = min(lo, x), max(hi, x)
		}
		goal := "met"
		if (1-q)*100 > statsGoal {
			goal = "missed"
		}
		fmt.Fprintf(&b, "| %s | %.3f | %.1f %% | %.3f–%.3f | %s |\n", mode, q, (1-q)*100, lo, hi, goal)
	}
	b.WriteString("\nCPU time of the pgshield process per pgbench transaction (from /proc, user + system), which time spent waiting for a core on a busy machine does not inflate; the ratio is paired per round like the TPS ratio, and its increase bounds what statistics cost a pgshield that is the bottleneck.\n\n")
	b.WriteString("| mode | statistics on µs/tx | off µs/tx | on/off | CPU added | per-round on/off, min–max |\n|---|---|---|---|---|---|\n")
	for _, mode := range statsModes {
		on, off := s.onCPU[mode], s.offCPU[mode]
		rs := s.cpuRatios[mode]
		if len(on) == 0 || len(off) == 0 || len(rs) == 0 {
			fmt.Fprintf(&b, "| %s | n/a | n/a | n/a | n/a | n/a |\n", mode)
			continue
		}
		lo, hi := rs[0], rs[0]
		for _, x := range rs {
			lo, hi = min(lo, x), max(hi, x)
		}
		q := median(rs)
		fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.3f | %.1f %% | %.3f–%.3f |\n", mode, median(on), median(off), q, (q-1)*100, lo, hi)
	}
	b.WriteString("\n")
	b.WriteString(s.recordedMarkdown())
	return b.String()
}

// recordedMarkdown says whether the statistics-on instance actually
// recorded statements, without which the table above measures nothing.
func (s statsResult) recordedMarkdown() string {
	if s.onScrapeErr != nil {
		return fmt.Sprintf("**Could not read the statistics-on instance's `/metrics` (%v): whether statistics were recorded during the runs is unknown.**\n", s.onScrapeErr)
	}
	q, tx := s.onCounts[queryDurationMetric], s.onCounts[txDurationMetric]
	var b strings.Builder
	if q == 0 {
		fmt.Fprintf(&b, "**Statistics were not recorded:** after %d pgbench transactions through the statistics-on instance, its `/metrics` shows `%s_count` = 0 (and `%s_count` = %d). This comparison therefore does not measure the cost of statistics.\n", s.onTxns, queryDurationMetric, txDurationMetric, tx)
	} else {
		per := "n/a"
		if s.onTxns > 0 {
			per = fmt.Sprintf("%.2f", float64(q)/float64(s.onTxns))
		}
		fmt.Fprintf(&b, "Statistics were recorded: after the runs the statistics-on instance's `/metrics` shows `%s_count` = %d summed over its series (%s per pgbench transaction, of %d through it, warm-up included) and `%s_count` = %d.\n", queryDurationMetric, q, per, s.onTxns, txDurationMetric, tx)
	}
	switch {
	case s.offScrapeErr != nil:
		fmt.Fprintf(&b, "\nCould not read the `disable_stats` instance's `/metrics` (%v).\n", s.offScrapeErr)
	case s.offCounts[queryDurationMetric] > 0:
		fmt.Fprintf(&b, "\n**The `disable_stats: true` instance recorded statements too** (`%s_count` = %d): it did not turn statement timing off, so the comparison does not measure the whole cost of statistics.\n", queryDurationMetric, s.offCounts[queryDurationMetric])
	default:
		fmt.Fprintf(&b, "\nThe `disable_stats: true` instance shows `%s_count` = 0, as it should.\n", queryDurationMetric)
	}
	return b.String()
}
