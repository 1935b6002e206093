package backup

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// RestoreOptions say what to restore, where, and how recovery reaches the
// WAL archive.
type RestoreOptions struct {
	// ID is a backup id, or "LATEST" ("" too). A backup id restores that
	// backup's state: a full backup's end (recovery_target = immediate), an
	// incremental one's restore point. LATEST restores the newest state the
	// repository has: the newest backup (with a target, the newest that
	// ends before it) and then all the archived WAL.
	ID string
	// TargetTime and TargetLSN stop recovery there (at most one; zero and
	// "" for none), then promote.
	TargetTime time.Time
	TargetLSN  string
	// Dir is the new data directory; it must not exist or be empty.
	Dir string
	// Port is the port to start the restored cluster on; 0 prepares the
	// directory and does not start it.
	Port int
	// ConfigFile is the pgshield configuration file whose backup section
	// names the repository: restore_command runs `pgshield wal-fetch
	// --config ConfigFile`, as the server's OS user, which must be able to
	// read it (and a local repository).
	ConfigFile string
	// WALFetchCommand is the pgshield binary restore_command runs; ""
	// means this program (os.Executable).
	WALFetchCommand string
	// RestoreCommand, when set, is restore_command as it is (with %f and
	// %p), instead of pgshield wal-fetch.
	RestoreCommand string
	// Env is what the restored server's environment adds to the locale and
	// PATH: restore_command's key (BACKUP_ENCRYPTION_KEY) and S3 keys (AWS_*)
	// when the configuration file does not hold them. nil means this
	// process's BACKUP_* and AWS_* variables.
	Env []string
}

// RestoreResult is a finished restore.
type RestoreResult struct {
	Backup string // the backup restored (the chain's last)
	Dir    string // the data directory, absolute
	Port   int    // where it runs; 0 when not started
	Took   time.Duration
	// ReachedLSN is where recovery ended and the new timeline begins, ""
	// when it was not started.
	ReachedLSN string
}

// Restore restores a backup with the Manager's repository, key and
// cluster; ConfigFile and WALFetchCommand default to the Config's.
func (m *Manager) Restore(ctx context.Context, o RestoreOptions, p Progress) (RestoreResult, error) {
	if o.ConfigFile == "" {
		o.ConfigFile = m.cfg.ConfigFile
	}
	if o.WALFetchCommand == "" {
		o.WALFetchCommand = m.cfg.WALFetchCommand
	}
	r := &restorer{repo: m.cfg.Repo, key: m.cfg.Key, cluster: m.cfg.Cluster, pgbin: m.cfg.PGBin, as: m.as, log: m.log, use: m.use}
	return r.restore(ctx, o, p)
}

// Restore restores a backup of cluster from repo without a Manager (and
// so without a running pgshield or database): `pgshield restore`. pgbin is
// the directory of PostgreSQL's programs, "" to look for those of the
// backup's major version.
//
// It fetches the backup's objects (checking each against the manifest's
// sha256; a mismatch or a failed Open is an error naming the object),
// opens and untars them into o.Dir, writes the recovery settings into
// postgresql.auto.conf (restore_command, the target, promote, the port;
// listen_addresses 127.0.0.1 and no Unix socket, archive_mode off and no
// synchronous standbys, so the copy neither serves clients nor waits for
// or writes to anything of the original's) and recovery.signal, then, with
// a port, starts it with pg_ctl and waits until recovery has ended.
func Restore(ctx context.Context, repo Repository, key Key, cluster, pgbin string, o RestoreOptions, p Progress, log *zap.Logger) (RestoreResult, error) {
	if err := checkCluster(cluster); err != nil {
		return RestoreResult{}, err
	}
	as, err := lookupOSUser()
	if err != nil {
		return RestoreResult{}, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	r := &restorer{repo: repo, key: key, cluster: cluster, pgbin: pgbin, as: as, log: log.With(zap.String("cluster", cluster))}
	return r.restore(ctx, o, p)
}

// restorer restores backups of one cluster.
type restorer struct {
	repo    Repository
	key     Key
	cluster string
	pgbin   string
	as      *osUser
	log     *zap.Logger
	use     func(id string) func() // marks a backup in use; may be nil
}

// setting is a line of postgresql.auto.conf.
type setting struct{ key, value string }

// job is one restore: a chain of backups into a directory, how to
// configure it and whether to start it.
type job struct {
	chain []Manifest
	dir   string
	port  int
	// settings go into postgresql.auto.conf; recoverySignal writes
	// recovery.signal (archive recovery); without it the copy does crash
	// recovery from backup_label and its pg_wal.
	settings       []setting
	recoverySignal bool
	// hba, when set, replaces the authentication rules (a scratch copy).
	hba string
	// afterBase runs once the full backup is in dir, before the
	// incremental WAL and the settings.
	afterBase func(ctx context.Context, bin string) error
	env       []string
	// check runs before the start, as the server's OS user.
	check []string
	// started: pg_ctl was run (the directory then has its log).
	started bool
}

const restoreLog = "restore.log"

func (o RestoreOptions) check() error {
	if o.Dir == "" {
		return errors.New("backup: restore: no directory to restore into")
	}
	if !o.TargetTime.IsZero() && o.TargetLSN != "" {
		return errors.New("backup: restore: a target time or a target LSN, not both")
	}
	if o.TargetLSN != "" {
		if _, err := parseLSN(o.TargetLSN); err != nil {
			return fmt.Errorf("backup: restore: %w", err)
		}
	}
	if o.ID != "" && o.ID != Latest && !ValidID(o.ID) {
		return fmt.Errorf("backup: restore: %q is not a backup id (or LATEST)", o.ID)
	}
	if o.Port < 0 || o.Port > 65535 {
		return fmt.Errorf("backup: restore: port %d", o.Port)
	}
	return nil
}

func (r *restorer) restore(ctx context.Context, o RestoreOptions, p Progress) (RestoreResult, error) {
	began := time.Now()
	if err := o.check(); err != nil {
		return RestoreResult{}, err
	}
	cat, err := loadCatalog(ctx, r.repo, r.cluster)
	if err != nil {
		return RestoreResult{}, err
	}
	b, err := pickBackup(cat, o)
	if err != nil {
		return RestoreResult{}, fmt.Errorf("backup: restore: %w", err)
	}
	chain, err := chainOf(cat, b)
	if err != nil {
		return RestoreResult{}, fmt.Errorf("backup: restore: %w", err)
	}
	if r.use != nil {
		for _, c := range chain {
			defer r.use(c.ID)()
		}
	}
	j := &job{chain: chain, port: o.Port, recoverySignal: true, env: serverEnv(o.Env)}
	cmd, check, err := restoreCommand(o, r.cluster)
	if err != nil {
		return RestoreResult{}, err
	}
	j.check = check
	j.settings = append(j.settings, setting{"restore_command", cmd}, setting{"recovery_target_timeline", "latest"})
	switch {
	case !o.TargetTime.IsZero():
		j.settings = append(j.settings, setting{"recovery_target_time", o.TargetTime.UTC().Format("2006-01-02 15:04:05.999999+00")})
	case o.TargetLSN != "":
		j.settings = append(j.settings, setting{"recovery_target_lsn", o.TargetLSN})
	case o.ID == "" || o.ID == Latest:
		// To the end of the archive.
	case b.Kind == KindIncremental:
		j.settings = append(j.settings, setting{"recovery_target_name", b.RestorePoint})
	default:
		j.settings = append(j.settings, setting{"recovery_target", "immediate"})
	}
	j.settings = append(j.settings,
		setting{"recovery_target_action", "promote"},
		setting{"archive_mode", "off"},
		setting{"synchronous_standby_names", ""},
		setting{"listen_addresses", "127.0.0.1"},
		setting{"unix_socket_directories", ""},
	)
	if o.Port != 0 {
		j.settings = append(j.settings, setting{"port", strconv.Itoa(o.Port)})
	}
	if j.dir, err = r.prepareDir(o.Dir); err != nil {
		return RestoreResult{}, err
	}
	log := r.log.With(zap.String("backup", b.ID), zap.String("dir", j.dir))
	log.Info("restore started", zap.Int("chain", len(chain)), zap.String("target", describeTarget(o)))
	if err := r.run(ctx, j, p); err != nil {
		err = withCtx(ctx, err)
		log.Error("restore failed", zap.Error(err))
		if !j.started {
			// Nothing to look at: leave the directory as it was, empty,
			// for the next attempt.
			clearDir(j.dir)
			return RestoreResult{}, fmt.Errorf("backup: restoring %s into %s: %w", b.ID, j.dir, err)
		}
		return RestoreResult{}, fmt.Errorf("backup: restoring %s into %s (left as it is, with the server's log %s; empty it before another restore): %w",
			b.ID, j.dir, restoreLog, err)
	}
	res := RestoreResult{Backup: b.ID, Dir: j.dir, Port: o.Port, Took: time.Since(began)}
	if o.Port != 0 {
		res.ReachedLSN = reachedLSN(j.dir)
	}
	log.Info("restore finished", zap.Duration("took", res.Took), zap.Int("port", res.Port), zap.String("reached_lsn", res.ReachedLSN))
	return res, nil
}

// describeTarget says where o's recovery stops, for the log.
func describeTarget(o RestoreOptions) string {
	switch {
	case !o.TargetTime.IsZero():
		return "time " + o.TargetTime.UTC().Format(time.RFC3339Nano)
	case o.TargetLSN != "":
		return "LSN " + o.TargetLSN
	case o.ID == "" || o.ID == Latest:
		return "the end of the archive"
	}
	return "the backup's end"
}

// clearDir removes what is in dir.
func clearDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		_ = os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// pickBackup chooses the backup o asks for.
func pickBackup(cat *catalog, o RestoreOptions) (Manifest, error) {
	var target lsn
	if o.TargetLSN != "" {
		target, _ = parseLSN(o.TargetLSN)
	}
	endsBefore := func(b Manifest) bool {
		stop, err := parseLSN(b.StopLSN)
		switch {
		case err != nil:
			return false
		case !o.TargetTime.IsZero():
			return !b.Finished.After(o.TargetTime)
		case o.TargetLSN != "":
			return stop <= target
		}
		return true
	}
	if o.ID != "" && o.ID != Latest {
		b, ok := cat.byID(o.ID)
		if !ok {
			if err, broken := cat.broken[o.ID]; broken {
				return Manifest{}, fmt.Errorf("backup %s is not usable: %w", o.ID, err)
			}
			return Manifest{}, fmt.Errorf("no usable backup %s", o.ID)
		}
		if !endsBefore(b) {
			return Manifest{}, fmt.Errorf("backup %s ends after the target (at %s, %s): choose an earlier backup, or LATEST", b.ID, b.Finished.Format(time.RFC3339), b.StopLSN)
		}
		return b, nil
	}
	for _, b := range slices.Backward(cat.usable) {
		if _, err := chainOf(cat, b); err == nil && endsBefore(b) {
			return b, nil
		}
	}
	if len(cat.usable) == 0 {
		return Manifest{}, errors.New("the repository has no usable backup")
	}
	return Manifest{}, errors.New("no backup ends before the target")
}

// chainOf is b's chain: its full backup first, then the incremental ones
// down to b.
func chainOf(cat *catalog, b Manifest) ([]Manifest, error) {
	chain := []Manifest{b}
	for cur := b; cur.Kind == KindIncremental; {
		if len(chain) > len(cat.usable) {
			return nil, fmt.Errorf("backup %s: its parents form a loop", b.ID)
		}
		parent, ok := cat.byID(cur.Parent)
		if !ok {
			return nil, fmt.Errorf("backup %s follows %s, which is not a usable backup", cur.ID, cur.Parent)
		}
		chain = append(chain, parent)
		cur = parent
	}
	slices.Reverse(chain)
	return chain, nil
}

// restoreCommand is restore_command, and the command that checks that it
// can reach the repository.
func restoreCommand(o RestoreOptions, cluster string) (string, []string, error) {
	if o.RestoreCommand != "" {
		return o.RestoreCommand, nil, nil
	}
	if o.ConfigFile == "" {
		return "", nil, errors.New("backup: restore: restore_command (pgshield wal-fetch) needs the configuration file naming the repository (RestoreOptions.ConfigFile)")
	}
	file, err := filepath.Abs(o.ConfigFile)
	if err != nil {
		return "", nil, fmt.Errorf("backup: restore: %w", err)
	}
	bin := o.WALFetchCommand
	if bin == "" {
		if bin, err = os.Executable(); err != nil {
			return "", nil, fmt.Errorf("backup: restore: finding pgshield for restore_command: %w", err)
		}
	}
	args := []string{bin, "wal-fetch", "--config", file, "--cluster", cluster}
	quoted := make([]string, len(args))
	for i, a := range args {
		// %% is a literal % to restore_command.
		quoted[i] = strings.ReplaceAll(shellQuote(a), "%", "%%")
	}
	return strings.Join(quoted, " ") + " %f %p", append(args, "--check"), nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// confQuote quotes a postgresql.conf value.
func confQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// serverEnv is what the restored server's environment adds.
func serverEnv(env []string) []string {
	if env != nil {
		return env
	}
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "BACKUP_") || strings.HasPrefix(kv, "AWS_") {
			out = append(out, kv)
		}
	}
	return out
}

// prepareDir makes the empty data directory, the server's OS user's.
func (r *restorer) prepareDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("backup: restore: %w", err)
	}
	entries, err := os.ReadDir(abs)
	switch {
	case err == nil && len(entries) > 0:
		return "", fmt.Errorf("backup: restore: %s is not empty", abs)
	case err == nil:
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
			return "", fmt.Errorf("backup: restore: %w", err)
		}
		if err := os.Mkdir(abs, 0o700); err != nil {
			return "", fmt.Errorf("backup: restore: %w", err)
		}
	default:
		return "", fmt.Errorf("backup: restore: %w", err)
	}
	if err := os.Chmod(abs, 0o700); err != nil {
		return "", fmt.Errorf("backup: restore: %w", err)
	}
	if err := r.as.chownOne(abs); err != nil {
		return "", fmt.Errorf("backup: restore: %w", err)
	}
	changed, err := r.as.makeTraversable(abs)
	if err != nil {
		return "", fmt.Errorf("backup: restore: %w", err)
	}
	if len(changed) > 0 {
		r.log.Info("let the postgres OS user reach the restored data directory", zap.Strings("dirs", changed))
	}
	return abs, nil
}

// binFor finds PostgreSQL's programs for the backup's major version.
func (r *restorer) binFor(b Manifest) string {
	if r.pgbin != "" {
		return r.pgbin
	}
	return findPGBin(majorOf(b.PGVersion))
}

// majorOf is the major version of a server_version ("15.18 (Debian ...)": "15").
func majorOf(v string) string {
	v, _, _ = strings.Cut(strings.TrimSpace(v), " ")
	major, _, _ := strings.Cut(v, ".")
	return major
}

// run restores j: fetch and untar, configure, and with a port start and
// wait until recovery ends.
func (r *restorer) run(ctx context.Context, j *job, p Progress) error {
	root := j.chain[0]
	bin := r.binFor(root)
	if err := r.checkVersion(ctx, bin, root); err != nil {
		return err
	}
	var total, done int64
	for _, b := range j.chain {
		total += b.Size
	}
	var next int64
	onRead := func(base int64) func(int64) {
		return func(n int64) {
			if base+n >= next {
				p.report(base+n, total, "fetching and unpacking")
				next = base + n + progressStep
			}
		}
	}
	fetch := func(b Manifest, file string, read func(io.Reader) error) error {
		for _, ref := range b.Objects {
			if path.Base(ref.Name) != file {
				continue
			}
			err := openVerified(ctx, r.repo, r.key, ref, onRead(done), read)
			if err != nil && errors.Is(err, ErrWrongKey) && b.KeyID != "" && b.KeyID != r.key.ID {
				err = fmt.Errorf("%w (backup %s was sealed with key %s)", err, b.ID, b.KeyID)
			}
			done += ref.Size
			return err
		}
		return fmt.Errorf("backup %s has no %s in its manifest", b.ID, file)
	}
	if err := fetch(root, baseFile, func(rd io.Reader) error { return untar(rd, j.dir, r.as, false) }); err != nil {
		return err
	}
	if err := fetch(root, pgManifestFile, func(rd io.Reader) error {
		return writeOwned(filepath.Join(j.dir, pgManifestFile), rd, r.as)
	}); err != nil {
		return err
	}
	if j.afterBase != nil {
		if err := j.afterBase(ctx, bin); err != nil {
			return err
		}
	}
	walDir := filepath.Join(j.dir, "pg_wal")
	for _, inc := range j.chain[1:] {
		if err := fetch(inc, walTarFile, func(rd io.Reader) error { return untar(rd, walDir, r.as, true) }); err != nil {
			return err
		}
	}
	p.report(total, total, "configuring recovery")
	if err := r.configure(j); err != nil {
		return err
	}
	if j.port == 0 {
		return nil
	}
	if len(j.check) > 0 {
		if _, err := r.as.run(ctx, j.dir, j.check[0], j.env, j.check[1:]...); err != nil {
			who := "the server's OS user"
			if r.as != nil {
				who = "the " + r.as.name + " OS user, which the server runs as"
			}
			return fmt.Errorf("restore_command (pgshield wal-fetch) fails as %s: it must be able to read the configuration file %s (and a local repository), and have the key in its environment: %w",
				who, j.check[3], err)
		}
	}
	p.report(total, total, "starting the server; recovering")
	j.started = true
	return r.startAndWait(ctx, bin, j)
}

// checkVersion refuses programs of another major version than the backup's.
func (r *restorer) checkVersion(ctx context.Context, bin string, b Manifest) error {
	want := majorOf(b.PGVersion)
	out, err := r.as.run(ctx, "", program(bin, "postgres"), nil, "-V")
	if err != nil {
		return fmt.Errorf("PostgreSQL's programs (set pg_bin): %w", err)
	}
	// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	fields := strings.Fields(out)
	if len(fields) < 3 {
		return fmt.Errorf("postgres -V said %q", strings.TrimSpace(out))
	}
	if have := majorOf(fields[2]); want != "" && have != want {
		return fmt.Errorf("backup %s is of PostgreSQL %s, and %s is PostgreSQL %s: set pg_bin to PostgreSQL %s's programs", b.ID, want, program(bin, "postgres"), have, want)
	}
	return nil
}

// untar unpacks a tar into dir, as the server's OS user's files. walOnly
// accepts WAL files only, replacing those there (an incremental backup's
// into pg_wal).
func untar(r io.Reader, dir string, as *osUser, walOnly bool) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if name == "." {
			continue
		}
		if !fs.ValidPath(name) || strings.Contains(name, `\`) {
			return fmt.Errorf("the tar has an entry outside the directory: %q", h.Name)
		}
		if walOnly && (strings.Contains(name, "/") || !walFileName(name) || h.Typeflag != tar.TypeReg) {
			return fmt.Errorf("the WAL tar has an entry that is not a WAL file: %q", h.Name)
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := mkdirOwned(target, as); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := mkdirOwned(filepath.Dir(target), as); err != nil {
				return err
			}
			flags := os.O_CREATE | os.O_WRONLY | os.O_EXCL
			if walOnly {
				flags = os.O_CREATE | os.O_WRONLY | os.O_TRUNC
			}
			f, err := os.OpenFile(target, flags, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := as.chownOne(target); err != nil {
				return err
			}
		case tar.TypeSymlink:
			return fmt.Errorf("the tar has a symbolic link %s: tablespaces besides the default ones are not supported", name)
		default:
			return fmt.Errorf("the tar has an entry %s of type %q, which a data directory does not have", name, h.Typeflag)
		}
	}
}

func mkdirOwned(dir string, as *osUser) error {
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		return nil
	}
	if err := mkdirOwned(filepath.Dir(dir), as); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return as.chownOne(dir)
}

func writeOwned(file string, r io.Reader, as *osUser) error {
	f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return as.chownOne(file)
}

// configure writes j's settings and signal files, and the configuration
// files a backup may lack: a cluster whose configuration lives outside its
// data directory (Debian's /etc/postgresql) has none in the backup.
func (r *restorer) configure(j *job) error {
	write := func(name, text string) error {
		return writeOwned(filepath.Join(j.dir, name), strings.NewReader(text), r.as)
	}
	missing := func(name string) bool {
		_, err := os.Stat(filepath.Join(j.dir, name))
		return errors.Is(err, fs.ErrNotExist)
	}
	if missing("postgresql.conf") {
		if err := write("postgresql.conf", "# Written by pgshield restore: the backup had no postgresql.conf (its\n# configuration lived outside the data directory). postgresql.auto.conf\n# has the restore's settings.\n"); err != nil {
			return err
		}
	}
	if missing("pg_ident.conf") {
		if err := write("pg_ident.conf", ""); err != nil {
			return err
		}
	}
	settings := j.settings
	if j.hba != "" {
		if err := write("pgshield_scratch_hba.conf", j.hba); err != nil {
			return err
		}
		settings = append(settings, setting{"hba_file", filepath.Join(j.dir, "pgshield_scratch_hba.conf")},
			setting{"ident_file", filepath.Join(j.dir, "pg_ident.conf")})
	} else if missing("pg_hba.conf") {
		if err := write("pg_hba.conf", "# Written by pgshield restore: the backup had none.\nlocal all all peer\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n"); err != nil {
			return err
		}
	}
	auto := filepath.Join(j.dir, "postgresql.auto.conf")
	old, err := os.ReadFile(auto)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var b strings.Builder
	b.Write(old)
	if len(old) > 0 && !strings.HasSuffix(string(old), "\n") {
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "# pgshield restore of backup %s (later lines win)\n", j.chain[len(j.chain)-1].ID)
	for _, s := range settings {
		fmt.Fprintf(&b, "%s = %s\n", s.key, confQuote(s.value))
	}
	if err := write("postgresql.auto.conf", b.String()); err != nil {
		return err
	}
	for _, f := range []string{"standby.signal", "recovery.signal"} {
		if err := os.Remove(filepath.Join(j.dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if j.recoverySignal {
		return write("recovery.signal", "")
	}
	return nil
}

// startAndWait starts the restored server with pg_ctl and waits until it
// is out of recovery, as pg_control and postmaster.pid tell, which needs
// no role to log in as (pg_is_in_recovery() is false then). A failure
// stops the server.
func (r *restorer) startAndWait(ctx context.Context, bin string, j *job) (err error) {
	logFile := filepath.Join(j.dir, restoreLog)
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			_ = stopServer(sctx, r.as, bin, j.dir)
			err = fmt.Errorf("%w%s", err, logTail(logFile))
		}
	}()
	// pg_ctl waits for "ready", which a hot standby is once consistent;
	// with hot_standby off only the end of recovery is, so no short bound.
	wait := 24 * time.Hour
	if d, ok := ctx.Deadline(); ok {
		wait = max(time.Until(d), time.Second)
	}
	if _, err := r.as.run(ctx, j.dir, program(bin, "pg_ctl"), j.env,
		"start", "-w", "-t", strconv.Itoa(int(wait/time.Second)), "-D", j.dir, "-l", logFile); err != nil {
		return err
	}
	for {
		state, err := controlState(ctx, r.as, bin, j.dir)
		if err != nil {
			return err
		}
		// pg_control says "in production" a moment before writes are
		// allowed; the postmaster says "ready" once the startup process,
		// done, has exited: then pg_is_in_recovery() is false.
		if state == "in production" && postmasterStatus(j.dir) == "ready" {
			return nil
		}
		if !postmasterAlive(j.dir) {
			return errors.New("the server stopped during recovery")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// reachedLSN is where the restored server's timeline begins: the switch
// point its history file records, "" without one.
func reachedLSN(dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "pg_wal", "*.history"))
	if len(files) == 0 {
		return ""
	}
	slices.Sort(files)
	data, err := os.ReadFile(files[len(files)-1])
	if err != nil {
		return ""
	}
	var last string
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			last = line
		}
	}
	if fields := strings.Fields(last); len(fields) >= 2 {
		return fields[1]
	}
	return ""
}
