package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// proc is a pooler under test.
type proc struct {
	name        string
	port        int
	metricsPort int // pgshield's metrics_listen; 0 for PgBouncer
	adminPort   int // pgshield's admin_listen; 0 for PgBouncer
	cmd         *exec.Cmd
	pid         int // of the pooler itself (not of a wrapping shell)
}

func (p *proc) stop() {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(p.pid, syscall.SIGINT)
	done := make(chan struct{})
	cmd := p.cmd
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	p.cmd = nil // stopped: a second stop does nothing
}

// rssKB reads the resident set size of the pooler process.
func (p *proc) rssKB() (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			return strconv.Atoi(strings.Fields(line)[1])
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", p.pid)
}

// runTime is the time the process's threads have spent on a CPU, to the
// nanosecond (the sum of /proc/<pid>/task/*/schedstat; /proc/<pid>/stat
// counts only 10 ms ticks).
func (p *proc) runTime() (time.Duration, error) {
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", p.pid))
	if err != nil || len(files) == 0 {
		return 0, fmt.Errorf("no schedstat for %d: %v", p.pid, err)
	}
	var sum int64
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		fs := strings.Fields(string(data))
		if len(fs) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q", f, data)
		}
		sum += ns
	}
	return time.Duration(sum), nil
}

// cpuTime is the CPU time the process has used, user and system, all its
// threads together, those that ended included: utime + stime of
// /proc/<pid>/stat, in clock ticks of 10 ms.
func (p *proc) cpuTime() (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(data)
}

// userHZ is the unit of the times in /proc/<pid>/stat (USER_HZ, which
// Linux fixes at 100 for user space whatever the kernel's tick).
const userHZ = 100

// parseStatCPU reads utime + stime from the text of /proc/<pid>/stat:
// "pid (comm) state ppid …", utime and stime the 14th and 15th fields.
// The command name may hold spaces and parentheses, so the fields are
// counted from the last ')'.
func parseStatCPU(data []byte) (time.Duration, error) {
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc stat %q: no command name", s)
	}
	fs := strings.Fields(s[i+1:]) // fs[0] is field 3, the state
	if len(fs) < 13 {
		return 0, fmt.Errorf("/proc stat %q: %d fields after the command name, want at least 13", s, len(fs))
	}
	var ticks int64
	for _, f := range fs[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("/proc stat: utime or stime %q", f)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

func freePort() (int, error) {
	ports, err := freePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// freePorts returns n distinct free loopback ports: all n are held open
// until the last is picked, so the kernel cannot hand out one twice.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func waitListening(port int, cmd *exec.Cmd, logFile string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			c.Close()
			return nil
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	data, _ := os.ReadFile(logFile)
	return fmt.Errorf("not listening on %d:\n%s", port, data)
}

// shieldOptions are the settings the bench varies between pgshield
// instances; everything else is the same for all of them.
type shieldOptions struct {
	noClassify bool // disable_classification
	// policyFile, when set, is the policy_file key (relative to the
	// configuration's directory, where launchPgshield writes it).
	policyFile string
	// cpuProfile, when set, is where the process writes its CPU profile
	// (serve -cpuprofile), at its shutdown.
	cpuProfile string
	// config is more configuration text, appended (the encryption
	// section); env, "KEY=value" pairs added to the process's environment.
	config string
	env    []string
	// pin, when set, is a CPU list the process is confined to from its
	// start (taskset -c), so that the Go runtime sizes GOMAXPROCS to it.
	pin string
}

// startPgshield runs pgshield in transaction mode with 20 server
// connections and trust authentication (as PgBouncer below); opts turns
// SQL classification off.
//
// The same configuration serves the -baseline binary, an earlier build of
// pgshield, whose parser refuses keys it does not know: keep it to keys
// that exist in the landed code.
func startPgshield(dir, tag, bin string, pg *pgcluster.Cluster, opts shieldOptions) (*proc, error) {
	var extra []string
	if opts.cpuProfile != "" {
		extra = []string{"-cpuprofile", opts.cpuProfile}
	}
	if opts.pin != "" {
		return launchPinned(dir, tag, bin, shieldBody(pg.Addr(), opts), opts.pin, extra...)
	}
	return launchPgshieldEnv(dir, tag, bin, shieldBody(pg.Addr(), opts), opts.env, extra...)
}

// shieldBody is the configuration of startPgshield but the listeners.
func shieldBody(pgAddr string, opts shieldOptions) string {
	return fmt.Sprintf(`auth_type: trust
users:
  - {name: bench, password: bench, service: api}
  - {name: admin, password: admin, admin: true}
max_client_connections: 12000
disable_classification: %v
databases:
  bench: {primary: %s, user: bench, password: bench, server_tls: {mode: disable}}
services:
  api: {max_connections: 20, min_connections: 20, pool_mode: transaction}
log: {level: warn, format: json}
`, opts.noClassify, pgAddr) + policyLine(opts.policyFile) + opts.config
}

// policyLine is the policy_file key, or nothing: a configuration without
// a policy names none, so that an earlier binary (-baseline) reads it.
func policyLine(file string) string {
	if file == "" {
		return ""
	}
	return fmt.Sprintf("policy_file: %q\n", file)
}

// withListeners puts the client, admin and metrics listeners on the
// loopback ports given in front of a configuration body.
func withListeners(client, admin, metrics int, body string) string {
	return fmt.Sprintf("listen: 127.0.0.1:%d\nadmin_listen: 127.0.0.1:%d\nmetrics_listen: 127.0.0.1:%d\n", client, admin, metrics) + body
}

// launchPgshield writes the configuration body (everything but the
// listeners) to pgshield-<tag>.yaml in dir, with client, admin and metrics
// listeners on free loopback ports of its own, so that instances running
// side by side never meet on the default ports; then starts pgshield and
// waits until it accepts clients.
func launchPgshield(dir, tag, bin, body string, extra ...string) (*proc, error) {
	return launchPgshieldEnv(dir, tag, bin, body, nil, extra...)
}

// launchPgshieldEnv is launchPgshield with env, "KEY=value" pairs, added
// to pgshield's environment.
func launchPgshieldEnv(dir, tag, bin, body string, env []string, extra ...string) (*proc, error) {
	return launchPgshieldWrapped(dir, tag, bin, body, env, nil, extra...)
}

// launchPinned is launchPgshield under taskset -c cpus.
func launchPinned(dir, tag, bin, body, cpus string, extra ...string) (*proc, error) {
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		return nil, fmt.Errorf("taskset (util-linux) is needed to pin a pooler: %w", err)
	}
	return launchPgshieldWrapped(dir, tag, bin, body, nil, []string{taskset, "-c", cpus}, extra...)
}

// launchPgshieldWrapped is launchPgshieldEnv with pgshield run by the
// command wrap when set (taskset, which execs it: the process id stays
// pgshield's).
func launchPgshieldWrapped(dir, tag, bin, body string, env, wrap []string, extra ...string) (*proc, error) {
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	cfg := withListeners(ports[0], ports[1], ports[2], body)
	path := filepath.Join(dir, "pgshield-"+tag+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logFile := filepath.Join(dir, "pgshield-"+tag+".log")
	lf, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	argv := append(append(slices.Clone(wrap), bin, "serve", "--config", path), extra...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...) // the last of a duplicate key wins
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	lf.Close() // the child holds its own descriptor
	p := &proc{name: "pgshield", port: ports[0], adminPort: ports[1], metricsPort: ports[2], cmd: cmd, pid: cmd.Process.Pid}
	if err := waitListening(p.port, cmd, logFile); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// startPgbouncer runs PgBouncer (Debian package) in transaction mode with
// 20 server connections. PgBouncer refuses to run as root, so it runs as
// the postgres user then.
func startPgbouncer(dir string, pg *pgcluster.Cluster) (*proc, error) {
	return startPgbouncerPinned(dir, "pgbouncer", pg, "")
}

// startPgbouncerPinned is startPgbouncer in the directory dir/sub, under
// taskset -c cpus when cpus is set.
func startPgbouncerPinned(dir, sub string, pg *pgcluster.Cluster, cpus string) (*proc, error) {
	return startPgbouncerWith(dir, sub, pg, cpus, "")
}

// startPgbouncerWith is startPgbouncerPinned with more [pgbouncer]
// settings (ini lines) at the end of its configuration.
func startPgbouncerWith(dir, sub string, pg *pgcluster.Cluster, cpus, more string) (*proc, error) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		return nil, fmt.Errorf("pgbouncer not installed (Debian: apt-get install pgbouncer): %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	bdir := filepath.Join(dir, sub)
	if err := os.MkdirAll(bdir, 0o777); err != nil {
		return nil, err
	}
	_ = os.Chmod(bdir, 0o777)
	ini := fmt.Sprintf(`[databases]
bench = host=127.0.0.1 port=%d dbname=bench user=bench password=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s/userlist.txt
pool_mode = transaction
default_pool_size = 20
min_pool_size = 20
max_db_connections = 20
max_client_conn = 12000
logfile = %s/pgbouncer.log
pidfile = %s/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
`, pg.Port, port, bdir, bdir, bdir) + more
	if err := os.WriteFile(filepath.Join(bdir, "pgbouncer.ini"), []byte(ini), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(bdir, "userlist.txt"), []byte(`"bench" "bench"`+"\n"), 0o644); err != nil {
		return nil, err
	}
	args := []string{filepath.Join(bdir, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "postgres"}, args...)
	}
	if cpus != "" {
		taskset, err := exec.LookPath("taskset")
		if err != nil {
			return nil, fmt.Errorf("taskset (util-linux) is needed to pin a pooler: %w", err)
		}
		args = append([]string{"-c", cpus, bin}, args...)
		bin = taskset
	}
	cmd := exec.Command(bin, args...)
	logFile := filepath.Join(bdir, "stderr.log")
	lf, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	// Enough descriptors for the scale test.
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{name: "pgbouncer", port: port, cmd: cmd, pid: cmd.Process.Pid}
	if err := waitListening(port, cmd, filepath.Join(bdir, "pgbouncer.log")); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}
