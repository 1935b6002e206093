package pgcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
)

// ReplicaOptions configure AddReplica.
type ReplicaOptions struct {
	Name string // application_name of the standby; default "replica1"
	Port int    // 0 picks a free port
	Sync bool   // make it the primary's synchronous standby
}

// AddReplica takes a base backup of c into a directory beside it and starts
// it as a streaming replica. An existing replica directory is reused.
func (c *Cluster) AddReplica(ctx context.Context, opts ReplicaOptions) (*Cluster, error) {
	if opts.Name == "" {
		opts.Name = "replica1"
	}
	r := &Cluster{
		Dir: filepath.Join(c.Dir, opts.Name), Host: c.Host, User: c.User, Password: c.Password,
		CAFile: c.CAFile, bin: c.bin, as: c.as, logf: c.logf,
	}
	r.DataDir = filepath.Join(r.Dir, "data")
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := c.as.chown(r.Dir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(r.DataDir, "PG_VERSION")); err != nil {
		c.logf("pg_basebackup %s -> %s", c.Addr(), r.DataDir)
		conninfo := fmt.Sprintf("host=%s port=%d user=%s password=%s application_name=%s sslmode=disable",
			c.Host, c.Port, c.User, c.Password, opts.Name)
		if err := c.as.run(ctx, filepath.Join(c.bin, "pg_basebackup"), "-d", conninfo, "-D", r.DataDir,
			"-R", "-X", "stream", "-c", "fast"); err != nil {
			return nil, err
		}
		if err := appendConf(filepath.Join(r.DataDir, "postgresql.conf"), map[string]string{
			"unix_socket_directories": quote(r.Dir),
		}); err != nil {
			return nil, err
		}
	}
	// The primary's port may have changed since the backup (dev restarts):
	// point the standby at it again.
	if err := appendConf(filepath.Join(r.DataDir, "postgresql.auto.conf"), map[string]string{
		"primary_conninfo": quote(fmt.Sprintf("host=%s port=%d user=%s password=%s application_name=%s sslmode=disable",
			c.Host, c.Port, c.User, c.Password, opts.Name)),
	}); err != nil {
		return nil, err
	}
	if err := r.startOnFreePort(ctx, opts.Port); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.replicas = append(c.replicas, r)
	c.mu.Unlock()
	if opts.Sync {
		if err := c.Exec(ctx, "postgres", "ALTER SYSTEM SET synchronous_standby_names = "+quote(opts.Name)); err != nil {
			return nil, err
		}
		if err := c.Exec(ctx, "postgres", "SELECT pg_reload_conf()"); err != nil {
			return nil, err
		}
	}
	want := "async"
	if opts.Sync {
		want = "sync"
	}
	if err := c.waitStreaming(ctx, opts.Name, want); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, r.logTail())
	}
	return r, nil
}

// waitStreaming waits until the primary reports the standby streaming with
// the wanted sync_state.
func (c *Cluster) waitStreaming(ctx context.Context, name, syncState string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
		if err == nil {
			var state, sync string
			err = conn.QueryRow(ctx, "select state, sync_state from pg_stat_replication where application_name = $1", name).Scan(&state, &sync)
			conn.Close(context.Background())
			if err == nil && state == "streaming" && sync == syncState {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("standby %s not streaming (%s) within 60s: %v", name, syncState, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// InRecovery reports pg_is_in_recovery() of c.
func (c *Cluster) InRecovery(ctx context.Context) (bool, error) {
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var b bool
	err = conn.QueryRow(ctx, "select pg_is_in_recovery()").Scan(&b)
	return b, err
}
