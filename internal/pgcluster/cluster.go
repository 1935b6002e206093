package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/devcert"
)

// Options configure Start.
type Options struct {
	// Dir is the directory that holds the cluster: the data directory
	// (Dir/data), the server log, the Unix socket and TLS files. "" means a
	// new temporary directory, which Remove deletes. An existing data
	// directory is reused (and a server still running on it from an earlier
	// run is stopped first).
	Dir string
	// Port is the TCP port on 127.0.0.1. 0 means the port a reused data
	// directory was started on last time (recorded in its postgresql.conf),
	// or a free port for a new directory or when that port is taken.
	Port int
	// SSL turns ssl on with a devcert certificate for 127.0.0.1, ::1 and
	// localhost; Cluster.CAFile is its CA.
	SSL bool
	// Settings are extra postgresql.conf settings, applied at every Start
	// (also to a reused data directory). Values are written quoted unless
	// they already start with a single quote.
	Settings map[string]string
	// Logf, if set, receives progress messages.
	Logf func(format string, args ...any)
}

// Cluster is one PostgreSQL server started by Start or AddReplica. Its
// exported fields describe it and must not be changed.
type Cluster struct {
	Dir       string // cluster directory
	DataDir   string // PGDATA, Dir/data
	Host      string // "127.0.0.1"
	Port      int
	LastPort  int    // port of a reused directory's last run, 0 if new; not Port when that was taken
	User      string // superuser "postgres"
	Password  string // superuser password
	CAFile    string // CA of the server certificate, with SSL
	SocketDir string // directory of the Unix socket (Dir unless Dir is too long for a socket path)
	LogFile   string // server log

	bin     string
	as      *runAs
	ownsDir bool
	logf    func(string, ...any)

	mu           sync.Mutex
	running      bool
	tmpSocketDir string     // made because Dir was too long; removed on Stop
	replicas     []*Cluster // removed by Remove
}

const (
	superuser     = "postgres"
	superPassword = "postgres"

	// pg_ctl's wait, in seconds.
	pgctlTimeout = "60"
	// maxSocketPath is the longest Unix socket path (sun_path less its NUL).
	maxSocketPath = 107
	// socketName is the longest socket file name PostgreSQL makes.
	socketName = "/.s.PGSQL.65535"
	// localConf is the file of per-start settings, included from
	// postgresql.conf.
	localConf = "pgcluster.conf"
	// portAttempts is how often Start tries another free port when the one
	// it picked was taken before the server bound it.
	portAttempts = 5
)

// Start starts a PostgreSQL cluster in opts.Dir: initdb if the data
// directory has no PG_VERSION yet, then pg_ctl start -w.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	as, err := osUser()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Host: "127.0.0.1", User: superuser, Password: superPassword, bin: bin, as: as, logf: opts.Logf}
	if c.logf == nil {
		c.logf = func(string, ...any) {}
	}
	dir := opts.Dir
	if dir == "" {
		// Short, for the socket path.
		if dir, err = os.MkdirTemp("", "pgc"); err != nil {
			return nil, fmt.Errorf("pgcluster: %w", err)
		}
		c.ownsDir = true
	}
	if c.Dir, err = filepath.Abs(dir); err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	c.DataDir = filepath.Join(c.Dir, "data")
	c.LogFile = filepath.Join(c.Dir, "postgresql.log")
	if err := c.prepare(ctx, opts); err != nil {
		c.removeOwnedDir()
		return nil, err
	}
	if err := c.startOnFreePort(ctx, opts.Port, c.LastPort); err != nil {
		c.removeOwnedDir()
		return nil, err
	}
	return c, nil
}

// prepare makes the data directory ready to start: initdb if needed, the
// TLS files, the per-start settings, and no server left running on it.
func (c *Cluster) prepare(ctx context.Context, opts Options) error {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.as.makeTraversable(c.Dir); err != nil {
		return err
	}
	if !exists(filepath.Join(c.DataDir, "PG_VERSION")) {
		if err := c.initdb(ctx); err != nil {
			return err
		}
	} else {
		c.LastPort = c.confPort()
		if err := c.stopStale(ctx); err != nil {
			return err
		}
	}
	if err := c.includeLocalConf(); err != nil {
		return err
	}
	settings := map[string]string{"ssl": "off"}
	if opts.SSL {
		certDir := filepath.Join(c.Dir, "certs")
		files, err := devcert.Generate(certDir) // reused while valid
		if err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if err := c.as.chown(certDir); err != nil {
			return err
		}
		c.CAFile = files.CAFile
		settings["ssl"] = "on"
		settings["ssl_cert_file"] = files.CertFile
		settings["ssl_key_file"] = files.KeyFile
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	return c.writeConf(filepath.Join(c.DataDir, localConf), "settings of the last pgcluster.Start; rewritten by every Start", settings)
}

// StartForTest starts a cluster for a test or benchmark, failing it on
// error. The cluster is stopped and removed when the test ends, passed or
// failed.
func StartForTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("starting PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Remove(); err != nil {
			t.Errorf("removing the PostgreSQL cluster: %v", err)
		}
	})
	return c
}

func (c *Cluster) removeOwnedDir() {
	if c.ownsDir {
		_ = os.RemoveAll(c.Dir)
	}
}

func (c *Cluster) initdb(ctx context.Context) error {
	c.logf("initdb %s", c.DataDir)
	fresh := !exists(c.DataDir)
	pwfile := filepath.Join(c.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(superPassword+"\n"), 0o600); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	defer os.Remove(pwfile)
	if err := c.as.chown(c.Dir); err != nil {
		return err
	}
	err := c.as.run(ctx, c.Dir, nil, filepath.Join(c.bin, "initdb"),
		"-D", c.DataDir, "-U", superuser, "--pwfile", pwfile, "-E", "UTF8", "--locale=C",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
	if err != nil {
		if fresh {
			_ = os.RemoveAll(c.DataDir) // so that the next Start can try again
		}
		return fmt.Errorf("pgcluster: %w", err)
	}
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": c.confSocketDir(),
		"max_connections":         "200",
		"wal_level":               "replica",
		"max_wal_senders":         "10",
		"max_replication_slots":   "10",
		"wal_keep_size":           "256MB",
		"hot_standby":             "on",
		"fsync":                   "off",
		"full_page_writes":        "off",
		"synchronous_commit":      "on",
		"shared_buffers":          "64MB",
		"logging_collector":       "off",
		"log_line_prefix":         "%m [%p] %q%u@%d ",
	}
	if err := c.setConf(filepath.Join(c.DataDir, "postgresql.conf"), settings); err != nil {
		return err
	}
	return appendFile(filepath.Join(c.DataDir, "pg_hba.conf"), "\n# pgcluster\n"+
		"host replication postgres 127.0.0.1/32 scram-sha-256\n"+
		"host all all 127.0.0.1/32 scram-sha-256\n")
}

// includeLocalConf makes postgresql.conf include the per-start settings
// file, unless it does already.
func (c *Cluster) includeLocalConf() error {
	conf := filepath.Join(c.DataDir, "postgresql.conf")
	data, err := os.ReadFile(conf)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if strings.Contains(string(data), "include_if_exists = "+quote(localConf)) {
		return nil
	}
	return c.setConf(conf, map[string]string{"include_if_exists": localConf})
}

// confSocketDir is the unix_socket_directories written into
// postgresql.conf: Dir, or none when Dir is too long for a socket path
// (Start then passes a short directory on the command line).
func (c *Cluster) confSocketDir() string {
	if len(c.Dir)+len(socketName) > maxSocketPath {
		return ""
	}
	return c.Dir
}

// stopStale stops a server left running on the data directory by an
// earlier run that did not stop it.
func (c *Cluster) stopStale(ctx context.Context) error {
	if !exists(filepath.Join(c.DataDir, "postmaster.pid")) {
		return nil
	}
	if err := c.as.run(ctx, c.Dir, nil, filepath.Join(c.bin, "pg_ctl"), "status", "-D", c.DataDir); err != nil {
		return nil // not running: a stale pid file, which postgres handles
	}
	c.logf("stopping a server left running on %s", c.DataDir)
	if err := c.pgctlStop(ctx, "fast"); err != nil {
		return fmt.Errorf("pgcluster: stopping the server left running on %s: %w", c.DataDir, err)
	}
	return nil
}

// startOnFreePort starts the server on port. When port is 0 it starts on
// last (the port of the previous run) if that is free, else on a free port,
// trying other ports if the one picked was taken in the meantime.
func (c *Cluster) startOnFreePort(ctx context.Context, port, last int) error {
	if port == 0 && last != 0 {
		if portFree(last) {
			c.Port = last
			portTaken, err := c.start(ctx)
			if err == nil || !portTaken || ctx.Err() != nil {
				return err
			}
		}
		c.logf("port %d, which %s had on its last run, is taken; starting on another", last, c.DataDir)
	}
	var err error
	for attempt := 0; attempt < portAttempts; attempt++ {
		c.Port = port
		if port == 0 {
			if c.Port, err = freePort(); err != nil {
				return err
			}
		}
		var portTaken bool
		if portTaken, err = c.start(ctx); err == nil || port != 0 || !portTaken || ctx.Err() != nil {
			return err
		}
		c.logf("port %d was taken; trying another", c.Port)
	}
	return err
}

// start runs pg_ctl start on c.Port. portTaken says whether it failed
// because the port was in use.
func (c *Cluster) start(ctx context.Context) (portTaken bool, err error) {
	sock, err := c.socketDir()
	if err != nil {
		return false, err
	}
	if err := c.touchLog(); err != nil {
		return false, err
	}
	// The port goes into postgresql.conf too, so that the data directory
	// also starts by hand on the port it last had.
	if err := c.setConf(filepath.Join(c.DataDir, "postgresql.conf"), map[string]string{"port": strconv.Itoa(c.Port)}); err != nil {
		return false, err
	}
	logStart := fileSize(c.LogFile)
	c.logf("starting PostgreSQL on %s (data %s)", c.Addr(), c.DataDir)
	err = c.as.run(ctx, c.Dir, nil, filepath.Join(c.bin, "pg_ctl"), "start", "-w", "-t", pgctlTimeout,
		"-D", c.DataDir, "-l", c.LogFile, "-o", "-p "+strconv.Itoa(c.Port)+" -k "+shellQuote(sock))
	if err != nil {
		newLog := readFrom(c.LogFile, logStart)
		portTaken = strings.Contains(newLog, "Address already in use") ||
			strings.Contains(newLog, "could not create any TCP/IP sockets")
		c.abortStart()
		return portTaken, fmt.Errorf("pgcluster: starting PostgreSQL on %s: %w\n%s", c.Addr(), err, logTail(newLog))
	}
	c.mu.Lock()
	c.running = true
	c.SocketDir = sock
	c.mu.Unlock()
	return false, nil
}

// abortStart stops a server a failed or cancelled pg_ctl start may have
// left behind, and drops the temporary socket directory.
func (c *Cluster) abortStart() {
	if exists(filepath.Join(c.DataDir, "postmaster.pid")) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = c.pgctlStop(ctx, "immediate")
		cancel()
	}
	c.mu.Lock()
	c.dropTmpSocketDir()
	c.mu.Unlock()
}

// socketDir is the directory for the Unix socket: Dir, or when that would
// make the socket path too long, a new short temporary directory.
func (c *Cluster) socketDir() (string, error) {
	if d := c.confSocketDir(); d != "" {
		return d, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tmpSocketDir != "" {
		return c.tmpSocketDir, nil
	}
	base := os.TempDir()
	if len(base)+len("/pgs0123456789"+socketName) > maxSocketPath {
		base = "/tmp"
	}
	d, err := os.MkdirTemp(base, "pgs")
	if err != nil {
		return "", fmt.Errorf("pgcluster: socket directory: %w", err)
	}
	if err := c.as.chown(d); err != nil {
		_ = os.Remove(d)
		return "", err
	}
	if err := c.as.makeTraversable(d); err != nil {
		_ = os.Remove(d)
		return "", err
	}
	c.tmpSocketDir = d
	return d, nil
}

// dropTmpSocketDir removes the temporary socket directory; c.mu is held.
func (c *Cluster) dropTmpSocketDir() {
	if c.tmpSocketDir != "" {
		_ = os.RemoveAll(c.tmpSocketDir)
		c.tmpSocketDir = ""
	}
}

func (c *Cluster) touchLog() error {
	f, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	f.Close()
	return c.as.chown(c.LogFile)
}

// LogTail returns the last lines of the server log.
func (c *Cluster) LogTail() string { return logTail(readFrom(c.LogFile, 0)) }

func logTail(log string) string {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return "(server log empty)"
	}
	return "server log:\n" + strings.Join(lines, "\n")
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// readFrom reads path from offset on, at most the last 64 KiB.
func readFrom(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if size := fileSize(path); size-offset > 64<<10 {
		offset = size - 64<<10
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	data, _ := io.ReadAll(f)
	return string(data)
}

// portFree reports whether port can be listened on at 127.0.0.1.
func portFree(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// confPort is the port postgresql.conf sets (start writes it there), 0 if
// it sets none or cannot be read.
func (c *Cluster) confPort() int {
	data, err := os.ReadFile(filepath.Join(c.DataDir, "postgresql.conf"))
	if err != nil {
		return 0
	}
	port := 0
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.ToLower(strings.TrimSpace(key)) != "port" {
			continue
		}
		val, _, _ = strings.Cut(val, "#")
		val = strings.Trim(strings.TrimSpace(val), "'")
		if n, err := strconv.Atoi(val); err == nil && n > 0 && n < 65536 {
			port = n // the last setting wins, as in PostgreSQL
		}
	}
	return port
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgcluster: finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Addr is "127.0.0.1:port".
func (c *Cluster) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// ConnString is a postgres URL to db as the superuser, with sslmode=disable.
func (c *Cluster) ConnString(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(c.User, c.Password),
		Host:     c.Addr(),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// defaultQueryTimeout bounds Exec, CreateRole and CreateDatabase when ctx
// has no deadline.
const defaultQueryTimeout = 30 * time.Second

// connect connects to db as the superuser.
func (c *Cluster) connect(ctx context.Context, db string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, c.ConnString(db))
	if err != nil {
		return nil, fmt.Errorf("pgcluster: connecting to %s on %s: %w", db, c.Addr(), err)
	}
	return conn, nil
}

func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultQueryTimeout)
}

// Exec runs sql (one or more statements) in db as the superuser.
func (c *Cluster) Exec(ctx context.Context, db, sql string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	conn, err := c.connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// CreateRole creates the role if it does not exist, and (again) sets its
// password and LOGIN or NOLOGIN.
func (c *Cluster) CreateRole(ctx context.Context, name, password string, login bool) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	conn, err := c.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, "CREATE ROLE "+ident); err != nil && !hasCode(err, "42710") { // duplicate_object
		return fmt.Errorf("pgcluster: creating role %s: %w", name, err)
	}
	opt := "NOLOGIN"
	if login {
		opt = "LOGIN"
	}
	if _, err := conn.Exec(ctx, "ALTER ROLE "+ident+" "+opt+" PASSWORD "+quote(password)); err != nil {
		return fmt.Errorf("pgcluster: altering role %s: %w", name, err)
	}
	return nil
}

// CreateDatabase creates the database, owned by owner, if it does not
// exist. An existing database is left as it is.
func (c *Cluster) CreateDatabase(ctx context.Context, name, owner string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	conn, err := c.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var found bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&found); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if found {
		return nil
	}
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " OWNER " + pgx.Identifier{owner}.Sanitize()
	if _, err := conn.Exec(ctx, sql); err != nil && !hasCode(err, "42P04") { // duplicate_database
		return fmt.Errorf("pgcluster: creating database %s: %w", name, err)
	}
	return nil
}

func hasCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// InRecovery reports pg_is_in_recovery(): true on a standby.
func (c *Cluster) InRecovery(ctx context.Context) (bool, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	conn, err := c.connect(ctx, "postgres")
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var in bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&in); err != nil {
		return false, fmt.Errorf("pgcluster: %w", err)
	}
	return in, nil
}

// Stop stops the server with pg_ctl stop -m mode (fast, immediate or
// smart) and waits until it is down. Stopping a stopped cluster does
// nothing.
func (c *Cluster) Stop(ctx context.Context, mode string) error {
	switch mode {
	case "fast", "immediate", "smart":
	default:
		return fmt.Errorf("pgcluster: unknown stop mode %q (want fast, immediate or smart)", mode)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return nil
	}
	c.logf("stopping PostgreSQL on %s (%s)", c.Addr(), mode)
	if err := c.pgctlStop(ctx, mode); err != nil {
		return fmt.Errorf("pgcluster: stopping PostgreSQL on %s: %w", c.Addr(), err)
	}
	c.running = false
	c.dropTmpSocketDir()
	return nil
}

// pgctlStop runs pg_ctl stop; a server that is not running counts as
// stopped.
func (c *Cluster) pgctlStop(ctx context.Context, mode string) error {
	err := c.as.run(ctx, c.Dir, nil, filepath.Join(c.bin, "pg_ctl"), "stop", "-w", "-t", pgctlTimeout, "-D", c.DataDir, "-m", mode)
	if err != nil && ctx.Err() == nil && !exists(filepath.Join(c.DataDir, "postmaster.pid")) {
		return nil
	}
	return err
}

// Restart stops the server (fast) and starts it again on the same port.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.Stop(ctx, "fast"); err != nil {
		return err
	}
	_, err := c.start(ctx)
	return err
}

// Remove stops the server and its replicas (fast, else immediate) and
// deletes the cluster directory if Start created it. It may be called more
// than once.
func (c *Cluster) Remove() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.mu.Lock()
	replicas := c.replicas
	c.replicas = nil
	c.mu.Unlock()
	var errs []error
	for _, r := range slices.Backward(replicas) {
		errs = append(errs, r.Remove())
	}
	if err := c.Stop(ctx, "fast"); err != nil {
		if err2 := c.Stop(ctx, "immediate"); err2 != nil {
			errs = append(errs, err, err2)
		}
	}
	if c.ownsDir {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("pgcluster: %w", err))
		}
	}
	return errors.Join(errs...)
}

// writeConf replaces path with the settings, sorted, under a comment.
func (c *Cluster) writeConf(path, comment string, settings map[string]string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n", comment)
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "%s = %s\n", k, confValue(settings[k]))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.as.chown(path)
}

// setConf sets settings in the configuration file at path: lines that set
// them already are dropped and the settings appended.
func (c *Cluster) setConf(path string, settings map[string]string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(string(data), "\n") {
		key, _, _ := strings.Cut(strings.TrimSpace(line), "=")
		if _, ok := settings[strings.ToLower(strings.TrimSpace(key))]; ok {
			continue
		}
		b.WriteString(line)
	}
	if b.Len() > 0 && !strings.HasSuffix(b.String(), "\n") {
		b.WriteByte('\n')
	}
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "%s = %s\n", k, confValue(settings[k]))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.as.chown(path)
}

// confValue quotes a postgresql.conf value unless it is quoted already.
func confValue(v string) string {
	if strings.HasPrefix(v, "'") {
		return v
	}
	return quote(v)
}

// quote makes s a single-quoted SQL or postgresql.conf string.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// shellQuote quotes s for the shell pg_ctl passes -o through.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
