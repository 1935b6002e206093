package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/pgcluster"
	"github.com/pgshield/pgshield/internal/writeload"
)

// The backup scenario: pgshield's backups side by side with pgBackRest's
// on one primary in one run (full backup time, restore time, repository
// size), then the RPO of each after the primary's data directory is
// destroyed under a write load.

// backupOptions are the scenario's flags.
type backupOptions struct {
	scale  int           // pgbench scale of database bench
	rounds int           // full backup and restore by each tool, per round
	load   time.Duration // the write load before the data directory goes
}

// The tools, as the section names them.
const (
	toolShield   = "pgshield"
	toolBackRest = "pgBackRest"
)

const (
	bkStanza     = "bench" // pgBackRest's stanza, and pgshield's cluster (the database's name)
	bkWriters    = 8       // writers of the RPO load
	bkPassphrase = "a made-up passphrase of the backup bench"
	// bkZstdLevel is pgBackRest's zstd level: pgshield seals with
	// klauspost's zstd.SpeedDefault, which is zstd level 3's class.
	bkZstdLevel = 3
)

// bkTool is one tool: how the rounds drive it, and what it measured.
type bkTool struct {
	name string
	// backup takes a full backup; restore restores the latest state into
	// a new directory and starts it on the port it returns. nil: the tool
	// could not be set up (err says why).
	backup  func(ctx context.Context) (time.Duration, error)
	restore func(ctx context.Context, into string) (time.Duration, int, error)
	// repo is its repository, backupsDir the directory of its backups'.
	repo, backupsDir string

	backups, restores []time.Duration // by round
	// repoBytes are all the bytes under the repository after the tool's
	// first full backup; backupBytes those of that backup alone.
	repoBytes, backupBytes int64
	err                    error // the first failure
}

func (t *bkTool) fail(err error) {
	if t.err == nil {
		t.err = fmt.Errorf("%s: %w", t.name, err)
	}
}

// bkRPO is one tool's restore after the data directory was destroyed.
type bkRPO struct {
	tool        string
	restore     time.Duration
	missing     int64
	lastPresent time.Time // insert time of the last acknowledged row present; zero: none
	err         error
}

// backupResult is what the scenario measured.
type backupResult struct {
	opts             backupOptions
	pgVersion        string
	backRestVersion  string
	processMax       int
	dbBytes, pgBytes int64     // the databases, and the data directory, before the first backup
	tools            []*bkTool // pgshield, pgBackRest
	// The RPO load: commits acknowledged, when it began, the kill, and the
	// last commit in the lost primary's WAL (lastFromWAL), else the kill.
	acked       int
	loadStart   time.Time
	killAt      time.Time
	lastCommit  time.Time
	lastFromWAL bool
	walNote     string // why lastCommit is not from the WAL
	archived    string // pgshield's newest archived segment at the restore
	partial     string // the .partial segment left in pgshield's staging directory
	rpo         []bkRPO
	err         error  // the scenario could not run on
	dir         string // the bench's directory, kept out of the section
}

func onlyBackup(pgshieldBin string, o backupOptions) error {
	dir, err := benchDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	r := backupCompare(dir, pgshieldBin, o)
	fmt.Println(r.markdown())
	return r.failed()
}

// failed joins every failure of the scenario.
func (r backupResult) failed() error {
	errs := []error{r.err}
	for _, t := range r.tools {
		errs = append(errs, t.err)
	}
	for _, p := range r.rpo {
		errs = append(errs, p.err)
	}
	return errors.Join(errs...)
}

// backupCompare runs the scenario in dir with the pgshield binary bin.
func backupCompare(dir, bin string, o backupOptions) backupResult {
	r := backupResult{opts: o, processMax: runtime.NumCPU(), dir: dir,
		tools: []*bkTool{{name: toolShield}, {name: toolBackRest}}}
	say("backups: pgshield and pgBackRest, pgbench scale %d, %s, then the RPO after %s of writes", o.scale, plural(o.rounds, "round"), o.load)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Hour)
	defer cancel()
	r.err = r.run(ctx, dir, bin)
	return r
}

func (r *backupResult) run(ctx context.Context, dir, bin string) error {
	as, err := lookupPGUser()
	if err != nil {
		return err
	}
	pgBin, err := pgcluster.BinDir()
	if err != nil {
		return err
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return err
	}
	pg, err := pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "bk-primary")})
	if err != nil {
		return err
	}
	defer pg.Remove()
	restores := filepath.Join(dir, "restores") // the postgres user's: the restored copies' logs go there too
	if err := os.Mkdir(restores, 0o755); err != nil {
		return err
	}
	if err := as.chown(restores); err != nil {
		return err
	}
	if err := prepareBackupPrimary(ctx, pg, r.opts.scale); err != nil {
		return err
	}
	if err := queryRow(ctx, pg.ConnString("postgres"), "SELECT sum(pg_database_size(datname))::bigint, current_setting('server_version') FROM pg_database", nil, &r.dbBytes, &r.pgVersion); err != nil {
		return err
	}
	r.pgBytes = dirBytes(pg.DataDir)

	shield, backRest := r.tools[0], r.tools[1]
	if br, err := setupBackRest(ctx, dir, as, pg); err != nil {
		backRest.fail(err)
	} else {
		r.backRestVersion = br.version
		backRest.backup, backRest.restore, backRest.repo, backRest.backupsDir = br.backupFull, br.restore, br.repo, filepath.Join(br.repo, "backup", bkStanza)
	}
	sh, err := startBackupShield(ctx, dir, bin, pgBin, pg)
	if err != nil {
		return fmt.Errorf("pgshield with backups: %w", err)
	}
	defer sh.close()
	shield.backup, shield.restore, shield.repo, shield.backupsDir = sh.backupFull, sh.restore, sh.repo, filepath.Join(sh.repo, bkStanza, "backups")

	n := 0 // restores so far, for the directories' names
	into := func() string { n++; return filepath.Join(restores, fmt.Sprintf("copy-%d", n)) }
	ready := func(t *bkTool) bool { return t.err == nil && t.backup != nil }
	for round := 0; round < r.opts.rounds; round++ {
		order := []*bkTool{shield, backRest} // reversed every round, as roundOrder does
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, t := range order {
			if !ready(t) {
				continue
			}
			d, err := t.backup(ctx)
			if err != nil {
				t.fail(fmt.Errorf("full backup in round %d: %w", round+1, err))
				continue
			}
			if round == 0 {
				t.repoBytes, t.backupBytes = dirBytes(t.repo), newestDirBytes(t.backupsDir)
			}
			t.backups = append(t.backups, d)
			say("round %d %-10s full backup %s", round+1, t.name, d.Round(10*time.Millisecond))
		}
		for _, t := range order {
			if !ready(t) {
				continue
			}
			dir := into()
			d, port, err := t.restore(ctx, dir)
			if err == nil {
				err = checkAccounts(ctx, port, r.opts.scale)
			}
			stopCopy(dir)
			if err != nil {
				t.fail(fmt.Errorf("restore in round %d: %w", round+1, err))
				continue
			}
			t.restores = append(t.restores, d)
			say("round %d %-10s restore %s", round+1, t.name, d.Round(10*time.Millisecond))
		}
	}
	return r.measureRPO(ctx, pg, pgBin, sh, into)
}

// prepareBackupPrimary fills database bench (pgbench -i) and makes the RPO
// load's table, before any backup, so that every restore has it.
func prepareBackupPrimary(ctx context.Context, pg *pgcluster.Cluster, scale int) error {
	if err := pg.CreateDatabase(ctx, "bench", pg.User); err != nil {
		return err
	}
	pgbench, err := tool("pgbench")
	if err != nil {
		return err
	}
	say("pgbench -i -s %d", scale)
	cmd := exec.CommandContext(ctx, pgbench, "-h", pg.Host, "-p", strconv.Itoa(pg.Port), "-U", pg.User, "-i", "-s", strconv.Itoa(scale), "-q", "bench")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+pg.Password, "PGSSLMODE=disable")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %v\n%s", err, out)
	}
	if err := pg.Exec(ctx, "bench", "CREATE TABLE acked (id bigint PRIMARY KEY, v text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"); err != nil {
		return err
	}
	return pg.Exec(ctx, "bench", "CHECKPOINT")
}

// checkAccounts checks that the copy on port has every pgbench account.
func checkAccounts(ctx context.Context, port, scale int) error {
	var n int64
	if err := queryRow(ctx, copyURL(port, "bench"), "SELECT count(*) FROM pgbench_accounts", nil, &n); err != nil {
		return fmt.Errorf("the restored copy: %w", err)
	}
	if want := int64(scale) * 100_000; n != want {
		return fmt.Errorf("the restored copy has %d rows in pgbench_accounts, want %d", n, want)
	}
	return nil
}

// copyURL is a restored copy's database db: the primary's superuser and
// authentication came along with its data directory.
func copyURL(port int, db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=postgres dbname=%s sslmode=disable connect_timeout=5", port, db)
}

// queryRow runs sql with args on a connection of its own to url.
func queryRow(ctx context.Context, url, sql string, args []any, dest ...any) error {
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return c.QueryRow(ctx, sql, args...).Scan(dest...)
}

// stopCopy stops a restored copy (as the postgres user) and removes it.
func stopCopy(dataDir string) {
	if fileExists(filepath.Join(dataDir, "postmaster.pid")) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if err := pgcluster.StopDataDir(ctx, dataDir); err != nil {
			say("stopping the restored copy %s: %v", dataDir, err)
		}
		cancel()
	}
	os.RemoveAll(dataDir)
}

// measureRPO runs the write load on the primary, stops it with pg_ctl stop
// -m immediate, removes its data directory and restores each tool's latest
// state.
func (r *backupResult) measureRPO(ctx context.Context, pg *pgcluster.Cluster, pgBin string, sh *bkShield, into func() string) error {
	var startLSN string
	if err := queryRow(ctx, pg.ConnString("bench"), "SELECT pg_current_wal_lsn()::text", nil, &startLSN); err != nil {
		return fmt.Errorf("the RPO load: %w", err)
	}
	say("RPO: %d writers on the primary for %s, then pg_ctl stop -m immediate and its data directory removed", bkWriters, r.opts.load)
	var killErr error
	r.loadStart = time.Now()
	wl := writeload.Run(writeload.Options{URL: pg.ConnString("bench"), Writers: bkWriters, Table: "acked",
		Before: r.opts.load, After: 0, Limit: time.Second,
		Fault: func() {
			r.killAt = time.Now()
			killErr = pg.Stop(ctx, "immediate")
		}})
	r.acked = len(wl.Acked)
	if killErr != nil {
		return fmt.Errorf("the RPO load: stopping the primary: %w", killErr)
	}
	r.lastCommit = r.killAt
	if t, err := lastWALCommit(ctx, filepath.Join(pgBin, "pg_waldump"), filepath.Join(pg.DataDir, "pg_wal"), startLSN); err != nil {
		r.walNote = err.Error()
	} else {
		r.lastCommit, r.lastFromWAL = t, true
	}
	if err := os.RemoveAll(pg.DataDir); err != nil {
		return fmt.Errorf("removing the primary's data directory: %w", err)
	}
	r.archived, r.partial = sh.settle(ctx)
	for _, t := range r.tools {
		if t.restore == nil {
			continue
		}
		p := bkRPO{tool: t.name}
		dir := into()
		var port int
		p.restore, port, p.err = t.restore(ctx, dir)
		if p.err == nil {
			p.missing, p.err = writeload.Missing(ctx, copyURL(port, "bench"), "acked", wl.Acked)
		}
		if p.err == nil {
			p.lastPresent, p.err = lastPresent(ctx, copyURL(port, "bench"), wl.Acked)
		}
		stopCopy(dir)
		if p.err != nil {
			p.err = fmt.Errorf("%s: the restore after the loss: %w", t.name, p.err)
		} else {
			say("RPO %-10s %d of %d acknowledged commits missing", t.name, p.missing, r.acked)
		}
		r.rpo = append(r.rpo, p)
	}
	return nil
}

// lastPresent is the insert time of the last of the acknowledged rows the
// copy at url has (clock_timestamp(), just before its commit); zero when
// it has none.
func lastPresent(ctx context.Context, url string, acked []int64) (time.Time, error) {
	var at *time.Time
	if err := queryRow(ctx, url, "SELECT max(at) FROM acked WHERE id = ANY($1::bigint[])", []any{acked}, &at); err != nil || at == nil {
		return time.Time{}, err
	}
	return *at, nil
}

// lastWALCommit is the time of the last commit record in the WAL of
// walDir from startLSN on (pg_waldump, which ends at the end of the valid
// WAL with an error that is expected here).
func lastWALCommit(ctx context.Context, waldump, walDir, startLSN string) (time.Time, error) {
	cmd := exec.CommandContext(ctx, waldump, "-p", walDir, "-s", startLSN, "-r", "Transaction")
	cmd.Env = append(os.Environ(), "TZ=UTC")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return time.Time{}, err
	}
	if err := cmd.Start(); err != nil {
		return time.Time{}, err
	}
	var last time.Time
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if t, ok := parseWALCommit(sc.Text()); ok {
			last = t
		}
	}
	err = cmd.Wait()
	if last.IsZero() {
		return time.Time{}, fmt.Errorf("pg_waldump found no commit after %s: %v %s", startLSN, err, strings.TrimSpace(stderr.String()))
	}
	return last, nil
}

var reWALCommit = regexp.MustCompile(`desc: COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC`)

// parseWALCommit reads the time of a commit record of pg_waldump's
// output, run with TZ=UTC.
func parseWALCommit(line string) (time.Time, bool) {
	m := reWALCommit.FindStringSubmatch(line)
	if m == nil {
		return time.Time{}, false
	}
	t, err := time.Parse("2006-01-02 15:04:05.999999999", m[1])
	return t, err == nil
}

// pgUser is the OS user PostgreSQL and pgBackRest run as: postgres when
// the bench runs as root (neither runs as root), nil otherwise.
type pgUser struct {
	uid, gid uint32
	home     string
}

func lookupPGUser() (*pgUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and no postgres OS user to run PostgreSQL's tools as: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("the postgres OS user: %w", err)
	}
	return &pgUser{uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}, nil
}

// command runs name as the user, without the caller's libpq and
// pgBackRest variables.
func (u *pgUser) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if (strings.HasPrefix(k, "PG") && k != "PG_BIN") || (u != nil && (k == "HOME" || k == "USER" || k == "LOGNAME")) {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	if u != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid}}
		cmd.Env = append(cmd.Env, "HOME="+u.home, "USER=postgres", "LOGNAME=postgres")
	}
	return cmd
}

// run runs name as the user; its output goes into the error.
func (u *pgUser) run(ctx context.Context, name string, args ...string) error {
	out, err := u.command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// chown gives paths and everything under them to the user.
func (u *pgUser) chown(paths ...string) error {
	if u == nil {
		return nil
	}
	for _, p := range paths {
		err := filepath.WalkDir(p, func(q string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(q, int(u.uid), int(u.gid))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// dirBytes is the size of every regular file under dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// newestDirBytes is dirBytes of the last directory in dir whose name
// begins with a digit (both tools name a backup by its time), 0 when
// there is none.
func newestDirBytes(dir string) int64 {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		if n := e.Name(); e.IsDir() && n[0] >= '0' && n[0] <= '9' {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return 0
	}
	return dirBytes(filepath.Join(dir, slices.Max(names)))
}

// pollUntil calls ok every interval until it says done (and then returns
// its error), or fails at d with the last error it gave.
func pollUntil(ctx context.Context, d, interval time.Duration, what string, ok func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		done, err := ok()
		if done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s (last error: %v)", what, d, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// simple is how the console is spoken to.
const simple = pgx.QueryExecModeSimpleProtocol

// bkShield is the pgshield with a backup section, and its console.
type bkShield struct {
	p       *proc
	con     *pgx.Conn
	repo    string
	staging string
}

// shieldBackupBody is the configuration of the scenario's pgshield but
// the listeners: database bench on the primary as its superuser, who is
// the backup user too, a local repository, WAL archiving and no schedule.
func shieldBackupBody(pgAddr, repo, staging, pgBin string) string {
	return fmt.Sprintf(`auth_type: trust
users:
  - {name: bench, password: bench, service: api}
  - {name: admin, password: admin, admin: true}
databases:
  bench: {primary: %s, user: postgres, password: postgres, server_tls: {mode: disable}}
log: {level: warn, format: json}
backup:
  repository: {dir: %q}
  user: postgres
  password: postgres
  wal: true
  staging_dir: %q
  pg_bin: %q
  schedule: {full: "off", incremental: "off", verify: "off", retention: "off"}
`, pgAddr, repo, staging, pgBin)
}

func startBackupShield(ctx context.Context, dir, bin, pgBin string, pg *pgcluster.Cluster) (*bkShield, error) {
	s := &bkShield{repo: filepath.Join(dir, "pgshield-repo"), staging: filepath.Join(dir, "pgshield-wal-staging")}
	// wal-fetch reads the repository as the postgres user; what pgshield
	// makes in it takes its permissions.
	err := os.Mkdir(s.repo, 0o755)
	if err != nil {
		return nil, err
	}
	s.p, err = launchPgshieldEnv(dir, "backup", bin, shieldBackupBody(pg.Addr(), s.repo, s.staging, pgBin), []string{"BACKUP_ENCRYPTION_KEY=" + bkPassphrase})
	if err != nil {
		return nil, err
	}
	s.con, err = pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=admin password=admin dbname=pgshield sslmode=disable", s.p.adminPort))
	if err != nil {
		s.close()
		return nil, fmt.Errorf("its console: %w", err)
	}
	// WAL archiving runs (its slot made) before any backup.
	err = pollUntil(ctx, time.Minute, 200*time.Millisecond, "WAL archiving to run (SHOW WAL)", func() (bool, error) {
		var running bool
		err := s.con.QueryRow(ctx, "SHOW WAL", simple).Scan(&running, nil, nil, nil, nil)
		return running, err
	})
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *bkShield) close() {
	if s.con != nil {
		s.con.Close(context.Background())
	}
	s.p.stop()
}

// backupFull runs BACKUP FULL and waits for its job: the time from the
// job's start to its end.
func (s *bkShield) backupFull(ctx context.Context) (time.Duration, error) {
	began := time.Now()
	var id int64
	if err := s.con.QueryRow(ctx, "BACKUP FULL", simple).Scan(&id); err != nil {
		return 0, fmt.Errorf("BACKUP FULL: %w", err)
	}
	var took time.Duration
	err := pollUntil(ctx, 2*time.Hour, 200*time.Millisecond, fmt.Sprintf("job %d", id), func() (bool, error) {
		var state string
		var started, ended *time.Time
		var jobErr *string
		if err := s.con.QueryRow(ctx, fmt.Sprintf("SHOW JOB %d", id), simple).Scan(nil, nil, nil, &state, nil, nil, nil, nil, nil, &started, &ended, nil, &jobErr); err != nil {
			return false, err
		}
		switch state {
		case "queued", "running":
			return false, nil
		case "succeeded":
			took = time.Since(began)
			if started != nil && ended != nil {
				took = ended.Sub(*started)
			}
			return true, nil
		}
		msg := ""
		if jobErr != nil {
			msg = *jobErr
		}
		return true, fmt.Errorf("job %d %s: %s", id, state, msg)
	})
	return took, err
}

// restore runs RESTORE LATEST into a new directory on a free port; the
// command returns once the copy has recovered and runs.
func (s *bkShield) restore(ctx context.Context, into string) (time.Duration, int, error) {
	port, err := freePort()
	if err != nil {
		return 0, 0, err
	}
	began := time.Now()
	_, err = s.con.Exec(ctx, fmt.Sprintf("RESTORE LATEST INTO '%s' PORT %d", into, port), simple)
	return time.Since(began), port, err
}

var reStagedWAL = regexp.MustCompile(`^([0-9A-F]{24}|[0-9A-F]{8}\.history)$`)

// settle waits until pgshield has uploaded what pg_receivewal finished
// (its staging directory holds no finished file), and says which segment
// the repository ends with and which .partial stayed behind.
func (s *bkShield) settle(ctx context.Context) (archived, partial string) {
	_ = pollUntil(ctx, time.Minute, 200*time.Millisecond, "the uploads", func() (bool, error) {
		entries, err := os.ReadDir(s.staging)
		if err != nil {
			return false, err
		}
		for _, e := range entries {
			if reStagedWAL.MatchString(e.Name()) {
				return false, nil
			}
		}
		return true, nil
	})
	var last *string
	if err := s.con.QueryRow(ctx, "SHOW WAL", simple).Scan(nil, &last, nil, nil, nil); err == nil && last != nil {
		archived = *last
	}
	entries, _ := os.ReadDir(s.staging)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".partial") {
			partial = e.Name()
		}
	}
	return archived, partial
}

// bkBackRest is pgBackRest's stanza on the primary.
type bkBackRest struct {
	as      *pgUser
	exe     string // pgbackrest
	conf    string // its configuration file
	repo    string
	pgCtl   string
	version string
}

// backRestConfig is the configuration file's content.
type backRestConfig struct {
	repo, log, lock    string
	dataDir, socketDir string
	port, processMax   int
	passphrase         string
}

// text is the configuration: a local repository, zstd at pgshield's
// level class, AES-256-CBC as pgshield encrypts too, a checkpoint at once
// as pg_basebackup -c fast, and the stanza on the primary's socket.
func (c backRestConfig) text() string {
	return fmt.Sprintf(`[global]
repo1-path=%s
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=%s
repo1-retention-full=100
compress-type=zst
compress-level=%d
process-max=%d
start-fast=y
log-path=%s
lock-path=%s
log-level-console=warn
log-level-file=info

[%s]
pg1-path=%s
pg1-port=%d
pg1-socket-path=%s
pg1-user=postgres
`, c.repo, c.passphrase, bkZstdLevel, c.processMax, c.log, c.lock, bkStanza, c.dataDir, c.port, c.socketDir)
}

// archiveCommand is the primary's archive_command for pgBackRest.
func archiveCommand(exe, conf string) string {
	return shQuote(exe) + " --config=" + shQuote(conf) + " --stanza=" + bkStanza + " archive-push %p"
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func sqlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// setupBackRest writes pgBackRest's configuration, creates the stanza,
// turns on archiving to it (archive_mode needs a restart of the primary)
// and runs check, which waits for a switched segment in the archive.
func setupBackRest(ctx context.Context, dir string, as *pgUser, pg *pgcluster.Cluster) (*bkBackRest, error) {
	exe, err := exec.LookPath("pgbackrest")
	if err != nil {
		return nil, fmt.Errorf("not installed (Debian: apt-get install pgbackrest; make bench installs it): %w", err)
	}
	pgBin, err := pgcluster.BinDir()
	if err != nil {
		return nil, err
	}
	base := filepath.Join(dir, "pgbackrest")
	b := &bkBackRest{as: as, exe: exe, conf: filepath.Join(base, "pgbackrest.conf"), repo: filepath.Join(base, "repo"), pgCtl: filepath.Join(pgBin, "pg_ctl")}
	if out, err := exec.Command(exe, "version").Output(); err == nil {
		b.version = strings.TrimSpace(string(out))
	}
	c := backRestConfig{repo: b.repo, log: filepath.Join(base, "log"), lock: filepath.Join(base, "lock"),
		dataDir: pg.DataDir, socketDir: pg.SocketDir, port: pg.Port, processMax: runtime.NumCPU(), passphrase: bkPassphrase}
	for _, d := range []string{b.repo, c.log, c.lock} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(b.conf, []byte(c.text()), 0o640); err != nil {
		return nil, err
	}
	if err := as.chown(base); err != nil {
		return nil, err
	}
	if err := b.cmd(ctx, "stanza-create"); err != nil {
		return nil, err
	}
	for _, sql := range []string{"ALTER SYSTEM SET archive_mode = on", "ALTER SYSTEM SET archive_command = " + sqlQuote(archiveCommand(exe, b.conf))} {
		if err := pg.Exec(ctx, "postgres", sql); err != nil {
			return nil, err
		}
	}
	if err := pg.Restart(ctx); err != nil {
		return nil, err
	}
	if err := b.cmd(ctx, "check"); err != nil {
		return nil, err
	}
	return b, nil
}

// cmd runs pgbackrest on the stanza as the postgres user.
func (b *bkBackRest) cmd(ctx context.Context, args ...string) error {
	return b.as.run(ctx, b.exe, append([]string{"--config=" + b.conf, "--stanza=" + bkStanza}, args...)...)
}

func (b *bkBackRest) backupFull(ctx context.Context) (time.Duration, error) {
	began := time.Now()
	err := b.cmd(ctx, "--type=full", "backup")
	return time.Since(began), err
}

// copySettings go into a restored copy's postgresql.auto.conf, after
// pgBackRest's: it runs beside the primary, as pgshield's restored copies
// do.
func copySettings(port int) string {
	return fmt.Sprintf("\n# the bench: a copy beside the primary\nport = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n", port)
}

// restore restores the latest backup and the archive into a new
// directory, starts it on a free port and waits until recovery has ended
// (as pgshield's RESTORE does).
func (b *bkBackRest) restore(ctx context.Context, into string) (time.Duration, int, error) {
	port, err := freePort()
	if err != nil {
		return 0, 0, err
	}
	if err := os.Mkdir(into, 0o700); err != nil {
		return 0, 0, err
	}
	if err := b.as.chown(into); err != nil {
		return 0, 0, err
	}
	began := time.Now()
	if err := b.cmd(ctx, "--pg1-path="+into, "--archive-mode=off", "restore"); err != nil {
		return 0, 0, err
	}
	f, err := os.OpenFile(filepath.Join(into, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(copySettings(port))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return 0, 0, err
	}
	if err := b.as.run(ctx, b.pgCtl, "start", "-w", "-t", "7200", "-D", into, "-l", into+".log"); err != nil {
		return 0, 0, err
	}
	err = pollUntil(ctx, 2*time.Hour, 100*time.Millisecond, "the end of recovery", func() (bool, error) {
		var inRecovery bool
		err := queryRow(ctx, copyURL(port, "postgres"), "SELECT pg_is_in_recovery()", nil, &inRecovery)
		return err == nil && !inRecovery, err
	})
	return time.Since(began), port, err
}

// markdown is the section.
func (r backupResult) markdown() string {
	var b strings.Builder
	b.WriteString("\n## Backups: pgshield and pgBackRest\n\n")
	if r.dbBytes == 0 {
		fmt.Fprintf(&b, "The backup scenario failed before any backup: %s\n", r.clean(r.err))
		return b.String()
	}
	backRest := "pgBackRest"
	if r.backRestVersion != "" {
		backRest = r.backRestVersion
	}
	fmt.Fprintf(&b, "One PostgreSQL %s primary, `pgbench -i -s %d` in database bench (%s MB in its databases, %s MB of data directory), backed up by both tools in one run: %s, the order of the tools reversed every round, each round both full backups and then both restores. Both archive the primary's WAL throughout (pgshield streams it with pg_receivewal; pgBackRest's archive_command pushes each finished segment), so each backup runs beside the other's archiving alike. Both encrypt and compress with zstd of the same level class.\n\n",
		r.pgVersion, r.opts.scale, mb(r.dbBytes), mb(r.pgBytes), plural(r.opts.rounds, "round"))
	fmt.Fprintf(&b, "- pgshield: a `backup:` section with a local repository, `wal: true`, no schedule, the superuser as backup user; every object zstd (klauspost SpeedDefault, zstd level 3's class) then AES-256-GCM under a key from BACKUP_ENCRYPTION_KEY. `BACKUP FULL` on its console (pg_basebackup -c fast -X fetch, one tar), timed from the job's start to its end (SHOW JOB). `RESTORE LATEST INTO … PORT …`, timed as the command, which returns once the copy has replayed the archive and promoted.\n")
	fmt.Fprintf(&b, "- %s: a stanza with a local repository, compress-type=zst compress-level=%d, repo1-cipher-type=aes-256-cbc (enabled so that neither side is spared the cost of encryption), process-max=%d (the machine's cores), start-fast=y. `backup --type=full` timed as the command. `restore --archive-mode=off` into a new directory, the port set in its postgresql.auto.conf, `pg_ctl start`, timed until the copy accepts connections and is out of recovery.\n\n", backRest, bkZstdLevel, r.processMax)
	b.WriteString("pgshield's tar carries the WAL that makes the backup consistent (-X fetch); pgBackRest's backup waits until that WAL is in its archive (archive-check): each full backup restores on its own.")
	if n := r.tools[0].backupBytes; n > 0 {
		fmt.Fprintf(&b, " pgbench's rows are mostly blank filler, which compresses well (the databases are %.0f times pgshield's backup): the sizes compare the tools on this data, not on typical data.", float64(r.dbBytes)/float64(n))
	}
	b.WriteString("\n\n")
	b.WriteString("Repository: every byte under the tool's repository directory after its first full backup (the backup, and the WAL archived since its archiving began); the backup alone is that backup's own directory. MB = 10^6 bytes. Times in seconds, the median over the rounds (min–max with more than one). Each restored copy was checked: pgbench_accounts has every row.\n\n")
	b.WriteString("| tool | full backup s | restore s | repository MB | of which the backup MB |\n|---|---|---|---|---|\n")
	for _, t := range r.tools {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", t.name, secCell(t.backups), secCell(t.restores), mbCell(t.repoBytes), mbCell(t.backupBytes))
	}
	s, p := r.tools[0], r.tools[1]
	fmt.Fprintf(&b, "| pgshield/pgBackRest | %s | %s | %s | %s |\n", bkRatio(medianSec(s.backups), medianSec(p.backups)), bkRatio(medianSec(s.restores), medianSec(p.restores)),
		bkRatio(float64(s.repoBytes), float64(p.repoBytes)), bkRatio(float64(s.backupBytes), float64(p.backupBytes)))
	b.WriteString(r.rpoMarkdown())
	if err := r.failed(); err != nil {
		b.WriteString("\nFailures:\n\n")
		for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
			fmt.Fprintf(&b, "- %s\n", r.clean(e))
		}
	}
	return b.String()
}

// rpoMarkdown is the RPO part of the section.
func (r backupResult) rpoMarkdown() string {
	if r.acked == 0 && len(r.rpo) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n### RPO: the primary's data directory destroyed under writes\n\n%d writers insert numbered rows straight into the primary (internal/writeload, every acknowledged commit recorded) for %s; then `pg_ctl stop -m immediate` and its data directory is removed. Once pgshield has uploaded what pg_receivewal had finished, each tool restores the latest state of its repository into a new directory, and the acknowledged rows missing there are counted. Seconds lost = the time of the last commit in the lost primary's WAL minus the time of the last acknowledged row the copy has (its insert's clock_timestamp(), just before its commit).\n\n", bkWriters, r.opts.load)
	if r.lastFromWAL {
		fmt.Fprintf(&b, "The last commit's time is from pg_waldump of the lost primary's pg_wal, read before the directory went (no acknowledged commit is later; it was %s after the kill began).\n\n", r.lastCommit.Sub(r.killAt).Round(time.Millisecond))
	} else {
		fmt.Fprintf(&b, "pg_waldump could not read the lost primary's WAL (%s): the time the kill began stands for the last commit.\n\n", r.clean(errors.New(r.walNote)))
	}
	b.WriteString("| repository | acknowledged commits | missing after the restore | seconds of commits lost | restore s |\n|---|---|---|---|---|\n")
	for _, p := range r.rpo {
		if p.err != nil {
			fmt.Fprintf(&b, "| %s | %d | failed | failed | n/a |\n", p.tool, r.acked)
			continue
		}
		lost := "0"
		switch {
		case p.missing > 0 && p.lastPresent.IsZero():
			lost = fmt.Sprintf("≥ %.1f (none of the load's commits)", r.lastCommit.Sub(r.loadStart).Seconds())
		case p.missing > 0:
			lost = fmt.Sprintf("%.2f", r.lastCommit.Sub(p.lastPresent).Seconds())
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %.1f |\n", p.tool, r.acked, p.missing, lost, p.restore.Seconds())
	}
	b.WriteString("\nWhy: pgshield uploads finished WAL segments only (admin/backup/wal.go). pg_receivewal streams every commit into a `.partial` file in pgshield's staging directory at once, but a `.partial` never goes to the repository; what makes the segment finished early is a forced `pg_switch_wal()` once written WAL has waited `backup.archive_interval` (10 s by default). So a loss of the primary takes what was written since the last segment boundary: up to a 16 MB segment, or archive_interval of WAL. pgBackRest's archive_command likewise gets finished segments only (archive_timeout is 0 here, PostgreSQL's default).")
	if r.archived != "" {
		fmt.Fprintf(&b, " pgshield's repository ended with segment %s.", r.archived)
	}
	if r.partial != "" {
		fmt.Fprintf(&b, " pg_receivewal's copy of the segment being written, %s, stayed in the staging directory (on pgshield's host, not the primary's): it holds what the restore lacks, and no restore uses it.", r.partial)
	}
	b.WriteString("\n")
	return b.String()
}

// clean is an error's text on one line, without the bench's directory.
func (r backupResult) clean(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if r.dir != "" {
		s = strings.ReplaceAll(s, r.dir, "<bench dir>")
	}
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 800 {
		s = s[:800] + " …"
	}
	return s
}

func mb(n int64) string { return fmt.Sprintf("%.1f", float64(n)/1e6) }

func mbCell(n int64) string {
	if n <= 0 {
		return "n/a"
	}
	return mb(n)
}

func medianSec(ds []time.Duration) float64 {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = d.Seconds()
	}
	return median(xs)
}

// secCell is the median of ds in seconds, with the range when there are
// several; n/a without one.
func secCell(ds []time.Duration) string {
	if len(ds) == 0 {
		return "n/a"
	}
	s := fmt.Sprintf("%.1f", medianSec(ds))
	if len(ds) > 1 {
		lo, hi := slices.Min(ds), slices.Max(ds)
		s += fmt.Sprintf(" (%.1f–%.1f)", lo.Seconds(), hi.Seconds())
	}
	return s
}

func bkRatio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
