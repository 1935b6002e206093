package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// The I/O core's figures (issue: less CPU per transaction than PgBouncer,
// and a kilobyte per idle client): the added latency of one client over
// going direct, and both poolers pinned to one core. With the pooler
// comparison's CPU per transaction and TPS and the idle clients' memory
// they make the targets table.

// pinCPU is the core the pinned poolers run on.
const pinCPU = "0"

// Targets' names for the one-client and pinned runs.
const (
	tShield1   = "pgshield/1client"
	tBouncer1  = "pgbouncer/1client"
	tDirect1   = "direct/1client"
	tShieldPin = "pgshield/pinned"
	tBouncePin = "pgbouncer/pinned"
	tShield1P  = "pgshield/GOMAXPROCS=1"
	tBouncer1P = "pgbouncer/beside-GOMAXPROCS=1"
)

// latencyRounds runs pgbench -S with one client through each pooler and
// directly, in simple and extended mode, for rounds rounds in alternating
// order: the added latency of a pooler is its latency minus direct's.
func (e *env) latencyRounds(res *results, d time.Duration, rounds int) {
	say("pgbench -S, 1 client: added latency, %d rounds of %s", rounds, d)
	targets := []string{tShield1, tBouncer1, tDirect1}
	for r := 0; r < rounds; r++ {
		for _, mode := range []string{"simple", "extended"} {
			for _, name := range roundOrder(targets, r) {
				var m measure
				switch name {
				case tShield1:
					m = e.pgbenchThrough(e.shield, mode, 1, d)
				case tBouncer1:
					m = e.pgbenchThrough(e.bouncer, mode, 1, d)
				default:
					m = e.pgbenchS(e.pg.Port, mode, 1, d)
				}
				say("round %d %-9s %-18s tps %8.0f  latency %6.3f ms  failed %d %s", r+1, mode, name, m.tps, m.latency, m.failed, m.note)
				res.add(name, mode, m)
			}
		}
	}
}

// pinnedRounds starts a pgshield and a PgBouncer confined to one core
// (taskset, from their start: the Go runtime then runs one P) and runs
// pgbench -S with 50 clients through each, simple and extended, rounds
// rounds alternating. pgbench and PostgreSQL keep both cores.
func (e *env) pinnedRounds(res *results, pgshieldBin string, d time.Duration, rounds int) error {
	shield, err := startPgshield(e.dir, "pinned", pgshieldBin, e.pg, shieldOptions{pin: pinCPU})
	if err != nil {
		return fmt.Errorf("pinned pgshield: %w", err)
	}
	defer shield.stop()
	bouncer, err := startPgbouncerPinned(e.dir, "pgbouncer-pinned", e.pg, pinCPU)
	if err != nil {
		return fmt.Errorf("pinned pgbouncer: %w", err)
	}
	defer bouncer.stop()
	for _, p := range []*proc{shield, bouncer} {
		e.pgbenchS(p.port, "simple", 20, 2*time.Second)
	}
	say("pgbench -S, 50 clients, poolers pinned to CPU %s, %d rounds of %s", pinCPU, rounds, d)
	e.alternate(res, []string{tShieldPin, tBouncePin}, map[string]*proc{tShieldPin: shield, tBouncePin: bouncer}, d, rounds)
	return nil
}

// alternate runs pgbench -S with 50 clients through each target's pooler
// (through), simple and extended, for rounds rounds in alternating order,
// and records every run under its target's name.
func (e *env) alternate(res *results, targets []string, through map[string]*proc, d time.Duration, rounds int) {
	for r := 0; r < rounds; r++ {
		for _, mode := range []string{"simple", "extended"} {
			for _, name := range roundOrder(targets, r) {
				m := e.pgbenchThrough(through[name], mode, 50, d)
				say("round %d %-9s %-22s tps %8.0f  pooler cpu %.2f µs/tx  failed %d %s", r+1, mode, name, m.tps, m.cpuPerTx(), m.failed, m.note)
				res.add(name, mode, m)
			}
		}
	}
}

// oneProcRounds starts a pgshield with GOMAXPROCS=1 on both cores (one
// P, as PgBouncer runs one thread, but not confined to a core) and runs
// pgbench -S with 50 clients through it and through PgBouncer, simple and
// extended, rounds rounds alternating. It is for reading beside the
// targets: how much of the CPU per transaction is the Go scheduler's
// spinning between Ps.
func (e *env) oneProcRounds(res *results, pgshieldBin string, d time.Duration, rounds int) error {
	shield, err := startPgshield(e.dir, "oneproc", pgshieldBin, e.pg, shieldOptions{env: []string{"GOMAXPROCS=1"}})
	if err != nil {
		return fmt.Errorf("pgshield with GOMAXPROCS=1: %w", err)
	}
	defer shield.stop()
	e.pgbenchS(shield.port, "simple", 20, 2*time.Second)
	say("pgbench -S, 50 clients, pgshield with GOMAXPROCS=1, %d rounds of %s", rounds, d)
	// PgBouncer's runs here pace the rounds under a name of their own:
	// the table compares with the pooler comparison's.
	e.alternate(res, []string{tShield1P, tBouncer1P}, map[string]*proc{tShield1P: shield, tBouncer1P: e.bouncer}, d, rounds)
	return nil
}

// onlyTargets measures what the targets table needs and prints it: idle
// clients' memory, the pooler comparison, one client's latency and the
// pinned poolers.
func onlyTargets(duration time.Duration, rounds int, pgshieldBin string, idleN int) error {
	return withPoolers(pgshieldBin, func(e *env) error {
		res := &results{duration: duration, rounds: rounds}
		if err := e.targetRuns(res, pgshieldBin, duration, rounds, idleN); err != nil {
			return err
		}
		fmt.Println(res.targetsMarkdown(idleN))
		fmt.Println(res.poolersMarkdown())
		fmt.Println(res.tlsMarkdown())
		return nil
	})
}

// targetRuns runs what the targets table needs: idle clients' memory
// first, while the poolers are fresh processes (after load a warm heap
// would hide what idle clients cost), then the pooler comparison, one
// client's latency, the pinned poolers and TLS clients.
func (e *env) targetRuns(res *results, pgshieldBin string, duration time.Duration, rounds, idleN int) error {
	if err := e.measureIdle(res, idleN); err != nil {
		return err
	}
	e.poolerRounds(res, duration, rounds)
	e.latencyRounds(res, duration, rounds)
	if err := e.pinnedRounds(res, pgshieldBin, duration, rounds); err != nil {
		return err
	}
	if err := e.oneProcRounds(res, pgshieldBin, duration, rounds); err != nil {
		return err
	}
	return e.tlsRounds(res, pgshieldBin, duration, rounds)
}

// withPoolers runs f in a new environment with pgshield and PgBouncer
// started (-only scenarios).
func withPoolers(pgshieldBin string, f func(e *env) error) error {
	e, err := newEnv(context.Background())
	if err != nil {
		return err
	}
	defer e.close()
	if err := e.startPoolers(pgshieldBin, ""); err != nil {
		return err
	}
	defer e.stopPoolers()
	return f(e)
}

// measureIdle logs idleN idle clients into each pooler in turn and
// records the memory they cost.
func (e *env) measureIdle(res *results, idleN int) (err error) {
	say("%d idle clients: memory", idleN)
	if res.idleShield, err = idleMemory(e.shield, idleN); err != nil {
		return fmt.Errorf("idle clients through pgshield: %w", err)
	}
	if res.idleBouncer, err = idleMemory(e.bouncer, idleN); err != nil {
		return fmt.Errorf("idle clients through pgbouncer: %w", err)
	}
	return nil
}

// addedLatency is the median over rounds of a target's one-client
// latency minus direct's in the same round, in µs; 0 without runs.
func (r *results) addedLatency(target, mode string) float64 {
	return addedOver(r.runs[target+" "+mode], r.runs[tDirect1+" "+mode])
}

// addedOver is the median over rounds of the latency of runs a minus that
// of runs d of the same round, in µs; 0 without runs.
func addedOver(a, d []measure) float64 {
	var xs []float64
	for i := 0; i < len(a) && i < len(d); i++ {
		if a[i].latency > 0 && d[i].latency > 0 {
			xs = append(xs, (a[i].latency-d[i].latency)*1000)
		}
	}
	return median(xs)
}

// targetsMarkdown is the targets table: each figure for pgshield
// and PgBouncer from this run, their ratio, the target and whether this
// run meets it.
func (r *results) targetsMarkdown(idleN int) string {
	var b strings.Builder
	b.WriteString("## Targets of the I/O core\n\n")
	b.WriteString("Each figure for pgshield and PgBouncer from this run, side by side (medians of the rounds; the sections below give the runs). Added latency is pgbench's average latency at one client minus direct's in the same round. Pinned: both poolers started under `taskset -c " + pinCPU + "` (pgshield's Go runtime then runs one P), pgbench and PostgreSQL on both cores. GOMAXPROCS=1: pgshield with one P but not confined, beside the pooler comparison's PgBouncer.\n\n")
	b.WriteString("| figure | pgshield | PgBouncer | pgshield / PgBouncer | target | met |\n|---|---|---|---|---|---|\n")
	row := func(figure string, s, p float64, unit string, target string, met bool, ok bool) {
		verdict := "no"
		switch {
		case !ok:
			verdict = "n/a"
		case met:
			verdict = "yes"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", figure, cell(s, unit), cell(p, unit), cpuRatio(s, p), target, verdict)
	}
	for _, mode := range []string{"simple", "extended", "prepared"} {
		s, p := r.med(tShield, mode), r.med(tBouncer, mode)
		ok := s.cpu > 0 && p.cpu > 0 && p.note == ""
		target := "≤ 1.0"
		if p.note != "" {
			target = "≤ 1.0 (PgBouncer's clients aborted: no comparison)"
		}
		row("CPU per transaction, "+mode, s.cpu, p.cpu, "µs", target, ok && s.cpu <= p.cpu, ok)
	}
	for _, mode := range []string{"simple", "extended"} {
		s, p := r.med(tShield, mode), r.med(tBouncer, mode)
		row("TPS, 50 clients on 20 servers, "+mode, s.tps, p.tps, "", "≥ 1.05", s.tps >= 1.05*p.tps, s.tps > 0 && p.tps > 0)
	}
	for _, mode := range []string{"simple", "extended"} {
		s, p := r.addedLatency(tShield1, mode), r.addedLatency(tBouncer1, mode)
		row("added latency at 1 client, "+mode, s, p, "µs", "≤ 1.0", p > 0 && s <= p, p > 0)
	}
	fmt.Fprintf(&b, "| RSS per idle client at %d idle clients | %.0f B | %.0f B | %s | ≤ 2048 B | %s |\n", idleN, r.idleShield.perClientBytes, r.idleBouncer.perClientBytes, cpuRatio(r.idleShield.perClientBytes, r.idleBouncer.perClientBytes), yesNo(r.idleShield.clients > 0 && r.idleShield.perClientBytes <= 2048))
	for _, mode := range []string{"simple", "extended"} {
		s, p := r.med(tShieldPin, mode), r.med(tBouncePin, mode)
		row("pinned to one core: TPS, "+mode, s.tps, p.tps, "", "≥ 1.0", s.tps >= p.tps, s.tps > 0 && p.tps > 0)
	}
	for _, mode := range []string{"simple", "extended"} {
		s, p := r.med(tShieldPin, mode), r.med(tBouncePin, mode)
		fmt.Fprintf(&b, "| pinned to one core: CPU per transaction, %s (for reading) | %s | %s | %s | — | — |\n", mode, cell(s.cpu, "µs"), cell(p.cpu, "µs"), cpuRatio(s.cpu, p.cpu))
	}
	for _, mode := range []string{"simple", "extended"} {
		s, p := r.med(tShield1P, mode), r.med(tBouncer, mode)
		fmt.Fprintf(&b, "| GOMAXPROCS=1, both cores: CPU per transaction, %s (for reading) | %s | %s | %s | — | — |\n", mode, cell(s.cpu, "µs"), cell(p.cpu, "µs"), cpuRatio(s.cpu, p.cpu))
		fmt.Fprintf(&b, "| GOMAXPROCS=1, both cores: TPS, %s (for reading) | %s | %s | %s | — | — |\n", mode, cell(s.tps, ""), cell(p.tps, ""), cpuRatio(s.tps, p.tps))
	}
	var failed []string
	for _, t := range []string{tShield1, tBouncer1, tShieldPin, tBouncePin, tShield1P} {
		for _, mode := range []string{"simple", "extended"} {
			if s := r.med(t, mode); s.failed > 0 || s.note != "" {
				failed = append(failed, fmt.Sprintf("%s %s: %s", t, mode, failures(s.failed, s.note)))
			}
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(&b, "\nFailed transactions in these runs: %s.\n", strings.Join(failed, "; "))
	}
	return b.String()
}

// cell renders a figure with its unit, or n/a when there is none.
func cell(x float64, unit string) string {
	if x <= 0 {
		return "n/a"
	}
	if unit == "" {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.1f %s", x, unit)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
