package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// expected is one response the server owes the client, in order.
type expected struct {
	typ byte // the client message type that asked for it
	// replaceErr, when set, is what the client sees instead of the
	// ErrorResponse the server sends for this message: the proxy refused the
	// client's message and sent the server one that fails, so that the
	// server's transaction state matches what PostgreSQL would have done.
	replaceErr *pgError
	// swallow: the proxy sent this message on its own account; its
	// successful response is not the client's.
	swallow bool
	// replaceWith is what the client sees instead of the successful
	// response (a ParseComplete carried by a no-op Close).
	replaceWith []byte
	// If the server does not carry the message out (error, or skipped after
	// an error), forget the client statement and the server statement it
	// would have created.
	forgetClient string
	forgetStmt   *clientStmt
	forgetKey    string
	verify       *clientStmt // marked verified when this Parse succeeds
	// class of the statement(s) this message runs (Query, Execute): its
	// effects on session state apply once it has succeeded.
	class *router.Class
	// retry: this Query may be run again if it fails with a serialization
	// failure or deadlock (see retry.go).
	retry bool
	// sent is when a Query, Execute or FunctionCall went to the server,
	// with statistics on (see insight.go).
	sent time.Time
}

// respQueue is a FIFO that reuses its backing array.
type respQueue struct {
	items []expected
	head  int
}

func (q *respQueue) push(e expected) { q.items = append(q.items, e) }
func (q *respQueue) empty() bool     { return q.head == len(q.items) }
func (q *respQueue) peek() *expected {
	if q.empty() {
		return nil
	}
	return &q.items[q.head]
}
func (q *respQueue) pop() {
	if q.empty() {
		return
	}
	q.items[q.head] = expected{}
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
}
func (q *respQueue) reset() { q.items, q.head = q.items[:0], 0 }

// session is one client. See the package documentation for which goroutine
// owns what.
type session struct {
	srv *Server
	log *zap.Logger

	// Set at login, then read-only.
	ctx         context.Context // cancelled when the session is told to end
	cancel      context.CancelFunc
	id          uint32
	secret      []byte
	user        string
	database    string
	service     string
	mode        poolmgr.PoolMode
	settings    map[string]string
	startupSQL  string // the startup settings as SET statements
	connectedAt time.Time
	remote      string // the client's address
	tls         bool

	// Owned by the client goroutine.
	conn          net.Conn
	br            *bufio.Reader
	r             *wire.Reader
	dropUntilSync bool   // a refused extended message: skip to Sync
	needFlush     bool   // bytes written to the server and not flushed
	wbuf          []byte // rewritten or injected frames for the server
	unpumped      int    // bytes written to the server since a pump last ran
	lastSent      byte   // type of the last message written to the server

	mu sync.Mutex // guards the fields below
	// server is the attached server connection; nil when none.
	server *poolmgr.Conn
	// stmts are the client's named prepared statements (transaction mode).
	stmts map[string]*clientStmt
	// pins is the session state that ties the client to its server.
	pins router.Pin
	// tracked are the client's session-level SETs, in the order first
	// set, replayed on every server after its startup settings.
	tracked      []trackedSet
	unnamedClass *router.Class // of the unnamed statement (client goroutine)
	boundClass   *router.Class // of the statement last bound (client goroutine)
	queue        respQueue
	txStatus     byte      // from the last ReadyForQuery
	txSince      time.Time // when the open transaction began; zero when idle
	// skipping: the server reported an error in the extended protocol and
	// discards messages until Sync, so they owe no response.
	skipping bool
	// writing: the client goroutine is writing to server; the pump must not
	// release it. releaseDeferred: the pump wanted to, and left it to the
	// client goroutine.
	writing         bool
	releaseDeferred bool
	pumpDone        chan struct{} // closed when the pump exits; nil if none ran
	pumpClean       bool          // the pump stopped at a message boundary
	pumpRunning     bool
	cw              *bufio.Writer // toward the client, lent to the pump
	closing         bool          // the session is ending; the pump must not release
	draining        bool          // end the session at the next safe point
	settingsSQL     string        // startup settings and tracked SETs, replayed on attach
	settingsKey     string        // identifies settingsSQL; servers record what they have
	// endMsg is why the session is being ended (KILL, the shutdown
	// deadline): whoever writes to the client last tells it, once
	// (endSent). ending is set, under mu, when KILL has cancelled a
	// running statement: its answer ends the session instead of a
	// ReadyForQuery (read without the lock by the pump at ReadyForQuery).
	endMsg  *pgError
	endSent bool
	ending  atomic.Bool
	// gone is closed once the session has ended and its server is back
	// or closed (not guarded: set at login, closed by close).
	gone chan struct{}
	// lookups counts the client's classifications (parse cache lookups);
	// written by the client goroutine, read by metrics scrapes.
	lookups atomic.Uint64
	// stats are the client's counters (insight.go); ins its metric
	// series, nil without metrics (whether statistics are on is rec()).
	stats sessionStats
	ins   *instruments
	// Transaction insight, for SHOW TRANSACTIONS and the transaction
	// limits (guarded by mu).
	batchStart   time.Time // first statement sent since the last ReadyForQuery
	lastReady    time.Time // last ReadyForQuery inside a transaction
	txStatements int
	txTables     []string
	txRows       int64
	txIsolation  string
	txExpired    bool          // transaction_timeout passed: statements fail (limits.go)
	txLimit      time.Duration // the transaction_timeout that passed
	// idle is signalled at every ReadyForQuery and when the pump fails.
	idle sync.Cond

	// Statement retries (see retry.go), guarded by mu.
	retryBuf []byte // the Query to run again
	retries  int    // attempts so far for the head Query

	// Read routing (see routing.go). reads and routing are set at login.
	reads     string
	routing   bool
	node      *router.Node // the node attached for reads; nil on the primary
	wrote     bool         // something that may write ran on the attached primary
	lastWrite time.Time    // when the client's last writing transaction ended

	// Owned by the pump: effects of statements that succeeded since the
	// last ReadyForQuery, and of those inside the open transaction block.
	respSent  bool   // a result message went to the client since the last ReadyForQuery
	retryErr  []byte // an ErrorResponse held back to retry its Query (retry.go)
	replaying bool   // retryErr is to be retried at ReadyForQuery
	descSent  bool   // and a RowDescription
	skipDesc  bool   // the Query run again will describe its rows again: drop that
	done      []*router.Class
	inTx      []*router.Class
	txCommit  bool // the last tag that ended a block was COMMIT (state.go)
	entryErr  bool // the head Query entry got an ErrorResponse
	// Statistics of the answers since the last ReadyForQuery (insight.go).
	queryErr       string // SQLSTATE of the head Query's error
	stmtRows       int64  // rows of the statement being answered
	batchWriteRows int64  // rows written by the batch
	batchErr       bool   // something in the batch failed
	batchClasses   []*router.Class
	lastDone       time.Time
	finished       []finishedStmt // timed, recorded once the client has its answer
	outBytes       int64          // bytes forwarded to the client, not yet counted
}

// trackedSet is one session-level SET a client ran.
type trackedSet struct{ name, sql string }

// errTerminate is a client's orderly goodbye.
var errTerminate = errors.New("client terminated the session")

// run is the client goroutine: it reads client messages until the client
// leaves, then cleans up.
func (s *session) run() {
	if s.mode == poolmgr.ModeSession {
		s.mu.Lock()
		s.startPumpLocked()
		s.mu.Unlock()
	}
	err := s.loop()
	var pe *pgError
	if errors.As(err, &pe) {
		s.log.Info("closing client", zap.String("code", pe.code), zap.String("reason", pe.message))
		s.writeDirect(pe.response())
	} else if err != nil && !errors.Is(err, errTerminate) && !isClosedErr(err) {
		s.log.Debug("client connection ended", zap.Error(err))
	}
	s.close()
}

func (s *session) loop() error {
	for {
		if s.needFlush && s.r.Buffered() == 0 {
			if err := s.flushServer(); err != nil {
				return err
			}
		}
		typ, _, err := s.r.Next()
		if err != nil {
			var tooLarge *wire.TooLargeError
			if errors.As(err, &tooLarge) || errors.Is(err, wire.ErrMalformed) {
				return toPgError(err)
			}
			return err
		}
		s.stats.bytesIn.add(int64(wire.HeaderLen + s.r.Len()))
		switch typ {
		case 'X':
			return errTerminate
		case 'Q', 'P', 'B', 'D', 'E', 'C', 'S', 'F', 'H', 'd', 'c', 'f':
		default:
			return fatalf(codeProtocolViolation, "invalid frontend message type %d", typ)
		}
		if s.dropUntilSync {
			if typ != 'S' {
				continue
			}
			s.dropUntilSync = false
			s.mu.Lock()
			attached := s.server != nil
			s.mu.Unlock()
			if !attached {
				if err := s.writeDirect(&pgproto3.ReadyForQuery{TxStatus: 'I'}); err != nil {
					return err
				}
				continue
			}
		}
		if err := s.forward(typ); err != nil {
			return err
		}
	}
}

// answered reports whether the server sends a response for a message type.
func answered(typ byte) bool {
	switch typ {
	case 'Q', 'P', 'B', 'D', 'E', 'C', 'S', 'F':
		return true
	}
	return false
}

// forward sends the current client message to the attached server,
// attaching one first if needed.
func (s *session) forward(typ byte) error {
	pooled := s.mode == poolmgr.ModeTransaction
	var body []byte
	var class *router.Class
	if pooled {
		switch typ {
		case 'Q', 'P', 'B', 'D', 'C', 'E':
			var err error
			if body, err = s.r.Body(); err != nil {
				return err
			}
		}
		class = s.classify(typ, body)
	} else if typ == 'Q' && s.rec() != nil && s.srv.classifier != nil {
		// Session mode: classified for its fingerprint only.
		var err error
		if body, err = s.r.Body(); err != nil {
			return err
		}
		class = s.classify(typ, body)
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
		if pooled {
			if handled, err := s.answerUnattachedLocked(typ, body, class); handled {
				s.mu.Unlock()
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
	if s.routing {
		s.noteWriteLocked(typ, class)
	}
	srv := s.server
	if !s.pumpRunning && s.unpumped+s.r.Len() > unpumpedMax {
		s.startPumpLocked()
	}
	raw := true
	s.wbuf = s.wbuf[:0]
	switch {
	case pooled && (typ == 'P' || typ == 'B' || typ == 'D' || typ == 'C'):
		var err error
		if raw, err = s.planStatementLocked(typ, body, srv, class); err != nil {
			s.mu.Unlock()
			return err
		}
	case answered(typ):
		if pooled && s.txExpired && s.txStatus == 'T' && (typ == 'Q' || typ == 'E') && (class == nil || !class.Transaction) {
			// transaction_timeout passed while the client was idle in
			// its transaction: the statement fails, and so does the
			// transaction (limits.go).
			s.refuseExpiredLocked(typ)
			raw = false
			break
		}
		if class != nil && pooled {
			s.pinLocked(class.Pins)
		}
		e := expected{typ: typ, class: class}
		if (typ == 'Q' || typ == 'E' || typ == 'F') && s.rec() != nil {
			e.sent = time.Now()
			if s.batchStart.IsZero() {
				s.batchStart = e.sent
			}
		}
		if typ == 'Q' && pooled && s.retryableLocked(class) {
			if frame, err := s.r.Frame(); err == nil {
				s.retryBuf = append(s.retryBuf[:0], frame...)
				s.retries = 0
				e.retry = true
			}
		}
		s.pushLocked(e)
	case s.queue.empty():
		// Nothing outstanding: the server may be released at any moment,
		// so do not write to it. Flush and stray copy messages are no-ops.
		s.mu.Unlock()
		return nil
	}
	if typ == 'S' {
		s.skipping = false
	}
	s.writing = true
	s.mu.Unlock()

	w := srv.Writer()
	var err error
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

// writeDone ends a write toward srv begun with s.writing set, and releases
// the server if the pump found it idle meanwhile and left that to us.
func (s *session) writeDone(srv *poolmgr.Conn, err error) error {
	s.mu.Lock()
	s.writing = false
	deferred := s.releaseDeferred
	s.releaseDeferred = false
	s.mu.Unlock()
	if err != nil {
		return s.serverWriteFailed(srv, err)
	}
	if deferred {
		s.releaseIdle()
	}
	return nil
}

// classify returns the class of the SQL a message carries or runs, in
// transaction mode: Query and Parse carry text; Execute runs what was bound.
func (s *session) classify(typ byte, body []byte) *router.Class {
	if s.srv.classifier == nil {
		return nil
	}
	switch typ {
	case 'Q':
		if len(body) == 0 {
			return nil
		}
		return s.classifyText(body[:len(body)-1])
	case 'P':
		name, query, _, ok := wire.ParseFields(body)
		if !ok {
			return nil
		}
		cl := s.classifyText(query)
		if len(name) == 0 {
			s.unnamedClass = cl
		}
		return cl
	case 'E':
		return s.boundClass
	}
	return nil
}

// answerUnattachedLocked answers, without a server, what needs none: a
// named Parse outside a transaction (prepared on a server when first bound
// or described), a Close of a statement, and a Sync with nothing
// outstanding. A client blocked in a synchronous prepare must not need a
// server, or clients holding every server in transactions would wait on it.
func (s *session) answerUnattachedLocked(typ byte, body []byte, class *router.Class) (handled bool, err error) {
	switch typ {
	case 'S':
		return true, s.writeDirect(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	case 'C':
		if len(body) < 2 || body[len(body)-1] != 0 {
			return true, fatalf(codeProtocolViolation, "invalid Close message")
		}
		if body[0] == 'S' && len(body) > 2 {
			delete(s.stmts, string(body[1:len(body)-1]))
		}
		return true, s.writeDirect(&pgproto3.CloseComplete{})
	case 'P':
		name, query, types, ok := wire.ParseFields(body)
		if !ok {
			return true, fatalf(codeProtocolViolation, "invalid Parse message")
		}
		if len(name) == 0 || class == nil || class.SyntaxError != "" {
			return false, nil // the server parses it and reports errors
		}
		if _, exists := s.stmts[string(name)]; exists {
			s.dropUntilSync = true
			return true, s.writeDirect(errorf("42P05", "prepared statement %q already exists", name).response())
		}
		s.addStmtLocked(string(name), query, types, class)
		return true, s.writeDirect(&pgproto3.ParseComplete{})
	}
	return false, nil
}

// pushLocked records a response the server owes. While the server skips
// to Sync after an error, messages owe nothing and will not be carried out.
func (s *session) pushLocked(e expected) {
	if s.skipping && e.typ != 'S' {
		s.forgetLocked(&e, s.server)
		return
	}
	s.queue.push(e)
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
	s.writing = true
	s.mu.Unlock()
	err := srv.Writer().Flush()
	if err := s.writeDone(srv, err); err != nil {
		return err
	}
	s.afterWrite(s.lastSent)
	return nil
}

// rejectedSQL is sent to the server in place of a refused message: it fails
// to parse, so the server's transaction state follows PostgreSQL's rules for
// a failed statement, and the client is shown the refusal instead.
const rejectedSQL = "pgshield refused this statement"

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
				conn.Release()
			} else {
				conn.Destroy()
			}
			return fatalf(pgErr.Code, "invalid connection setting: %s", pgErr.Message)
		case err != nil:
			conn.Destroy()
			return &poolmgr.DialError{Backend: conn.Backend(), Err: err}
		}
		conn.State = wantKey
	}
	s.mu.Lock()
	s.server = conn
	s.node = node
	s.pumpClean = true
	s.txStatus = 'I'
	s.queue.reset()
	s.skipping = false
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
		s.dropUntilSync = true
	}
	return s.writeDirect(msgs...)
}

// detachIdle releases a freshly attached, idle server (used at login).
func (s *session) detachIdle() {
	s.mu.Lock()
	srv := s.server
	s.server = nil
	s.detachedLocked()
	s.mu.Unlock()
	if srv != nil {
		srv.Release()
	}
}

// releaseIdle releases the server the pump left attached because the client
// goroutine was writing, if it is still at a safe point.
func (s *session) releaseIdle() {
	s.mu.Lock()
	srv := s.server
	if srv == nil || s.closing || s.mode != poolmgr.ModeTransaction || !s.queue.empty() || s.txStatus != 'I' || s.pins != 0 {
		s.mu.Unlock()
		return
	}
	s.detachReleaseLocked(srv)
}

// detachReleaseLocked gives the attached server back to its pool at a safe
// point and ends the session there if the proxy is draining. s.mu must be
// held; it is released.
func (s *session) detachReleaseLocked(srv *poolmgr.Conn) {
	s.server = nil
	s.detachedLocked()
	cw := s.cw
	s.cw = nil
	s.pumpRunning = false
	draining := s.draining
	s.mu.Unlock()
	s.srv.putWriter(cw)
	srv.Release()
	if draining {
		s.kick()
	}
}

// serverWriteFailed handles a server that broke while we wrote to it.
func (s *session) serverWriteFailed(srv *poolmgr.Conn, err error) error {
	s.log.Warn("server connection failed", zap.String("backend", srv.Backend()), zap.Error(err))
	s.mu.Lock()
	if s.server == srv {
		s.closing = true
	}
	s.mu.Unlock()
	return fatalf(codeConnectionFailure, "server connection to %s was lost", srv.Backend())
}

// writeDirect writes messages to the client when no pump is running.
func (s *session) writeDirect(msgs ...pgproto3.BackendMessage) error {
	var buf []byte
	var err error
	for _, m := range msgs {
		if buf, err = m.Encode(buf); err != nil {
			return err
		}
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err = s.conn.Write(buf)
	_ = s.conn.SetWriteDeadline(time.Time{})
	return err
}

// cancelRunning forwards a cancel to the server serving this client now.
// The session lock is held while the request is sent so the server cannot
// be handed to another client in between.
func (s *session) cancelRunning() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server == nil || s.queue.empty() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.server.Cancel(ctx); err != nil {
		s.log.Warn("forwarding cancel request", zap.Error(err))
	}
}

// close ends the session: the server connection goes back clean (rolled
// back, and reset in session mode) or is closed.
func (s *session) close() {
	// Only the client goroutine (or a failed login) closes a session, once.
	if s.gone != nil {
		defer close(s.gone)
	}
	s.mu.Lock()
	s.closing = true
	srv, done := s.server, s.pumpDone
	if srv != nil && done != nil {
		// Wake the pump; it sees closing and stops without touching srv.
		_ = srv.NetConn().SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	if done != nil {
		<-done
	}
	s.mu.Lock()
	srv = s.server
	s.server = nil
	s.detachedLocked()
	clean := s.queue.empty() && s.pumpClean && !s.needFlush
	status := s.txStatus
	pins := s.pins
	s.unpinLocked(s.pins)
	cw := s.cw
	s.cw = nil
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
		srv.Destroy()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
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
	if sql != "" {
		if st, err := srv.Exec(ctx, sql); err != nil || st != 'I' {
			srv.Destroy()
			return
		}
	}
	srv.Release()
}

// drain ends the session now if it is idle, or at the end of its current
// transaction (see pump).
func (s *session) drain() {
	s.mu.Lock()
	s.draining = true
	// Idle: no server, or one between transactions (session mode, or a
	// transaction-mode client pinned to it by session state).
	idle := !s.closing && (s.server == nil || (s.queue.empty() && s.txStatus == 'I'))
	if idle && s.server != nil {
		s.closing = true
	}
	s.mu.Unlock()
	if idle {
		s.kick()
	}
}

// kick tells an idle client the proxy is shutting down and closes it; the
// client goroutine then cleans up.
func (s *session) kick() {
	s.terminate(fatalf(codeAdminShutdown, "terminating connection: pgshield is shutting down"))
}

// stop cancels what the session waits for (a server from the pool), so a
// client that was told it is disconnected never has its statement run.
func (s *session) stop() {
	if s.cancel != nil {
		s.cancel()
	}
}

// forceClose closes the client connection (and wakes the pump) whatever it
// is doing, telling the client msg; used when the shutdown deadline has
// passed and by KILL. While a pump writes to the client, the pump tells it
// (pumpFailed) and closes the connection; a client that does not read its
// answers is closed regardless after endGrace.
func (s *session) forceClose(msg *pgError) {
	s.stop()
	s.mu.Lock()
	s.closing = true
	if s.endMsg == nil {
		s.endMsg = msg
	}
	if s.server != nil {
		_ = s.server.NetConn().SetReadDeadline(time.Now())
	}
	pumping := s.pumpRunning
	told := s.endSent
	if !pumping {
		s.endSent = true
	}
	s.mu.Unlock()
	if pumping {
		_ = s.conn.SetWriteDeadline(time.Now().Add(endGrace))
		time.AfterFunc(endGrace, func() { _ = s.conn.Close() })
		return
	}
	if !told {
		_ = s.writeDirect(s.endMsg.response())
	}
	_ = s.conn.Close()
}

// endGrace is how long a pump has to tell a client why it is being closed.
const endGrace = time.Second

// tellEnd gives the client the reason its session ends, unless it had it,
// and closes the connection. Only the goroutine running the pump calls it,
// with cw the writer toward the client.
func (s *session) tellEnd(cw *bufio.Writer) {
	s.mu.Lock()
	msg, told := s.endMsg, s.endSent
	s.endSent = true
	s.mu.Unlock()
	if msg != nil && !told {
		if buf, err := msg.response().Encode(cw.AvailableBuffer()); err == nil {
			_, _ = cw.Write(buf)
		}
	}
	_ = cw.Flush()
	_ = s.conn.Close()
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, os.ErrDeadlineExceeded)
}
