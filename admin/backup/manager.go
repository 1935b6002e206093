package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// Source is how backups reach PostgreSQL: the primary of one database, as a
// replication-capable role (pg_basebackup, pg_receivewal) and as a normal
// one (the same credentials, for pg_switch_wal, pg_create_restore_point,
// the replication slot and the server's version).
type Source struct {
	Host     string
	Port     int
	User     string
	Password string
	DBName   string
	// Params are further libpq keywords (sslmode, sslrootcert, sslcert,
	// sslkey, connect_timeout, ...), passed to the PostgreSQL programs and
	// to pgx alike.
	Params map[string]string
}

// addr names the server for messages and for telling a change of primary.
func (s Source) addr() string { return s.Host + ":" + strconv.Itoa(s.Port) }

// same reports whether s and o are the same server and role.
func (s Source) same(o Source) bool {
	return s.Host == o.Host && s.Port == o.Port && s.User == o.User
}

// conninfo is a libpq keyword/value connection string. The password goes
// in only for pgx: the programs get it through PGPASSWORD, never on a
// command line that ps shows.
func (s Source) conninfo(withPassword bool) string {
	kv := map[string]string{"host": s.Host, "user": s.User}
	if s.Port != 0 {
		kv["port"] = strconv.Itoa(s.Port)
	}
	if s.DBName != "" {
		kv["dbname"] = s.DBName
	}
	for k, v := range s.Params {
		kv[k] = v
	}
	if withPassword && s.Password != "" {
		kv["password"] = s.Password
	}
	keys := make([]string, 0, len(kv))
	for k, v := range kv {
		if v != "" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + connValue(kv[k])
	}
	return strings.Join(parts, " ")
}

// env is what a PostgreSQL program needs beside its arguments to log in.
func (s Source) env() []string {
	if s.Password == "" {
		return nil
	}
	return []string{"PGPASSWORD=" + s.Password}
}

// connValue quotes a libpq connection-string value when it needs it.
func connValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\\t\n\r=") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// connect opens a normal connection to the source.
func (s Source) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, s.conninfo(true))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s as %s: %w", s.addr(), s.User, err)
	}
	return conn, nil
}

// Config configures a Manager.
type Config struct {
	// Repo is where backups, WAL and the catalog go.
	Repo Repository
	// Key seals every object.
	Key Key
	// PGBin is the directory of pg_basebackup, pg_receivewal,
	// pg_verifybackup, pg_amcheck, pg_ctl, pg_controldata and postgres.
	// "" looks for them: the directory of pg_ctl on PATH, else
	// `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin.
	PGBin string
	// Source is the current primary; it is asked again whenever a program
	// starts, so that backups follow a failover.
	Source func(ctx context.Context) (Source, error)
	// Slot is the WAL archiver's replication slot, "pgshield_wal" when
	// empty.
	Slot string
	// StagingDir is pg_receivewal's directory: segments land there and
	// are removed once uploaded. RunWAL needs it.
	StagingDir string
	// Cluster names the database cluster in the repository (the
	// configured database's name), so that several can share one:
	// letters, digits, '.', '_' and '-'.
	Cluster string
	// ArchiveInterval bounds how long written WAL may wait before it is
	// in the repository (the RPO): when the oldest WAL not yet archived is
	// that old, RunWAL forces a segment switch (pg_switch_wal()). 0 means
	// 15 minutes, the operations guide's; negative never forces one.
	ArchiveInterval time.Duration
	// WALWait bounds how long BackupIncremental and SwitchWAL wait for a
	// switched segment to reach the repository; 0 means 5 minutes.
	WALWait time.Duration
	// ScratchDir is where Verify restores its scratch copies; "" is the
	// system's temporary directory. It needs room for a whole cluster.
	ScratchDir string
	// ConfigFile and WALFetchCommand are the defaults of the
	// RestoreOptions fields of those names for Manager.Restore.
	ConfigFile      string
	WALFetchCommand string
	// Now is the clock of retention and of the catalog's times; time.Now
	// when nil.
	Now func() time.Time
}

// DefaultSlot is the WAL archiver's replication slot unless Config.Slot
// says otherwise.
const DefaultSlot = "pgshield_wal"

const (
	defaultArchiveInterval = 15 * time.Minute
	defaultWALWait         = 5 * time.Minute
)

// Manager takes, lists, restores, verifies and expires the backups of one
// database cluster, and archives its WAL. Its methods may be called from
// several goroutines: backups and DeleteExpired run one at a time (a
// second waits for the first), restores and verifications run beside
// them.
type Manager struct {
	cfg Config
	log *zap.Logger
	as  *osUser // nil: run PostgreSQL's programs as ourselves
	bin string

	// sem serializes BackupFull, BackupIncremental and DeleteExpired.
	sem chan struct{}
	// catalogMu serializes the manifest rewrites of Verify with
	// DeleteExpired, so that a rewrite cannot bring back a deleted backup.
	catalogMu sync.Mutex

	mu      sync.Mutex
	running map[string]bool // ids of the backups being taken
	inUse   map[string]int  // ids being restored or verified: DeleteExpired keeps them
	wal     walState
}

// NewManager checks cfg and makes a Manager. It starts nothing: RunWAL
// archives WAL, the other methods do one job each.
func NewManager(cfg Config, log *zap.Logger) (*Manager, error) {
	if cfg.Repo == nil {
		return nil, errors.New("backup: no repository")
	}
	if cfg.Key.ID == "" {
		return nil, fmt.Errorf("backup: no key (%s)", KeyEnv)
	}
	if err := checkCluster(cfg.Cluster); err != nil {
		return nil, err
	}
	if cfg.Slot == "" {
		cfg.Slot = DefaultSlot
	}
	if !validSlot(cfg.Slot) {
		return nil, fmt.Errorf("backup: replication slot %q: use lowercase letters, digits and '_' (at most 63)", cfg.Slot)
	}
	if cfg.ArchiveInterval == 0 {
		cfg.ArchiveInterval = defaultArchiveInterval
	}
	if cfg.WALWait <= 0 {
		cfg.WALWait = defaultWALWait
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if log == nil {
		log = zap.NewNop()
	}
	as, err := lookupOSUser()
	if err != nil {
		return nil, err
	}
	bin := cfg.PGBin
	if bin == "" {
		bin = findPGBin("")
	}
	return &Manager{
		cfg:     cfg,
		log:     log.With(zap.String("cluster", cfg.Cluster)),
		as:      as,
		bin:     bin,
		sem:     make(chan struct{}, 1),
		running: map[string]bool{},
		inUse:   map[string]int{},
	}, nil
}

// acquire takes the backup lock, waiting for a running backup to end.
func (m *Manager) acquire(ctx context.Context) error {
	select {
	case m.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("backup: waiting for the running backup to end: %w", ctx.Err())
	}
}

func (m *Manager) release() { <-m.sem }

// source asks Config.Source for the current primary.
func (m *Manager) source(ctx context.Context) (Source, error) {
	if m.cfg.Source == nil {
		return Source{}, errors.New("backup: no source database configured")
	}
	src, err := m.cfg.Source(ctx)
	if err != nil {
		return Source{}, fmt.Errorf("backup: finding the primary: %w", err)
	}
	if src.Host == "" {
		return Source{}, errors.New("backup: the source has no host")
	}
	return src, nil
}

func (m *Manager) now() time.Time { return m.cfg.Now().UTC() }

func (m *Manager) use(id string) func() {
	m.mu.Lock()
	m.inUse[id]++
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		if m.inUse[id]--; m.inUse[id] <= 0 {
			delete(m.inUse, id)
		}
		m.mu.Unlock()
	}
}

func (m *Manager) setRunning(id string, on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if on {
		m.running[id] = true
	} else {
		delete(m.running, id)
	}
}

// Progress reports a long operation: done and total in bytes (total 0:
// unknown), and what it does now. It is called from the goroutine of the
// operation, and must not block for long.
type Progress func(done, total int64, detail string)

func (p Progress) report(done, total int64, detail string) {
	if p != nil {
		p(done, total, detail)
	}
}

// progressWriter counts the bytes written through it and reports every
// step bytes.
type progressWriter struct {
	p      Progress
	total  int64
	detail string
	done   int64
	next   int64
}

const progressStep = 4 << 20

func (w *progressWriter) Write(b []byte) (int, error) {
	w.done += int64(len(b))
	if w.done >= w.next {
		w.p.report(w.done, w.total, w.detail)
		w.next = w.done + progressStep
	}
	return len(b), nil
}

// checkCluster accepts a cluster name that is one path element of an
// object name.
func checkCluster(name string) error {
	if name == "" || len(name) > 200 || name == "." || name == ".." {
		return fmt.Errorf("backup: cluster name %q: want a name (the configured database)", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
			return fmt.Errorf("backup: cluster name %q: use letters, digits, '.', '_' and '-'", name)
		}
	}
	return nil
}

func validSlot(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// findPGBin finds the directory of PostgreSQL's programs: with major
// ("15"), /usr/lib/postgresql/<major>/bin first; then the directory of
// pg_ctl on PATH, `pg_config --bindir`, the newest /usr/lib/postgresql/*/bin.
// "" means PATH.
func findPGBin(major string) string {
	if major != "" {
		if d := filepath.Join("/usr/lib/postgresql", major, "bin"); hasProgram(d, "pg_ctl") {
			return d
		}
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		// A link on the PATH (to one version's pg_ctl) names that
		// version's directory, which has the other programs too.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		if d := filepath.Dir(p); hasProgram(d, "pg_basebackup") {
			return d
		}
	}
	if p, err := exec.LookPath("pg_config"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, p, "--bindir").Output()
		cancel()
		if d := strings.TrimSpace(string(out)); err == nil && hasProgram(d, "pg_ctl") {
			return d
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return compareVersions(versionDir(b), versionDir(a)) })
	for _, d := range dirs {
		if hasProgram(d, "pg_ctl") {
			return d
		}
	}
	return ""
}

func hasProgram(dir, name string) bool {
	st, err := os.Stat(filepath.Join(dir, name))
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

// versionDir is the version of /usr/lib/postgresql/<version>/bin.
func versionDir(bin string) []int {
	var v []int
	for _, part := range strings.Split(filepath.Base(filepath.Dir(bin)), ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			return nil
		}
		v = append(v, n)
	}
	return v
}

func compareVersions(a, b []int) int { return slices.Compare(a, b) }

// program is the path of one of PostgreSQL's programs in bin.
func program(bin, name string) string {
	if bin == "" {
		return name
	}
	return filepath.Join(bin, name)
}

// osUser is the operating-system user PostgreSQL's programs run as when we
// are root (PostgreSQL refuses to run as root): the postgres user. A nil
// *osUser runs them as ourselves.
type osUser struct {
	name     string
	uid, gid int
	home     string
}

func lookupOSUser() (*osUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("backup: running as root, PostgreSQL's programs need the postgres OS user: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("backup: uid of postgres: %w", err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("backup: gid of postgres: %w", err)
	}
	return &osUser{name: u.Username, uid: uid, gid: gid, home: u.HomeDir}, nil
}

// environment is the base environment of PostgreSQL's programs: the
// locale, PATH and time zone of ours, nothing of libpq's (PG*: we pass
// what they need) and no secrets, plus extra.
func (u *osUser) environment(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "PATH" || k == "TZ" || k == "LANG" || strings.HasPrefix(k, "LC_"):
			env = append(env, kv)
		case u == nil && (k == "HOME" || k == "USER" || k == "LOGNAME"):
			env = append(env, kv)
		}
	}
	if u != nil {
		home := u.home
		if st, err := os.Stat(home); err != nil || !st.IsDir() {
			home = os.TempDir()
		}
		env = append(env, "HOME="+home, "USER="+u.name, "LOGNAME="+u.name)
	}
	return append(env, extra...)
}

// command is name args as u, in dir ("" the root), with
// environment(extra). Cancelling ctx interrupts it (SIGINT: the programs
// then stop cleanly), and kills it 10 seconds later.
func (u *osUser) command(ctx context.Context, dir, name string, extra []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	if dir == "" {
		dir = "/" // ours may be out of the postgres user's reach
	}
	cmd.Dir = dir
	cmd.Env = u.environment(extra)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	if u != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid)}}
	}
	return cmd
}

// run runs name args as u and returns its output; a failure's error
// carries the output's end.
func (u *osUser) run(ctx context.Context, dir, name string, extra []string, args ...string) (string, error) {
	cmd := u.command(ctx, dir, name, extra, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return out.String(), fmt.Errorf("%s: %w%s", filepath.Base(name), err, outputTail(out.String()))
	}
	return out.String(), nil
}

// outputTail is the last lines of a program's output, for an error.
func outputTail(out string) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return ""
	}
	lines := strings.Split(out, "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "\n" + strings.Join(lines, "\n")
}

// chown gives path, and everything under it, to u.
func (u *osUser) chown(path string) error {
	if u == nil {
		return nil
	}
	err := filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, u.uid, u.gid)
	})
	if err != nil {
		return fmt.Errorf("giving %s to the %s OS user: %w", path, u.name, err)
	}
	return nil
}

func (u *osUser) chownOne(path string) error {
	if u == nil {
		return nil
	}
	if err := os.Lchown(path, u.uid, u.gid); err != nil {
		return fmt.Errorf("giving %s to the %s OS user: %w", path, u.name, err)
	}
	return nil
}

// makeTraversable lets u reach dir through its parents, adding the
// search bit for group and others where it is missing. It returns the
// directories it changed.
func (u *osUser) makeTraversable(dir string) ([]string, error) {
	if u == nil {
		return nil, nil
	}
	var changed []string
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return changed, err
		}
		if perm := st.Mode().Perm(); perm&0o011 != 0o011 {
			if err := os.Chmod(d, perm|0o011); err != nil {
				return changed, fmt.Errorf("letting the %s OS user reach %s: %w", u.name, dir, err)
			}
			changed = append(changed, d)
		}
		if filepath.Dir(d) == d {
			return changed, nil
		}
	}
}

// tailBuffer keeps the last max bytes written to it (a program's stderr).
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// putResult is what a Repository.Put returned.
type putResult struct {
	size int64
	sum  string
	err  error
}

// errWriterGone ends a Put's reader when the Put returned first.
var errWriterGone = errors.New("backup: the upload ended")

// putSealed stores the object name, sealed, as write produces its
// plaintext: write's bytes are compressed and encrypted into the upload
// as they come, nothing is kept whole in memory or on disk. When write
// fails nothing is stored.
func (m *Manager) putSealed(ctx context.Context, name string, write func(w io.Writer) error) (ObjectRef, error) {
	return putSealed(ctx, m.cfg.Repo, m.cfg.Key, name, write)
}

func putSealed(ctx context.Context, repo Repository, key Key, name string, write func(w io.Writer) error) (ObjectRef, error) {
	pr, pw := io.Pipe()
	res := make(chan putResult, 1)
	go func() {
		size, sum, err := repo.Put(ctx, name, pr)
		if err != nil {
			pr.CloseWithError(err)
		} else {
			pr.CloseWithError(errWriterGone)
		}
		res <- putResult{size, sum, err}
	}()
	err := func() error {
		sw, err := key.Seal(pw, name)
		if err != nil {
			return err
		}
		if err := write(sw); err != nil {
			return err // not Close: that would end the object as if whole
		}
		return sw.Close()
	}()
	if err != nil {
		// When the Put failed first, err is its error, come through the
		// pipe; else the Put fails with err and stores nothing.
		pw.CloseWithError(err)
		<-res
		return ObjectRef{}, fmt.Errorf("backup: storing %s: %w", name, err)
	}
	pw.Close()
	r := <-res
	if r.err != nil {
		return ObjectRef{}, fmt.Errorf("backup: storing %s: %w", name, r.err)
	}
	return ObjectRef{Name: name, Size: r.size, SHA256: r.sum}, nil
}

// controlState is pg_controldata's "Database cluster state".
func controlState(ctx context.Context, as *osUser, bin, dir string) (string, error) {
	out, err := as.run(ctx, "", program(bin, "pg_controldata"), []string{"LC_ALL=C"}, "-D", dir)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "Database cluster state" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("pg_controldata -D %s shows no cluster state", dir)
}

// postmasterAlive reports whether the server of dir runs.
func postmasterAlive(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return false
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// postmasterStatus is the status line of dir's postmaster.pid
// ("starting", "standby", "ready", "stopping"), "" without one.
func postmasterStatus(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return ""
	}
	if lines := strings.Split(string(data), "\n"); len(lines) >= 8 {
		return strings.TrimSpace(lines[7])
	}
	return ""
}

// stopServer stops the server of dir at once, if it runs.
func stopServer(ctx context.Context, as *osUser, bin, dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); err != nil {
		return nil
	}
	_, err := as.run(ctx, "", program(bin, "pg_ctl"), nil, "stop", "-w", "-t", "60", "-m", "immediate", "-D", dir)
	return err
}

// logTail is the end of the server's log, for an error.
func logTail(file string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > 16<<10 {
		_, _ = f.Seek(st.Size()-16<<10, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	if tail := outputTail(string(data)); tail != "" {
		return "\nserver log:" + tail
	}
	return ""
}
