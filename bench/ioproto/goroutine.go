package main

// Model goroutine: one goroutine per client over net.Conn (Go's netpoll),
// blocking reads. The client's goroutine reads the client, takes a server,
// writes to it and, once the client waits for an answer, reads the server
// itself (inline) and forwards to the client through a bufio.Writer
// flushed after every server read, until a ReadyForQuery; at an idle one it
// gives the server back. This is what pgshield does today on its common
// path.
//
// Unlike the epoll model the two directions are not read at the same time:
// the server is read only when the client stream is at a frame boundary
// after a Sync or a Query, so flows in which the client waits for answers
// without sending either (Flush, COPY FROM STDIN) are not supported; they
// need a second reader (pgshield's pump), out of scope here.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
)

const (
	clientReadBuf = 4 << 10  // per client, as pgshield's
	serverReadBuf = 32 << 10 // per server connection
	clientWBuf    = 16 << 10 // bufio.Writer toward a client, lent while a server is attached
)

// gserver is a server connection of the goroutine model.
type gserver struct {
	nc  net.Conn
	buf []byte
	sc  frameScanner
}

// gmodel is the goroutine model's shared state: the pool and what
// shutdown must close.
type gmodel struct {
	ctx      context.Context
	cfg      config
	greeting []byte
	writers  sync.Pool // *bufio.Writer toward clients
	wg       sync.WaitGroup

	mu      sync.Mutex
	free    []*gserver        // idle servers, last released first
	waiters []chan *gserver   // clients waiting for a server, FIFO
	servers map[*gserver]bool // every open server connection
	clients map[net.Conn]bool // every open client connection
	closed  bool
}

func runGoroutine(ctx context.Context, cfg config, servers []net.Conn, greeting []byte, ready func(string)) error {
	g := &gmodel{ctx: ctx, cfg: cfg, greeting: greeting, servers: map[*gserver]bool{}, clients: map[net.Conn]bool{}}
	g.writers.New = func() any { return bufio.NewWriterSize(nil, clientWBuf) }
	for _, nc := range servers {
		s := &gserver{nc: nc, buf: make([]byte, serverReadBuf)}
		g.servers[s] = true
		g.free = append(g.free, s)
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		g.shutdown()
		return err
	}
	ready(ln.Addr().String())
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		g.shutdown()
	})
	defer stop()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			logger.Printf("accept: %v", err)
			continue
		}
		if !g.track(nc) {
			nc.Close()
			break
		}
		g.wg.Add(1)
		go g.serveClient(nc)
	}
	g.shutdown()
	g.wg.Wait()
	return nil
}

// track records a client connection, unless shutting down.
func (g *gmodel) track(nc net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.clients[nc] = true
	return true
}

// shutdown closes every connection, which ends the client goroutines.
func (g *gmodel) shutdown() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	for nc := range g.clients {
		nc.Close()
	}
	for s := range g.servers {
		s.nc.Close()
	}
}

// acquire takes a free server or waits for one, FIFO.
func (g *gmodel) acquire(wake chan *gserver) (*gserver, error) {
	g.mu.Lock()
	if n := len(g.free); n > 0 {
		s := g.free[n-1]
		g.free = g.free[:n-1]
		g.mu.Unlock()
		return s, nil
	}
	g.waiters = append(g.waiters, wake)
	g.mu.Unlock()
	select {
	case s := <-wake:
		return s, nil
	case <-g.ctx.Done():
		g.mu.Lock()
		if i := indexOf(g.waiters, wake); i >= 0 {
			g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
		}
		g.mu.Unlock()
		select {
		case s := <-wake: // handed over meanwhile
			g.release(s)
		default:
		}
		return nil, g.ctx.Err()
	}
}

func indexOf(ws []chan *gserver, w chan *gserver) int {
	for i, x := range ws {
		if x == w {
			return i
		}
	}
	return -1
}

// release gives an idle server to the first waiting client, else to the
// free list.
func (g *gmodel) release(s *gserver) {
	g.mu.Lock()
	if len(g.waiters) > 0 {
		w := g.waiters[0]
		g.waiters[0] = nil
		g.waiters = g.waiters[1:]
		g.mu.Unlock()
		w <- s // buffered, and the waiter's only pending value
		return
	}
	g.free = append(g.free, s)
	g.mu.Unlock()
}

// discard closes a server whose state is unknown and opens a new one in
// its place.
func (g *gmodel) discard(s *gserver) {
	s.nc.Close()
	g.mu.Lock()
	delete(g.servers, s)
	closed := g.closed
	if !closed {
		g.wg.Add(1)
	}
	g.mu.Unlock()
	if closed {
		return
	}
	go func() {
		defer g.wg.Done()
		nc, err := dialRetry(g.ctx, g.cfg)
		if err != nil {
			return
		}
		ns := &gserver{nc: nc, buf: make([]byte, serverReadBuf)}
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			nc.Close()
			return
		}
		g.servers[ns] = true
		g.mu.Unlock()
		g.release(ns)
	}()
}

// serveClient runs one client connection.
func (g *gmodel) serveClient(nc net.Conn) {
	defer g.wg.Done()
	defer func() {
		nc.Close()
		g.mu.Lock()
		delete(g.clients, nc)
		g.mu.Unlock()
	}()
	if !g.clientStartup(nc) {
		return
	}
	buf := make([]byte, clientReadBuf)
	wake := make(chan *gserver, 1)
	var sc frameScanner
	var srv *gserver     // attached server
	var bw *bufio.Writer // toward the client, while srv is attached
	defer func() {
		if srv != nil { // mid-transaction: its state is unknown
			g.discard(srv)
		}
	}()
	for {
		n, rerr := nc.Read(buf)
		data := buf[:n]
		m, err := sc.scan(data, 'X')
		if m > 0 {
			if srv == nil {
				if srv, err = g.acquire(wake); err != nil {
					return
				}
				bw = g.writers.Get().(*bufio.Writer)
				bw.Reset(nc)
			}
			if _, err := srv.nc.Write(data[:m]); err != nil {
				return
			}
		}
		if err != nil || m < n || rerr != nil {
			return // protocol error, Terminate, or the client is gone
		}
		if typ, ok := sc.boundary(); !ok || (typ != 'S' && typ != 'Q') || srv == nil {
			continue // the client is not waiting for an answer yet
		}
		idle, err := readInline(srv, bw)
		if err != nil {
			return
		}
		if idle {
			bw.Reset(nil)
			g.writers.Put(bw)
			g.release(srv)
			srv, bw = nil, nil
		}
	}
}

// readInline forwards the server's bytes to the client until the server
// stream ends with a ReadyForQuery, and reports whether it was idle.
func readInline(s *gserver, bw *bufio.Writer) (idle bool, err error) {
	for {
		n, err := s.nc.Read(s.buf)
		if n > 0 {
			if _, serr := s.sc.scan(s.buf[:n], 0); serr != nil {
				return false, serr
			}
			_, _ = bw.Write(s.buf[:n])
			// Everything read has been consumed: let the client see it.
			if ferr := bw.Flush(); ferr != nil {
				return false, ferr
			}
			if status, ok := s.sc.ready(); ok {
				return status == 'I', nil
			}
		}
		if err != nil {
			return false, err
		}
	}
}

// clientStartup answers the client's startup packets up to its
// StartupMessage, and reports whether the session goes on.
func (g *gmodel) clientStartup(nc net.Conn) bool {
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(nc, hdr[:]); err != nil {
			return false
		}
		n, err := startupLength(hdr[:])
		if err != nil {
			return false
		}
		pkt := make([]byte, n)
		copy(pkt, hdr[:])
		if _, err := io.ReadFull(nc, pkt[4:]); err != nil {
			return false
		}
		switch classifyStartup(pkt) {
		case startupSSL, startupGSSENC:
			if _, err := nc.Write([]byte{'N'}); err != nil {
				return false
			}
		case startupMessage:
			_, err := nc.Write(g.greeting)
			return err == nil
		default: // CancelRequest or garbage
			return false
		}
	}
}
