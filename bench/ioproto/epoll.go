package main

// Model epoll: one goroutine, locked to its OS thread, runs one
// edge-triggered epoll loop over non-blocking sockets (golang.org/x/sys/unix
// directly; Go's netpoll is not involved once the server connections are
// set up).
//
//   - Reads: per readable event, one read(2) into the loop's 64 KiB buffer,
//     shared by every connection; again only when it filled the buffer (or
//     after a hangup, which must be read up to EOF). A short read drained
//     the socket: bytes arriving later raise a new edge.
//   - Writes: write(2) directly (writev when a pending tail is in front).
//     What the socket does not take waits in the connection's pending
//     buffer, allocated then and freed once EPOLLOUT has sent it; meanwhile
//     the connection's peer is not read (backpressure), and it is read
//     again when the buffer is drained.
//   - A client is read only once it has a server: a client that becomes
//     readable while none is free queues without reading, so that waiting
//     clients hold no bytes.
//   - Per-connection state is a small struct: no goroutine, no read buffer.
//   - Replacement server connections are opened by short-lived goroutines
//     (the handshake blocks) and handed to the loop over a channel, with an
//     eventfd to wake it; the same eventfd wakes it for shutdown, so an
//     idle loop sleeps in epoll_wait.

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

const (
	loopBufSize = 64 << 10
	maxEvents   = 256
	connEvents  = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
	hangup      = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR
)

// econn is one client or server connection of the event loop.
type econn struct {
	fd      int
	gen     uint32 // tells a stale event (for a closed fd since reused) from a current one
	server  bool
	startup bool   // a client still in its startup packets
	in      []byte // a client's partial startup packet
	peer    *econn // attached client or server
	sc      frameScanner
	pending []byte // output the socket did not take yet

	dead    bool // closed
	waiting bool // a client queued for a server, not read meanwhile
	paused  bool // not read because the peer has pending output
	hup     bool // the peer hung up: read up to EOF
	dirty   bool // a server that was sent bytes since it was attached
}

// eloop is the event loop and its pool.
type eloop struct {
	ctx      context.Context
	cfg      config
	greeting []byte
	epfd     int
	lfd      int // listener
	wakefd   int // eventfd: shutdown or new server connections
	buf      []byte
	iov      [2][]byte
	conns    []*econn // by fd
	gen      uint32

	free    []*econn // idle servers, last released first (may hold dead ones)
	waiters []*econn // clients waiting for a server, FIFO from whead (may hold dead ones)
	whead   int
	runq    []*econn // connections to read after the current event

	added   chan int // server fds opened by dialers
	dialers sync.WaitGroup
	wakeMu  sync.Mutex
	woken   bool // wakefd closed
}

func runEpoll(ctx context.Context, cfg config, servers []net.Conn, greeting []byte, ready func(string)) (err error) {
	l := &eloop{ctx: ctx, cfg: cfg, greeting: greeting, epfd: -1, lfd: -1, wakefd: -1,
		buf: make([]byte, loopBufSize), added: make(chan int, cfg.servers)}
	defer l.cleanup()
	fds := make([]int, 0, len(servers))
	for _, nc := range servers {
		fd, err := detachFD(nc)
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return err
		}
		fds = append(fds, fd)
	}
	if l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	if l.wakefd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	// Level-triggered: it is read empty at every wake-up anyway.
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, l.wakefd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.wakefd)}); err != nil {
		return fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	for i, fd := range fds {
		if err := l.addServer(fd); err != nil {
			for _, fd := range fds[i+1:] {
				unix.Close(fd)
			}
			return err
		}
	}
	addr, err := l.listen()
	if err != nil {
		return err
	}
	ready(addr)

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	stop := context.AfterFunc(ctx, l.wake)
	defer stop()
	return l.loop()
}

// detachFD takes the socket out of a net.Conn: a non-blocking duplicate
// with TCP_NODELAY, the net.Conn closed.
func detachFD(nc net.Conn) (int, error) {
	defer nc.Close()
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return -1, fmt.Errorf("server connection is a %T, not TCP", nc)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := noDelay(fd); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func noDelay(fd int) error {
	return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
}

// listen opens the non-blocking, edge-triggered listening socket.
func (l *eloop) listen() (string, error) {
	host, port, err := net.SplitHostPort(l.cfg.listen)
	if err != nil {
		return "", err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", fmt.Errorf("listen port %q", port)
	}
	ip := net.IPv4zero
	if host != "" {
		if ip = net.ParseIP(host); ip == nil {
			return "", fmt.Errorf("listen address %q: want an IP address", host)
		}
	}
	family := unix.AF_INET
	var sa unix.Sockaddr
	if ip4 := ip.To4(); ip4 != nil {
		sa = &unix.SockaddrInet4{Port: p, Addr: [4]byte(ip4)}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: p, Addr: [16]byte(ip.To16())}
	}
	if l.lfd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
		return "", fmt.Errorf("socket: %w", err)
	}
	if err := unix.SetsockoptInt(l.lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return "", err
	}
	if err := noDelay(l.lfd); err != nil {
		return "", err
	}
	if err := unix.Bind(l.lfd, sa); err != nil {
		return "", fmt.Errorf("bind %s: %w", l.cfg.listen, err)
	}
	if err := unix.Listen(l.lfd, 4096); err != nil {
		return "", fmt.Errorf("listen: %w", err)
	}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, l.lfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(l.lfd)}); err != nil {
		return "", fmt.Errorf("epoll_ctl listener: %w", err)
	}
	bound, err := unix.Getsockname(l.lfd)
	if err != nil {
		return "", err
	}
	switch a := bound.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port)), nil
	case *unix.SockaddrInet6:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port)), nil
	}
	return l.cfg.listen, nil
}

// wake interrupts epoll_wait (from any goroutine).
func (l *eloop) wake() {
	l.wakeMu.Lock()
	defer l.wakeMu.Unlock()
	if !l.woken {
		_, _ = unix.Write(l.wakefd, []byte{1, 0, 0, 0, 0, 0, 0, 0}) // adds 1 (little-endian; any non-zero value wakes)
	}
}

// loop runs until ctx is done.
func (l *eloop) loop() error {
	events := make([]unix.EpollEvent, maxEvents)
	var counter [8]byte
	for {
		n, err := unix.EpollWait(l.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for i := range events[:n] {
			ev := &events[i]
			switch fd := int(ev.Fd); fd {
			case l.lfd:
				l.accept()
			case l.wakefd:
				_, _ = unix.Read(l.wakefd, counter[:])
				if l.ctx.Err() != nil {
					return nil
				}
				l.adoptDialed()
			default:
				if c := l.conns[fd]; c != nil && c.gen == uint32(ev.Pad) {
					l.handle(c, ev.Events)
				}
			}
			l.drainRunq()
		}
	}
}

// handle processes the events of one connection.
func (l *eloop) handle(c *econn, events uint32) {
	if events&(unix.EPOLLOUT|hangup) != 0 && len(c.pending) > 0 {
		l.flush(c)
	}
	if events&hangup != 0 {
		c.hup = true
	}
	if events&(unix.EPOLLIN|hangup) != 0 && !c.dead {
		l.readable(c)
	}
}

// drainRunq reads the connections queued while handling an event: a
// client that got a server, a connection whose peer drained its output.
func (l *eloop) drainRunq() {
	for i := 0; i < len(l.runq); i++ {
		c := l.runq[i]
		l.runq[i] = nil
		if !c.dead {
			l.readable(c)
		}
	}
	l.runq = l.runq[:0]
}

func (l *eloop) readable(c *econn) {
	switch {
	case c.server:
		l.readServer(c)
	case c.startup:
		l.readStartup(c)
	default:
		l.readClient(c)
	}
}

// read is one read(2) into the loop's buffer; EINTR is retried.
func (l *eloop) read(c *econn) (int, error) {
	for {
		n, err := unix.Read(c.fd, l.buf)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// more reports whether c must be read again after a read of n bytes.
func (l *eloop) more(c *econn, n int) bool {
	return !c.dead && (n == len(l.buf) || c.hup)
}

// readClient forwards what a client sends to its server, taking one first.
func (l *eloop) readClient(c *econn) {
	for {
		if c.peer == nil {
			if c.hup {
				// Gone between transactions (typically Terminate then FIN):
				// nothing to run for it.
				l.closeClient(c)
				return
			}
			if c.waiting {
				return
			}
			s := l.takeServer()
			if s == nil {
				c.waiting = true
				l.waiters = append(l.waiters, c)
				return
			}
			attach(c, s)
		}
		s := c.peer
		if len(s.pending) > 0 {
			c.paused = true
			return
		}
		n, err := l.read(c)
		if err == unix.EAGAIN {
			if !s.dirty { // nothing for the server after all
				detach(c, s)
				l.release(s)
			}
			return
		}
		if err != nil || n == 0 {
			l.closeClient(c)
			return
		}
		data := l.buf[:n]
		m, err := c.sc.scan(data, 'X')
		if m > 0 {
			s.dirty = true
			l.send(s, data[:m])
		}
		if err != nil || m < n {
			l.closeClient(c) // protocol error or Terminate
			return
		}
		if !l.more(c, n) {
			return
		}
	}
}

// readServer forwards what a server sends to its client, and gives the
// server back at an idle ReadyForQuery.
func (l *eloop) readServer(s *econn) {
	for {
		c := s.peer
		if c != nil && len(c.pending) > 0 {
			s.paused = true
			return
		}
		n, err := l.read(s)
		if err == unix.EAGAIN {
			return
		}
		if err != nil || n == 0 {
			l.closeServer(s)
			return
		}
		data := l.buf[:n]
		if _, err := s.sc.scan(data, 0); err != nil {
			l.closeServer(s)
			return
		}
		// Bytes from an idle server (a notice, the FATAL before it goes)
		// have nobody to go to and are dropped.
		if c != nil {
			l.send(c, data)
			if !s.dead && s.sc.idle() && len(s.pending) == 0 {
				detach(c, s)
				l.release(s)
			}
		}
		if !l.more(s, n) {
			return
		}
	}
}

// readStartup reads a client's startup packets, exactly (so that nothing
// after the StartupMessage is read before the client has a server), and
// answers them.
func (l *eloop) readStartup(c *econn) {
	for {
		need := 4
		if len(c.in) >= 4 {
			n, err := startupLength(c.in)
			if err != nil {
				l.closeClient(c)
				return
			}
			need = n
		}
		n, err := unix.Read(c.fd, l.buf[:need-len(c.in)])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil || n == 0 {
			l.closeClient(c)
			return
		}
		c.in = append(c.in, l.buf[:n]...)
		if len(c.in) < need || need == 4 {
			continue
		}
		switch classifyStartup(c.in) {
		case startupSSL, startupGSSENC:
			c.in = c.in[:0]
			l.send(c, []byte{'N'})
		case startupMessage:
			c.in, c.startup = nil, false
			l.send(c, l.greeting)
			// A client may send its first query before it has read the
			// greeting; the edge for those bytes may be gone.
			if !c.dead && l.hasInput(c) {
				l.runq = append(l.runq, c)
			}
			return
		default: // CancelRequest or garbage
			l.closeClient(c)
			return
		}
		if c.dead {
			return
		}
	}
}

// hasInput reports whether c has bytes (or EOF) to read, without reading.
func (l *eloop) hasInput(c *econn) bool {
	for {
		_, _, err := unix.Recvfrom(c.fd, l.buf[:1], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err != unix.EINTR {
			return err != unix.EAGAIN
		}
	}
}

// send writes p to c, keeping in c.pending what the socket does not take.
func (l *eloop) send(c *econn, p []byte) {
	if c.dead || len(p) == 0 {
		return
	}
	var n int
	var err error
	for {
		if len(c.pending) == 0 {
			n, err = unix.Write(c.fd, p)
		} else {
			l.iov[0], l.iov[1] = c.pending, p
			n, err = unix.Writev(c.fd, l.iov[:])
			l.iov[0], l.iov[1] = nil, nil
		}
		if err != unix.EINTR {
			break
		}
	}
	if err == unix.EAGAIN {
		n, err = 0, nil
	}
	if err != nil {
		l.closeConn(c)
		return
	}
	if k := len(c.pending); k > 0 {
		if n < k {
			c.pending = append(c.pending[n:], p...)
			return
		}
		c.pending, n = nil, n-k
	}
	if n < len(p) {
		c.pending = append([]byte(nil), p[n:]...)
	}
}

// flush writes c's pending output (EPOLLOUT); once it is all sent, c's
// peer is read again if it was paused.
func (l *eloop) flush(c *econn) {
	for len(c.pending) > 0 {
		n, err := unix.Write(c.fd, c.pending)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			l.closeConn(c)
			return
		}
		c.pending = c.pending[n:]
	}
	c.pending = nil
	if p := c.peer; p != nil && p.paused {
		p.paused = false
		l.runq = append(l.runq, p)
	}
}

// accept takes every pending connection (edge-triggered: up to EAGAIN).
func (l *eloop) accept() {
	for {
		fd, _, err := unix.Accept4(l.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch err {
			case unix.EAGAIN:
				return
			case unix.EINTR, unix.ECONNABORTED:
				continue
			}
			// EMFILE and the like: what is left in the backlog waits for
			// the next connection's edge.
			logger.Printf("accept: %v", err)
			return
		}
		if err := noDelay(fd); err != nil {
			unix.Close(fd)
			continue
		}
		if _, err := l.register(fd, false); err != nil {
			logger.Print(err)
			unix.Close(fd)
		}
	}
}

// register adds fd to the loop.
func (l *eloop) register(fd int, server bool) (*econn, error) {
	l.gen++
	c := &econn{fd: fd, gen: l.gen, server: server, startup: !server}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: connEvents, Fd: int32(fd), Pad: int32(c.gen)}); err != nil {
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	for fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*econn, len(l.conns)+64)...)
	}
	l.conns[fd] = c
	return c, nil
}

// addServer adds a server connection to the loop and the pool.
func (l *eloop) addServer(fd int) error {
	s, err := l.register(fd, true)
	if err != nil {
		unix.Close(fd)
		return err
	}
	l.release(s)
	return nil
}

// adoptDialed adds the server connections the dialers opened.
func (l *eloop) adoptDialed() {
	for {
		select {
		case fd := <-l.added:
			if err := l.addServer(fd); err != nil {
				logger.Print(err)
			}
		default:
			return
		}
	}
}

func attach(c, s *econn) {
	c.peer, s.peer = s, c
	s.dirty = false
}

func detach(c, s *econn) {
	c.peer, s.peer = nil, nil
	c.paused, s.paused = false, false
}

// takeServer pops a free server, or nil.
func (l *eloop) takeServer() *econn {
	for n := len(l.free); n > 0; n = len(l.free) {
		s := l.free[n-1]
		l.free[n-1] = nil
		l.free = l.free[:n-1]
		if !s.dead {
			return s
		}
	}
	return nil
}

// release gives an idle, detached server to the first waiting client (which
// is then read), else to the free list.
func (l *eloop) release(s *econn) {
	s.dirty = false
	for l.whead < len(l.waiters) {
		w := l.waiters[l.whead]
		l.waiters[l.whead] = nil
		l.whead++
		if w.dead {
			continue
		}
		w.waiting = false
		attach(w, s)
		l.runq = append(l.runq, w)
		l.compactWaiters()
		return
	}
	l.compactWaiters()
	l.free = append(l.free, s)
}

// compactWaiters keeps the waiters' slice from growing when it never
// empties.
func (l *eloop) compactWaiters() {
	switch {
	case l.whead == len(l.waiters):
		l.waiters, l.whead = l.waiters[:0], 0
	case l.whead >= 64 && 2*l.whead >= len(l.waiters):
		k := copy(l.waiters, l.waiters[l.whead:])
		clear(l.waiters[k:])
		l.waiters, l.whead = l.waiters[:k], 0
	}
}

func (l *eloop) closeConn(c *econn) {
	if c.server {
		l.closeServer(c)
	} else {
		l.closeClient(c)
	}
}

// closeClient closes a client. Its server goes back to the pool if it was
// sent nothing; otherwise its state is unknown and it is replaced.
func (l *eloop) closeClient(c *econn) {
	if c.dead {
		return
	}
	c.dead = true
	if s := c.peer; s != nil {
		detach(c, s)
		if s.dirty || len(s.pending) > 0 {
			l.closeServer(s)
		} else {
			l.release(s)
		}
	}
	l.closeFD(c)
}

// closeServer closes a server, and its client (whose transaction is lost),
// and opens a new server connection in its place.
func (l *eloop) closeServer(s *econn) {
	if s.dead {
		return
	}
	s.dead = true
	if c := s.peer; c != nil {
		detach(c, s)
		l.closeClient(c)
	}
	l.closeFD(s)
	if l.ctx.Err() != nil {
		return
	}
	l.dialers.Add(1)
	go func() {
		defer l.dialers.Done()
		nc, err := dialRetry(l.ctx, l.cfg)
		if err != nil {
			return
		}
		fd, err := detachFD(nc)
		if err != nil {
			logger.Printf("replacing a server connection: %v", err)
			return
		}
		l.added <- fd // room for every server; drained by cleanup at the end
		l.wake()
	}()
}

func (l *eloop) closeFD(c *econn) {
	if l.conns[c.fd] == c {
		l.conns[c.fd] = nil
	}
	unix.Close(c.fd) // also takes it out of the epoll set
	c.pending, c.in = nil, nil
}

// cleanup closes everything: connections, listener, epoll, eventfd, and the
// connections dialers still bring.
func (l *eloop) cleanup() {
	for _, c := range l.conns {
		if c != nil {
			unix.Close(c.fd)
		}
	}
	l.conns = nil
	for _, fd := range []int{l.lfd, l.epfd} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	l.dialers.Wait()
	for len(l.added) > 0 {
		unix.Close(<-l.added)
	}
	l.wakeMu.Lock()
	l.woken = true
	if l.wakefd >= 0 {
		unix.Close(l.wakefd)
	}
	l.wakeMu.Unlock()
}
