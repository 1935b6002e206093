package pgcluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ReplicaOptions configure AddReplica.
type ReplicaOptions struct {
	// Name is the standby's application_name and the name of its directory
	// under the primary's Dir: letters, digits, '_' and '-'. "" means
	// "replicaN", N counting the primary's replicas from 1.
	Name string
	// Port is the TCP port on 127.0.0.1. 0 means the port a reused replica
	// directory was started on last time, or a free port for a new one or
	// when that port is taken.
	Port int
	// Sync makes it the primary's synchronous standby: the primary's
	// synchronous_standby_names becomes Name.
	Sync bool
}

// replicaWait bounds how long AddReplica waits for the standby to stream.
const replicaWait = 60 * time.Second

// AddReplica makes a streaming replica of c: pg_basebackup -R -X stream
// into Dir/<Name>/data under c's Dir, then starts it and waits until it is
// in recovery and streaming (with sync_state 'sync' if opts.Sync). An
// existing replica data directory is reused. c.Remove removes the replica
// too.
func (c *Cluster) AddReplica(ctx context.Context, opts ReplicaOptions) (*Cluster, error) {
	c.mu.Lock()
	running, n := c.running, len(c.replicas)+1
	c.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("pgcluster: adding a replica: the primary on %s is not running", c.Addr())
	}
	if opts.Name == "" {
		opts.Name = "replica" + strconv.Itoa(n)
	}
	if !validName(opts.Name) {
		return nil, fmt.Errorf("pgcluster: replica name %q: use letters, digits, '_' and '-'", opts.Name)
	}
	r := &Cluster{
		Dir: filepath.Join(c.Dir, opts.Name), Host: c.Host, User: c.User, Password: c.Password,
		CAFile: c.CAFile, bin: c.bin, as: c.as, logf: c.logf,
	}
	r.DataDir = filepath.Join(r.Dir, "data")
	r.LogFile = filepath.Join(r.Dir, "postgresql.log")
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.as.chown(r.Dir); err != nil {
		return nil, err
	}
	conninfo := fmt.Sprintf("host=%s port=%d user=%s application_name=%s sslmode=disable",
		connValue(c.Host), c.Port, connValue(c.User), connValue(opts.Name))
	if !exists(filepath.Join(r.DataDir, "PG_VERSION")) {
		if err := c.baseBackup(ctx, r, conninfo); err != nil {
			return nil, err
		}
	} else {
		if !exists(filepath.Join(r.DataDir, "standby.signal")) {
			return nil, fmt.Errorf("pgcluster: %s exists but is not a standby (promoted?); remove it to make a new replica", r.DataDir)
		}
		// postgresql.conf came from the primary with pg_basebackup and has
		// the replica's own port once the replica has started.
		if p := r.confPort(); p != c.Port {
			r.LastPort = p
		}
		if err := r.stopStale(ctx); err != nil {
			return nil, err
		}
	}
	// The primary's per-start settings (ssl, Options.Settings) as they are
	// now, not as they were at the backup: a standby needs, for instance,
	// max_connections at least as high as its primary's.
	local, err := os.ReadFile(filepath.Join(c.DataDir, localConf))
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if err := os.WriteFile(filepath.Join(r.DataDir, localConf), local, 0o600); err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.as.chown(filepath.Join(r.DataDir, localConf)); err != nil {
		return nil, err
	}
	if err := r.includeLocalConf(); err != nil {
		return nil, err
	}
	if err := r.setConf(filepath.Join(r.DataDir, "postgresql.conf"), map[string]string{
		"unix_socket_directories": r.confSocketDir(),
	}); err != nil {
		return nil, err
	}
	// Written at every start: the primary's port may have changed since the
	// backup (a reused directory).
	if err := r.setConf(filepath.Join(r.DataDir, "postgresql.auto.conf"), map[string]string{
		"primary_conninfo": conninfo + " password=" + connValue(c.Password),
	}); err != nil {
		return nil, err
	}
	if err := r.startOnFreePort(ctx, opts.Port, r.LastPort); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.replicas = append(c.replicas, r)
	c.mu.Unlock()

	if err := c.follow(ctx, r, opts); err != nil {
		c.dropReplica(r, opts.Sync)
		return nil, fmt.Errorf("pgcluster: replica %s: %w\nreplica %s", opts.Name, err, r.LogTail())
	}
	return r, nil
}

// baseBackup copies c into r.DataDir as a standby of c.
func (c *Cluster) baseBackup(ctx context.Context, r *Cluster, conninfo string) error {
	c.logf("pg_basebackup from %s into %s", c.Addr(), r.DataDir)
	fresh := !exists(r.DataDir)
	err := c.as.run(ctx, r.Dir, []string{"PGPASSWORD=" + c.Password}, filepath.Join(c.bin, "pg_basebackup"),
		"-d", conninfo, "-D", r.DataDir, "-R", "-X", "stream", "-c", "fast", "--no-sync")
	if err != nil {
		if fresh {
			_ = os.RemoveAll(r.DataDir) // so that a retry starts afresh
		}
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// follow makes r c's synchronous standby if asked and waits until r is in
// recovery and c streams to it.
func (c *Cluster) follow(ctx context.Context, r *Cluster, opts ReplicaOptions) error {
	if opts.Sync {
		if err := c.Exec(ctx, "postgres", "ALTER SYSTEM SET synchronous_standby_names = "+quote(`"`+opts.Name+`"`)); err != nil {
			return err
		}
		if err := c.Exec(ctx, "postgres", "SELECT pg_reload_conf()"); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, replicaWait)
	defer cancel()
	if err := poll(ctx, r, "SELECT pg_is_in_recovery()", nil); err != nil {
		return fmt.Errorf("not in recovery within %v: %w", replicaWait, err)
	}
	c.logf("waiting for %s to stream from %s", opts.Name, c.Addr())
	q := "SELECT state = 'streaming' AND ($2 = '' OR sync_state = $2) FROM pg_stat_replication WHERE application_name = $1"
	want := ""
	if opts.Sync {
		want = "sync"
	}
	if err := poll(ctx, c, q, []any{opts.Name, want}); err != nil {
		return fmt.Errorf("not streaming (%s) from %s within %v: %w", cmp.Or(want, "async or sync"), c.Addr(), replicaWait, err)
	}
	return nil
}

// dropReplica stops r after a failed AddReplica, so that nothing is left
// running that the caller cannot stop, and takes it off the primary's
// synchronous standbys.
func (c *Cluster) dropReplica(r *Cluster, wasSync bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if wasSync {
		// Two statements: ALTER SYSTEM refuses to run in a transaction block.
		if c.Exec(ctx, "postgres", "ALTER SYSTEM RESET synchronous_standby_names") == nil {
			_ = c.Exec(ctx, "postgres", "SELECT pg_reload_conf()")
		}
	}
	if err := r.Stop(ctx, "fast"); err != nil {
		_ = r.Stop(ctx, "immediate")
	}
	c.mu.Lock()
	c.replicas = slices.DeleteFunc(c.replicas, func(x *Cluster) bool { return x == r })
	c.mu.Unlock()
}

// poll runs the query (one boolean row) on cl until it returns true, the
// query failing or returning no rows counting as not yet.
func poll(ctx context.Context, cl *Cluster, query string, args []any) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	last := errors.New("no answer yet")
	for {
		if conn == nil {
			var err error
			if conn, err = cl.connect(ctx, "postgres"); err != nil {
				last = err
			}
		}
		if conn != nil {
			var ok bool
			err := conn.QueryRow(ctx, query, args...).Scan(&ok)
			switch {
			case err == nil && ok:
				return nil
			case err == nil:
				last = errors.New("not yet")
			case errors.Is(err, pgx.ErrNoRows):
				last = errors.New("no row yet")
			default:
				last = err
				conn.Close(context.Background())
				conn = nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func validName(name string) bool {
	if name == "" || len(name) > 63 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// connValue quotes a libpq connection-string value.
func connValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\\t\n") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
