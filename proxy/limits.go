package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Transaction limits, enforced by the proxy for any PostgreSQL version.
//
// transaction_timeout (per service): once a transaction has been open that
// long, the statement running in it is cancelled and its error is replaced
// by one naming the limit (25P04); if none is running, the next statement
// the client sends in the transaction fails the same way. Either way the
// transaction is aborted, as PostgreSQL aborts a transaction after an
// error, and the client can only roll it back; it stays connected.
//
// idle_in_transaction_timeout (per service): a client idle inside a
// transaction that long is told why (FATAL 25P03) and disconnected; its
// server connection is rolled back and goes back to the pool clean.
//
// A reaper goroutine checks every session four times a second, only while
// some service has a limit.

// SQLSTATEs of the limits (PostgreSQL's own for its settings of the same
// names) and of a cancelled statement.
const (
	codeQueryCanceled      = "57014"
	codeIdleInTransaction  = "25P03"
	codeTransactionTimeout = "25P04"
	reapInterval           = 250 * time.Millisecond
	// parkEvery is how many reaps make one sweep of idle clients
	// (park.go): a client idle one to two sweeps is parked.
	parkEvery = 4
)

// limits are a service's transaction limits.
type limits struct{ tx, idle time.Duration }

// reap enforces the limits until stop is closed.
func (s *Server) reap(stop <-chan struct{}) {
	t := time.NewTicker(reapInterval)
	defer t.Stop()
	for tick := 1; ; tick++ {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if tick%parkEvery == 0 {
			s.sweepPark()
		}
		svcs := s.pools.Config().Services
		var lim map[string]limits
		for name, svc := range svcs {
			if svc.TransactionTimeout > 0 || svc.IdleInTransactionTimeout > 0 {
				if lim == nil {
					lim = make(map[string]limits)
				}
				lim[name] = limits{tx: svc.TransactionTimeout, idle: svc.IdleInTransactionTimeout}
			}
		}
		if lim == nil {
			continue
		}
		now := time.Now()
		for _, sess := range s.sessionList() {
			if l, ok := lim[sess.service]; ok {
				sess.enforce(now, l)
			}
		}
	}
}

// enforce applies l to the session's open transaction, if any.
func (s *session) enforce(now time.Time, l limits) {
	s.mu.Lock()
	if s.life != lifeOpen || s.txSince.IsZero() || s.server == nil {
		s.mu.Unlock()
		return
	}
	idle := s.queue.empty() && !s.writing && s.txStatus != 'I'
	if l.idle > 0 && idle && now.Sub(s.lastReady) > l.idle {
		s.mu.Unlock()
		s.log.Info("disconnecting a client idle in transaction", zap.Duration("idle_in_transaction_timeout", l.idle))
		s.end(fatalf(codeIdleInTransaction,
			"terminating connection due to idle_in_transaction_timeout: idle in a transaction longer than %s (service %s)", l.idle, s.service))
		return
	}
	if l.tx > 0 && !s.txExpired && now.Sub(s.txSince) > l.tx {
		s.txExpired, s.txLimit = true, l.tx
		s.log.Info("transaction_timeout reached", zap.Duration("transaction_timeout", l.tx))
		// Held under the lock, as cancelRunning does, so the server
		// cannot change hands meanwhile.
		s.cancelServerLocked("cancelling a statement past transaction_timeout")
	}
	s.mu.Unlock()
}

// txTimeoutErr is what a statement of a transaction past its limit fails
// with. s.mu must be held.
func (s *session) txTimeoutErr() *pgError {
	e := errorf(codeTransactionTimeout, "canceling statement due to transaction_timeout: the transaction was open longer than %s (service %s)", s.txLimit, s.service)
	e.hint = "roll the transaction back; keep transactions shorter, or raise transaction_timeout of the service"
	return e
}

// Kill ends a client's session. An idle client is told at once, and its
// server, if it holds one, is rolled back and returned. A client with a
// statement running has that statement cancelled on its server first, as
// a cancel request from the client would; the statement's answer (its
// error, or its result if it finished first) ends the session: the client
// is told 57P01, and the server is rolled back and returned (or closed if
// it is not at a safe point). A statement that does not yield to the
// cancel within killWait has its server connection closed.
func (s *Server) Kill(id uint32) error {
	s.mu.Lock()
	sess := s.sessions[id]
	s.mu.Unlock()
	if sess == nil {
		return fmt.Errorf("%w: no client with id %d", ErrNotFound, id)
	}
	msg := fatalf(codeAdminShutdown, "terminating connection due to administrator command (KILL on the pgshield admin console)")
	sess.mu.Lock()
	idle := sess.server == nil || (sess.queue.empty() && !sess.writing)
	if !idle && sess.setLifeLocked(lifeEnding) {
		sess.endMsg = msg
		sess.cancelServerLocked("cancelling the statement of a killed client")
	}
	sess.mu.Unlock()
	sess.log.Info("client killed from the admin console", zap.Bool("idle", idle))
	if idle {
		sess.end(msg)
	}
	select {
	case <-sess.gone:
	case <-time.After(killWait):
		sess.log.Warn("killed client did not stop; closing its connections", zap.Duration("waited", killWait))
		sess.forceClose(msg)
	}
	return nil
}

// killWait bounds how long KILL waits for a cancelled statement to end.
const killWait = 5 * time.Second

// waitPaused holds a client that needs a server while its database is
// paused, until RESUME or ctx ends.
func (s *Server) waitPaused(ctx context.Context, database string) error {
	for s.pausing.Load() > 0 {
		s.pauseMu.Lock()
		ch := s.paused[database]
		if ch == nil {
			ch = s.paused[""]
		}
		s.pauseMu.Unlock()
		if ch == nil {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				// A login held past client_login_timeout.
				e := fatalf(codeCannotConnectNow, "database %q is paused by an administrator", database)
				e.hint = "PAUSE on the pgshield admin console holds new transactions until RESUME"
				return e
			}
			return ctx.Err()
		}
	}
	return nil
}

// Pause holds new transactions of database ("" for all) and waits until
// the transactions running in it have finished, or ctx ends: then the
// pause stays, and the error says how many are still open.
func (s *Server) Pause(ctx context.Context, database string) error {
	if database != "" {
		if _, ok := s.pools.Config().Databases[database]; !ok {
			return fmt.Errorf("%w: database %q is not configured", ErrNotFound, database)
		}
	}
	s.pauseMu.Lock()
	if _, ok := s.paused[database]; !ok {
		s.paused[database] = make(chan struct{})
		s.pausing.Add(1)
	}
	s.pauseMu.Unlock()
	for {
		open := 0
		for _, sess := range s.sessionList() {
			if database != "" && sess.database != database {
				continue
			}
			sess.mu.Lock()
			if sess.server != nil && (sess.txStatus != 'I' || !sess.queue.empty()) {
				open++
			}
			sess.mu.Unlock()
		}
		if open == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: paused, but %d transaction(s) still running; new ones are held until RESUME", ErrStillRunning, open)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Resume releases the clients held by PAUSE of database; "" resumes
// everything paused.
func (s *Server) Resume(database string) error {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	if database == "" {
		for db, ch := range s.paused {
			close(ch)
			delete(s.paused, db)
			s.pausing.Add(-1)
		}
		return nil
	}
	ch, ok := s.paused[database]
	if !ok {
		if _, all := s.paused[""]; all {
			return fmt.Errorf("%w: every database is paused; RESUME without a database name resumes them", ErrNotPaused)
		}
		return fmt.Errorf("%w: database %q is not paused", ErrNotPaused, database)
	}
	close(ch)
	delete(s.paused, database)
	s.pausing.Add(-1)
	return nil
}

// Paused reports whether database is paused (by name or as part of all).
func (s *Server) Paused(database string) bool {
	if s.pausing.Load() == 0 {
		return false
	}
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	_, one := s.paused[database]
	_, all := s.paused[""]
	return one || all
}

// Errors of the control operations, for the admin console.
var (
	ErrNotFound     = errors.New("not found")
	ErrNotPaused    = errors.New("not paused")
	ErrStillRunning = errors.New("still running")
)
