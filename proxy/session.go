package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
)

// expected is one response the server owes the client, in order.
type expected struct {
	typ byte // the client message type that asked for it
	// replaceErr, when set, is what the client sees instead of the
	// ErrorResponse the server sends for this message: the proxy refused the
	// client's message and sent the server one that fails, so that the
	// server's transaction state matches what PostgreSQL would have done.
	replaceErr *pgError
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
	id          uint32
	secret      []byte
	user        string
	database    string
	service     string
	mode        poolmgr.PoolMode
	settings    map[string]string
	settingsSQL string
	settingsKey string
	connectedAt time.Time

	// Owned by the client goroutine.
	conn          net.Conn
	br            *bufio.Reader
	r             *wire.Reader
	dropUntilSync bool // a refused extended message: skip to Sync
	needFlush     bool // bytes written to the server and not flushed

	mu sync.Mutex // guards the fields below
	// server is the attached server connection; nil when none.
	server   *poolmgr.Conn
	queue    respQueue
	txStatus byte // from the last ReadyForQuery
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
}

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
	substitute, refusal, err := s.inspect(typ)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.server == nil {
		if !answered(typ) {
			// Flush with nothing outstanding does nothing; copy messages
			// outside COPY are ignored, as PostgreSQL ignores them.
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		if err := s.attach(context.Background()); err != nil {
			return s.attachFailed(typ, err)
		}
		s.mu.Lock()
		s.startPumpLocked()
	}
	srv := s.server
	switch {
	case answered(typ):
		if !s.skipping || typ == 'S' {
			s.queue.push(expected{typ: typ, replaceErr: refusal})
		}
		if typ == 'S' {
			s.skipping = false
		}
	case s.queue.empty():
		// Nothing outstanding: the server may be released at any moment,
		// so do not write to it. Flush and stray copy messages are no-ops.
		s.mu.Unlock()
		return nil
	}
	s.writing = true
	s.mu.Unlock()

	w := srv.Writer()
	if substitute != nil {
		_, err = w.Write(substitute)
	} else {
		_, err = s.r.WriteTo(w)
	}
	if err == nil {
		if typ == 'H' || s.r.Buffered() == 0 {
			err = w.Flush()
			s.needFlush = false
		} else {
			s.needFlush = true
		}
	}

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

// rejectedSQL is sent to the server in place of a refused message: it fails
// to parse, so the server's transaction state follows PostgreSQL's rules for
// a failed statement, and the client is shown the refusal instead.
const rejectedSQL = "pgshield refused this statement"

// inspect decides whether the current message may go to the server as is.
// In transaction mode, named prepared statements and SQL PREPARE/EXECUTE
// would run on whichever server the client lands on; until statement
// mapping exists they are refused with a clear error.
func (s *session) inspect(typ byte) (substitute []byte, refusal *pgError, err error) {
	if s.mode != poolmgr.ModeTransaction {
		return nil, nil, nil
	}
	var name string
	switch typ {
	case 'P', 'B', 'D', 'C', 'Q':
	default:
		return nil, nil, nil
	}
	body, err := s.r.Body()
	if err != nil {
		return nil, nil, err
	}
	switch typ {
	case 'Q':
		if !startsWithKeyword(body, "prepare", "execute", "deallocate") {
			return nil, nil, nil
		}
		refusal = errorf(codeFeatureNotSupported, "SQL PREPARE, EXECUTE and DEALLOCATE are not supported in transaction pooling mode")
		refusal.hint = "use the extended protocol's unnamed statements, or a service with pool_mode: session"
		substitute, err = (&pgproto3.Query{String: rejectedSQL}).Encode(nil)
		return substitute, refusal, err
	case 'P':
		var m pgproto3.Parse
		if err := m.Decode(body); err != nil {
			return nil, nil, fatalf(codeProtocolViolation, "invalid Parse message")
		}
		name = m.Name
	case 'B':
		var m pgproto3.Bind
		if err := m.Decode(body); err != nil {
			return nil, nil, fatalf(codeProtocolViolation, "invalid Bind message")
		}
		name = m.PreparedStatement
	case 'D', 'C':
		if len(body) < 2 {
			return nil, nil, fatalf(codeProtocolViolation, "invalid Describe/Close message")
		}
		if body[0] == 'S' {
			name = string(body[1 : len(body)-1])
		}
	}
	if name == "" {
		return nil, nil, nil
	}
	refusal = errorf(codeFeatureNotSupported, "named prepared statements are not supported in transaction pooling mode (statement %q)", name)
	refusal.hint = "use unnamed statements (for pgx: default_query_exec_mode=exec or cache_describe), or a service with pool_mode: session"
	substitute, err = (&pgproto3.Parse{Query: rejectedSQL}).Encode(nil)
	return substitute, refusal, err
}

// startsWithKeyword reports whether the query text begins, after spaces and
// comments, with one of the keywords (lower case), case-insensitively.
func startsWithKeyword(q []byte, keywords ...string) bool {
	i := 0
	for i < len(q) {
		switch {
		case q[i] == ' ' || q[i] == '\t' || q[i] == '\n' || q[i] == '\r' || q[i] == '(':
			i++
		case q[i] == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case q[i] == '/' && i+1 < len(q) && q[i+1] == '*':
			end := strings.Index(string(q[i+2:]), "*/")
			if end < 0 {
				return false
			}
			i += end + 4
		default:
			for _, kw := range keywords {
				if len(q)-i >= len(kw) && strings.EqualFold(string(q[i:i+len(kw)]), kw) &&
					(len(q)-i == len(kw) || !isIdentByte(q[i+len(kw)])) {
					return true
				}
			}
			return false
		}
	}
	return false
}

func isIdentByte(c byte) bool {
	return c == '_' || c == '$' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || c >= 0x80
}

// attach borrows a server connection and applies the client's settings.
func (s *session) attach(ctx context.Context) error {
	conn, err := s.srv.pools.Acquire(ctx, s.service, s.database, "")
	if err != nil {
		return err
	}
	if conn.State != s.settingsKey {
		sql := s.settingsSQL
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
			conn.State = "\x00unknown"
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
		conn.State = s.settingsKey
	}
	s.mu.Lock()
	s.server = conn
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
	if srv == nil || s.closing || s.mode != poolmgr.ModeTransaction || !s.queue.empty() || s.txStatus != 'I' {
		s.mu.Unlock()
		return
	}
	s.server = nil
	cw := s.cw
	s.cw = nil
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
	clean := s.queue.empty() && (done == nil || s.pumpClean) && !s.needFlush
	status := s.txStatus
	cw := s.cw
	s.cw = nil
	s.mu.Unlock()
	s.srv.putWriter(cw)
	s.srv.unregister(s)
	_ = s.conn.Close()
	if srv == nil {
		return
	}
	_ = srv.NetConn().SetReadDeadline(time.Time{})
	if !clean {
		srv.Destroy()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var sql string
	if status != 'I' {
		sql = "ROLLBACK;"
	}
	if s.mode == poolmgr.ModeSession {
		sql += "DISCARD ALL"
		srv.State = ""
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
	idle := (s.server == nil || (s.mode == poolmgr.ModeSession && s.queue.empty() && s.txStatus == 'I')) && !s.closing
	if idle && s.server != nil && s.pumpDone != nil {
		// A session-mode client between transactions: stop here.
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
	_ = s.writeDirect(fatalf(codeAdminShutdown, "terminating connection: pgshield is shutting down").response())
	_ = s.conn.Close()
}

// forceClose closes the client connection (and wakes the pump) whatever it
// is doing; used when the shutdown deadline has passed.
func (s *session) forceClose() {
	s.mu.Lock()
	s.closing = true
	if s.server != nil {
		_ = s.server.NetConn().SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	_ = s.conn.Close()
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, os.ErrDeadlineExceeded)
}
