package main

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

type results struct {
	duration    time.Duration
	rounds      int
	baseline    bool                 // a -baseline pgshield ran in the pooler comparison
	runs        map[string][]measure // "target mode" → runs
	idleShield  idleResult
	idleBouncer idleResult
	manyShield  manyResult
	manyBouncer manyResult
	versions    map[string]string
	stats       statsResult
	policy      policyResult
	encryption  encResult
	failover    failoverResult
	backups     backupResult
	io          ioResult
}

func (r *results) add(target, mode string, m measure) {
	if r.runs == nil {
		r.runs = make(map[string][]measure)
	}
	k := target + " " + mode
	r.runs[k] = append(r.runs[k], m)
}

func (r *results) med(target, mode string) summary {
	return summarize(r.runs[target+" "+mode])
}

// summary is what a target's runs in one mode come to.
type summary struct {
	tps, lat float64 // medians
	cpu      float64 // median µs of pooler CPU per transaction; 0 when no run has one
	failed   int     // summed
	note     string  // the last pgbench failure, if any
}

// summarize gives the median TPS, latency and pooler CPU per transaction
// of runs (the CPU over the runs that have a reading and transactions),
// their failed transactions summed, and the last pgbench failure, if any.
func summarize(runs []measure) summary {
	var ts, ls, cs []float64
	var s summary
	for _, m := range runs {
		ts = append(ts, m.tps)
		ls = append(ls, m.latency)
		if m.cpuRead && m.txns > 0 {
			cs = append(cs, m.cpuPerTx())
		}
		s.failed += m.failed
		if m.note != "" {
			s.note = m.note
		}
	}
	s.tps, s.lat, s.cpu = median(ts), median(ls), median(cs)
	return s
}

// pairedRatios is, round by round, a's TPS over b's and a's CPU per
// transaction over b's: the runs of two targets in one mode are paired by
// their index, the round they ran in. A pair without a figure on either
// side gives no ratio.
func pairedRatios(a, b []measure) (tps, cpu []float64) {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i].tps > 0 && b[i].tps > 0 {
			tps = append(tps, a[i].tps/b[i].tps)
		}
		if ac, bc := a[i].cpuPerTx(), b[i].cpuPerTx(); ac > 0 && bc > 0 {
			cpu = append(cpu, ac/bc)
		}
	}
	return tps, cpu
}

// rangeOf renders the smallest and largest of xs, or n/a.
func rangeOf(xs []float64) string {
	if len(xs) == 0 {
		return "n/a"
	}
	lo, hi := spread(xs)
	return fmt.Sprintf("%.2f–%.2f", lo, hi)
}

// cpuRatio renders a / b of two CPU figures, n/a when either is missing.
func cpuRatio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "n/a"
	}
	return ratio(a, b)
}

// cpuCell renders µs of CPU per transaction, or n/a without a reading.
func cpuCell(us float64) string {
	if us <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", us)
}

// failures renders pgbench's failed-transaction count, or that clients
// aborted (pgbench then counts no failure but the run did not complete).
func failures(n int, note string) string {
	if note != "" {
		return "clients aborted"
	}
	return fmt.Sprint(n)
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func (r *results) markdown(idleN, manyN int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# pgshield benchmark results\n\n")
	fmt.Fprintf(&b, "Produced by `make bench` on %s.\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	keys := make([]string, 0, len(r.versions))
	for k := range r.versions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "- %s: %s\n", k, r.versions[k])
	}
	b.WriteString("\n")
	b.WriteString(r.targetsMarkdown(idleN))
	b.WriteString("\n")
	b.WriteString(r.poolersMarkdown())
	b.WriteString(r.tlsMarkdown())
	b.WriteString(r.io.markdown())
	fmt.Fprintf(&b, "\n## Cost of SQL classification\n\n| mode | classification on tps | off tps | cost |\n|---|---|---|---|\n")
	for _, mode := range []string{"simple", "prepared"} {
		on, off := r.med("pgshield/classify", mode).tps, r.med("pgshield-noclassify/classify", mode).tps
		cost := "n/a"
		if off > 0 {
			cost = fmt.Sprintf("%.1f %%", (off-on)/off*100)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %s |\n", mode, on, off, cost)
	}
	fmt.Fprintf(&b, "\nIn simple mode every query text carries its own literal, so each one is a parse-cache miss: the worst case. In prepared mode the text repeats and classification is a cache hit.\n")
	b.WriteString(r.stats.markdown())
	b.WriteString(r.policy.markdown())
	b.WriteString(r.encryption.markdown())
	fmt.Fprintf(&b, "\n## Idle clients\n\n| pooler | clients | failed | RSS before KB | RSS after KB | bytes per idle client |\n|---|---|---|---|---|---|\n")
	for _, x := range []struct {
		name string
		r    idleResult
	}{{"pgshield", r.idleShield}, {"PgBouncer", r.idleBouncer}} {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %.0f |\n", x.name, x.r.clients, x.r.failed, x.r.beforeKB, x.r.afterKB, x.r.perClientBytes)
	}
	fmt.Fprintf(&b, "\n%d idle clients were logged in; RSS of the pooler process from /proc.\n", idleN)
	fmt.Fprintf(&b, "\n## %d concurrent clients on 20 server connections\n\n| pooler | connected | connect errors | queries ok | query errors | wall time | first error |\n|---|---|---|---|---|---|---|\n", manyN)
	for _, x := range []struct {
		name string
		r    manyResult
	}{{"pgshield", r.manyShield}, {"PgBouncer", r.manyBouncer}} {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %s | %s |\n", x.name, x.r.clients, x.r.connectFailed, x.r.queries, x.r.queryFailed, x.r.elapsed.Round(time.Millisecond), x.r.firstErr)
	}
	fmt.Fprintf(&b, "\nEach client logs in (all %d connected at once), then runs `select 1` three times, all clients concurrently.\n", manyN)
	b.WriteString(r.failover.markdown())
	b.WriteString(r.backups.markdown())
	return b.String()
}

// abortedNote follows a pgbench failure in the pooler comparison.
const abortedNote = "Its TPS and CPU per transaction in that mode come from runs whose clients aborted: they compare with no other figure."

// poolersMarkdown is the pooler comparison: its setup, TPS and pooler CPU
// per transaction of pgshield and PgBouncer with their ratios, and with a
// baseline pgshield the new one against it.
func (r *results) poolersMarkdown() string {
	var b strings.Builder
	targets := "pgshield and PgBouncer"
	if r.baseline {
		targets = "pgshield, PgBouncer and pgshield (baseline)"
	}
	fmt.Fprintf(&b, "Everything on one machine over loopback: PostgreSQL (pgbench scale 10), PgBouncer and pgshield, the poolers in transaction mode with 20 server connections and trust authentication. `pgbench -S -c 50 -j 2 -T %d` per run, %d rounds alternating %s (the order reversed every round); medians shown. Direct = pgbench with 20 clients straight to PostgreSQL. The machine is shared and noisy: compare ratios within this run, not with other runs.\n\n", int(r.duration.Seconds()), r.rounds, targets)
	fmt.Fprintf(&b, "Pooler CPU is the CPU time of the pooler process (user + system, all its threads: utime + stime in `/proc/<pid>/stat`, 10 ms ticks), read before and after each pgbench run, over the transactions pgbench completed (the 50 clients' logins included); the median of the runs. TPS depends on the whole machine, which pgbench and PostgreSQL share with the pooler; CPU per transaction is the pooler's own cost, which waiting for a core does not inflate.\n\n")
	b.WriteString("## Select-only throughput and pooler CPU\n\n| mode | pgshield tps | PgBouncer tps | direct tps | pgshield/PgBouncer tps | pgshield/direct tps | pgshield CPU µs/tx | PgBouncer CPU µs/tx | pgshield/PgBouncer CPU | pgshield latency ms | PgBouncer latency ms | failed (pgshield / PgBouncer) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	var notes []string
	for _, mode := range []string{"simple", "extended", "prepared"} {
		s, p, d := r.med(tShield, mode), r.med(tBouncer, mode), r.med(tDirect, mode)
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %s | %s | %s | %s | %s | %.2f | %.2f | %s / %s |\n", mode, s.tps, p.tps, d.tps, ratio(s.tps, p.tps), ratio(s.tps, d.tps), cpuCell(s.cpu), cpuCell(p.cpu), cpuRatio(s.cpu, p.cpu), s.lat, p.lat, failures(s.failed, s.note), failures(p.failed, p.note))
		if p.note != "" {
			notes = append(notes, fmt.Sprintf("PgBouncer in %s mode: %s. %s", mode, p.note, abortedNote))
		}
		if s.note != "" {
			notes = append(notes, fmt.Sprintf("pgshield in %s mode: %s. %s", mode, s.note, abortedNote))
		}
	}
	if !r.baseline {
		for _, n := range notes {
			fmt.Fprintf(&b, "\n%s\n", n)
		}
		return b.String()
	}
	b.WriteString("\n## pgshield against its baseline\n\n")
	b.WriteString("pgshield (baseline) is the `-baseline` binary (its version above), configured as pgshield and run in the same rounds; new/baseline is pgshield's figure over the baseline's. Per round, the two ran within seconds of each other: the rounds' ratios, min–max, show how far the machine's noise reaches.\n\n")
	b.WriteString("| mode | pgshield tps | pgshield (baseline) tps | new/baseline tps | rounds' new/baseline tps | pgshield CPU µs/tx | pgshield (baseline) CPU µs/tx | new/baseline CPU | rounds' new/baseline CPU | failed (new / baseline) |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, mode := range []string{"simple", "extended", "prepared"} {
		s, o := r.med(tShield, mode), r.med(tBaseline, mode)
		tr, cr := pairedRatios(r.runs[tShield+" "+mode], r.runs[tBaseline+" "+mode])
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s / %s |\n", mode, s.tps, o.tps, ratio(s.tps, o.tps), rangeOf(tr), cpuCell(s.cpu), cpuCell(o.cpu), cpuRatio(s.cpu, o.cpu), rangeOf(cr), failures(s.failed, s.note), failures(o.failed, o.note))
		if o.note != "" {
			notes = append(notes, fmt.Sprintf("pgshield (baseline) in %s mode: %s. %s", mode, o.note, abortedNote))
		}
	}
	for _, n := range notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	return b.String()
}
