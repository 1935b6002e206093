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

	"github.com/jackc/pgx/v5/pgconn"
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

// statsResult compares pgshield with statistics on (the default) and off,
// in one process that the admin console switches between the two
// (SET disable_stats): two processes differ by a few per cent even when
// configured alike, which is as much as the goal.
type statsResult struct {
	run     time.Duration // one pgbench run
	rounds  int
	on, off map[string][]measure // mode → measured runs
	ratios  map[string][]float64 // mode → per-round mean on / mean off
	// CPU time the pgshield process spent per pgbench transaction (µs),
	// per run, and per round the ratio on / off: less sensitive than TPS
	// to what else the machine runs, since time spent waiting for a core
	// is not counted.
	onCPU, offCPU map[string][]float64
	cpuRatios     map[string][]float64
	// What /metrics recorded: the rise of the query-duration count during
	// the measured runs with statistics on and off, and the pgbench
	// transactions of those runs.
	onTxns, offTxns         int
	onRecorded, offRecorded uint64
	scrapeErr               error
	err                     error // the scenario could not run
}

// statsRun and statsRounds are the length of one run and the number of
// rounds of the statistics scenario, from the bench's run length and
// rounds: shorter runs and more rounds than elsewhere, as the difference
// sought is small and the machine's drift is slow.
func statsRun(d time.Duration) time.Duration { return max(d/2, time.Second) }
func statsRounds(rounds int) int             { return 3 * rounds }

// statsCost starts one pgshield and runs pgbench -S against it with
// statistics on and off in turn: in every round and mode in the order on,
// off, off, on, so that a machine getting faster or slower during a round
// weighs on both alike. Around each run it reads the query-duration count
// from /metrics, to show that statistics were recorded when on and not
// when off.
func statsCost(e *env, bin string, d time.Duration, rounds int) statsResult {
	res := statsResult{run: statsRun(d), rounds: statsRounds(rounds),
		on: map[string][]measure{}, off: map[string][]measure{}, ratios: map[string][]float64{},
		onCPU: map[string][]float64{}, offCPU: map[string][]float64{}, cpuRatios: map[string][]float64{}}
	say("statistics on versus off in one pgshield (SET disable_stats), simple and prepared, %d rounds of on, off, off, on, %s each", res.rounds, res.run)
	p, err := startPgshield(e.dir, "stats", bin, e.pg, shieldOptions{})
	if err != nil {
		res.err = fmt.Errorf("pgshield: %w", err)
		return res
	}
	defer p.stop()
	ctx := context.Background()
	admin, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=admin password=admin dbname=pgshield sslmode=disable", p.adminPort))
	if err != nil {
		res.err = fmt.Errorf("admin console: %w", err)
		return res
	}
	defer admin.Close(ctx)
	setStats := func(on bool) error {
		v := "on"
		if on {
			v = "off"
		}
		_, err := admin.Exec(ctx, "SET disable_stats = "+v).ReadAll()
		return err
	}
	recorded := func() uint64 {
		c, err := histogramCounts(p.metricsPort, queryDurationMetric)
		if err != nil && res.scrapeErr == nil {
			res.scrapeErr = err
		}
		return c[queryDurationMetric]
	}

	// Unmeasured warm-up in both modes, as for the other scenarios.
	for _, mode := range statsModes {
		e.pgbenchS(p.port, mode, 50, 2*time.Second)
	}
	for r := 0; r < res.rounds; r++ {
		for _, mode := range statsModes {
			var onSum, offSum, onCPUSum, offCPUSum float64
			for _, isOn := range []bool{true, false, false, true} {
				if err := setStats(isOn); err != nil {
					res.err = fmt.Errorf("SET disable_stats: %w", err)
					return res
				}
				name := "stats off"
				if isOn {
					name = "stats on"
				}
				n0 := recorded()
				c0, err0 := p.cpuTime()
				m := e.pgbenchS(p.port, mode, 50, res.run)
				c1, err1 := p.cpuTime()
				n1 := recorded()
				cpu := 0.0
				if err0 == nil && err1 == nil && m.txns > 0 {
					cpu = float64((c1 - c0).Microseconds()) / float64(m.txns)
				}
				say("round %d %-9s %-9s tps %8.0f  cpu %6.2f µs/tx  recorded %d  failed %d %s", r+1, mode, name, m.tps, cpu, n1-n0, m.failed, m.note)
				if isOn {
					res.on[mode] = append(res.on[mode], m)
					res.onCPU[mode] = append(res.onCPU[mode], cpu)
					res.onTxns += m.txns
					res.onRecorded += n1 - n0
					onSum += m.tps
					onCPUSum += cpu
				} else {
					res.off[mode] = append(res.off[mode], m)
					res.offCPU[mode] = append(res.offCPU[mode], cpu)
					res.offTxns += m.txns
					res.offRecorded += n1 - n0
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
	if err := setStats(true); err != nil {
		res.err = fmt.Errorf("SET disable_stats: %w", err)
	}
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

// spread is the smallest and largest of xs (not empty).
func spread(xs []float64) (lo, hi float64) {
	lo, hi = xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

func (s statsResult) markdown() string {
	var b strings.Builder
	b.WriteString("\n## Statistics cost\n\n")
	if s.err != nil {
		fmt.Fprintf(&b, "The statistics scenario failed: %v\n", s.err)
		return b.String()
	}
	fmt.Fprintf(&b, "One pgshield (transaction mode, 20 server connections, SQL classification on, trust authentication) with per-statement statistics on (the default) and off, switched between runs on its admin console with `SET disable_stats`: one process compared with itself, since two processes configured alike differ by a few per cent. `pgbench -S -c 50 -j 2 -T %d` per run, %d rounds; in each round and mode the order is on, off, off, on, so that drift within a round weighs on both alike. TPS are medians over the %d runs of each setting. Each round gives a ratio, the mean TPS with statistics on over the mean with them off in that round; on/off is the median of these ratios (paired within a round, so slower and faster phases of the machine between rounds cancel) and drop is 1 − on/off. The interval is a distribution-free 95 %% confidence interval of that median (order statistics of the per-round ratios, ranks from the binomial distribution); the goal is shown when the whole interval lies above 1 − goal. The range of the ratios shows how noisy the machine was. Goal (issue): the drop is at most %.0f %%.\n\n",
		int(s.run.Seconds()), s.rounds, 2*s.rounds, statsGoal)
	b.WriteString("| mode | statistics on tps | off tps | on/off | drop | 95 % interval of on/off | per-round on/off, min–max | goal | failed (on / off) |\n|---|---|---|---|---|---|---|---|---|\n")
	var notes []string
	for _, mode := range statsModes {
		onTPS, _, onFailed, onNote := summarize(s.on[mode])
		offTPS, _, offFailed, offNote := summarize(s.off[mode])
		ratioS, drop, ci, rng, goal := "n/a", "n/a", "n/a", "n/a", "n/a"
		if rs := s.ratios[mode]; len(rs) > 0 {
			q := median(rs)
			d := (1 - q) * 100
			ratioS, drop = fmt.Sprintf("%.3f", q), fmt.Sprintf("%.1f %%", d)
			lo, hi, cov := medianCI(rs, 0.95)
			ci = fmt.Sprintf("%.3f–%.3f", lo, hi)
			if cov < 0.95 {
				ci += fmt.Sprintf(" (%.0f %%: too few rounds for 95)", cov*100)
			}
			switch limit := 1 - statsGoal/100; {
			case d > statsGoal:
				goal = "missed"
			case lo >= limit:
				goal = fmt.Sprintf("met, and shown: the interval lies above %.2f", limit)
			default:
				goal = fmt.Sprintf("met by the median; not shown, the interval reaches below %.2f", limit)
			}
			lo, hi = spread(rs)
			rng = fmt.Sprintf("%.3f–%.3f", lo, hi)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s / %s |\n", mode, onTPS, offTPS, ratioS, drop, ci, rng, goal,
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
	b.WriteString("\nCPU time of the pgshield process per pgbench transaction (from /proc, user + system), which time spent waiting for a core on a busy machine does not inflate; the ratio is paired per round like the TPS ratio, and its increase bounds what statistics cost a pgshield that is the bottleneck.\n\n")
	b.WriteString("| mode | statistics on µs/tx | off µs/tx | on/off | CPU added | per-round on/off, min–max |\n|---|---|---|---|---|---|\n")
	for _, mode := range statsModes {
		on, off := s.onCPU[mode], s.offCPU[mode]
		rs := s.cpuRatios[mode]
		if len(on) == 0 || len(off) == 0 || len(rs) == 0 {
			fmt.Fprintf(&b, "| %s | n/a | n/a | n/a | n/a | n/a |\n", mode)
			continue
		}
		lo, hi := spread(rs)
		q := median(rs)
		fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.3f | %.1f %% | %.3f–%.3f |\n", mode, median(on), median(off), q, (q-1)*100, lo, hi)
	}
	b.WriteString("\n")
	b.WriteString(s.recordedMarkdown())
	return b.String()
}

// recordedMarkdown says whether statements were recorded with statistics
// on and not with them off, without which the tables above measure
// nothing.
func (s statsResult) recordedMarkdown() string {
	if s.scrapeErr != nil {
		return fmt.Sprintf("**Could not read pgshield's `/metrics` (%v): whether statistics were recorded during the runs is unknown.**\n", s.scrapeErr)
	}
	var b strings.Builder
	if s.onRecorded == 0 {
		fmt.Fprintf(&b, "**Statistics were not recorded:** during the runs with statistics on (%d pgbench transactions), `%s_count` did not rise. This comparison therefore does not measure the cost of statistics.\n", s.onTxns, queryDurationMetric)
	} else {
		per := "n/a"
		if s.onTxns > 0 {
			per = fmt.Sprintf("%.2f", float64(s.onRecorded)/float64(s.onTxns))
		}
		fmt.Fprintf(&b, "Statistics were recorded: during the runs with statistics on, `%s_count` (summed over its series) rose by %d for %d pgbench transactions (%s per transaction).", queryDurationMetric, s.onRecorded, s.onTxns, per)
	}
	if s.offRecorded > 0 {
		fmt.Fprintf(&b, " **During the runs with statistics off it rose too, by %d** (of %d transactions): they were not off, and the comparison does not measure their whole cost.\n", s.offRecorded, s.offTxns)
	} else {
		fmt.Fprintf(&b, " During the runs with them off (%d transactions) it did not move, as it should not.\n", s.offTxns)
	}
	return b.String()
}
