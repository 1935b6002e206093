package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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

// The statistics scenario compares pgshield with statistics on (the
// default) and off in one process, which the admin console switches
// between the two (SET disable_stats): two processes configured alike
// differ by a few per cent, as much as the goal. The machine's speed
// drifts by more than that within seconds, so the switching happens every
// statsPhase during one long pgbench run per mode, in blocks of on, off,
// off, on: the phases of a block see nearly the same machine, and a
// drift within a block weighs on both settings alike. pgbench logs a
// sample of its transactions with their completion times, which assigns
// them to phases; the pgshield process's CPU time (its threads' run time, to the
// nanosecond) is read at each switch.
const (
	statsPhase    = 250 * time.Millisecond
	statsSampling = 1.0 // of transactions pgbench logs
)

// statsBlocks is the number of blocks per mode, from the bench's rounds.
func statsBlocks(rounds int) int { return 32 * rounds }

// statsBlock is one block's totals for one setting.
type statsBlock struct {
	on, off       statsTotals
	ratio, cpuPer float64 // TPS on / off; CPU per transaction on / off
}

type statsTotals struct {
	dur      time.Duration
	cpu      time.Duration
	txns     float64 // estimated from the sample
	recorded uint64  // rise of the query-duration count
}

func (t statsTotals) tps() float64 {
	if t.dur <= 0 {
		return 0
	}
	return t.txns / t.dur.Seconds()
}

// cpuPerTx is in microseconds.
func (t statsTotals) cpuPerTx() float64 {
	if t.txns <= 0 {
		return 0
	}
	return float64(t.cpu.Microseconds()) / t.txns
}

// statsResult is what the scenario measured.
type statsResult struct {
	blocks map[string][]statsBlock // mode → blocks
	runs   map[string]measure      // mode → the whole pgbench run
	nBlock int
	err    error // the scenario could not run
	// scrapeErr: /metrics could not be read, so whether statistics were
	// recorded when on and not when off is unknown.
	scrapeErr error
}

// boundary is one switch: when, the setting from then on, pgshield's CPU
// time and the query-duration count at that moment.
type boundary struct {
	at       time.Time
	on       bool
	cpu      time.Duration
	recorded uint64
}

func statsCost(e *env, bin string, rounds int) statsResult {
	res := statsResult{blocks: map[string][]statsBlock{}, runs: map[string]measure{}, nBlock: statsBlocks(rounds)}
	say("statistics on versus off in one pgshield (SET disable_stats every %s, blocks of on, off, off, on), %d blocks per mode", statsPhase, res.nBlock)
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
	mark := func(on bool) (boundary, error) {
		if err := setStats(on); err != nil {
			return boundary{}, fmt.Errorf("SET disable_stats: %w", err)
		}
		b := boundary{at: time.Now(), on: on}
		var err error
		if b.cpu, err = p.runTime(); err != nil {
			return b, err
		}
		c, err := histogramCounts(p.metricsPort, queryDurationMetric)
		if err != nil && res.scrapeErr == nil {
			res.scrapeErr = err
		}
		b.recorded = c[queryDurationMetric]
		return b, nil
	}
	defer func() { _ = setStats(true) }()

	for _, mode := range statsModes {
		e.pgbenchS(p.port, mode, 50, 2*time.Second) // unmeasured warm-up
	}
	for _, mode := range statsModes {
		prefix := filepath.Join(e.dir, "stats-"+mode)
		// The phases are on a fixed schedule, started a second in.
		total := time.Duration(4*res.nBlock)*statsPhase + 5*time.Second
		done := make(chan measure, 1)
		go func() {
			done <- e.pgbenchS(p.port, mode, 50, total, "-l", fmt.Sprintf("--sampling-rate=%g", statsSampling), "--log-prefix="+prefix)
		}()
		time.Sleep(time.Second) // clients connected and running
		var bs []boundary
		next := time.Now()
		for i := 0; i < res.nBlock && res.err == nil; i++ {
			for _, on := range []bool{true, false, false, true} {
				b, err := mark(on)
				if err != nil {
					res.err = err
					break
				}
				bs = append(bs, b)
				next = next.Add(statsPhase)
				time.Sleep(time.Until(next))
			}
		}
		if res.err == nil {
			end, err := mark(true)
			res.err = err
			bs = append(bs, end)
		}
		m := <-done
		res.runs[mode] = m
		if res.err != nil {
			return res
		}
		if m.failed > 0 || m.note != "" {
			res.err = fmt.Errorf("%s mode: pgbench: %d failed %s", mode, m.failed, m.note)
			return res
		}
		times, err := pgbenchLogTimes(prefix)
		if err != nil {
			res.err = err
			return res
		}
		res.blocks[mode] = statsBlocksOf(bs, times, statsSampling)
		if n := len(res.blocks[mode]); n < res.nBlock*9/10 {
			res.err = fmt.Errorf("%s mode: pgbench ran through only %d of %d blocks", mode, n, res.nBlock)
			return res
		}
		for i, b := range res.blocks[mode] {
			say("%-9s block %2d: tps on %8.0f off %8.0f (on/off %.3f), cpu on %6.2f off %6.2f µs/tx", mode, i+1, b.on.tps(), b.off.tps(), b.ratio, b.on.cpuPerTx(), b.off.cpuPerTx())
		}
	}
	return res
}

// statsBlocksOf sums the phases between boundaries (four per block, the
// last boundary ending the last phase) into blocks; times are the sorted
// completion times of the logged transactions, each standing for
// 1/sampling of them.
func statsBlocksOf(bs []boundary, times []time.Time, sampling float64) []statsBlock {
	var out []statsBlock
	j := 0
	for j < len(times) && len(bs) > 0 && times[j].Before(bs[0].at) {
		j++
	}
	for i := 0; i+4 < len(bs); i += 4 {
		var blk statsBlock
		for k := i; k < i+4; k++ {
			start, end := bs[k], bs[k+1]
			n := 0
			for j < len(times) && times[j].Before(end.at) {
				n++
				j++
			}
			t := &blk.off
			if start.on {
				t = &blk.on
			}
			t.dur += end.at.Sub(start.at)
			t.cpu += end.cpu - start.cpu
			t.txns += float64(n) / sampling
			t.recorded += end.recorded - start.recorded
		}
		if blk.on.txns == 0 || blk.off.txns == 0 {
			continue // pgbench was not running throughout
		}
		blk.ratio = blk.on.tps() / blk.off.tps()
		blk.cpuPer = blk.on.cpuPerTx() / blk.off.cpuPerTx()
		out = append(out, blk)
	}
	return out
}

// pgbenchLogTimes reads the completion times of the transactions in
// pgbench's per-transaction logs (prefix.<pid>[.<thread>]), sorted. A
// line is: client_id transaction_no time script_no time_epoch time_us.
func pgbenchLogTimes(prefix string) ([]time.Time, error) {
	files, err := filepath.Glob(prefix + ".*")
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no pgbench log %s.*: %v", prefix, err)
	}
	var out []time.Time
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(data), "\n") {
			fs := strings.Fields(line)
			if len(fs) < 6 {
				continue
			}
			sec, err1 := strconv.ParseInt(fs[4], 10, 64)
			us, err2 := strconv.ParseInt(fs[5], 10, 64)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("%s: unreadable line %q", f, line)
			}
			out = append(out, time.Unix(sec, us*1000))
		}
		_ = os.Remove(f)
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out, nil
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
	fmt.Fprintf(&b, "One pgshield (transaction mode, 20 server connections, SQL classification on, trust authentication) with per-statement statistics on (the default) and off, switched on its admin console with `SET disable_stats` every %s during one `pgbench -S -c 50 -j 2` run per mode, in %d blocks of on, off, off, on: one process compared with itself (two processes configured alike differ by a few per cent), and phases a second apart see nearly the same machine, whose speed drifts by more than the goal within seconds. pgbench logs %.0f %% of its transactions with their completion time, which assigns them to phases; pgshield's CPU time (its threads' run time in /proc, to the nanosecond) is read at each switch. Each block gives a ratio, its TPS with statistics on over its TPS with them off; on/off is the median of the blocks' ratios and drop is 1 − on/off. The interval is a distribution-free 95 %% confidence interval of that median (order statistics of the blocks' ratios, ranks from the binomial distribution); the goal is shown when the whole interval lies above 1 − goal. Goal (issue): the drop is at most %.0f %%.\n\n",
		statsPhase, s.nBlock, statsSampling*100, statsGoal)
	b.WriteString("| mode | statistics on tps | off tps | on/off | drop | 95 % interval of on/off | blocks' on/off, min–max | goal | failed |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, mode := range statsModes {
		blocks := s.blocks[mode]
		if len(blocks) == 0 {
			fmt.Fprintf(&b, "| %s | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |\n", mode)
			continue
		}
		var on, off, ratios []float64
		for _, blk := range blocks {
			on, off, ratios = append(on, blk.on.tps()), append(off, blk.off.tps()), append(ratios, blk.ratio)
		}
		q := median(ratios)
		d := (1 - q) * 100
		lo, hi, cov := medianCI(ratios, 0.95)
		ci := fmt.Sprintf("%.3f–%.3f", lo, hi)
		if cov < 0.95 {
			ci += fmt.Sprintf(" (%.0f %%: too few blocks for 95)", cov*100)
		}
		var goal string
		switch limit := 1 - statsGoal/100; {
		case d > statsGoal:
			goal = "missed"
		case lo >= limit:
			goal = fmt.Sprintf("met, and shown: the interval lies above %.2f", limit)
		default:
			goal = fmt.Sprintf("met by the median; not shown, the interval reaches below %.2f", limit)
		}
		mn, mx := spread(ratios)
		run := s.runs[mode]
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.3f | %.1f %% | %s | %.3f–%.3f | %s | %s |\n", mode, median(on), median(off), q, d, ci, mn, mx, goal, failures(run.failed, run.note))
	}
	b.WriteString("\nCPU time of the pgshield process per transaction, which time spent waiting for a core on a busy machine does not inflate; per block the ratio on / off, and its median. Its increase bounds what statistics cost a pgshield that is the bottleneck.\n\n")
	b.WriteString("| mode | statistics on µs/tx | off µs/tx | on/off | CPU added | 95 % interval | blocks' on/off, min–max |\n|---|---|---|---|---|---|---|\n")
	for _, mode := range statsModes {
		blocks := s.blocks[mode]
		var on, off, ratios []float64
		for _, blk := range blocks {
			if blk.cpuPer > 0 {
				on, off, ratios = append(on, blk.on.cpuPerTx()), append(off, blk.off.cpuPerTx()), append(ratios, blk.cpuPer)
			}
		}
		if len(ratios) == 0 {
			fmt.Fprintf(&b, "| %s | n/a | n/a | n/a | n/a | n/a | n/a |\n", mode)
			continue
		}
		q := median(ratios)
		lo, hi, _ := medianCI(ratios, 0.95)
		mn, mx := spread(ratios)
		fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.3f | %.1f %% | %.3f–%.3f | %.3f–%.3f |\n", mode, median(on), median(off), q, (q-1)*100, lo, hi, mn, mx)
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
	var on, off statsTotals
	for _, mode := range statsModes {
		for _, blk := range s.blocks[mode] {
			on.txns += blk.on.txns
			on.recorded += blk.on.recorded
			off.txns += blk.off.txns
			off.recorded += blk.off.recorded
		}
	}
	var b strings.Builder
	if on.recorded == 0 {
		fmt.Fprintf(&b, "**Statistics were not recorded:** in the phases with statistics on (about %.0f transactions), `%s_count` did not rise. This comparison therefore does not measure the cost of statistics.\n", on.txns, queryDurationMetric)
	} else {
		fmt.Fprintf(&b, "Statistics were recorded: in the phases with statistics on, `%s_count` (summed over its series) rose by %d, for about %.0f transactions (%.2f per transaction, the estimate from pgbench's sample).", queryDurationMetric, on.recorded, on.txns, float64(on.recorded)/max(on.txns, 1))
	}
	// A statement that started in an on phase and ended just after the
	// switch is still recorded: allow one per client and switch.
	if off.recorded > uint64(50*4*s.nBlock*len(statsModes)) {
		fmt.Fprintf(&b, " **In the phases with statistics off it rose too, by %d** (of about %.0f transactions): they were not off, and the comparison does not measure their whole cost.\n", off.recorded, off.txns)
	} else {
		fmt.Fprintf(&b, " In the phases with them off (about %.0f transactions) it rose by %d: statements under way at a switch.\n", off.txns, off.recorded)
	}
	return b.String()
}
