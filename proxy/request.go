package proxy

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// The request stage: each client frame becomes what is sent to the server
// (the frame itself, or frames in s.wbuf before or instead of it) and what
// the server owes back (queue entries). forward is its driver: it reads the
// body when the stage needs it, attaches a server when the message needs
// one, and writes what the stage planned. The stage raises the Statement,
// Bind, FunctionCall and CopyData events (Hooks).

// answered reports whether the server sends a response for a message type.
func answered(typ byte) bool {
	switch typ {
	case 'Q', 'P', 'B', 'D', 'E', 'C', 'S', 'F':
		return true
	}
	return false
}

// needsBody reports whether the request stage reads a message's body:
// statements and their names in both pool modes (for statement tracking,
// classification and the hooks); function calls and COPY data only for a
// hook.
func (s *session) needsBody(typ byte, h *Hooks) bool {
	switch typ {
	case 'Q', 'P', 'B', 'D', 'C', 'E':
		return true
	case 'F':
		return h != nil && h.FunctionCall != nil
	case 'd':
		return h != nil && h.CopyData != nil && s.copyState == copyIn
	}
	return false
}

// forward handles the current client message: the request stage, then
// the write to the attached server (attaching one first if needed).
func (s *session) forward(typ byte) error {
	h := s.srv.hooks.Load()
	if typ == 'd' && s.copyState == copyNone {
		s.copyState = copyIn // the client sends data only once a COPY FROM STDIN runs
		s.copyHookState = nil
	}
	var body []byte
	if s.needsBody(typ, h) {
		var err error
		if body, err = s.r.Body(); err != nil {
			return err
		}
	}
	class := s.classify(typ, body)
	var verdict Verdict
	if h != nil {
		verdict = s.hook(h, typ, body, class)
		if verdict.Rewrite != nil {
			body = verdict.Rewrite
		}
	}
	if typ == 'Q' || typ == 'P' {
		s.keep = verdict.Keep
		if typ == 'P' && s.unnamedSet && len(body) > 0 && body[0] == 0 {
			s.unnamed.kept = verdict.Keep
		}
	}
	switch typ {
	case 'd':
		if s.copyState == copyRefused {
			// The server left COPY when the refused data was replaced
			// by a CopyFail; the rest of it goes nowhere.
			return nil
		}
	case 'c', 'f':
		refused := s.copyState == copyRefused
		s.copyState = copyNone
		if refused {
			return nil
		}
	case 'S', 'Q':
		s.copyState = copyNone
	}

	s.mu.Lock()
	if s.routing && s.server != nil && s.mustRerouteLocked(typ, body, class) {
		// Still on a replica, and this batch may write: let the replica
		// finish, then route it afresh.
		s.mu.Unlock()
		if err := s.settleOutstanding(); err != nil {
			return err
		}
		s.mu.Lock()
	}
	if s.server == nil {
		if !answered(typ) {
			// Flush with nothing outstanding does nothing; copy messages
			// outside COPY are ignored, as PostgreSQL ignores them.
			s.mu.Unlock()
			return nil
		}
		if verdict.Refuse != nil {
			s.mu.Unlock()
			return s.refuseDirect(typ, verdict.Refuse.pgError())
		}
		if s.mode == poolmgr.ModeTransaction {
			if handled, answer, err := s.answerUnattachedLocked(typ, body, class); handled {
				s.mu.Unlock()
				if err == nil && answer != nil {
					err = s.writeDirect(answer...)
				}
				return err
			}
		}
		var node *router.Node
		if s.routing {
			node = s.routeLocked(typ, body, class)
		}
		s.mu.Unlock()
		if err := s.attachRouted(node); err != nil {
			return s.attachFailed(typ, err)
		}
		s.mu.Lock()
	}
	srv := s.server
	raw, err := s.planLocked(typ, body, class, verdict)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	if !raw && len(s.wbuf) == 0 {
		s.mu.Unlock()
		return nil
	}
	if s.reader == readerNone && s.unpumped+s.r.Len() > unpumpedMax {
		s.startPumpLocked()
	}
	for s.writing {
		// A reader is sending a retried Query again; what the client
		// sent goes after it.
		s.idle.Wait()
	}
	s.writing = true
	s.mu.Unlock()

	w := srv.Writer()
	if len(s.wbuf) > 0 {
		_, err = w.Write(s.wbuf) // frames injected before, or instead of, the client's own
	}
	if raw && err == nil {
		_, err = s.r.WriteTo(w)
	}
	s.unpumped += len(s.wbuf) + wire.HeaderLen + s.r.Len()
	if err == nil {
		if typ == 'H' || s.r.Buffered() == 0 {
			err = w.Flush()
			s.needFlush = false
		} else {
			s.needFlush = true
		}
	}
	if err := s.writeDone(srv, err); err != nil {
		return err
	}
	s.lastSent = typ
	s.afterWrite(typ)
	return nil
}

// hook raises the request stage's event for the message, if a hook wants
// it.
func (s *session) hook(h *Hooks, typ byte, body []byte, class *router.Class) Verdict {
	switch typ {
	case 'Q':
		if h.Statement != nil {
			if text, ok := wire.QueryText(body); ok {
				return h.Statement(StatementEvent{Session: s.hookInfo(), Message: 'Q', Text: text, Class: class})
			}
		}
	case 'P':
		if h.Statement != nil {
			if name, query, types, ok := wire.ParseFields(body); ok {
				return h.Statement(StatementEvent{Session: s.hookInfo(), Message: 'P', Name: name, Text: query, ParamTypes: types, Class: class})
			}
		}
	case 'B':
		if h.Bind != nil {
			if b, ok := wire.ParseBind(body); ok {
				ev := BindEvent{Session: s.hookInfo(), Bind: b}
				if st := s.statementOf(b.Statement); st != nil {
					ev.Text, ev.Class, ev.ParamTypes, ev.Kept = st.query, st.class, st.types, st.kept
				}
				return h.Bind(ev)
			}
		}
	case 'F':
		if h.FunctionCall != nil {
			return h.FunctionCall(FunctionCallEvent{Session: s.hookInfo(), Body: body})
		}
	case 'd', 'c':
		if h.CopyData != nil && s.copyState == copyIn {
			return h.CopyData(CopyEvent{Session: s.hookInfo(), Class: s.copyClass, Kept: s.copyKept, Data: body, Done: typ == 'c', State: &s.copyHookState})
		}
	}
	return Verdict{}
}

// statementOf is the client's statement of that name: a named one, or
// the unnamed one last parsed (client goroutine).
func (s *session) statementOf(name []byte) *clientStmt {
	if len(name) == 0 {
		if !s.unnamedSet {
			return nil
		}
		return &s.unnamed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stmts[string(name)]
}

// planLocked is the request stage proper: it decides what goes to the
// attached server for the current message (s.wbuf, and raw: the client's
// frame as is) and pushes what the server owes back. s.mu must be held.
func (s *session) planLocked(typ byte, body []byte, class *router.Class, v Verdict) (raw bool, err error) {
	s.wbuf = s.wbuf[:0]
	pooled := s.mode == poolmgr.ModeTransaction
	if s.routing {
		s.noteWriteLocked(typ, class)
	}
	if v.Refuse != nil {
		s.refuseLocked(typ, v.Refuse.pgError())
		return false, nil
	}
	rewritten := v.Rewrite != nil
	switch typ {
	case 'P', 'B', 'D', 'C':
		if pooled {
			return s.planStatementLocked(typ, body, s.server, class, rewritten)
		}
		return s.trackStatementLocked(typ, body, class, rewritten), nil
	case 'Q', 'E', 'F', 'S':
		if s.txExpired && s.txStatus == 'T' && (typ == 'Q' || typ == 'E') && (class == nil || !class.Transaction) {
			// transaction_timeout passed while the client was idle in
			// its transaction: the statement fails, and so does the
			// transaction (limits.go).
			s.refuseLocked(typ, s.txTimeoutErr())
			return false, nil
		}
		if class != nil && pooled {
			s.pinLocked(class.Pins)
		}
		e := expected{typ: typ, class: class}
		if typ == 'Q' {
			e.kept = v.Keep
		}
		if (typ == 'Q' || typ == 'E' || typ == 'F') && s.rec() != nil {
			e.sent = time.Now()
			if s.batchStart.IsZero() {
				s.batchStart = e.sent
			}
		}
		if typ == 'E' {
			s.describeForRowsLocked(&e, body)
		}
		raw = !rewritten
		if rewritten {
			s.wbuf = wire.AppendFrame(s.wbuf, typ, body)
		}
		if typ == 'Q' && pooled && s.retryableLocked(class) {
			// Kept as sent to the server, rewritten or not, to be sent
			// again the same way.
			if sent := s.wbuf; !raw {
				s.retrySent = append(s.retrySent[:0], sent...)
				e.retry = true
			} else if frame, err := s.r.Frame(); err == nil {
				s.retrySent = append(s.retrySent[:0], frame...)
				e.retry = true
			}
			s.retries = 0
		}
		switch typ { // should it start a COPY FROM STDIN
		case 'Q':
			s.copyClass, s.copyKept = class, s.keep
		case 'E':
			s.copyClass, s.copyKept = class, nil
			if name, ok := executePortal(body); ok {
				if p := s.portalOf(name); p.st != nil {
					s.copyKept = p.st.kept
				}
			}
		}
		if typ == 'S' {
			s.queue.skipping = false
		}
		s.pushLocked(e)
		return raw, nil
	case 'd':
		if rewritten {
			s.wbuf = wire.AppendFrame(s.wbuf, 'd', body)
			return false, nil
		}
	case 'c':
		if rewritten && len(body) > 0 {
			// The last of the rewritten data, then the client's CopyDone.
			s.wbuf = wire.AppendFrame(s.wbuf, 'd', body)
		}
	}
	if s.queue.empty() {
		// Nothing outstanding: the server may be released at any moment,
		// so do not write to it. Flush and stray copy messages are no-ops.
		return false, nil
	}
	return true, nil
}

// describeForRowsLocked prepares an Execute's rows for the Row hook: the
// Execute runs its portal's statement, whose rows go to the hook as its
// RowDescription decided; a statement not described yet (the driver did
// not ask) is described now, by a Describe of the portal the proxy sends
// before the Execute and whose answer only the hooks see. s.mu must be
// held; the client's Execute goes after s.wbuf.
func (s *session) describeForRowsLocked(e *expected, body []byte) {
	h := s.srv.hooks.Load()
	if h == nil || h.Described == nil {
		return
	}
	name, ok := executePortal(body)
	if !ok {
		return
	}
	p := s.portalOf(name)
	e.rowsOf = p.st
	if p.st != nil {
		e.kept = p.st.kept
	}
	if p.st == nil || p.st.rows != rowsPlain {
		// Described anew for each Execute of rows the hooks see: the
		// description carries the format codes its Bind asked for.
		s.wbuf = wire.AppendFrame(s.wbuf, 'D', []byte{'P'}, name, nul)
		s.pushLocked(expected{typ: 'D', swallow: true, describes: p.st, portal: true})
	}
}

// refuseLocked answers the current message with err, in its place in the
// stream, when a server is attached: the server is sent a message that
// fails instead (a Query that does not parse, a Parse that does not, or a
// CopyFail), so its transaction ends up as PostgreSQL would have left it
// after the error, and the client sees err for it. This is the one
// refusal primitive: the proxy's own refusals and the hooks' go through
// it (or through refuseDirect, without a server). s.mu must be held.
func (s *session) refuseLocked(typ byte, err *pgError) {
	switch typ {
	case 'Q', 'F':
		s.wbuf = wire.AppendFrame(s.wbuf, 'Q', []byte(rejectedSQL), nul)
		s.pushLocked(expected{typ: typ, replaceErr: err})
	case 'd', 'c':
		// The COPY's ErrorResponse answers the statement that started it.
		for i := s.queue.head; i < len(s.queue.items); i++ {
			if e := &s.queue.items[i]; e.typ == 'Q' || e.typ == 'E' {
				e.replaceErr = err
				break
			}
		}
		s.wbuf = wire.AppendFrame(s.wbuf, 'f', []byte(err.message), nul)
		s.copyState = copyRefused
	default:
		s.wbuf = wire.AppendFrame(s.wbuf, 'P', nul, []byte(rejectedSQL), nul, []byte{0, 0})
		s.pushLocked(expected{typ: 'P', replaceErr: err})
	}
}

// refuseDirect answers a refused message without a server (none is
// attached, so no transaction is open): the error, then ReadyForQuery for
// a Query or FunctionCall; an extended message skips to Sync, as the
// server would.
func (s *session) refuseDirect(typ byte, err *pgError) error {
	s.countError([]byte(err.code))
	msgs := []pgproto3.BackendMessage{err.response()}
	switch typ {
	case 'Q', 'F', 'S':
		msgs = append(msgs, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	default:
		s.discard = true
	}
	return s.writeDirect(msgs...)
}

// rejectedSQL is sent to the server in place of a refused message: it fails
// to parse, so the server's transaction state follows PostgreSQL's rules for
// a failed statement, and the client is shown the refusal instead.
const rejectedSQL = "pgshield refused this statement"

// pushLocked records a response the server owes. While the server skips
// to Sync after an error, messages owe nothing and will not be carried out.
func (s *session) pushLocked(e expected) {
	if e.describes != nil {
		e.kept = e.describes.kept // the hooks' view of it, as of now
	}
	if s.queue.skipping && e.typ != 'S' {
		s.forgetLocked(&e, s.server)
		return
	}
	s.queue.push(e)
}

// writeDone ends a write toward srv begun with s.writing set, and gives
// the server back if the reader found it idle meanwhile and left that to
// us.
func (s *session) writeDone(srv *poolmgr.Conn, err error) error {
	s.mu.Lock()
	s.writing = false
	s.idle.Broadcast()
	release := err == nil && s.releasableLocked()
	s.mu.Unlock()
	if err != nil {
		return s.serverWriteFailed(srv, err)
	}
	if release {
		s.releaseIfIdle()
	}
	return nil
}

// flushServer flushes bytes left in the attached server's writer.
func (s *session) flushServer() error {
	s.needFlush = false
	s.mu.Lock()
	srv := s.server
	if srv == nil {
		s.mu.Unlock()
		return nil
	}
	for s.writing {
		s.idle.Wait()
	}
	s.writing = true
	s.mu.Unlock()
	err := srv.Writer().Flush()
	if err := s.writeDone(srv, err); err != nil {
		return err
	}
	s.afterWrite(s.lastSent)
	return nil
}

// classify returns the class of the SQL a message carries or runs: Query
// and Parse carry text; Execute runs what was bound to its portal.
func (s *session) classify(typ byte, body []byte) *router.Class {
	switch typ {
	case 'Q':
		if s.srv.classifier == nil {
			return nil
		}
		text, ok := wire.QueryText(body)
		if !ok || len(text) == 0 {
			return nil
		}
		return s.classifyText(text)
	case 'P':
		name, query, types, ok := wire.ParseFields(body)
		if !ok {
			return nil
		}
		var cl *router.Class
		if s.srv.classifier != nil {
			cl = s.classifyText(query)
		}
		if len(name) == 0 {
			// Copied into buffers of its own: the body is the reader's.
			u := &s.unnamed
			u.query, u.types, u.class = append(u.query[:0], query...), append(u.types[:0], types...), cl
			s.unnamedSet = true
		}
		return cl
	case 'E':
		portal, ok := executePortal(body)
		if !ok {
			return nil
		}
		return s.portalClass(portal)
	}
	return nil
}

// executePortal is the portal an Execute body names.
func executePortal(body []byte) ([]byte, bool) {
	for i, c := range body {
		if c == 0 {
			return body[:i], true
		}
	}
	return nil, false
}

// portalOf is what a portal runs (client goroutine).
func (s *session) portalOf(name []byte) portal {
	if len(name) == 0 {
		return s.bound
	}
	return s.portals[string(name)]
}

// portalClass is the class of what a portal runs (client goroutine).
func (s *session) portalClass(name []byte) *router.Class { return s.portalOf(name).class }

// bindPortal records what a Bind's portal runs (client goroutine). Named
// portals are few and short-lived; the map is dropped once it holds many.
func (s *session) bindPortal(name []byte, st *clientStmt) {
	p := portal{st: st}
	if st != nil {
		p.class = st.class
	}
	if len(name) == 0 {
		s.bound = p
		return
	}
	if s.portals == nil || len(s.portals) >= maxPortals {
		s.portals = make(map[string]portal)
	}
	s.portals[string(name)] = p
}

// maxPortals bounds the named portals remembered; a forgotten one's
// Execute is only not classified.
const maxPortals = 64

// answerUnattachedLocked answers, without a server, what needs none (in
// transaction mode): a named Parse outside a transaction (prepared on a
// server when first bound or described), a Close of a statement, and a
// Sync with nothing outstanding. A client blocked in a synchronous prepare
// must not need a server, or clients holding every server in transactions
// would wait on it. It returns the messages to write to the client.
func (s *session) answerUnattachedLocked(typ byte, body []byte, class *router.Class) (handled bool, answer []pgproto3.BackendMessage, err error) {
	switch typ {
	case 'S':
		return true, []pgproto3.BackendMessage{&pgproto3.ReadyForQuery{TxStatus: 'I'}}, nil
	case 'C':
		kind, name, ok := wire.Target(body)
		if !ok {
			return true, nil, fatalf(codeProtocolViolation, "invalid Close message")
		}
		if kind == 'S' && len(name) > 0 {
			delete(s.stmts, string(name))
		}
		return true, []pgproto3.BackendMessage{&pgproto3.CloseComplete{}}, nil
	case 'P':
		name, query, types, ok := wire.ParseFields(body)
		if !ok {
			return true, nil, fatalf(codeProtocolViolation, "invalid Parse message")
		}
		if len(name) == 0 || class == nil || class.SyntaxError != "" {
			return false, nil, nil // the server parses it and reports errors
		}
		if _, exists := s.stmts[string(name)]; exists {
			s.discard = true
			return true, []pgproto3.BackendMessage{errorf("42P05", "prepared statement %q already exists", name).response()}, nil
		}
		s.addStmtLocked(string(name), query, types, class)
		return true, []pgproto3.BackendMessage{&pgproto3.ParseComplete{}}, nil
	}
	return false, nil, nil
}

// attach borrows a server connection of backend ("" for the configured
// primary) and applies the client's settings. node is the replica chosen
// for reads, or nil; it is released when the server is.
// A failed dial needs no report to the topology here: poolmgr tells it.
func (s *session) attach(ctx context.Context, backend string, node *router.Node) (err error) {
	defer func() {
		if err != nil && node != nil {
			node.Done()
		}
	}()
	if err := s.srv.waitPaused(ctx, s.database); err != nil {
		return err
	}
	if ctx == s.ctx {
		// The client's own wait: its timer is kept between waits.
		if s.wait == nil {
			s.wait = poolmgr.NewWaiter(s.ctx)
		}
		ctx = s.wait
	}
	conn, err := s.srv.pools.Acquire(ctx, s.service, s.database, backend)
	if err != nil {
		return err
	}
	if s.rec() != nil {
		s.waited(conn.Waited, conn.Backend())
	}
	s.mu.Lock()
	want, wantKey := s.settingsSQL, s.settingsKey
	s.mu.Unlock()
	if conn.State != wantKey {
		sql := want
		if conn.State != "" {
			sql = "RESET ALL;" + sql
		}
		if sql == "" {
			sql = "RESET ALL"
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		st, err := conn.Exec(rctx, sql)
		cancel()
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr):
			conn.State = unknownState
			if st == 'I' {
				s.giveBack(conn, giveClean)
			} else {
				s.giveBack(conn, giveDestroy)
			}
			return fatalf(pgErr.Code, "invalid connection setting: %s", pgErr.Message)
		case err != nil:
			s.giveBack(conn, giveDestroy)
			return &poolmgr.DialError{Backend: conn.Backend(), Err: err}
		}
		conn.State = wantKey
	}
	s.mu.Lock()
	s.server = conn
	s.node = node
	s.atBoundary = true
	s.txStatus = 'I'
	s.queue.reset()
	s.mu.Unlock()
	return nil
}

// attachFailed tells the client a server could not be had, the way
// PostgreSQL reports an error for the message at hand.
func (s *session) attachFailed(typ byte, err error) error {
	pe := toPgError(err)
	if pe.severity == "FATAL" {
		return pe
	}
	s.log.Info("no server for client", zap.String("code", pe.code), zap.String("reason", pe.message))
	msgs := []pgproto3.BackendMessage{pe.response()}
	switch typ {
	case 'Q', 'S', 'F':
		msgs = append(msgs, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	default:
		s.discard = true
	}
	return s.writeDirect(msgs...)
}

// serverWriteFailed handles a server that broke while we wrote to it.
func (s *session) serverWriteFailed(srv *poolmgr.Conn, err error) error {
	s.log.Warn("server connection failed", zap.String("backend", srv.Backend()), zap.Error(err))
	s.mu.Lock()
	if s.server == srv {
		s.setLifeLocked(lifeClosing)
	}
	s.mu.Unlock()
	return fatalf(codeConnectionFailure, "server connection to %s was lost", srv.Backend())
}
