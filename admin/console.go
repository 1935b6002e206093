package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/proxy"
)

// Console is the admin SQL console: operators connect with psql to the
// admin port and type SHOW POOLS; and the other commands of commands.go.
// It speaks the simple query protocol only. The handshake (TLS,
// authentication, the admin check) is the proxy's (proxy.Server.AcceptAdmin);
// what the commands read and change is Source's.
type Console struct {
	accept func(context.Context, net.Conn) (*proxy.AdminClient, error)
	src    Source
	log    *zap.Logger
	// commands and items are commandTable and showTable by name.
	commands map[string]command
	items    map[string]showItem
	jobs     *Jobs // the job registry of SHOW JOBS, CANCEL JOB; nil: none (WithJobs)

	// ctx ends handshakes and commands in progress when Shutdown begins.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex // guards the fields below
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]*proxy.AdminClient // nil while in the handshake
	closed    bool

	wg sync.WaitGroup // one per connection goroutine
}

// ConsoleOption adds to what NewConsole builds (WithJobs).
type ConsoleOption func(*Console)

// NewConsole returns a console that runs accept (proxy.Server.AcceptAdmin)
// on every connection and answers commands from src.
func NewConsole(accept func(context.Context, net.Conn) (*proxy.AdminClient, error), src Source, log *zap.Logger, opts ...ConsoleOption) *Console {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Console{
		accept: accept, src: src, log: log, ctx: ctx, cancel: cancel,
		commands: commandIndex(), items: showIndex(),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]*proxy.AdminClient),
	}
	for _, opt := range opts {
		opt(c)
	}
	return c
}

// Serve accepts admin connections on ln, one goroutine each, until
// Shutdown; then it returns nil. Any other accept failure is returned.
func (c *Console) Serve(ln net.Listener) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = ln.Close()
		return nil
	}
	c.listeners[ln] = struct{}{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.listeners, ln)
		c.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if c.isClosed() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("admin console: %w", err)
		}
		backoff = 0
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			_ = nc.Close()
			return nil
		}
		c.conns[nc] = nil
		c.wg.Add(1)
		c.mu.Unlock()
		go c.serveConn(nc)
	}
}

func (c *Console) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Shutdown stops accepting, tells every admin connection FATAL 57P01 and
// closes it, and waits for their goroutines until ctx ends.
func (c *Console) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	for ln := range c.listeners {
		_ = ln.Close()
	}
	conns := make(map[net.Conn]*proxy.AdminClient, len(c.conns))
	for nc, cl := range c.conns {
		conns[nc] = cl
	}
	c.mu.Unlock()
	c.cancel()
	for nc, cl := range conns {
		if cl == nil {
			_ = nc.Close()
			continue
		}
		_ = cl.Terminate(proxy.ErrorResponse("FATAL", CodeAdminShutdown, "terminating connection: pgshield is shutting down", "", ""))
	}
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("admin console shutdown: %w", ctx.Err())
	}
}

// serveConn runs one admin connection from its first byte to its close.
func (c *Console) serveConn(nc net.Conn) {
	defer c.wg.Done()
	defer func() {
		c.mu.Lock()
		delete(c.conns, nc)
		c.mu.Unlock()
	}()
	cl, err := c.accept(c.ctx, nc)
	if err != nil {
		_ = nc.Close()
		c.log.Debug("admin connection refused", zap.String("remote", nc.RemoteAddr().String()), zap.Error(err))
		return
	}
	defer cl.Close()
	c.mu.Lock()
	closed := c.closed
	if !closed {
		c.conns[nc] = cl
	}
	c.mu.Unlock()
	if closed {
		_ = cl.Terminate(proxy.ErrorResponse("FATAL", CodeAdminShutdown, "pgshield is shutting down", "", ""))
		return
	}
	sess := &consoleSession{c: c, cl: cl,
		log: c.log.With(zap.String("user", cl.User()), zap.String("remote", cl.RemoteAddr().String()))}
	sess.run()
}

// consoleSession is one admin connection after its handshake. It is owned
// by the connection's goroutine.
type consoleSession struct {
	c   *Console
	cl  *proxy.AdminClient
	log *zap.Logger
	// skipping: an extended-protocol message was refused; everything up
	// to the next Sync is discarded, as PostgreSQL does after an error.
	skipping bool
}

func (s *consoleSession) run() {
	for {
		typ, body, err := s.cl.Next()
		if err != nil {
			switch {
			case errors.Is(err, proxy.ErrAdminProtocol):
				s.fatal(CodeProtocolViolation, err.Error())
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
			default:
				s.log.Debug("admin connection ended", zap.Error(err))
			}
			return
		}
		if s.skipping {
			switch typ {
			case 'S':
				s.skipping = false
				if s.cl.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'}) != nil {
					return
				}
			case 'X':
				return
			}
			continue
		}
		switch typ {
		case 'Q':
			var q pgproto3.Query
			if err := q.Decode(body); err != nil {
				s.fatal(CodeProtocolViolation, "invalid Query message")
				return
			}
			if err := s.simpleQuery(q.String); err != nil {
				s.log.Debug("admin connection ended", zap.Error(err))
				return
			}
		case 'X':
			return
		case 'S':
			if s.cl.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'}) != nil {
				return
			}
		case 'P', 'B', 'D', 'E', 'C', 'H':
			s.skipping = true
			if s.cl.Send(extendedRefused()) != nil {
				return
			}
		case 'F':
			// FunctionCall has no Sync: answer it at once.
			if s.cl.Send(extendedRefused(), &pgproto3.ReadyForQuery{TxStatus: 'I'}) != nil {
				return
			}
		default:
			s.fatal(CodeProtocolViolation, fmt.Sprintf("unexpected message type %q on the admin console", typ))
			return
		}
	}
}

func extendedRefused() *pgproto3.ErrorResponse {
	return (&Error{Code: CodeFeatureNotSupported,
		Message: "the admin console supports the simple query protocol only",
		Hint:    "use psql, or a driver in simple protocol mode (pgx: QueryExecModeSimpleProtocol)"}).response()
}

func (s *consoleSession) fatal(code, message string) {
	s.log.Info("admin connection closed", zap.String("code", code), zap.String("reason", message))
	_ = s.cl.Terminate(proxy.ErrorResponse("FATAL", code, message, "", ""))
}

// simpleQuery answers one Query message: each command in order, the first
// error ending the rest, then ReadyForQuery. Only a failure to write to the
// client is returned.
func (s *consoleSession) simpleQuery(text string) error {
	cmds := splitCommands(text)
	if len(cmds) == 0 {
		return s.cl.Send(&pgproto3.EmptyQueryResponse{}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	}
	for _, cmd := range cmds {
		ans, err := s.command(cmd)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				e = &Error{Code: CodeInternalError, Message: err.Error()}
			}
			if err := s.cl.Send(e.response()); err != nil {
				return err
			}
			break
		}
		if err := s.cl.Send(resultMessages(ans.res, ans.notices, ans.tag)...); err != nil {
			return err
		}
	}
	return s.cl.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
}

// command runs one command and logs it by its first word, never its
// arguments (SET values may be secrets).
func (s *consoleSession) command(cmd string) (*answer, error) {
	toks, err := tokenize(cmd)
	if err != nil {
		s.log.Info("admin command refused", zap.Error(err))
		return nil, err
	}
	word := commandWord(toks)
	s.log.Info("admin command", zap.String("command", word))
	ans, err := s.c.execute(s.c.ctx, toks)
	if err != nil {
		var e *Error
		code := CodeInternalError
		if errors.As(err, &e) {
			code = e.Code
		}
		s.log.Info("admin command failed", zap.String("command", word), zap.String("code", code))
	}
	return ans, err
}
