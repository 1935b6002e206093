package proxy

import (
	"context"
	"time"

	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// Giving a server back.
//
// A server leaves a session in one of three ways, all through giveBack:
// as it is (transaction mode, at a safe point: ReadyForQuery idle, nothing
// outstanding, not pinned, nobody writing to it), reset first (the session
// ended with a transaction open or with session state: ROLLBACK and/or
// DISCARD ALL, and destroyed if that fails), or destroyed (it broke, or
// is not at a message boundary, or ran LOAD).

// giveHow is how giveBack returns a server.
type giveHow uint8

const (
	giveClean   giveHow = iota // back to its pool as it is
	giveDestroy                // closed, never reused
)

// giveBack returns srv to its pool or closes it. It must no longer be
// attached to any session.
func (s *session) giveBack(srv *poolmgr.Conn, how giveHow) {
	if srv == nil {
		return
	}
	switch how {
	case giveClean:
		srv.Release()
	case giveDestroy:
		srv.Destroy()
	}
}

// giveBackReset runs sql (ROLLBACK, DISCARD ALL) on srv, then returns it,
// or destroys it if that fails or leaves a transaction open.
func (s *session) giveBackReset(srv *poolmgr.Conn, sql string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if st, err := srv.Exec(ctx, sql); err != nil || st != 'I' {
		s.giveBack(srv, giveDestroy)
		return
	}
	s.giveBack(srv, giveClean)
}

// detachLocked takes the attached server off the session and does the
// bookkeeping of its leaving. s.mu must be held.
func (s *session) detachLocked() *poolmgr.Conn {
	srv := s.server
	s.server = nil
	if s.node != nil {
		s.node.Done()
		s.node = nil
	}
	if s.wrote {
		s.lastWrite = time.Now()
		s.wrote = false
	}
	return srv
}

// releaseLocked gives the attached server srv back to its pool at a safe
// point, and ends the session there if the proxy is draining. s.mu must be
// held; it is released.
func (s *session) releaseLocked(srv *poolmgr.Conn) {
	s.detachLocked()
	cw := s.cw
	s.cw = nil
	s.reader = readerNone
	s.atBoundary = true
	draining := s.life == lifeDraining
	s.idle.Broadcast()
	s.mu.Unlock()
	s.srv.putWriter(cw)
	s.giveBack(srv, giveClean)
	if draining {
		s.kick()
	}
}

// releasableLocked reports whether the attached server is at a safe point
// to go back to its pool. s.mu must be held.
func (s *session) releasableLocked() bool {
	return s.server != nil && s.life < lifeEnding && s.mode == poolmgr.ModeTransaction && s.reader == readerNone &&
		!s.writing && s.queue.empty() && s.txStatus == 'I' && s.pins == 0
}

// releaseIfIdle gives the server back if it is at a safe point: after a
// write, when the reader found the server idle while the client goroutine
// was writing and left it attached.
func (s *session) releaseIfIdle() {
	s.mu.Lock()
	if !s.releasableLocked() {
		s.mu.Unlock()
		return
	}
	s.releaseLocked(s.server)
}

// detachIdle gives back a freshly attached, idle server (used at login).
func (s *session) detachIdle() {
	s.mu.Lock()
	srv := s.detachLocked()
	s.mu.Unlock()
	s.giveBack(srv, giveClean)
}

// close ends the session: the server connection goes back clean (rolled
// back, and reset in session mode or with session state) or is closed.
// Only the client goroutine (or a failed login) closes a session, once.
func (s *session) close() {
	if s.gone != nil {
		defer close(s.gone)
	}
	s.mu.Lock()
	s.setLifeLocked(lifeClosing)
	srv, done := s.server, s.pumpDone
	if srv != nil && done != nil {
		// Wake the pump; it sees the session closing and stops without
		// touching srv.
		_ = srv.NetConn().SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	if done != nil {
		<-done
	}
	s.mu.Lock()
	srv = s.detachLocked()
	clean := s.queue.empty() && s.atBoundary && !s.needFlush
	status := s.txStatus
	pins := s.pins
	s.unpinLocked(s.pins)
	cw := s.cw
	s.cw = nil
	s.setLifeLocked(lifeClosed)
	s.mu.Unlock()
	s.srv.putWriter(cw)
	s.srv.unregister(s)
	s.stop()
	_ = s.conn.Close()
	if srv == nil {
		return
	}
	_ = srv.NetConn().SetReadDeadline(time.Time{})
	if !clean || pins&router.PinLoad != 0 {
		// A loaded library cannot be unloaded: the server is not reused.
		s.giveBack(srv, giveDestroy)
		return
	}
	var sql string
	if status != 'I' {
		sql = "ROLLBACK;"
	}
	if s.mode == poolmgr.ModeSession || pins != 0 {
		// Session state (settings, LISTEN, advisory locks, temporary
		// objects, cursors, prepared statements) must not reach the next
		// client.
		sql += "DISCARD ALL"
		srv.State = ""
		forgetServerStatements(srv)
	}
	if sql == "" {
		s.giveBack(srv, giveClean)
		return
	}
	s.giveBackReset(srv, sql)
}
