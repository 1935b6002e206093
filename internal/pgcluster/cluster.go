package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/devcert"
)

// Options configure Start.
type Options struct {
	// Dir holds the cluster (data directory, socket, log). "" means a new
	// temporary directory, removed by Remove. An existing data directory is
	// reused.
	Dir      string
	Port     int               // 0 picks a free loopback port
	SSL      bool              // ssl=on with a devcert certificate
	Settings map[string]string // extra postgresql.conf settings
	Logf     func(format string, args ...any)
}

// Cluster is one running PostgreSQL server.
type Cluster struct {
	Dir      string
	DataDir  string
	Host     string
	Port     int
	User     string
	Password string
	CAFile   string // with SSL

	bin     string
	as      *runAs
	ownsDir bool
	logf    func(string, ...any)

	mu       sync.Mutex
	running  bool
	replicas []*Cluster // stopped by Remove
}

const (
	superuser     = "postgres"
	superPassword = "postgres"
)

// Start initialises the cluster if needed and starts it.
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
	if opts.Dir == "" {
		dir, err := os.MkdirTemp("", "pgc-")
		if err != nil {
			return nil, err
		}
		c.ownsDir = true
		opts.Dir = dir
	}
	c.Dir, err = filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	c.DataDir = filepath.Join(c.Dir, "data")
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := makeTraversable(c.Dir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "PG_VERSION")); err != nil {
		if err := c.initdb(ctx, opts); err != nil {
			c.cleanupFailed()
			return nil, err
		}
	} else if opts.SSL {
		c.CAFile = filepath.Join(c.Dir, "certs", "ca.crt")
	}
	if err := c.startOnFreePort(ctx, opts.Port); err != nil {
		c.cleanupFailed()
		return nil, err
	}
	return c, nil
}

// StartForTest starts a cluster that is stopped and removed when the test
// ends, whether it passed or not.
func StartForTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("starting PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Remove(); err != nil {
			t.Errorf("removing cluster: %v", err)
		}
	})
	return c
}

func (c *Cluster) cleanupFailed() {
	if c.ownsDir {
		_ = os.RemoveAll(c.Dir)
	}
}

// makeTraversable lets the postgres user reach dir through its parents.
func makeTraversable(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *Cluster) initdb(ctx context.Context, opts Options) error {
	c.logf("initdb %s", c.DataDir)
	pwfile := filepath.Join(c.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(superPassword+"\n"), 0o600); err != nil {
		return err
	}
	if err := c.as.chown(c.Dir); err != nil {
		return err
	}
	if err := c.as.run(ctx, filepath.Join(c.bin, "initdb"), "-D", c.DataDir, "-U", superuser, "--pwfile", pwfile,
		"-E", "UTF8", "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "-N"); err != nil {
		return err
	}
	_ = os.Remove(pwfile)
	settings := map[string]string{
		"listen_addresses":        "'127.0.0.1'",
		"unix_socket_directories": quote(c.Dir),
		"max_connections":         "200",
		"wal_level":               "replica",
		"max_wal_senders":         "10",
		"max_replication_slots":   "10",
		"hot_standby":             "on",
		"fsync":                   "off",
		"synchronous_commit":      "on",
		"full_page_writes":        "off",
		"shared_buffers":          "64MB",
		"logging_collector":       "off",
		"wal_keep_size":           "256MB",
	}
	if opts.SSL {
		files, err := devcert.Generate(filepath.Join(c.Dir, "certs"))
		if err != nil {
			return err
		}
		c.CAFile = files.CAFile
		if err := c.as.chown(filepath.Join(c.Dir, "certs")); err != nil {
			return err
		}
		settings["ssl"] = "on"
		settings["ssl_cert_file"] = quote(files.CertFile)
		settings["ssl_key_file"] = quote(files.KeyFile)
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	if err := appendConf(filepath.Join(c.DataDir, "postgresql.conf"), settings); err != nil {
		return err
	}
	hba := "\nhost replication postgres 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
	return appendFile(filepath.Join(c.DataDir, "pg_hba.conf"), hba)
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func appendConf(path string, settings map[string]string) error {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("\n# pgcluster\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, settings[k])
	}
	return appendFile(path, b.String())
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (c *Cluster) logFile() string { return filepath.Join(c.Dir, "postgresql.log") }

// startOnFreePort starts the server, retrying on another port if the one
// picked was taken in the meantime.
func (c *Cluster) startOnFreePort(ctx context.Context, port int) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		c.Port = port
		if port == 0 {
			if c.Port, err = freePort(); err != nil {
				return err
			}
		}
		if err = c.start(ctx); err == nil || port != 0 {
			return err
		}
		if !strings.Contains(err.Error(), "in use") && !strings.Contains(err.Error(), "could not bind") && !strings.Contains(err.Error(), "could not create") {
			return err
		}
	}
	return err
}

func (c *Cluster) start(ctx context.Context) error {
	c.logf("starting PostgreSQL on %s", c.Addr())
	if err := touch(c.logFile(), c.as); err != nil {
		return err
	}
	err := c.as.run(ctx, filepath.Join(c.bin, "pg_ctl"), "start", "-w", "-t", "60", "-D", c.DataDir,
		"-l", c.logFile(), "-o", "-p "+strconv.Itoa(c.Port))
	if err != nil {
		return fmt.Errorf("%w\n%s", err, c.logTail())
	}
	c.mu.Lock()
	c.running = true
	c.mu.Unlock()
	return nil
}

func touch(path string, as *runAs) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	f.Close()
	if as != nil {
		return os.Chown(path, int(as.uid), int(as.gid))
	}
	return nil
}

// logTail returns the end of the server log, for error messages.
func (c *Cluster) logTail() string {
	data, err := os.ReadFile(c.logFile())
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "server log:\n" + strings.Join(lines, "\n")
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Addr is host:port.
func (c *Cluster) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// ConnString is a superuser URL for db, without TLS.
func (c *Cluster) ConnString(db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", c.User, c.Password, c.Addr(), db)
}

// Exec runs sql as the superuser in db.
func (c *Cluster) Exec(ctx context.Context, db, sql string) error {
	conn, err := pgx.Connect(ctx, c.ConnString(db))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// CreateRole creates a role if it does not exist, and sets its password.
func (c *Cluster) CreateRole(ctx context.Context, name, password string, login bool) error {
	opt := "NOLOGIN"
	if login {
		opt = "LOGIN"
	}
	ident := pgx.Identifier{name}.Sanitize()
	pw := "'" + strings.ReplaceAll(password, "'", "''") + "'"
	sql := fmt.Sprintf(`DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE %s; END IF;
END$$; ALTER ROLE %s %s PASSWORD %s`, "'"+strings.ReplaceAll(name, "'", "''")+"'", ident, ident, opt, pw)
	return c.Exec(ctx, "postgres", sql)
}

// CreateDatabase creates a database owned by owner if it does not exist.
func (c *Cluster) CreateDatabase(ctx context.Context, name, owner string) error {
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "select exists (select from pg_database where datname = $1)", name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{owner}.Sanitize()))
	return err
}

// Stop stops the server; mode is fast, immediate or smart. Stopping a
// stopped cluster does nothing.
func (c *Cluster) Stop(ctx context.Context, mode string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return nil
	}
	if err := c.as.run(ctx, filepath.Join(c.bin, "pg_ctl"), "stop", "-w", "-t", "60", "-D", c.DataDir, "-m", mode); err != nil {
		if _, statErr := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); errors.Is(statErr, os.ErrNotExist) {
			c.running = false
			return nil
		}
		return err
	}
	c.running = false
	return nil
}

// Start again after Stop, on the same port.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.Stop(ctx, "fast"); err != nil {
		return err
	}
	return c.start(ctx)
}

// Remove stops the server and its replicas and deletes the directory if
// Start created it.
func (c *Cluster) Remove() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c.mu.Lock()
	replicas := c.replicas
	c.replicas = nil
	c.mu.Unlock()
	for _, r := range replicas {
		_ = r.Remove()
	}
	err := c.Stop(ctx, "fast")
	if err != nil {
		err = c.Stop(ctx, "immediate")
	}
	if c.ownsDir {
		if rmErr := os.RemoveAll(c.Dir); rmErr != nil && err == nil {
			err = rmErr
		}
	}
	return err
}
