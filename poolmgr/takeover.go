package poolmgr

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// takeoverConn sits under pgconn so that the proxy can take the socket
// over safely after Hijack.
//
// pgconn starts a background reader when a write during connect is slow
// (15 ms, easily reached on a busy machine). Stopping it lets a Read that
// is already in flight complete later, and that Read would then swallow the
// first bytes the server sends to the proxy. takeover wakes such a Read
// with a deadline and keeps whatever it received for the new owner.
type takeoverConn struct {
	net.Conn

	mu       sync.Mutex
	taken    bool   // the proxy owns the socket
	early    int    // reads begun before takeover and still in flight
	stash    []byte // bytes an early read received after takeover
	released chan struct{}
}

func (c *takeoverConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.taken {
		if len(c.stash) > 0 {
			n := copy(p, c.stash)
			c.stash = c.stash[n:]
			c.mu.Unlock()
			return n, nil
		}
		c.mu.Unlock()
		return c.Conn.Read(p)
	}
	c.early++
	c.mu.Unlock()

	n, err := c.Conn.Read(p)

	c.mu.Lock()
	defer c.mu.Unlock()
	c.early--
	if c.taken {
		// A read from before the takeover: what it got belongs to the
		// new owner; its caller is told the read timed out.
		c.stash = append(c.stash, p[:n]...)
		if c.early == 0 && c.released != nil {
			close(c.released)
			c.released = nil
		}
		return 0, os.ErrDeadlineExceeded
	}
	return n, err
}

// takeover makes the proxy the only reader of the socket.
func (c *takeoverConn) takeover(ctx context.Context) error {
	c.mu.Lock()
	c.taken = true
	if c.early == 0 {
		c.mu.Unlock()
		return nil
	}
	done := make(chan struct{})
	c.released = done
	c.mu.Unlock()
	if err := c.Conn.SetReadDeadline(time.Now()); err != nil {
		return err
	}
	select {
	case <-done:
	case <-ctx.Done():
		return errors.New("a background read did not stop")
	}
	return c.Conn.SetReadDeadline(time.Time{})
}

// dialTakeover returns a pgconn DialFunc that records the connection it
// makes in *out. pgconn dials its fallbacks (sslmode=prefer) one after
// another, so the last one recorded is the one that connected.
func dialTakeover(timeout time.Duration, out **takeoverConn) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: timeout, KeepAlive: 5 * time.Minute}
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		tc := &takeoverConn{Conn: nc}
		*out = tc
		return tc, nil
	}
}

// drained reports that the takeover left no bytes behind, so the wrapped
// connection can be read directly.
func (c *takeoverConn) drained() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.taken && c.early == 0 && len(c.stash) == 0
}
