package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// The tests run real PostgreSQL clusters (internal/pgcluster) and real
// repositories; restore_command is a real pgshield binary, built once.

// pgshieldBinary builds cmd/pgshield into dir, for restore_command
// (wal-fetch). The build cache makes the second and later builds quick.
func pgshieldBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "pgshield")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/pgshield/pgshield/cmd/pgshield").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// testEnv is a primary with a backup role, a repository, a key and a
// Manager backing up the primary.
type testEnv struct {
	t       *testing.T
	ctx     context.Context
	pg      *pgcluster.Cluster
	dir     string // shared with the postgres OS user
	repoDir string // a local repository's, "" for S3
	repo    Repository
	key     Key
	secret  string // BACKUP_ENCRYPTION_KEY
	cfgFile string
	src     atomic.Pointer[Source]
	m       *Manager
	as      *osUser
	clock   *fakeClock // nil: the real one
}

type envOptions struct {
	repo            func(e *testEnv) Repository // default a Local in e.dir/repo
	repoYAML        string                      // the config's repository (default the Local's dir)
	archiveInterval time.Duration
	clock           *fakeClock
	replica         bool // add a streaming replica (before the hba change spreads)
}

const (
	backupRole     = "backup"
	backupPassword = "backup-pw"
	testCluster    = "app"
)

func newEnv(t *testing.T, o envOptions) (*testEnv, *pgcluster.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	e := &testEnv{t: t, ctx: ctx, clock: o.clock}
	var err error
	if e.as, err = lookupOSUser(); err != nil {
		t.Fatal(err)
	}
	e.dir = shareDir(t, t.TempDir())
	e.pg = pgcluster.StartForTest(t, pgcluster.Options{})
	// A role that may replicate, with the grants backups need, and no
	// superuser.
	if err := e.pg.CreateRole(ctx, backupRole, backupPassword, true); err != nil {
		t.Fatal(err)
	}
	if err := e.pg.CreateDatabase(ctx, "app", "postgres"); err != nil {
		t.Fatal(err)
	}
	// Functions' grants are per database: the one the source names.
	if err := e.pg.Exec(ctx, "app", `ALTER ROLE backup REPLICATION;
		GRANT EXECUTE ON FUNCTION pg_switch_wal() TO backup;
		GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO backup;
		GRANT pg_read_all_stats TO backup`); err != nil {
		t.Fatal(err)
	}
	hba := filepath.Join(e.pg.DataDir, "pg_hba.conf")
	f, err := os.OpenFile(hba, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("host replication backup 127.0.0.1/32 scram-sha-256\n")
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.pg.Exec(ctx, "postgres", "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	e.exec("app", "CREATE TABLE t (id int PRIMARY KEY, tag text NOT NULL)")
	var replica *pgcluster.Cluster
	if o.replica {
		if replica, err = e.pg.AddReplica(ctx, pgcluster.ReplicaOptions{Name: "standby"}); err != nil {
			t.Fatal(err)
		}
	}

	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	e.secret = hex.EncodeToString(b)
	if e.key, err = KeyFrom(func(k string) string {
		if k == KeyEnv {
			return e.secret
		}
		return ""
	}); err != nil {
		t.Fatal(err)
	}
	repoYAML := o.repoYAML
	if o.repo != nil {
		e.repo = o.repo(e)
	} else {
		e.repoDir = filepath.Join(e.dir, "repo")
		l, err := NewLocal(e.repoDir)
		if err != nil {
			t.Fatal(err)
		}
		e.repo = l
		repoYAML = fmt.Sprintf("{dir: %q}", e.repoDir)
	}
	e.cfgFile = filepath.Join(e.dir, "pgshield.yaml")
	cfg := fmt.Sprintf(`databases:
  app:
    primary: %s
    dbname: app
    user: %s
    password: %s
backup:
  repository: %s
  database: app
`, e.pg.Addr(), backupRole, backupPassword, repoYAML)
	if err := os.WriteFile(e.cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	e.setSource(e.pg)
	now := time.Now
	if o.clock != nil {
		now = o.clock.Now
	}
	e.m, err = NewManager(Config{
		Repo: e.repo, Key: e.key, PGBin: mustBinDir(t),
		Source: func(context.Context) (Source, error) {
			return *e.src.Load(), nil
		},
		StagingDir:      filepath.Join(e.dir, "staging"),
		Cluster:         testCluster,
		ArchiveInterval: o.archiveInterval,
		WALWait:         time.Minute,
		ScratchDir:      filepath.Join(e.dir, "scratch"),
		ConfigFile:      e.cfgFile,
		WALFetchCommand: pgshieldBinary(t, e.dir),
		Now:             now,
	}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return e, replica
}

func mustBinDir(t *testing.T) string {
	t.Helper()
	d, err := pgcluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (e *testEnv) setSource(c *pgcluster.Cluster) {
	e.src.Store(&Source{Host: c.Host, Port: c.Port, User: backupRole, Password: backupPassword, DBName: "app",
		Params: map[string]string{"sslmode": "disable"}})
}

// shareDir lets the postgres OS user (when we are root) reach dir and its
// parents: the restored servers and their restore_command run as it.
func shareDir(t *testing.T, dir string) string {
	t.Helper()
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// shareRepo gives a local repository to the postgres OS user, as an
// operator running restores as root must (restore_command reads it as
// that user). The test process, root, still writes it.
func (e *testEnv) shareRepo() {
	e.t.Helper()
	if e.repoDir == "" || e.as == nil {
		return
	}
	if err := e.as.chown(e.repoDir); err != nil {
		e.t.Fatal(err)
	}
}

func (e *testEnv) exec(db, sql string, args ...any) {
	e.t.Helper()
	conn, err := pgx.Connect(e.ctx, e.pg.ConnString(db))
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(e.ctx, sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// insert adds rows from..to tagged tag.
func (e *testEnv) insert(from, to int, tag string) {
	e.t.Helper()
	e.exec("app", "INSERT INTO t SELECT g, $3 FROM generate_series($1::int, $2::int) g", from, to, tag)
}

// serverTime is the primary's clock_timestamp(), the clock of commit
// times.
func (e *testEnv) serverTime() time.Time {
	e.t.Helper()
	conn, err := pgx.Connect(e.ctx, e.pg.ConnString("postgres"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var ts time.Time
	if err := conn.QueryRow(e.ctx, "SELECT clock_timestamp()").Scan(&ts); err != nil {
		e.t.Fatal(err)
	}
	return ts
}

// runWAL runs WAL archiving until the test ends (or stop), and waits
// until it runs.
func (e *testEnv) runWAL() (stop func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- e.m.RunWAL(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("RunWAL: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	e.waitFor("WAL archiving to run", func() bool { return e.m.WALStatus().Running })
	return stop
}

func (e *testEnv) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s (WAL status %+v)", what, e.m.WALStatus())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// restore restores with o into a new directory on a free port, and stops
// the server when the test ends.
func (e *testEnv) restore(o RestoreOptions) (RestoreResult, error) {
	e.t.Helper()
	e.shareRepo()
	if o.Dir == "" {
		o.Dir = filepath.Join(e.dir, "restore-"+strings.ToLower(strings.ReplaceAll(e.t.Name(), "/", "-"))+"-"+randomSuffix(e.t))
	}
	if o.Port == 0 {
		p, err := freePort()
		if err != nil {
			e.t.Fatal(err)
		}
		o.Port = p
	}
	if o.Env == nil {
		o.Env = []string{KeyEnv + "=" + e.secret}
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := stopServer(ctx, e.as, mustBinDir(e.t), o.Dir); err != nil {
			e.t.Errorf("stopping the restored server: %v", err)
		}
	})
	return e.m.Restore(e.ctx, o, func(done, total int64, detail string) {})
}

func randomSuffix(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// counts is how many rows of each tag a restored server has.
func (e *testEnv) counts(port int) map[string]int {
	e.t.Helper()
	conn, err := pgx.Connect(e.ctx, fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/app?sslmode=disable", e.pg.Password, port))
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	if err := conn.QueryRow(e.ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
		e.t.Fatalf("the restored server is in recovery (%v): %v", inRecovery, err)
	}
	rows, err := conn.Query(e.ctx, "SELECT tag, count(*) FROM t GROUP BY tag")
	if err != nil {
		e.t.Fatal(err)
	}
	got := map[string]int{}
	for rows.Next() {
		var tag string
		var n int
		if err := rows.Scan(&tag, &n); err != nil {
			e.t.Fatal(err)
		}
		got[tag] = n
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	// The copy takes writes: it was promoted.
	if _, err := conn.Exec(e.ctx, "INSERT INTO t VALUES (-1, 'restored')"); err != nil {
		e.t.Fatalf("the restored server refuses a write: %v", err)
	}
	return got
}

func wantCounts(t *testing.T, got map[string]int, want map[string]int) {
	t.Helper()
	for tag, n := range want {
		if got[tag] != n {
			t.Fatalf("rows by tag %v, want %v", got, want)
		}
	}
	for tag := range got {
		if _, ok := want[tag]; !ok {
			t.Fatalf("rows by tag %v, want only %v", got, want)
		}
	}
}

// repoFile is the file of a local repository's object.
func (e *testEnv) repoFile(name string) string {
	return filepath.Join(e.repoDir, filepath.FromSlash(name))
}

func (e *testEnv) objectNames(prefix string) []string {
	e.t.Helper()
	objs, err := e.repo.List(e.ctx, prefix)
	if err != nil {
		e.t.Fatal(err)
	}
	names := make([]string, len(objs))
	for i, o := range objs {
		names[i] = o.Name
	}
	return names
}

// fakeClock is a clock a test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestNewManagerChecksConfig(t *testing.T) {
	t.Parallel()
	l, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, err := NewKey(make([]byte, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Key: key, Cluster: "app"}, "no repository"},
		{Config{Repo: l, Cluster: "app"}, "no key"},
		{Config{Repo: l, Key: key, Cluster: "a/b"}, "cluster name"},
		{Config{Repo: l, Key: key}, "cluster name"},
		{Config{Repo: l, Key: key, Cluster: "app", Slot: "Bad-Slot"}, "replication slot"},
	} {
		if _, err := NewManager(c.cfg, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewManager(%+v): %v, want %q", c.cfg, err, c.want)
		}
	}
	m, err := NewManager(Config{Repo: l, Key: key, Cluster: "app"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.cfg.Slot != DefaultSlot || m.cfg.ArchiveInterval != defaultArchiveInterval {
		t.Fatalf("defaults %+v", m.cfg)
	}
	if _, err := m.BackupFull(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "no source") {
		t.Fatalf("BackupFull without a source: %v", err)
	}
	if err := m.RunWAL(context.Background()); err == nil {
		t.Fatal("RunWAL without a source ran")
	}
}

func TestSourceConninfo(t *testing.T) {
	t.Parallel()
	s := Source{Host: "127.0.0.1", Port: 5432, User: "back up", Password: `it's\secret`, DBName: "app",
		Params: map[string]string{"sslmode": "verify-full", "sslrootcert": "/a b/ca.crt"}}
	if got, want := s.conninfo(false), `dbname=app host=127.0.0.1 port=5432 sslmode=verify-full sslrootcert='/a b/ca.crt' user='back up'`; got != want {
		t.Fatalf("conninfo\n got %s\nwant %s", got, want)
	}
	if got := s.conninfo(true); !strings.Contains(got, `password='it\'s\\secret'`) {
		t.Fatalf("conninfo with the password: %s", got)
	}
	if env := s.env(); len(env) != 1 || env[0] != `PGPASSWORD=it's\secret` {
		t.Fatalf("env %v", env)
	}
}

func TestOSUserEnvironmentHasNoSecrets(t *testing.T) {
	t.Setenv(KeyEnv, "a secret")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "another")
	t.Setenv("PGPASSWORD", "a third")
	as, err := lookupOSUser()
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range as.environment([]string{"EXTRA=1"}) {
		if strings.Contains(kv, "secret") || strings.Contains(kv, "third") || strings.HasPrefix(kv, "PG") {
			t.Fatalf("the programs' environment has %s", kv)
		}
	}
	env := strings.Join(serverEnv(nil), "\n")
	if !strings.Contains(env, KeyEnv+"=a secret") || !strings.Contains(env, "AWS_SECRET_ACCESS_KEY=another") || strings.Contains(env, "PGPASSWORD") {
		t.Fatalf("the restored server's environment from ours: %v", env)
	}
}
