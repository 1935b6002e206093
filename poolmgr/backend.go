package poolmgr

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"
)

// ErrBreakerOpen is the cause of a DialError while a backend's circuit
// breaker is open: the dial was not attempted.
var ErrBreakerOpen = errors.New("circuit breaker open")

// BreakerState is the state of a backend's circuit breaker.
type BreakerState string

// Breaker states.
const (
	BreakerClosed   BreakerState = "closed"
	BreakerOpen     BreakerState = "open"
	BreakerHalfOpen BreakerState = "half-open"
)

// BackendEvent reports a change the rest of the proxy must react to.
type BackendEvent struct {
	Backend string
	Breaker BreakerState
	// Failed: a dial to the backend failed on the network (not a refusal
	// by a running server), or an idle connection to it was found dead.
	// Health checking reacts at once.
	Failed bool
}

// backend is one server address: its circuit breaker and every connection
// open to it, whichever pool holds it.
type backend struct {
	addr string
	cb   *gobreaker.CircuitBreaker[*Conn]

	mu    sync.Mutex
	conns map[*Conn]struct{}
}

// backendOf returns the backend record for addr, creating it.
func (m *Manager) backendOf(addr string) *backend {
	m.bmu.Lock()
	defer m.bmu.Unlock()
	if b, ok := m.backends[addr]; ok {
		return b
	}
	s := m.settings()
	b := &backend{addr: addr, conns: make(map[*Conn]struct{})}
	b.cb = gobreaker.NewCircuitBreaker[*Conn](gobreaker.Settings{
		Name:        addr,
		MaxRequests: 1, // one probe while half-open
		Timeout:     s.BreakerTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= uint32(m.settings().BreakerFailures)
		},
		// A server that answered (wrong password, too many clients) is up:
		// its refusals do not count against it.
		IsExcluded: func(err error) bool {
			var pgErr *pgconn.PgError
			return errors.As(err, &pgErr) && !transientServerError(pgErr.Code)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			// Called with the breaker's lock held: act elsewhere.
			go m.breakerChanged(b, from, to)
		},
	})
	m.backends[addr] = b
	return b
}

func (m *Manager) breakerChanged(b *backend, from, to gobreaker.State) {
	st := breakerState(to)
	m.log.Warn("circuit breaker changed state", zap.String("backend", b.addr),
		zap.String("from", string(breakerState(from))), zap.String("to", string(st)))
	if st == BreakerOpen {
		// Idle connections to a backend that cannot be reached are
		// presumed dead; they must not be handed out.
		m.closeIdle(b.addr)
	}
	m.notify(BackendEvent{Backend: b.addr, Breaker: st})
}

func breakerState(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
}

// transientServerError: the server is starting, shutting down or full;
// worth another try, and a sign the backend is not serving.
func transientServerError(code string) bool {
	switch code {
	case "57P03", "57P01", "57P02", "53300":
		return true
	}
	return false
}

// Breaker returns the state of the circuit breaker of a backend.
func (m *Manager) Breaker(addr string) BreakerState {
	return breakerState(m.backendOf(addr).cb.State())
}

// OnEvent sets the function told of breaker changes and failed dials. It
// is called from its own goroutine and must not block for long.
func (m *Manager) OnEvent(fn func(BackendEvent)) {
	m.bmu.Lock()
	defer m.bmu.Unlock()
	m.onEvent = fn
}

func (m *Manager) notify(ev BackendEvent) {
	m.bmu.Lock()
	fn := m.onEvent
	m.bmu.Unlock()
	if fn != nil {
		fn(ev)
	}
}

// dialWithRetry dials through the backend's breaker, retrying failures
// that may be transient with exponential backoff and jitter until ctx (the
// connect timeout) ends.
func (m *Manager) dialWithRetry(ctx context.Context, addr string, dialOnce func(context.Context) (*Conn, error)) (*Conn, error) {
	b := m.backendOf(addr)
	backoff := 25 * time.Millisecond
	for attempt := 0; ; attempt++ {
		c, err := b.cb.Execute(func() (*Conn, error) { return dialOnce(ctx) })
		if err == nil {
			b.track(c)
			return c, nil
		}
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			return nil, ErrBreakerOpen
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && !transientServerError(pgErr.Code) {
			return nil, err // the server refused: retrying will not help
		}
		if attempt == 0 && !errors.As(err, &pgErr) {
			go m.notify(BackendEvent{Backend: addr, Failed: true})
		}
		// Full jitter: sleep a random time up to the backoff.
		sleep := time.Duration(rand.Int64N(int64(backoff))) + time.Millisecond
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < sleep+10*time.Millisecond {
			return nil, err
		}
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		if backoff < time.Second {
			backoff *= 2
		}
	}
}

func (b *backend) track(c *Conn) {
	c.backend = b
	b.mu.Lock()
	b.conns[c] = struct{}{}
	b.mu.Unlock()
}

func (b *backend) untrack(c *Conn) {
	b.mu.Lock()
	delete(b.conns, c)
	b.mu.Unlock()
}

// closeIdle destroys the idle connections of every pool of addr.
func (m *Manager) closeIdle(addr string) {
	for _, p := range m.poolsOf(addr) {
		for _, res := range p.p.AcquireAllIdle() {
			res.Destroy()
		}
	}
}

func (m *Manager) poolsOf(addr string) []*pool {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*pool
	for k, p := range m.pools {
		if k.Backend == addr {
			out = append(out, p)
		}
	}
	return out
}

// CloseBackend closes every connection to addr: idle ones at once, and
// those in use by interrupting them, so their clients are told the server
// connection was lost instead of waiting on a backend that is gone. It is
// used when a backend is declared down or fenced.
func (m *Manager) CloseBackend(addr string) {
	m.closeIdle(addr)
	b := m.backendOf(addr)
	b.mu.Lock()
	conns := make([]*Conn, 0, len(b.conns))
	for c := range b.conns {
		conns = append(conns, c)
	}
	b.mu.Unlock()
	for _, c := range conns {
		// The holder's next read or write fails; it destroys the
		// connection and tells its client.
		_ = c.netConn.SetDeadline(time.Now())
	}
	m.closeMonitors(addr)
}

// alive reports, without blocking and without consuming anything, whether
// an idle connection is still open: a server that closed it (restart,
// failover, idle timeout on its side) has sent EOF or a final error.
func (c *Conn) alive() bool {
	if c.r.Buffered() > 0 {
		return false // nothing is owed to an idle connection
	}
	if c.tcp == nil {
		return true
	}
	rc, err := c.tcp.SyscallConn()
	if err != nil {
		return true
	}
	ok := true
	_ = rc.Read(func(fd uintptr) bool {
		var buf [1]byte
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0:
			ok = false // nothing is owed to an idle connection: a goodbye
		case err == syscall.EAGAIN || err == syscall.EINTR:
		default:
			ok = false // EOF (n == 0) or a socket error
		}
		return true
	})
	return ok
}

// tcpOf unwraps the TCP connection under a dialled connection.
func tcpOf(c net.Conn) *net.TCPConn {
	switch t := c.(type) {
	case *net.TCPConn:
		return t
	case *takeoverConn:
		return tcpOf(t.Conn)
	}
	return nil
}
