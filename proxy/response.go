package proxy

import (
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// The response stage: each server frame is handled against the head of
// the expected-response queue. respond does no I/O; it returns what the
// reader (pump.go) must do with the frame. The events it raises are where
// the proxy's own bookkeeping (statistics, retries, session state) and the
// Hooks are called: Described (RowDescription), Row (DataRow),
// CommandComplete, Ready (ReadyForQuery).

// respState is the response stage's own state, owned by whoever is the
// reader (one at a time; handed over under s.mu).
type respState struct {
	// respSent: a result message went to the client since the last
	// ReadyForQuery; descSent: a RowDescription did.
	respSent, descSent bool
	// The retry of a failed Query (retry.go): its held-back error, to be
	// retried at the next ReadyForQuery (replaying), and whether the run
	// again describes its rows again (skipDesc: drop that).
	retryErr  []byte
	replaying bool
	skipDesc  bool
	// Effects of statements that succeeded since the last ReadyForQuery,
	// and of those inside the open transaction block (effects.go).
	done     []*router.Class
	inTx     []*router.Class
	txCommit bool // the last tag that ended a block was COMMIT
	entryErr bool // the head Query entry got an ErrorResponse
	// rows: the rows of the current result set go to the Row hook, with
	// rowClass the statement's class and rowState the Described hook's
	// state; failed: the Row hook failed the statement, and the rest of
	// its result set goes nowhere.
	rows     bool
	rowClass *router.Class
	rowState any
	failed   bool
	// Statistics of the answers since the last ReadyForQuery (insight.go).
	queryErr       string // SQLSTATE of the head Query's error
	stmtRows       int64  // rows of the statement being answered
	batchWriteRows int64  // rows written by the batch
	batchErr       bool   // something in the batch failed
	batchClasses   []*router.Class
	lastDone       time.Time
	finished       []finishedStmt // timed, recorded once the client has its answer
	outBytes       int64          // bytes forwarded to the client, not yet counted
	scratch        []byte         // replacements written to the client
}

// respAction is what the reader does with a server frame.
type respAction struct {
	out     []byte // written to the client first (a replacement, a held error)
	forward bool   // then the frame itself
	next    respNext
	status  byte // with nextReady: the transaction status
}

type respNext uint8

const (
	nextRead      respNext = iota // read the next frame
	nextReady                     // flush, record, then settleReady
	nextCopyIn                    // flush: the client must send COPY data
	nextReplay                    // send the held Query again, then read on
	nextEnd                       // the session ends here (KILL)
	nextMalformed                 // the frame makes no sense: drop the server
)

// respNeedsBody reports whether respond reads the body of a frame type;
// the others are only counted and copied.
func (s *session) respNeedsBody(typ byte) bool {
	switch typ {
	case 'Z', 'E', 'C', 'S':
		return true
	case 'T':
		h := s.srv.hooks.Load()
		return h != nil && h.Described != nil
	case 't':
		h := s.srv.hooks.Load()
		return h != nil && h.ParamsDescribed != nil
	case 'D':
		return s.resp.rows || s.resp.failed
	}
	return false
}

// respond handles one server frame. body is set for the types
// respNeedsBody names.
func (s *session) respond(srv *poolmgr.Conn, typ byte, body []byte) respAction {
	rs := &s.resp
	switch typ {
	case 'Z':
		return s.respondReady(srv, body)
	case 'G', 'W':
		rs.respSent = true
		return respAction{forward: true, next: nextCopyIn}
	case 'E':
		return s.respondError(srv, body)
	case '1', '2', '3', 'n':
		forward, replacement := s.completed(typ)
		return respAction{out: replacement, forward: forward}
	case 'T':
		return s.described(body)
	case 'D':
		rs.respSent = true
		if rs.failed {
			return respAction{}
		}
		if rs.rows {
			if h := s.srv.hooks.Load(); h != nil && h.Row != nil {
				row, refusal := h.Row(RowEvent{Session: s.hookInfo(), Class: rs.rowClass, State: rs.rowState, Body: body})
				if refusal != nil {
					rs.failed = true
					e := refusal.pgError()
					s.countError([]byte(e.code))
					rs.scratch = e.appendResponse(rs.scratch[:0])
					return respAction{out: rs.scratch}
				}
				if row != nil {
					rs.scratch = wire.AppendFrame(rs.scratch[:0], 'D', row)
					return respAction{out: rs.scratch}
				}
			}
		}
	case 't':
		if h := s.srv.hooks.Load(); h != nil && h.ParamsDescribed != nil {
			s.mu.Lock()
			var kept any
			if e := s.queue.peek(); e != nil && e.typ == 'D' {
				kept = e.kept
			}
			s.mu.Unlock()
			if out := h.ParamsDescribed(ParamsDescribedEvent{Session: s.hookInfo(), Kept: kept, Body: body}); out != nil {
				rs.scratch = wire.AppendFrame(rs.scratch[:0], 't', out)
				return respAction{out: rs.scratch}
			}
		}
	case 'H':
		rs.respSent = true
	case 'C':
		rs.respSent = true
		rs.rows, rs.rowState = false, nil
		if rs.failed {
			// The statement failed here already (a Row hook's refusal).
			rs.failed = false
			s.mu.Lock()
			if e := s.queue.peek(); e != nil && (e.typ == 'E') {
				s.queue.pop()
			}
			s.mu.Unlock()
			return respAction{}
		}
		s.commandComplete(srv, body)
	case 'I', 's':
		s.popIf('E')
	case 'S':
		var ps pgproto3.ParameterStatus
		if ps.Decode(body) == nil {
			srv.SetParam(ps.Name, ps.Value)
		}
	}
	return respAction{forward: true}
}

// commandComplete is the CommandComplete event.
func (s *session) commandComplete(srv *poolmgr.Conn, tag []byte) {
	s.noteCommit(tag)
	if s.rec() != nil {
		s.tagged(tag)
	}
	var done *router.Class
	var sent time.Time
	executed := false
	s.mu.Lock()
	h := s.queue.peek()
	if h != nil {
		done = h.class
	}
	if h != nil && h.typ == 'E' {
		s.succeeded(h.class)
		sent, executed = h.sent, true
		s.queue.pop()
	}
	s.mu.Unlock()
	if hk := s.srv.hooks.Load(); hk != nil && hk.CommandComplete != nil {
		hk.CommandComplete(CompleteEvent{Session: s.hookInfo(), Class: done, Tag: tag})
	}
	if executed { // a Query is timed at its ReadyForQuery
		s.stmtDone(done, sent, srv, "")
	}
}

// headClassLocked is the class of what the server is answering now.
// s.mu must be held.
func (s *session) headClassLocked() *router.Class {
	for i := s.queue.head; i < len(s.queue.items); i++ {
		if e := &s.queue.items[i]; e.typ == 'Q' || e.typ == 'E' || e.typ == 'F' {
			return e.class
		}
	}
	return nil
}

// headKeptLocked is the Verdict.Keep of the statement the head Query or
// Execute runs.
func (s *session) headKeptLocked() any {
	for i := s.queue.head; i < len(s.queue.items); i++ {
		if e := &s.queue.items[i]; e.typ == 'Q' || e.typ == 'E' || e.typ == 'F' {
			return e.kept
		}
	}
	return nil
}

// respondError handles an ErrorResponse.
func (s *session) respondError(srv *poolmgr.Conn, body []byte) respAction {
	rs := &s.resp
	code := wire.ErrorField(body, 'C')
	if s.holdRetryable(body, code) {
		s.countError(code)
		return respAction{}
	}
	rs.batchErr = true
	replace := s.serverError(srv, code)
	if replace != nil {
		// The client is told the proxy's refusal, and that is what is
		// counted, not the server's error for the substitute.
		s.countError([]byte(replace.code))
		if buf, err := replace.response().Encode(rs.scratch[:0]); err == nil {
			rs.scratch = buf
			return respAction{out: buf}
		}
		return respAction{}
	}
	s.countError(code)
	return respAction{forward: true}
}

// completed pops the entry a success response answers and says whether
// to forward it, or what to send instead. After a BindComplete the rows
// that follow are the next Execute's: whether they go to the Row hook is
// its statement's (see described).
func (s *session) completed(typ byte) (forward bool, replacement []byte) {
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
	if typ == '2' {
		s.resp.rows = false
		if next := s.queue.peek(); next != nil && next.typ == 'E' && next.rowsOf != nil {
			s.resp.rows, s.resp.rowClass = next.rowsOf.rows == rowsHooked, next.class
		}
	}
	return forward, replacement
}

// described handles a RowDescription: the Described event decides whether
// the rows of this result set go to the Row hook, and a statement's
// decision is kept on it for its later Executes. The answer to a Describe
// the proxy sent on its own (describeForRowsLocked) is not the client's.
func (s *session) described(body []byte) respAction {
	rs := &s.resp
	h := s.srv.hooks.Load()
	s.mu.Lock()
	var describes *clientStmt
	var kept any
	swallow, portal := false, false
	cl := (*router.Class)(nil)
	if e := s.queue.peek(); e != nil && e.typ == 'D' {
		describes, swallow, portal, kept = e.describes, e.swallow, e.portal, e.kept
		if describes != nil {
			cl = describes.class
		}
		s.queue.pop()
	}
	if !swallow && rs.skipDesc {
		// A Query run again describes its rows again; the client has
		// that description already.
		rs.skipDesc = false
		s.mu.Unlock()
		return respAction{}
	}
	if cl == nil {
		cl = s.headClassLocked()
	}
	if describes == nil {
		kept = s.headKeptLocked()
	}
	s.mu.Unlock()
	rs.rows, rs.rowClass, rs.rowState, rs.failed = false, cl, nil, false
	var out []byte
	if h != nil && h.Described != nil {
		ev := DescribedEvent{Session: s.hookInfo(), Class: cl, Body: body, Formats: describes == nil || swallow || portal}
		ev.Kept = kept
		v := h.Described(ev)
		rs.rows, rs.rowState, out = v.Rows && h.Row != nil, v.State, v.Body
		if describes != nil {
			s.mu.Lock()
			describes.rows = rowsPlain
			if rs.rows {
				describes.rows = rowsHooked
			}
			s.mu.Unlock()
		}
	}
	if swallow {
		return respAction{}
	}
	rs.descSent = true
	if out != nil {
		rs.scratch = wire.AppendFrame(rs.scratch[:0], 'T', out)
		return respAction{out: rs.scratch}
	}
	return respAction{forward: true}
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
// proxy substituted (or cancelled: transaction_timeout, KILL).
func (s *session) serverError(srv *poolmgr.Conn, code []byte) *pgError {
	s.mu.Lock()
	h := s.queue.peek()
	if h == nil {
		s.mu.Unlock()
		return nil // an asynchronous error, such as a FATAL before close
	}
	replace := h.replaceErr
	h.replaceErr = nil
	switch {
	case s.life == lifeEnding && !s.endSent:
		// The statement KILL cancelled: its error is the client's last
		// message (see respondReady).
		replace, s.endSent = s.endMsg, true
	case replace == nil && s.txExpired && string(code) == codeQueryCanceled:
		// Cancelled by the proxy for transaction_timeout (limits.go).
		replace = s.txTimeoutErr()
	}
	if h.typ == 'Q' || h.typ == 'F' {
		s.resp.entryErr = true
		s.mu.Unlock()
		if s.rec() != nil {
			s.resp.queryErr = string(code)
			if replace != nil {
				s.resp.queryErr = replace.code
			}
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
		s.queue.skipping = true
	}
	s.mu.Unlock()
	failCode := string(code)
	if replace != nil {
		failCode = replace.code
	}
	s.stmtDone(failed, sent, srv, failCode)
	return replace
}

// respondReady handles ReadyForQuery, before it is forwarded.
func (s *session) respondReady(srv *poolmgr.Conn, body []byte) respAction {
	rs := &s.resp
	if len(body) != 1 {
		return respAction{next: nextMalformed}
	}
	status := body[0]
	var out []byte
	if rs.replaying {
		if s.claimReplay() {
			return respAction{next: nextReplay}
		}
		// Could not run it again: the client gets the error.
		out = s.takeRetryErr()
		rs.batchErr = true
		s.serverError(srv, wire.ErrorField(out[wire.HeaderLen:], 'C'))
	}
	rs.respSent, rs.descSent, rs.rows = false, false, false
	if s.lifeNow() == lifeEnding {
		s.endAtReady(srv, status)
		return respAction{out: out, next: nextEnd}
	}
	if s.rec() != nil {
		s.queryDone(srv)
	}
	if h := s.srv.hooks.Load(); h != nil && h.Ready != nil {
		h.Ready(ReadyEvent{Session: s.hookInfo(), TxStatus: status})
	}
	return respAction{out: out, forward: true, next: nextReady, status: status}
}

// endAtReady ends a session KILL cancelled, at the ReadyForQuery that
// answers its cancelled (or just finished) statement, in place of
// forwarding it: the server is at a safe point if nothing else is
// outstanding, and close() rolls back what the server still has open.
func (s *session) endAtReady(srv *poolmgr.Conn, status byte) {
	s.recordFinished()
	s.mu.Lock()
	s.queue.pop()
	s.txStatus = status
	s.setLifeLocked(lifeClosing)
	s.reader = readerNone
	s.atBoundary = s.queue.empty() && srv == s.server
	s.idle.Broadcast()
	s.mu.Unlock()
}

// readyResult is what settleReady decided.
type readyResult uint8

const (
	readyContinue readyResult = iota // keep the server; read on (or stop inline)
	readyStop                        // the reader stops: the server went back to its pool, or the client goroutine gives it back once its write ends
	readyEnd                         // the session ends: tell the client and close
)

// settleReady does the bookkeeping of a ReadyForQuery the client now has
// and decides whether the server goes back to its pool: only at a safe
// point (status idle, nothing outstanding, not pinned, transaction mode,
// nobody writing to it) — see giveBack for the one place it happens.
func (s *session) settleReady(srv *poolmgr.Conn, status byte) readyResult {
	s.mu.Lock()
	if h := s.queue.peek(); h != nil && h.typ == 'Q' && !s.resp.entryErr {
		s.succeeded(h.class)
	}
	s.resp.entryErr = false
	s.queue.pop()
	s.txBoundaryLocked(status)
	s.txStatus = status
	s.idle.Broadcast()
	s.settleLocked(status, srv)
	if s.life >= lifeEnding { // KILL came after respondReady's check: end here
		s.atBoundary = true
		s.reader = readerNone
		s.mu.Unlock()
		return readyEnd
	}
	if !s.queue.empty() || status != 'I' || s.pins != 0 {
		s.mu.Unlock()
		return readyContinue
	}
	if s.mode != poolmgr.ModeTransaction {
		if s.life != lifeDraining {
			s.mu.Unlock()
			return readyContinue
		}
		// Session mode, shutting down, between transactions: end here.
		s.atBoundary = true
		s.reader = readerNone
		s.endMsg = fatalf(codeAdminShutdown, "terminating connection: pgshield is shutting down")
		s.setLifeLocked(lifeClosing)
		s.mu.Unlock()
		s.stop()
		return readyEnd
	}
	if s.writing {
		// The client goroutine is mid-write; it releases when done
		// (writeDone).
		s.atBoundary = true
		s.reader = readerNone
		s.mu.Unlock()
		return readyStop
	}
	s.releaseLocked(srv)
	return readyStop
}
