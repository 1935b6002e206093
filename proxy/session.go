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
	// ErrorResponse the server sends for this message: the proxy refused
	// the client's message and sent the server one that fails in its
	// place (refuseLocked), so that the server's transaction state matches
	// what PostgreSQL would have done. Metrics count its code, not the
	// server's.
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
	// describes: this Describe's RowDescription is of that statement (its
	// rows' fate is kept on it); rowsOf: this Execute runs it.
	describes, rowsOf *clientStmt
	portal            bool // this Describe is of a portal (describes is its statement)
	kept              any  // describes' Verdict.Keep when the Describe was sent
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

// respQueue is the FIFO of responses the server owes, reusing its backing
// array.
type respQueue struct {
	items []expected
	head  int
	// skipping: the server reported an error in the extended protocol and
	// discards messages up to Sync, so they owe no response.
	skipping bool
}

func (q *respQueue) push(e expected) { q.items = append(q.items, e) }
func (q *respQueue) empty() bool     { return q.head == len(q.items) }
func (q *respQueue) len() int        { return len(q.items) - q.head }
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
func (q *respQueue) reset() { q.items, q.head, q.skipping = q.items[:0], 0, false }

// session is one client. See the package documentation for which goroutine
// owns what, and docs/architecture.md for the path of a message.
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
	reads       string // read routing (routing.go)
	routing     bool
	gone        chan struct{} // closed once close() has finished

	// Owned by the client goroutine: the request stage (request.go).
	conn      net.Conn
	wait      *poolmgr.Waiter // its waits for a server under ctx, made at the first
	br        *bufio.Reader
	r         *wire.Reader
	discard   bool   // a message was refused without a server: drop messages up to Sync
	needFlush bool   // bytes written to the server and not flushed
	wbuf      []byte // rewritten or injected frames for the server
	unpumped  int    // bytes written to the server since a reader last ran
	lastSent  byte   // type of the last message written to the server
	// unnamed is the unnamed statement last parsed (its own copy; set
	// once unnamedSet); boundClass and portals say what the unnamed and
	// the named portals run.
	unnamed    clientStmt
	unnamedSet bool
	bound      portal
	portals    map[string]portal
	copyClass  *router.Class // the statement a COPY FROM STDIN in progress runs
	copyState  copyState
	// keep is the Statement hook's Verdict.Keep for the message being
	// planned; copyKept that of the statement a COPY in progress runs.
	keep, copyKept any
	copyHookState  any // CopyEvent.State

	mu sync.Mutex // guards the fields below
	// life is where the session is between login and close (sstate.go);
	// lifeSeen holds the same, for reads without the lock.
	life     lifecycle
	lifeSeen atomic.Uint32
	// reader is who reads the server's answers now; pumpDone is closed when
	// a background pump exits; atBoundary says the last reader stopped
	// between two messages, so the server stream is intact.
	reader     reader
	pumpDone   chan struct{}
	atBoundary bool
	// writing: someone (the client goroutine, or a reader replaying a
	// retried Query) is writing to the server; the server must not be
	// released meanwhile, and nobody else may write.
	writing bool
	// server is the attached server connection; nil when none.
	server *poolmgr.Conn
	cw     *bufio.Writer // toward the client, lent to the reader
	// stmts are the client's named prepared statements, in both pool
	// modes (in transaction mode also prepared lazily on each server).
	stmts map[string]*clientStmt
	// pins is the session state that ties the client to its server.
	pins router.Pin
	// tracked are the client's session-level SETs, in the order first
	// set, replayed on every server after its startup settings.
	tracked     []trackedSet
	settingsSQL string // startup settings and tracked SETs, replayed on attach
	settingsKey string // identifies settingsSQL; servers record what they have
	queue       respQueue
	txStatus    byte      // from the last ReadyForQuery
	txSince     time.Time // when the open transaction began; zero when idle
	// endMsg is why the session is being ended (KILL, a limit, shutdown):
	// the goroutine that may write to the client tells it, once (endSent).
	endMsg  *pgError
	endSent bool
	// idle is signalled at every ReadyForQuery, when a reader stops and
	// when a write to the server ends.
	idle sync.Cond

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

	// Statement retries (retry.go), guarded by mu: what was sent to the
	// server for the retryable Query, and the attempts so far.
	retrySent []byte
	retries   int

	// Read routing (routing.go), guarded by mu.
	node      *router.Node // the node attached for reads; nil on the primary
	wrote     bool         // something that may write ran on the attached primary
	lastWrite time.Time    // when the client's last writing transaction ended

	// Owned by the reader: the response stage (response.go).
	resp respState

	// Parking (park.go). idleRead: the client goroutine waits in a read
	// with nothing buffered; parkAsked: the sweep asks it to park. parked
	// and parkFD are guarded by mu.
	idleRead, parkAsked atomic.Bool
	parked              bool
	parkFD              int32
	// parkSeen is the client's byte count at the last sweep, owned by the
	// reaper goroutine.
	parkSeen int64
}

// portal is what a portal runs: the statement (nil if unknown) and its
// class.
type portal struct {
	st    *clientStmt
	class *router.Class
}

// copyState is where a COPY FROM STDIN is, for the request stage.
type copyState uint8

const (
	copyNone    copyState = iota
	copyIn                // the client sends CopyData
	copyRefused           // a hook refused a CopyData: the rest is dropped
)

// trackedSet is one session-level SET a client ran.
type trackedSet struct{ name, sql string }

// errTerminate is a client's orderly goodbye.
var errTerminate = errors.New("client terminated the session")

// run is the client goroutine: it reads client messages until the client
// leaves or the session is ended, then cleans up.
func (s *session) run() {
	if s.mode == poolmgr.ModeSession {
		s.mu.Lock()
		s.startPumpLocked()
		s.mu.Unlock()
	}
	// A client that sent nothing yet with its login is parked at once:
	// its login's goroutine and stack need not wait with it.
	s.mu.Lock()
	parked := s.parkLocked() == parkDone
	s.mu.Unlock()
	if parked {
		return
	}
	s.serve()
}

// serve runs the message loop; when it ends, the session ends, unless it
// was parked (park.go): a goroutine started when the session is taken up
// serves it again.
func (s *session) serve() {
	err := s.loop()
	if errors.Is(err, errParked) {
		return
	}
	var pe *pgError
	switch {
	case errors.As(err, &pe):
		s.log.Info("closing client", zap.String("code", pe.code), zap.String("reason", pe.message))
		s.mu.Lock()
		if s.endMsg == nil {
			s.endMsg = pe
		}
		s.mu.Unlock()
	case err != nil && !errors.Is(err, errTerminate) && !isClosedErr(err):
		s.log.Debug("client connection ended", zap.Error(err))
	}
	s.tellEndDirect()
	s.close()
	s.srv.connDone(s.conn)
}

func (s *session) loop() error {
	for {
		if s.needFlush && s.r.Buffered() == 0 {
			if err := s.flushServer(); err != nil {
				return err
			}
		}
		idle := s.r.Buffered() == 0
		if idle {
			s.idleRead.Store(true)
		}
		typ, _, err := s.r.Next()
		if idle {
			s.afterIdleRead(err)
		}
		if err != nil {
			if idle && errors.Is(err, os.ErrDeadlineExceeded) {
				switch s.parkNow() {
				case parkDone:
					return errParked
				case parkRead:
					continue
				}
			}
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
		if s.discard {
			if typ != 'S' {
				continue
			}
			s.discard = false
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

// writeDirect writes messages to the client. Only the client goroutine
// calls it, and only while no reader runs.
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
	s.cancelServerLocked("forwarding cancel request")
}

// cancelServerLocked sends a cancel request for what runs on the attached
// server, if anything does. s.mu must be held.
func (s *session) cancelServerLocked(why string) {
	if s.server == nil || s.queue.empty() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.server.Cancel(ctx); err != nil {
		s.log.Warn(why, zap.Error(err))
	}
}

// Ending a session.
//
// Other goroutines (KILL, the limits' reaper, shutdown) never write to the
// client: end() records why and wakes the goroutine that may write, which
// tells the client (tellEnd or tellEndDirect) and closes.

// end ends the session with msg: at once if nothing runs on its server,
// else once the reader has stopped. The server is rolled back and
// returned by close(), or destroyed when it is not at a safe point.
func (s *session) end(msg *pgError) {
	s.stop()
	s.mu.Lock()
	if s.endMsg == nil {
		s.endMsg = msg
	}
	s.setLifeLocked(lifeClosing)
	s.wakeLocked()
	s.mu.Unlock()
}

// wakeLocked makes whoever may write to the client notice that the
// session is ending: the client goroutine blocked reading the client, or
// the reader blocked reading the server. s.mu must be held.
func (s *session) wakeLocked() {
	if s.parked {
		s.wakeParkedLocked()
		return
	}
	if s.reader == readerNone {
		_ = s.conn.SetReadDeadline(time.Now())
		return
	}
	if s.server != nil {
		_ = s.server.NetConn().SetReadDeadline(time.Now())
	}
}

// forceClose ends the session whatever it is doing (the shutdown deadline,
// a KILL whose statement does not yield): as end, and the client
// connection is closed after endGrace even if its reader is stuck writing
// to a client that does not read.
func (s *session) forceClose(msg *pgError) {
	s.mu.Lock()
	if s.reader != readerNone {
		_ = s.conn.SetWriteDeadline(time.Now().Add(endGrace))
	}
	s.mu.Unlock()
	s.end(msg)
	time.AfterFunc(endGrace, func() { _ = s.conn.Close() })
}

// endGrace is how long a reader has to tell a client why it is closed.
const endGrace = time.Second

// tellEnd gives the client the reason its session ends, unless it had it,
// and closes the connection. Only the reader calls it, with cw the writer
// toward the client.
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

// tellEndDirect is tellEnd for the client goroutine, once its loop has
// ended: it tells the client unless a reader runs (which then does).
func (s *session) tellEndDirect() {
	s.mu.Lock()
	msg := s.endMsg
	mine := msg != nil && !s.endSent && s.reader == readerNone
	if mine {
		s.endSent = true
	}
	s.mu.Unlock()
	if mine {
		_ = s.conn.SetReadDeadline(time.Time{})
		_ = s.writeDirect(msg.response())
	}
}

// drain ends the session now if it is idle, or at the end of its current
// transaction (see settleReady).
func (s *session) drain() {
	s.mu.Lock()
	s.setLifeLocked(lifeDraining)
	// Idle: no server, or one between transactions (session mode, or a
	// transaction-mode client pinned to it by session state).
	idle := s.life == lifeDraining && (s.server == nil || (s.queue.empty() && s.txStatus == 'I'))
	s.mu.Unlock()
	if idle {
		s.kick()
	}
}

// kick tells a client the proxy is shutting down and ends its session.
func (s *session) kick() {
	s.end(fatalf(codeAdminShutdown, "terminating connection: pgshield is shutting down"))
}

// stop cancels what the session waits for (a server from the pool), so a
// client that was told it is disconnected never has its statement run.
func (s *session) stop() {
	if s.cancel != nil {
		s.cancel()
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, os.ErrDeadlineExceeded)
}
