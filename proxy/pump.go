package proxy

import (
	"bufio"
	"errors"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
)

// The reader: the driver of the response stage. It reads the attached
// server's frames, feeds each to respond (response.go) and carries out
// what it returns: forward the frame to the client, write something else,
// flush, send a retried Query again, stop. It runs on the client goroutine
// (inline) while the client waits for a ReadyForQuery, or on a goroutine of
// its own (pump) beside it.

// startPumpLocked starts the goroutine that reads the attached server,
// unless a reader runs. s.mu must be held.
func (s *session) startPumpLocked() {
	if s.server == nil || s.reader != readerNone {
		return
	}
	if s.cw == nil {
		s.cw = s.srv.getWriter(s.conn)
	}
	s.pumpDone = make(chan struct{})
	s.reader = readerPump
	s.atBoundary = false
	s.unpumped = 0
	go s.pump(s.server, s.cw, s.pumpDone)
}

// pump reads the server until it is released at a safe point, the session
// closes, or the server fails.
func (s *session) pump(srv *poolmgr.Conn, cw *bufio.Writer, done chan struct{}) {
	defer close(done)
	s.readServer(srv, cw, false)
}

// unpumpedMax bounds what is written to a server while no reader reads its
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
	if s.server == nil || s.reader != readerNone || s.queue.empty() {
		s.mu.Unlock()
		return
	}
	if (typ == 'S' || typ == 'Q') && s.r.Buffered() == 0 {
		if !s.readInlineLocked() {
			return
		}
		s.mu.Lock()
	}
	s.startPumpLocked()
	s.mu.Unlock()
}

// readInlineLocked reads the attached server's answers on the calling
// (client) goroutine up to a ReadyForQuery. s.mu must be held and a
// server attached; s.mu is released. It reports whether a pump must take
// over.
func (s *session) readInlineLocked() (handoff bool) {
	srv := s.server
	if s.cw == nil {
		s.cw = s.srv.getWriter(s.conn)
	}
	cw := s.cw
	s.reader, s.atBoundary, s.pumpDone, s.unpumped = readerInline, false, nil, 0
	s.mu.Unlock()
	return s.readServer(srv, cw, true)
}

// readServer feeds the server's frames to the response stage and carries
// out its actions. Inline, it stops at ReadyForQuery (or before the client
// must send COPY data, or when a pinned server may send notifications)
// and reports whether a pump must take over.
func (s *session) readServer(srv *poolmgr.Conn, cw *bufio.Writer, inline bool) (handoff bool) {
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
			s.readFailed(srv, cw, err, true)
			return false
		}
		s.resp.outBytes += int64(wire.HeaderLen + r.Len())
		var body []byte
		if s.respNeedsBody(typ) {
			if body, err = r.Body(); err != nil {
				s.readFailed(srv, cw, err, false)
				return false
			}
		}
		act := s.respond(srv, typ, body)
		if len(act.out) > 0 {
			_, _ = cw.Write(act.out)
		}
		if act.forward {
			if err := forwardTo(r, cw); err != nil {
				s.readFailed(srv, cw, err, false)
				return false
			}
		}
		switch act.next {
		case nextRead:
			continue
		case nextMalformed:
			s.readFailed(srv, cw, errMalformedServer, false)
			return false
		case nextReplay:
			if s.replay(srv) {
				continue
			}
			s.readFailed(srv, cw, errReplayFailed, false)
			return false
		case nextEnd:
			// KILL: the answer to the cancelled statement ends the session.
			s.tellEnd(cw)
			return false
		case nextCopyIn:
			// COPY FROM STDIN: the client now sends data; it must be read.
			_ = cw.Flush()
			if inline {
				s.stopReading(true)
				return true
			}
			continue
		case nextReady:
			_ = cw.Flush()
			// The client has its answer: now the statistics.
			s.recordFinished()
			s.stats.bytesOut.add(s.resp.outBytes)
			s.resp.outBytes = 0
			switch s.settleReady(srv, act.status) {
			case readyStop:
				return false
			case readyEnd:
				s.tellEnd(cw)
				return false
			}
			if inline {
				s.mu.Lock()
				s.reader, s.atBoundary = readerNone, true
				pinned := s.pins != 0
				s.idle.Broadcast()
				s.mu.Unlock()
				return pinned
			}
		}
	}
}

// stopReading records that the reader stopped at a message boundary.
func (s *session) stopReading(atBoundary bool) {
	s.mu.Lock()
	s.reader, s.atBoundary = readerNone, atBoundary
	s.idle.Broadcast()
	s.mu.Unlock()
}

// readFailed handles a read or protocol failure on the server side.
// atBoundary says the failure happened before any byte of a message was
// consumed, so the connection is still usable if the session was only being
// stopped.
func (s *session) readFailed(srv *poolmgr.Conn, cw *bufio.Writer, err error, atBoundary bool) {
	s.recordFinished() // what completed before the failure
	s.mu.Lock()
	s.reader = readerNone
	if s.life >= lifeClosing {
		// close() or end() woke us; close decides what happens to srv.
		// A session being ended is told why here, as only the reader
		// may write to the client now.
		s.atBoundary = atBoundary
		s.idle.Broadcast()
		ended := s.endMsg != nil
		s.mu.Unlock()
		if ended {
			s.tellEnd(cw)
		}
		return
	}
	s.setLifeLocked(lifeClosing)
	if s.server == srv {
		s.detachLocked()
	}
	s.cw = nil
	s.idle.Broadcast()
	s.mu.Unlock()
	s.giveBack(srv, giveDestroy)
	if s.srv.topo != nil && !errors.Is(err, errReplayFailed) {
		s.srv.topo.Report(srv.Backend())
	}
	s.log.Warn("server connection lost", zap.String("backend", srv.Backend()), zap.Error(err))
	msg := fatalf(codeConnectionFailure, "server connection to %s was lost", srv.Backend())
	msg.hint = "the statement may or may not have run; reconnect and check"
	s.mu.Lock()
	if s.endMsg == nil {
		s.endMsg = msg
	}
	s.mu.Unlock()
	s.tellEnd(cw)
	s.srv.putWriter(cw)
}

var (
	errMalformedServer = &pgError{severity: "FATAL", code: codeProtocolViolation, message: "malformed message from server"}
	errReplayFailed    = errors.New("sending a retried statement again failed")
)

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

// replay sends the held Query again, as it was sent the first time, after
// a short, growing, jittered pause that lets the transaction that won
// finish. The write side is claimed by respond (s.writing), so the client
// goroutine waits meanwhile and its messages keep their order.
func (s *session) replay(srv *poolmgr.Conn) bool {
	time.Sleep(retryPause(s.retries))
	w := srv.Writer()
	_, err := w.Write(s.retrySent)
	if err == nil {
		err = w.Flush()
	}
	s.mu.Lock()
	s.writing = false
	s.idle.Broadcast()
	s.mu.Unlock()
	return err == nil
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
