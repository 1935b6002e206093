package poolmgr

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Probe is what a health check learned about a backend.
type Probe struct {
	// Started is when the check query was sent: LSN is at least the
	// server's position at that moment.
	Started    time.Time
	InRecovery bool
	// LSN is the WAL position: the current insert position of a primary,
	// the replayed position of a replica.
	LSN uint64
	// ReplayDelay is how far a replica's replay is behind in time: zero
	// when it has replayed all it received, else the age of the last
	// transaction it replayed.
	ReplayDelay time.Duration
	// BlksHit and BlksRead are the database's buffer hits and reads
	// (pg_stat_database), for the cache hit ratio.
	BlksHit, BlksRead uint64
}

// probeSQL reads role and WAL positions in one round trip.
const probeSQL = `SELECT pg_is_in_recovery(),
  (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0')::text,
  CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn()
    THEN COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) ELSE 0 END::text,
  (SELECT blks_hit FROM pg_stat_database WHERE datname = current_database())::text,
  (SELECT blks_read FROM pg_stat_database WHERE datname = current_database())::text`

// Probe checks a backend of a database. With fresh set it dials a new
// connection (the full check: the backend accepts and authenticates
// connections); otherwise it reuses the monitoring connection it keeps per
// backend, dialling one if needed. Dials go through the breaker, so a
// failed check counts toward opening it, and an open breaker fails the
// check at once.
func (m *Manager) Probe(ctx context.Context, database, addr string, fresh bool) (Probe, error) {
	key := Key{Service: monitorService, Database: database, Backend: addr}
	m.bmu.Lock()
	c := m.monitors[key]
	delete(m.monitors, key)
	m.bmu.Unlock()
	if c != nil && fresh {
		c.closeMonitor()
		c = nil
	}
	if c == nil {
		var err error
		if c, err = m.dialMonitor(ctx, database, addr); err != nil {
			return Probe{}, err
		}
	}
	pr := Probe{Started: time.Now()}
	row, err := c.QueryRow(ctx, probeSQL)
	if err == nil {
		err = parseProbe(row, &pr)
	}
	if err != nil {
		c.closeMonitor()
		// A connection that cannot run a query counts like a failed dial.
		b := m.backendOf(addr)
		_, _ = b.cb.Execute(func() (*Conn, error) { return nil, err })
		return Probe{}, fmt.Errorf("health check of %s: %w", addr, err)
	}
	m.bmu.Lock()
	if old := m.monitors[key]; old != nil {
		old.closeMonitor()
	}
	m.monitors[key] = c
	m.bmu.Unlock()
	return pr, nil
}

func parseProbe(row [][]byte, pr *Probe) error {
	if len(row) != 5 || row[0] == nil || row[1] == nil {
		return errors.New("unexpected health check result")
	}
	pr.InRecovery = string(row[0]) == "t"
	var err error
	if pr.LSN, err = strconv.ParseUint(string(row[1]), 10, 64); err != nil {
		return fmt.Errorf("health check LSN: %w", err)
	}
	secs, err := strconv.ParseFloat(string(row[2]), 64)
	if err != nil {
		return fmt.Errorf("health check replay delay: %w", err)
	}
	pr.ReplayDelay = time.Duration(secs * float64(time.Second))
	if row[3] != nil && row[4] != nil {
		pr.BlksHit, _ = strconv.ParseUint(string(row[3]), 10, 64)
		pr.BlksRead, _ = strconv.ParseUint(string(row[4]), 10, 64)
	}
	return nil
}

// monitorService is the service name of health check connections, which
// belong to no pool.
const monitorService = "\x00monitor"

// dialMonitor opens a connection outside any pool, through the breaker.
func (m *Manager) dialMonitor(ctx context.Context, database, addr string) (*Conn, error) {
	m.mu.Lock()
	db, ok := m.cfg.Databases[database]
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownDatabase, database)
	}
	p := &pool{mgr: m, key: Key{Service: monitorService, Database: database, Backend: addr}, db: db}
	ctx, cancel := context.WithTimeout(ctx, m.settings().ConnectTimeout)
	defer cancel()
	c, err := m.dialWithRetry(ctx, addr, func(ctx context.Context) (*Conn, error) { return dial(ctx, p) })
	if err != nil {
		return nil, &DialError{Backend: addr, Err: err}
	}
	return c, nil
}

// closeMonitor closes a connection that belongs to no pool.
func (c *Conn) closeMonitor() {
	if c.backend != nil {
		c.backend.untrack(c)
	}
	_ = c.netConn.Close()
}

// closeMonitors closes the monitoring connections to addr.
func (m *Manager) closeMonitors(addr string) {
	m.bmu.Lock()
	defer m.bmu.Unlock()
	for k, c := range m.monitors {
		if k.Backend == addr {
			c.closeMonitor()
			delete(m.monitors, k)
		}
	}
}

// Promote turns a replica into a primary with pg_promote, waiting for the
// promotion to complete (up to the deadline of ctx).
func (m *Manager) Promote(ctx context.Context, database, addr string) error {
	c, err := m.dialMonitor(ctx, database, addr)
	if err != nil {
		return err
	}
	defer c.closeMonitor()
	wait := 60
	if dl, ok := ctx.Deadline(); ok {
		wait = max(1, int(time.Until(dl).Seconds()))
	}
	row, err := c.QueryRow(ctx, "SELECT pg_promote(true, "+strconv.Itoa(wait)+")")
	if err != nil {
		return fmt.Errorf("promoting %s: %w", addr, err)
	}
	if string(row[0]) != "t" {
		return fmt.Errorf("promoting %s: not promoted within %d s", addr, wait)
	}
	return nil
}
