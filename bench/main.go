package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

func main() {
	duration := flag.Duration("duration", 10*time.Second, "length of each pgbench run")
	rounds := flag.Int("rounds", 3, "rounds, alternating the targets")
	out := flag.String("out", "bench/RESULTS.md", "where to write the results")
	pgshieldBin := flag.String("pgshield", "bin/pgshield", "pgshield binary")
	idle := flag.Int("idle-clients", 10000, "idle clients for the memory measure")
	many := flag.Int("many-clients", 10000, "concurrent clients for the scale test")
	baseline := flag.String("baseline", "", "another pgshield binary, run as a third target in the pooler comparison (pgshield (baseline))")
	only := flag.String("only", "", "run one scenario and print it: tls, ioproto, targets, poolers, failover, stats, policy, encryption or backup")
	profiles := flag.String("profile", "", "a `directory` where the policy and encryption scenarios' pgshield processes write CPU profiles (policy-on.prof, policy-off.prof, encryption-on.prof, encryption-off.prof)")
	var bo backupOptions
	flag.IntVar(&bo.scale, "backup-scale", 50, "pgbench scale of the backup scenario's database")
	flag.IntVar(&bo.rounds, "backup-rounds", 3, "rounds of the backup scenario (a full backup and a restore by each tool, the order alternating)")
	flag.DurationVar(&bo.load, "backup-load", 20*time.Second, "how long the backup scenario's write load runs before the primary's data directory is destroyed")
	flag.Parse()
	var err error
	switch *only {
	case "tls":
		err = onlyTLS(*duration, *rounds, *pgshieldBin)
	case "ioproto":
		err = onlyIOProto(*duration, *rounds, *pgshieldBin)
	case "targets":
		err = onlyTargets(*duration, *rounds, *pgshieldBin, *idle)
	case "poolers":
		err = onlyPoolers(*duration, *rounds, *pgshieldBin, *baseline)
	case "failover":
		err = onlyFailover(*pgshieldBin)
	case "stats":
		err = onlyStats(*rounds, *pgshieldBin)
	case "policy":
		err = onlyPolicy(*duration, *rounds, *pgshieldBin, *profiles)
	case "encryption":
		err = onlyEncryption(*duration, *rounds, *pgshieldBin, *profiles)
	case "backup":
		err = onlyBackup(*pgshieldBin, bo)
	case "":
		err = run(*duration, *rounds, *out, *pgshieldBin, *baseline, *idle, *many, bo)
	default:
		err = fmt.Errorf("-only %q: want tls, ioproto, targets, poolers, failover, stats, policy, encryption or backup", *only)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func onlyFailover(pgshieldBin string) error {
	dir, err := benchDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	say("failover: primary and synchronous replica, 20 writers, pg_ctl stop -m immediate")
	f := failover(dir, pgshieldBin)
	fmt.Println(f.markdown())
	return f.err
}

// onlyPoolers runs the pooler comparison alone (pgshield, PgBouncer,
// direct and, with -baseline, the baseline pgshield) and prints its
// section.
func onlyPoolers(duration time.Duration, rounds int, pgshieldBin, baselineBin string) error {
	e, err := newEnv(context.Background())
	if err != nil {
		return err
	}
	defer e.close()
	if err := e.startPoolers(pgshieldBin, baselineBin); err != nil {
		return err
	}
	defer e.stopPoolers()
	res := &results{duration: duration, rounds: rounds, baseline: e.baseline != nil}
	e.poolerRounds(res, duration, rounds)
	fmt.Println(res.poolersMarkdown())
	return nil
}

func onlyStats(rounds int, pgshieldBin string) error {
	e, err := newEnv(context.Background())
	if err != nil {
		return err
	}
	defer e.close()
	s := statsCost(e, pgshieldBin, rounds)
	fmt.Println(s.markdown())
	return s.err
}

// env holds everything one bench run started.
type env struct {
	dir       string
	pg        *pgcluster.Cluster
	pgbench   string
	shield    *proc // classification on
	shieldOff *proc // classification off
	baseline  *proc // the -baseline binary, configured as shield; or nil
	bouncer   *proc
	log       *strings.Builder
	// profiles, when set, is a directory where the pgshield processes of
	// the policy and encryption scenarios write CPU profiles (-profile).
	profiles string
}

// benchDir makes a new temporary directory for a run, open to the
// postgres user (PostgreSQL and PgBouncer run as it when the bench runs
// as root).
func benchDir() (string, error) {
	dir, err := os.MkdirTemp("", "pgshield-bench-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

func say(format string, a ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...) }

// newEnv starts PostgreSQL in a new temporary directory with the pgbench
// tables (scale 10) in database bench, owned by role bench.
func newEnv(ctx context.Context) (e *env, err error) {
	dir, err := benchDir()
	if err != nil {
		return nil, err
	}
	e = &env{dir: dir, log: &strings.Builder{}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	say("starting PostgreSQL")
	e.pg, err = pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "pg"), Settings: map[string]string{"max_connections": "300"}})
	if err != nil {
		return nil, err
	}
	if err := e.pg.CreateRole(ctx, "bench", "bench", true); err != nil {
		return nil, err
	}
	if err := e.pg.CreateDatabase(ctx, "bench", "bench"); err != nil {
		return nil, err
	}
	if e.pgbench, err = tool("pgbench"); err != nil {
		return nil, err
	}
	say("pgbench -i -s 10")
	if out, err := e.pgbenchCmd(e.pg.Port, "-i", "-s", "10", "-q").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgbench -i: %v\n%s", err, out)
	}
	return e, nil
}

// close removes PostgreSQL and the directory newEnv made.
func (e *env) close() {
	if e.pg != nil {
		e.pg.Remove()
	}
	os.RemoveAll(e.dir)
}

// startPoolers starts pgshield with classification on and off, PgBouncer
// and, given baselineBin, the baseline pgshield configured as the first.
func (e *env) startPoolers(pgshieldBin, baselineBin string) (err error) {
	defer func() {
		if err != nil {
			e.stopPoolers()
		}
	}()
	if e.shield, err = startPgshield(e.dir, "on", pgshieldBin, e.pg, shieldOptions{}); err != nil {
		return err
	}
	if e.shieldOff, err = startPgshield(e.dir, "off", pgshieldBin, e.pg, shieldOptions{noClassify: true}); err != nil {
		return err
	}
	if baselineBin != "" {
		if e.baseline, err = startPgshield(e.dir, "baseline", baselineBin, e.pg, shieldOptions{}); err != nil {
			return fmt.Errorf("baseline pgshield %s: %w", baselineBin, err)
		}
	}
	if e.bouncer, err = startPgbouncer(e.dir, e.pg); err != nil {
		return err
	}
	return nil
}

func (e *env) stopPoolers() {
	for _, p := range []*proc{e.shield, e.shieldOff, e.baseline, e.bouncer} {
		p.stop()
	}
}

// The targets of the pooler comparison, by the names results files their
// runs under.
const (
	tShield   = "pgshield"
	tBouncer  = "pgbouncer"
	tBaseline = "pgshield-baseline"
	tDirect   = "direct"
)

// roundOrder is the order of the poolers in round r (from 0): as given in
// even rounds, reversed in odd ones, so that over an even number of rounds
// every target has the same mean position and every pair has run in both
// orders equally often, and no target always runs on a warmer machine.
func roundOrder(targets []string, r int) []string {
	out := slices.Clone(targets)
	if r%2 == 1 {
		slices.Reverse(out)
	}
	return out
}

// poolerRounds runs the pooler comparison: pgbench -S with 50 clients
// through each pooler (and the baseline, when there is one), 20 clients
// direct, every mode, for rounds rounds, with each pooler's CPU time read
// before and after each run.
func (e *env) poolerRounds(res *results, duration time.Duration, rounds int) {
	targets := []string{tShield, tBouncer}
	if e.baseline != nil {
		// The two pgshields at either end: they swap places every round.
		targets = append(targets, tBaseline)
	}
	// A short unmeasured run per target first: a pooler that sat idle
	// otherwise pays its warm-up inside the first measured run.
	warm := append(slices.Clone(targets), tDirect)
	if e.shieldOff != nil {
		warm = append(warm, "pgshield-noclassify")
	}
	for _, name := range warm {
		e.pgbenchS(e.portOf(name), "simple", 20, 2*time.Second)
	}
	say("pgbench -S, 50 clients, %d rounds of %s per target and mode", rounds, duration)
	for r := 0; r < rounds; r++ {
		for _, mode := range []string{"simple", "extended", "prepared"} {
			for _, name := range append(roundOrder(targets, r), tDirect) {
				var m measure
				if name == tDirect {
					m = e.pgbenchS(e.pg.Port, mode, 20, duration)
				} else {
					m = e.pgbenchThrough(e.procOf(name), mode, 50, duration)
				}
				cpu := "n/a"
				if m.cpuRead {
					cpu = fmt.Sprintf("%.2f", m.cpuPerTx())
				}
				say("round %d %-9s %-17s tps %8.0f  latency %6.2f ms  pooler cpu %s µs/tx  failed %d %s", r+1, mode, name, m.tps, m.latency, cpu, m.failed, m.note)
				res.add(name, mode, m)
			}
		}
	}
}

// pgbenchThrough runs pgbench -S through pooler p and records the CPU
// time p used meanwhile.
func (e *env) pgbenchThrough(p *proc, mode string, clients int, d time.Duration) measure {
	return p.cpuDuring(func() measure { return e.pgbenchS(p.port, mode, clients, d) })
}

// cpuDuring runs run and records in its measure the CPU time p used
// meanwhile.
func (p *proc) cpuDuring(run func() measure) measure {
	before, errBefore := p.cpuTime()
	m := run()
	after, errAfter := p.cpuTime()
	if errBefore == nil && errAfter == nil {
		m.cpu, m.cpuRead = after-before, true
	}
	return m
}

func run(duration time.Duration, rounds int, outPath, pgshieldBin, baselineBin string, idleN, manyN int, bo backupOptions) error {
	e, err := newEnv(context.Background())
	if err != nil {
		return err
	}
	defer e.close()
	dir := e.dir

	if err := e.startPoolers(pgshieldBin, baselineBin); err != nil {
		return err
	}
	defer e.stopPoolers()

	res := &results{duration: duration, rounds: rounds, baseline: e.baseline != nil}
	if err := e.targetRuns(res, pgshieldBin, duration, rounds, idleN); err != nil {
		return err
	}
	res.io = ioCompare(e, duration, rounds)
	say("SQL classification on versus off (simple and prepared)")
	for r := 0; r < rounds; r++ {
		for _, mode := range []string{"simple", "prepared"} {
			for _, name := range []string{"pgshield", "pgshield-noclassify"} {
				m := e.pgbenchS(e.portOf(name), mode, 50, duration)
				say("round %d %-9s %-20s tps %8.0f", r+1, mode, name, m.tps)
				res.add(name+"/classify", mode, m)
			}
		}
	}
	res.stats = statsCost(e, pgshieldBin, rounds)
	res.policy = policyCost(e, pgshieldBin, duration, rounds)
	res.encryption = encryptionCost(e, pgshieldBin, duration, rounds)

	say("%d concurrent clients", manyN)
	res.manyShield = manyClients(e.shield.port, manyN)
	res.manyBouncer = manyClients(e.bouncer.port, manyN)

	say("failover: primary and synchronous replica, 20 writers, pg_ctl stop -m immediate")
	res.failover = failover(dir, pgshieldBin)
	res.backups = backupCompare(dir, pgshieldBin, bo)

	res.versions = versions(e, pgshieldBin, baselineBin)
	report := res.markdown(idleN, manyN)
	fmt.Println(report)
	return os.WriteFile(outPath, []byte(report), 0o644)
}

func (e *env) portOf(name string) int {
	if p := e.procOf(name); p != nil {
		return p.port
	}
	return e.pg.Port
}

// procOf is the pooler of a target; nil for direct.
func (e *env) procOf(name string) *proc {
	switch name {
	case tShield:
		return e.shield
	case "pgshield-noclassify":
		return e.shieldOff
	case tBaseline:
		return e.baseline
	case tBouncer:
		return e.bouncer
	}
	return nil
}

func (e *env) pgbenchCmd(port int, args ...string) *exec.Cmd {
	all := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "bench"}, args...)
	all = append(all, "bench")
	cmd := exec.Command(e.pgbench, all...)
	cmd.Env = append(os.Environ(), "PGPASSWORD=bench", "PGSSLMODE=disable")
	return cmd
}

// measure is one pgbench run.
type measure struct {
	tps, latency float64
	failed       int
	txns         int // transactions pgbench completed
	note         string
	// cpu is the CPU time the pooler used during the run, when cpuRead.
	cpu     time.Duration
	cpuRead bool
}

// cpuPerTx is the pooler's CPU time per transaction in microseconds, 0
// without a reading or a transaction.
func (m measure) cpuPerTx() float64 {
	if !m.cpuRead || m.txns <= 0 {
		return 0
	}
	return float64(m.cpu.Nanoseconds()) / 1e3 / float64(m.txns)
}

var (
	reTPS     = regexp.MustCompile(`tps = ([0-9.]+) \(without initial`)
	reLatency = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
	reFailed  = regexp.MustCompile(`number of failed transactions: ([0-9]+)`)
	reTxns    = regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	reError   = regexp.MustCompile(`(?m)^pgbench: error: (.*)$`)
)

// pgbenchS runs pgbench -S; extra are more pgbench options.
func (e *env) pgbenchS(port int, mode string, clients int, d time.Duration, extra ...string) measure {
	args := append([]string{"-n", "-S", "-M", mode, "-c", strconv.Itoa(clients), "-j", "2", "-T", strconv.Itoa(int(d.Seconds()))}, extra...)
	return e.runPgbench(port, args...)
}

// runPgbench runs pgbench with args (connection options and the database
// added) and reads its figures.
func (e *env) runPgbench(port int, args ...string) measure {
	out, err := e.pgbenchCmd(port, args...).CombinedOutput()
	return parsePgbench(out, err)
}

// parsePgbench reads TPS, latency, failed and completed transactions from
// pgbench's output; err is how pgbench ended.
func parsePgbench(out []byte, err error) measure {
	m := measure{}
	if s := reTPS.FindSubmatch(out); s != nil {
		m.tps, _ = strconv.ParseFloat(string(s[1]), 64)
	}
	if s := reLatency.FindSubmatch(out); s != nil {
		m.latency, _ = strconv.ParseFloat(string(s[1]), 64)
	}
	if s := reFailed.FindSubmatch(out); s != nil {
		m.failed, _ = strconv.Atoi(string(s[1]))
	}
	if s := reTxns.FindSubmatch(out); s != nil {
		m.txns, _ = strconv.Atoi(string(s[1]))
	}
	if err != nil {
		m.note = "pgbench failed"
		if s := reError.FindSubmatch(out); s != nil {
			m.note = "pgbench: " + string(s[1])
		}
	}
	return m
}

func tool(name string) (string, error) {
	if dir, err := pgcluster.BinDir(); err == nil {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p, nil
		}
	}
	return exec.LookPath(name)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func versions(e *env, pgshieldBin, baselineBin string) map[string]string {
	v := map[string]string{"go": runtime.Version(), "cpus": strconv.Itoa(runtime.NumCPU())}
	if out, err := exec.Command(e.pgbench, "--version").Output(); err == nil {
		v["pgbench"] = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("pgbouncer", "--version").Output(); err == nil {
		v["pgbouncer"] = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
	}
	if out, err := exec.Command(pgshieldBin, "version").Output(); err == nil {
		v["pgshield"] = strings.TrimPrefix(strings.TrimSpace(string(out)), "pgshield ")
	} else if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		v["pgshield"] = strings.TrimSpace(string(out))
	}
	if baselineBin != "" {
		if out, err := exec.Command(baselineBin, "version").Output(); err == nil {
			v["pgshield (baseline)"] = strings.TrimPrefix(strings.TrimSpace(string(out)), "pgshield ")
		} else {
			v["pgshield (baseline)"] = "unknown (no `version` output)"
		}
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "model name") {
				v["cpu"] = strings.TrimSpace(strings.SplitN(sc.Text(), ":", 2)[1])
				break
			}
		}
		f.Close()
	}
	return v
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// medianCI is a distribution-free confidence interval of the median of
// the population xs were drawn from: the k-th smallest and k-th largest of
// xs, with k the largest rank for which the chance that the median lies
// outside is at most 1 − conf (from the binomial distribution of how many
// samples fall below the median). With too few samples for conf it
// returns the smallest and largest, and their actual coverage.
func medianCI(xs []float64, conf float64) (lo, hi, coverage float64) {
	n := len(xs)
	if n == 0 {
		return 0, 0, 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	// tail(k) = P(Binomial(n, ½) ≤ k−1), the chance the median is below
	// the k-th smallest sample.
	tail := func(k int) float64 {
		p, c := 0.0, 1.0 // c = C(n, i)
		for i := 0; i < k; i++ {
			p += c
			c = c * float64(n-i) / float64(i+1)
		}
		return p / math.Pow(2, float64(n))
	}
	k := 1
	for k+1 <= (n+1)/2 && 2*tail(k+1) <= 1-conf {
		k++
	}
	return s[k-1], s[n-k], 1 - 2*tail(k)
}
