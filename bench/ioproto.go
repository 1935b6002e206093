package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The I/O-model prototype (bench/ioproto): the transaction-mode hot path
// forwarded on goroutines (as pgshield does) and on one edge-triggered
// epoll loop, beside PgBouncer and pgshield, in one run. docs/design-io.md
// records the figures and what was decided.

// The prototype's targets.
const (
	tProtoGo    = "ioproto-goroutine"
	tProtoEpoll = "ioproto-epoll"
)

// ioModels are the I/O-model comparison's targets, in the order of the
// first round.
var ioModels = []string{tShield, tProtoGo, tProtoEpoll, tBouncer}

// ioResult is the I/O-model comparison's runs.
type ioResult struct {
	runs     runSet
	duration time.Duration
	rounds   int
	err      error
}

// startIOProto builds the prototype into dir and starts it with model
// against e's PostgreSQL, 20 server connections.
func startIOProto(e *env, bin, model string) (*proc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logFile := filepath.Join(e.dir, "ioproto-"+model+".log")
	lf, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-model", model, "-listen", fmt.Sprintf("127.0.0.1:%d", port),
		"-server", e.pg.Addr(), "-user", "bench", "-password", "bench", "-database", "bench", "-servers", "20")
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	lf.Close()
	p := &proc{name: "ioproto-" + model, port: port, cmd: cmd, pid: cmd.Process.Pid}
	if err := waitListening(port, cmd, logFile); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// ioCompare runs pgbench -S (simple and extended: the prototype keeps no
// prepared statements) with 50 clients and with one, through pgshield,
// both prototypes and PgBouncer, rounds rounds in alternating order, and
// one client direct for the added latency.
func ioCompare(e *env, duration time.Duration, rounds int) (r ioResult) {
	r.duration, r.rounds = duration, rounds
	bin := filepath.Join(e.dir, "ioproto")
	say("building bench/ioproto")
	if out, err := exec.Command("go", "build", "-o", bin, "./bench/ioproto").CombinedOutput(); err != nil {
		r.err = fmt.Errorf("go build ./bench/ioproto: %v\n%s", err, out)
		return r
	}
	procs := map[string]*proc{tShield: e.shield, tBouncer: e.bouncer}
	for _, m := range []struct{ target, model string }{{tProtoGo, "goroutine"}, {tProtoEpoll, "epoll"}} {
		p, err := startIOProto(e, bin, m.model)
		if err != nil {
			r.err = fmt.Errorf("ioproto -model %s: %w", m.model, err)
			return r
		}
		defer p.stop()
		procs[m.target] = p
	}
	for _, name := range ioModels {
		e.pgbenchS(procs[name].port, "simple", 20, 2*time.Second)
	}
	say("I/O models: pgbench -S, 50 clients and 1, %d rounds of %s", rounds, duration)
	for round := 0; round < rounds; round++ {
		for _, mode := range []string{"simple", "extended"} {
			for _, clients := range []int{50, 1} {
				workload := fmt.Sprintf("%d", clients)
				for _, name := range roundOrder(ioModels, round) {
					m := e.pgbenchThrough(procs[name], mode, clients, duration)
					say("round %d %-9s %2d clients %-18s tps %8.0f  latency %6.3f ms  cpu %.2f µs/tx  failed %d %s", round+1, mode, clients, name, m.tps, m.latency, m.cpuPerTx(), m.failed, m.note)
					r.runs.add(workload, mode, name, m)
				}
				if clients == 1 {
					m := e.pgbenchS(e.pg.Port, mode, 1, duration)
					r.runs.add(workload, mode, tDirect, m)
				}
			}
		}
	}
	return r
}

// onlyIOProto runs the I/O-model comparison alone and prints its section.
func onlyIOProto(duration time.Duration, rounds int, pgshieldBin string) error {
	return withPoolers(pgshieldBin, func(e *env) error {
		r := ioCompare(e, duration, rounds)
		fmt.Println(r.markdown())
		return r.err
	})
}

func (r ioResult) markdown() string {
	var b strings.Builder
	b.WriteString("\n## I/O models: the prototype\n\n")
	if r.err != nil {
		fmt.Fprintf(&b, "Not measured: %v\n", r.err)
		return b.String()
	}
	fmt.Fprintf(&b, "`bench/ioproto` is a minimal transaction-mode pooler (20 server connections, a server given back at an idle ReadyForQuery, nothing decoded but frame headers) built twice: on a goroutine per client reading the server inline (pgshield's model) and on one edge-triggered epoll loop on a locked OS thread (`golang.org/x/sys/unix`: one read per readable event, one write per flush, a shared read buffer). Beside them, in the same rounds, pgshield and PgBouncer. `pgbench -S -j 2 -T %d`, %d rounds, the order reversed every round; medians. CPU is the process's CPU time per transaction; added latency is the one-client latency minus direct's in the same round.\n\n", int(r.duration.Seconds()), r.rounds)
	b.WriteString("| target | mode | 50 clients tps | CPU µs/tx | CPU / PgBouncer | 1 client CPU µs/tx | added latency µs | added latency / PgBouncer | failed |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, mode := range []string{"simple", "extended"} {
		bouncer := summarize(r.runs.of("50", mode, tBouncer))
		bouncerLat := r.added(mode, tBouncer)
		for _, name := range ioModels {
			s := summarize(r.runs.of("50", mode, name))
			one := summarize(r.runs.of("1", mode, name))
			lat := r.added(mode, name)
			fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s | %s | %.0f | %s | %s |\n", name, mode, s.tps, cpuCell(s.cpu), cpuRatio(s.cpu, bouncer.cpu), cpuCell(one.cpu), lat, cpuRatio(lat, bouncerLat), failures(s.failed+one.failed, s.note+one.note))
		}
	}
	return b.String()
}

// added is a target's median one-client latency over direct's, round by
// round, in µs.
func (r ioResult) added(mode, target string) float64 {
	return addedOver(r.runs.of("1", mode, target), r.runs.of("1", mode, tDirect))
}
