package poolmgr

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sony/gobreaker/v2"
)

// adminApplicationName tells a DBA looking at pg_stat_activity which
// backends are pgshield's own statistics queries.
const adminApplicationName = "pgshield admin"

// Connect opens a plain connection to backend addr of database ("" means its
// current primary) with the database's server credentials and server TLS,
// for the admin console's statistics queries. The connection belongs to no
// pool and is not hijacked: the caller speaks to it through pgconn and
// closes it.
//
// The dial goes through the backend's circuit breaker without retrying: an
// open breaker fails at once (an operator asking how a database is doing
// should not wait out the connect timeout for a backend known to be down),
// and the outcome counts toward the breaker like any other dial.
func (m *Manager) Connect(ctx context.Context, database, addr string) (*pgconn.PgConn, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	db, ok := m.cfg.Databases[database]
	if ok && addr == "" {
		addr = m.primaryLocked(database, db)
	}
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownDatabase, database)
	}
	cfg, err := serverConfig(database, db, addr)
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = m.settings().ConnectTimeout
	cfg.RuntimeParams["application_name"] = adminApplicationName

	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	var pc *pgconn.PgConn
	_, err = m.backendOf(addr).cb.Execute(func() (*Conn, error) {
		var err error
		pc, err = pgconn.ConnectConfig(ctx, cfg)
		return nil, err
	})
	if err != nil {
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			err = ErrBreakerOpen
		}
		return nil, &DialError{Backend: addr, Err: err}
	}
	return pc, nil
}

// serverConfig is the pgconn configuration for backend addr of a
// database, with its server-side credentials and TLS.
func serverConfig(database string, db DatabaseConfig, addr string) (*pgconn.Config, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("backend %q of database %q: %w", addr, database, err)
	}
	cfg, err := pgconn.ParseConfig(connString(map[string]string{
		"host":        host,
		"port":        port,
		"dbname":      db.DBName,
		"user":        db.User,
		"password":    db.Password,
		"sslmode":     db.ServerTLS.Mode,
		"sslrootcert": db.ServerTLS.CAFile,
	}))
	if err != nil {
		return nil, fmt.Errorf("server config for database %q: %w", database, err)
	}
	return cfg, nil
}
