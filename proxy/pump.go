package proxy

import (
	"bufio"
	"errors"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// startPumpLocked starts the goroutine that forwards the attached server's
// messages to the client, unless one is running. s.mu must be held.
func (s *session) startPumpLocked() {
	if s.server == nil || s.pumpRunning {
		return
	}
	if s.cw == nil {
		s.cw = s.srv.getWriter(s.conn)
	}
	s.pumpDone = make(chan struct{})
	s.pumpRunning = true
	s.pumpClean = false
	s.unpumped = 0
	go s.pump(s.server, s.cw, s.pumpDone)
}

// pump forwards server messages to the client until the server is released
// at a safe point, the session closes, or the server fails.
func (s *session) pump(srv *poolmgr.Conn, cw *bufio.Writer, done chan struct{}) {
	defer close(done)
	s.pumpLoop(srv, cw, false)
}

// unpumpedMax bounds what is written to a server while no pump reads its
// answers: below any socket buffer, so the server can never be blocked on
// its answers while the proxy is blocked writing to it.
const unpumpedMax = 32 << 10

// afterWrite decides who reads the server's answers once the client
// goroutine has forwarded what the client had sent. When the client waits
// for a ReadyForQuery (it sent Sync or Query and nothing more), the client
// goroutine reads the answers itself, which saves a goroutine and a handoff
// per transaction; otherwise (pipelines, Flush, COPY) a pump runs beside it.
func (s *session) afterWrite(typ byte) {
	if s.r.Buffered() > 0 && s.unpumped < unpumpedMax {
		return // forward the rest of what the client sent first
	}
	s.mu.Lock()
	if s.server == nil || s.pumpRunning || s.queue.empty() {
		s.mu.Unlock()
		return
	}
	if (typ == 'S' || typ == 'Q') && s.r.Buffered() == 0 {
		if !s.pumpInlineLocked() {
			return
		}
		s.mu.Lock()
	}
	s.startPumpLocked()
	s.mu.Unlock()
}

// pumpInlineLocked reads the attached server's answers on the calling
// (client) goroutine up to a ReadyForQuery; see pumpLoop. s.mu must be held
// and a server attached; s.mu is released. It reports whether a background
// pump must take over.
func (s *session) pumpInlineLocked() (handoff bool) {
	srv := s.server
	if s.cw == nil {
		s.cw = s.srv.getWriter(s.conn)
	}
	cw := s.cw
	s.pumpRunning, s.pumpClean, s.pumpDone, s.unpumped = true, false, nil, 0
	s.mu.Unlock()
	return s.pumpLoop(srv, cw, true)
}

// pumpLoop forwards server messages to the client. Run inline by the
// client goroutine, it stops at ReadyForQuery (or before the client must
// send COPY data, or when a pinned server may send notifications) and
// reports whether a background pump must take over.
func (s *session) pumpLoop(srv *poolmgr.Conn, cw *bufio.Writer, inline bool) (handoff bool) {
	r := srv.Reader()
	for {
		if r.Buffered() == 0 && cw.Buffered() > 0 {
			// Nothing more is ready: let the client see what it has.
			// Write errors mean the client is gone; its goroutine notices
			// and cleans up, so they are not handled here.
			_ = cw.Flush()
		}
		typ, _, err := r.Next()
		if err != nil {
			s.pumpFailed(srv, cw, err, true)
			return false
		}
		s.outBytes += int64(wire.HeaderLen + r.Len())
		switch typ {
		case 'Z':
			if s.ending.Load() {
				// KILL cancelled what ran: the client is told it is
				// disconnected instead of being ready for more.
				s.endAtReady(srv, r, cw)
				return false
			}
			if s.replaying {
				if s.replay(srv) {
					continue
				}
				// Could not run it again: the client gets the error.
				held := s.takeRetryErr()
				_, _ = cw.Write(held)
				s.batchErr = true
				s.serverError(srv, errorField(held[wire.HeaderLen:], 'C'))
			}
			s.respSent, s.descSent = false, false
			body, err := r.Body()
			if err != nil || len(body) != 1 {
				s.pumpFailed(srv, cw, errMalformedServer, false)
				return false
			}
			status := body[0]
			if s.rec() != nil {
				s.queryDone(srv)
			}
			if err := forwardTo(r, cw); err != nil {
				s.pumpFailed(srv, cw, err, false)
				return false
			}
			_ = cw.Flush()
			// The client has its answer: now the statistics.
			s.recordFinished()
			s.stats.bytesOut.add(s.outBytes)
			s.outBytes = 0
			if s.readyForQuery(srv, status) {
				if s.ending.Load() {
					// KILL came between the check above and here.
					s.tellEnd(cw)
				}
				return false
			}
			if inline {
				s.mu.Lock()
				s.pumpRunning, s.pumpClean = false, true
				pinned := s.pins != 0
				s.mu.Unlock()
				return pinned
			}
			continue
		case 'G', 'W':
			// COPY FROM STDIN: the client now sends data; it must be read.
			s.respSent = true
			if err := forwardTo(r, cw); err != nil {
				s.pumpFailed(srv, cw, err, false)
				return false
			}
			_ = cw.Flush()
			if inline {
				s.mu.Lock()
				s.pumpRunning, s.pumpClean = false, true
				s.mu.Unlock()
				return true
			}
			continue
		case 'E':
			frame, err := r.Frame()
			if err != nil {
				s.pumpFailed(srv, cw, err, false)
				return false
			}
			code := errorField(frame[wire.HeaderLen:], 'C')
			s.countError(code)
			if s.holdRetryable(frame, code) {
				continue
			}
			s.batchErr = true
			if replace := s.serverError(srv, code); replace != nil {
				if buf, err := replace.response().Encode(cw.AvailableBuffer()); err == nil {
					_, _ = cw.Write(buf)
				}
				continue
			}
		case '1', '2', '3', 'n':
			forward, replacement := s.completed()
			if replacement != nil {
				_, _ = cw.Write(replacement)
			}
			if !forward {
				continue
			}
		case 'T':
			s.popIf('D')
			if s.skipDesc {
				// A Query run again describes its rows again; the client
				// has that description already.
				s.skipDesc = false
				continue
			}
			s.descSent = true
		case 'D', 'H':
			s.respSent = true
		case 'C':
			body, err := r.Body()
			if err != nil {
				s.pumpFailed(srv, cw, err, false)
				return false
			}
			s.respSent = true
			s.commandComplete(body)
			if s.rec() != nil {
				s.tagged(body)
			}
			var done *router.Class
			var sent time.Time
			executed := false
			s.mu.Lock()
			if h := s.queue.peek(); h != nil && h.typ == 'E' {
				s.succeeded(h.class)
				done, sent, executed = h.class, h.sent, true
				s.queue.pop()
			}
			s.mu.Unlock()
			if executed { // a Query is timed at its ReadyForQuery
				s.stmtDone(done, sent, srv, "")
			}
		case 'I', 's':
			s.popIf('E')
		case 'S':
			body, err := r.Body()
			if err != nil {
				s.pumpFailed(srv, cw, err, false)
				return false
			}
			var ps pgproto3.ParameterStatus
			if ps.Decode(body) == nil {
				srv.SetParam(ps.Name, ps.Value)
			}
		}
		if err := forwardTo(r, cw); err != nil {
			s.pumpFailed(srv, cw, err, false)
			return false
		}
	}
}

// completed pops the entry a success response answers and says whether
// to forward it, or what to send instead.
func (s *session) completed() (forward bool, replacement []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.queue.peek()
	if h == nil {
		return true, nil
	}
	forward, replacement = !h.swallow && h.replaceWith == nil, h.replaceWith
	if h.verify != nil {
		h.verify.verified = true
	}
	s.queue.pop()
	return forward, replacement
}

func (s *session) popIf(typ byte) {
	s.mu.Lock()
	if h := s.queue.peek(); h != nil && h.typ == typ {
		s.queue.pop()
	}
	s.mu.Unlock()
}

// serverError accounts for an ErrorResponse. In the extended protocol the
// server now skips every message up to Sync, so their entries go too. It
// returns the refusal to show instead, when the failing message was one the
// proxy substituted.
func (s *session) serverError(srv *poolmgr.Conn, code []byte) *pgError {
	s.mu.Lock()
	h := s.queue.peek()
	if h == nil {
		s.mu.Unlock()
		return nil // an asynchronous error, such as a FATAL before close
	}
	replace := h.replaceErr
	h.replaceErr = nil
	if s.ending.Load() && !s.endSent {
		// The statement KILL cancelled: its error is the client's last
		// message (see endAtReady).
		replace, s.endSent = s.endMsg, true
	}
	if replace == nil && s.txExpired && string(code) == codeQueryCanceled {
		// Cancelled by the proxy for transaction_timeout (limits.go).
		replace = s.txTimeoutErr()
	}
	if h.typ == 'Q' || h.typ == 'F' {
		s.entryErr = true
		s.mu.Unlock()
		if s.rec() != nil {
			s.queryErr = string(code)
		}
		return replace // ReadyForQuery pops it
	}
	var failed *router.Class
	var sent time.Time
	for h := s.queue.peek(); h != nil && h.typ != 'S'; h = s.queue.peek() {
		if h.typ == 'E' && sent.IsZero() {
			failed, sent = h.class, h.sent
		}
		s.forgetLocked(h, s.server)
		s.queue.pop()
	}
	if s.queue.empty() {
		s.skipping = true
	}
	s.mu.Unlock()
	s.stmtDone(failed, sent, srv, string(code))
	return replace
}

// readyForQuery handles ReadyForQuery, already forwarded. It reports
// whether the pump is done: the server was released or the session is
// ending.
func (s *session) readyForQuery(srv *poolmgr.Conn, status byte) bool {
	s.mu.Lock()
	if h := s.queue.peek(); h != nil && h.typ == 'Q' && !s.entryErr {
		s.succeeded(h.class)
	}
	s.entryErr = false
	s.queue.pop()
	s.txBoundaryLocked(status)
	s.txStatus = status
	s.idle.Broadcast()
	s.settleLocked(status, srv)
	if s.closing {
		s.pumpClean = true
		s.pumpRunning = false
		s.mu.Unlock()
		return true
	}
	if !s.queue.empty() || status != 'I' || s.pins != 0 {
		s.mu.Unlock()
		return false
	}
	if s.mode != poolmgr.ModeTransaction {
		if !s.draining {
			s.mu.Unlock()
			return false
		}
		// Session mode, shutting down, between transactions: end here.
		s.closing = true
		s.pumpClean = true
		s.pumpRunning = false
		s.mu.Unlock()
		s.kick()
		return true
	}
	if s.writing {
		// The client goroutine is mid-write; it releases when done.
		s.releaseDeferred = true
		s.pumpClean = true
		s.pumpRunning = false
		s.mu.Unlock()
		return true
	}
	s.detachReleaseLocked(srv)
	return true
}

// pumpFailed handles a read or protocol failure on the server side.
// atBoundary says the failure happened before any byte of a message was
// consumed, so the connection is still usable if the session was only being
// stopped.
func (s *session) pumpFailed(srv *poolmgr.Conn, cw *bufio.Writer, err error, atBoundary bool) {
	s.recordFinished() // what completed before the failure
	s.mu.Lock()
	s.pumpRunning = false
	if s.closing {
		// close() or forceClose woke us; close decides what happens to
		// srv. A session being ended (forceClose) is told why here, as
		// only the pump may write to the client now.
		s.pumpClean = atBoundary
		s.idle.Broadcast()
		ended := s.endMsg != nil
		s.mu.Unlock()
		if ended {
			s.tellEnd(cw)
		}
		return
	}
	s.closing = true
	if s.server == srv {
		s.server = nil
		s.detachedLocked()
	}
	s.cw = nil
	s.idle.Broadcast()
	s.mu.Unlock()
	srv.Destroy()
	if s.srv.topo != nil {
		s.srv.topo.Report(srv.Backend())
	}
	s.log.Warn("server connection lost", zap.String("backend", srv.Backend()), zap.Error(err))
	msg := fatalf(codeConnectionFailure, "server connection to %s was lost", srv.Backend())
	msg.hint = "the statement may or may not have run; reconnect and check"
	if buf, err := msg.response().Encode(cw.AvailableBuffer()); err == nil {
		_, _ = cw.Write(buf)
	}
	_ = cw.Flush()
	s.srv.putWriter(cw)
	_ = s.conn.Close()
}

// endAtReady ends a session KILL cancelled, at the ReadyForQuery that
// answers its cancelled (or just finished) statement, in place of
// forwarding it: the server is at a safe point if nothing else is
// outstanding, and close() rolls back what the server still has open.
func (s *session) endAtReady(srv *poolmgr.Conn, r *wire.Reader, cw *bufio.Writer) {
	body, err := r.Body()
	s.recordFinished()
	s.mu.Lock()
	s.queue.pop()
	if err == nil && len(body) == 1 {
		s.txStatus = body[0]
	}
	s.closing = true
	s.pumpRunning = false
	s.pumpClean = err == nil && len(body) == 1 && s.queue.empty() && srv == s.server
	s.idle.Broadcast()
	s.mu.Unlock()
	s.tellEnd(cw)
}

var errMalformedServer = &pgError{severity: "FATAL", code: codeProtocolViolation, message: "malformed message from server"}

// forwardTo copies the current server message to the client. Only a
// failure to read the server is returned: a client that went away is
// noticed and cleaned up by its own goroutine, and the server stream stays
// in step either way.
func forwardTo(r *wire.Reader, cw *bufio.Writer) error {
	_, err := r.WriteTo(cw)
	if err == nil {
		return nil
	}
	// Only here: the target of errors.As escapes, and this runs for
	// every message.
	var re *wire.ReadError
	if errors.As(err, &re) {
		return err
	}
	return nil
}

// getWriter lends a buffered writer toward conn.
func (s *Server) getWriter(conn net.Conn) *bufio.Writer {
	w := s.writers.Get().(*bufio.Writer)
	w.Reset(conn)
	return w
}

// putWriter takes a writer back.
func (s *Server) putWriter(w *bufio.Writer) {
	if w == nil {
		return
	}
	w.Reset(nil)
	s.writers.Put(w)
}
