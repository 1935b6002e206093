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
	runs        map[string][]measure // "target mode" → runs
	idleShield  idleResult
	idleBouncer idleResult
	manyShield  manyResult
	manyBouncer manyResult
	versions    map[string]string
	stats       statsResult
	failover    failoverResult
}

func (r *results) add(target, mode string, m measure) {
	if r.runs == nil {
		r.runs = make(map[string][]measure)
	}
	k := target + " " + mode
	r.runs[k] = append(r.runs[k], m)
}

func (r *results) med(target, mode string) (tps, lat float64, failed int, note string) {
	return summarize(r.runs[target+" "+mode])
}

// summarize gives the median TPS and latency of runs, their failed
// transactions summed, and the last pgbench failure, if any.
func summarize(runs []measure) (tps, lat float64, failed int, note string) {
	var ts, ls []float64
	for _, m := range runs {
		ts = append(ts, m.tps)
		ls = append(ls, m.latency)
		failed += m.failed
		if m.note != "" {
			note = m.note
		}
	}
	return median(ts), median(ls), failed, note
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
	fmt.Fprintf(&b, "\nEverything on one machine over loopback: PostgreSQL (pgbench scale 10), PgBouncer and pgshield, both poolers in transaction mode with 20 server connections and trust authentication. `pgbench -S -c 50 -j 2 -T %d` per run, %d rounds alternating pgshield and PgBouncer; medians shown. Direct = pgbench with 20 clients straight to PostgreSQL. The machine is shared and noisy: compare ratios within this run, not with other runs.\n\n", int(r.duration.Seconds()), r.rounds)
	fmt.Fprintf(&b, "## Select-only throughput\n\n| mode | pgshield tps | PgBouncer tps | direct tps | pgshield latency ms | PgBouncer latency ms | pgshield/PgBouncer | pgshield/direct | failed (pgshield / PgBouncer) |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, mode := range []string{"simple", "extended", "prepared"} {
		st, sl, sf, _ := r.med("pgshield", mode)
		bt, bl, bf, bnote := r.med("pgbouncer", mode)
		dt, _, _, _ := r.med("direct", mode)
		_, _, _, snote := r.med("pgshield", mode)
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %.2f | %.2f | %s | %s | %s / %s |\n", mode, st, bt, dt, sl, bl, ratio(st, bt), ratio(st, dt), failures(sf, snote), failures(bf, bnote))
		if bnote != "" {
			fmt.Fprintf(&b, "\nPgBouncer in %s mode: %s\n\n", mode, bnote)
		}
	}
	fmt.Fprintf(&b, "\n## Cost of SQL classification\n\n| mode | classification on tps | off tps | cost |\n|---|---|---|---|\n")
	for _, mode := range []string{"simple", "prepared"} {
		on, _, _, _ := r.med("pgshield/classify", mode)
		off, _, _, _ := r.med("pgshield-noclassify/classify", mode)
		cost := "n/a"
		if off > 0 {
			cost = fmt.Sprintf("%.1f %%", (off-on)/off*100)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %s |\n", mode, on, off, cost)
	}
	fmt.Fprintf(&b, "\nIn simple mode every query text carries its own literal, so each one is a parse-cache miss: the worst case. In prepared mode the text repeats and classification is a cache hit.\n")
	b.WriteString(r.stats.markdown())
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
	return b.String()
}
