package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/pgshield/pgshield/poolmgr"
)

// Parking idle clients.
//
// A client idle between transactions costs a goroutine (its stack) and a
// read buffer while its goroutine waits in Read. A parked client costs
// neither: its goroutine has ended, its read buffer is back in a pool, and
// its socket waits in the parker's epoll set (one-shot). When the client
// sends again, or the session must end (KILL, shutdown, a limit), the
// parker or the waker starts a goroutine that takes the session up where
// it stopped: the top of its message loop.
//
// Who parks: a transaction-mode session without a server, not on TLS (a
// TLS connection may hold decrypted bytes of its own), just logged in
// with nothing more from its client yet, or whose client goroutine has
// waited in Read with nothing buffered across a whole sweep
// (parkEvery reaps). The sweep never parks a client that
// is working: the client goroutine marks the read it blocks in (idleRead)
// and checks parkAsked after it, and the sweep sets parkAsked before it
// reads idleRead, both under the sequentially consistent atomics, so
// either the sweep sees the client working or the client sees the ask
// (and clears the deadline the sweep set, under s.mu). Clients that keep
// working never park: parking costs nothing per transaction but the two
// atomic stores around a read that blocks.

// errParked ends a session's goroutine without ending the session.
var errParked = errors.New("session parked")

// parker is the epoll set of parked clients' sockets and the goroutine
// that waits on it.
type parker struct {
	log  *zap.Logger
	epfd int
	wake int // an eventfd in the set, written to stop the loop

	mu     sync.Mutex
	parked map[int32]*session // by socket descriptor
	done   chan struct{}      // closed when the loop has ended
}

func newParker(log *zap.Logger) (*parker, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	p := &parker{log: log, epfd: epfd, wake: wake, parked: make(map[int32]*session), done: make(chan struct{})}
	go p.loop()
	return p, nil
}

// loop waits for parked sockets to become readable (or to be hung up) and
// takes their sessions up, until stop.
func (p *parker) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			p.log.Error("parked clients: epoll_wait failed; parked clients are taken up", zap.Error(err))
			p.resumeAll()
			return
		}
		for _, ev := range events[:n] {
			if int(ev.Fd) == p.wake {
				p.resumeAll()
				return
			}
			p.mu.Lock()
			s := p.parked[ev.Fd]
			if s != nil {
				// One-shot left it in the set, disabled: out, so that it
				// can be added again when the client parks again.
				delete(p.parked, ev.Fd)
				_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(ev.Fd), nil)
			}
			p.mu.Unlock()
			if s == nil {
				continue // taken up by a waker meanwhile
			}
			s.mu.Lock()
			s.unparkLocked()
			s.mu.Unlock()
		}
	}
}

// add puts s's socket fd in the set, one-shot: loop takes it out at its
// first event. s.mu is held by the caller, so an event
// that fires at once waits for s.parked to be set.
func (p *parker) add(s *session, fd int32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.parked == nil {
		return errors.New("parker stopped")
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: fd}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	p.parked[fd] = s
	return nil
}

// remove takes fd out of the set, if it is still there.
func (p *parker) remove(fd int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.parked != nil {
		delete(p.parked, fd)
	}
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
}

// resumeAll takes every parked session up (at stop, or when epoll fails)
// and refuses new ones.
func (p *parker) resumeAll() {
	p.mu.Lock()
	all := p.parked
	p.parked = nil
	p.mu.Unlock()
	for fd, s := range all {
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
		s.mu.Lock()
		s.unparkLocked()
		s.mu.Unlock()
	}
}

// stop ends the loop, taking parked sessions up, and frees the set.
func (p *parker) stop() {
	var one [8]byte
	one[0] = 1 // an eventfd counter is a native-endian uint64: any nonzero value wakes
	_, _ = unix.Write(p.wake, one[:])
	<-p.done
	unix.Close(p.wake)
	unix.Close(p.epfd)
}

// parkerOf returns the Server's parker, starting it on first use; nil when
// it cannot run (then nobody parks).
func (s *Server) parkerOf() *parker {
	s.parkOnce.Do(func() {
		p, err := newParker(s.log)
		if err != nil {
			s.log.Warn("idle clients will not be parked", zap.Error(err))
			return
		}
		s.parker.Store(p)
	})
	return s.parker.Load()
}

// stopParker stops the parker if it ever started.
func (s *Server) stopParker() {
	s.parkOnce.Do(func() {}) // none may start after this
	if p := s.parker.Load(); p != nil {
		p.stop()
	}
}

// parkable reports whether the session may ever be parked: transaction
// mode, not TLS, and parking on.
func (s *session) parkable() bool {
	return s.mode == poolmgr.ModeTransaction && !s.tls && !s.srv.rt.Load().cfg.DisableIdleParking
}

// askPark is the sweep's ask for one session: if its client goroutine has
// been waiting in an idle read since the last sweep (seen is the session's
// byte count then), the read is interrupted so that the goroutine parks.
// It returns the byte count to compare with at the next sweep.
func (s *session) askPark(seen int64) int64 {
	in := s.stats.bytesIn.Load()
	if in != seen || !s.idleRead.Load() {
		return in
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.parked || s.life != lifeOpen || s.server != nil || s.reader != readerNone {
		return in
	}
	s.parkAsked.Store(true)
	if !s.idleRead.Load() {
		s.parkAsked.Store(false) // the client is working: it may have seen the ask, which is harmless
		return in
	}
	_ = s.conn.SetReadDeadline(time.Now())
	return in
}

// sweepPark asks every idle parkable session to park. Only the reaper
// goroutine calls it (it owns parkSeen).
func (s *Server) sweepPark() {
	if s.rt.Load().cfg.DisableIdleParking {
		return
	}
	for _, sess := range s.sessionList() {
		if sess.parkable() {
			sess.parkSeen = sess.askPark(sess.parkSeen)
		}
	}
}

// afterIdleRead is called by the client goroutine after a read it marked
// idle returned err: when the read brought a message, an ask to park that
// came meanwhile is withdrawn (the deadline it set cleared), since the
// client is working again; when it failed, parkNow takes the ask.
func (s *session) afterIdleRead(err error) {
	s.idleRead.Store(false)
	if err == nil && s.parkAsked.Load() {
		s.mu.Lock()
		s.parkAsked.Store(false)
		_ = s.conn.SetReadDeadline(time.Time{})
		s.mu.Unlock()
	}
}

// parkOutcome is what the client goroutine does after an idle read ended
// on a deadline.
type parkOutcome uint8

const (
	parkEnd  parkOutcome = iota // the deadline was a waker's: the session ends
	parkRead                    // not parked: read again
	parkDone                    // parked: the goroutine ends (errParked)
)

// parkNow parks the session after its idle read ended on a deadline, if
// the sweep asked and the session still may.
func (s *session) parkNow() parkOutcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	asked := s.parkAsked.Swap(false)
	if s.endMsg != nil || s.life != lifeOpen || !asked {
		return parkEnd
	}
	_ = s.conn.SetReadDeadline(time.Time{})
	return s.parkLocked()
}

// parkLocked parks the session if it may be: idle, with nothing buffered
// from its client. s.mu must be held, and the caller is the client
// goroutine at the top of its loop.
func (s *session) parkLocked() parkOutcome {
	if !s.parkable() || s.life != lifeOpen || s.server != nil || s.reader != readerNone || s.r.Buffered() != 0 || s.needFlush {
		return parkRead
	}
	p := s.srv.parkerOf()
	if p == nil {
		return parkRead
	}
	fd, err := connFD(s.conn)
	if err != nil {
		return parkRead
	}
	if err := p.add(s, fd); err != nil {
		s.log.Debug("client not parked", zap.Error(err))
		return parkRead
	}
	s.parked, s.parkFD = true, fd
	s.srv.readers.Put(s.br)
	s.br = nil
	s.r.Reset(nil)
	s.shedLocked()
	return parkDone
}

// instrumentsLocked gives the session metric series of its own again
// after a park (shedLocked folded them into the totals). s.mu must be
// held.
func (s *session) instrumentsLocked() {
	if s.ins != nil || s.srv.metrics == nil {
		return
	}
	s.ins = s.srv.newInstruments(s.service, s.database)
	s.ins.handles.Stripe = int(s.id)
}

// shedLocked drops the buffers a session keeps from one transaction to
// the next, which an idle one does not need: they grow again when used.
// s.mu must be held, and nobody reads for the session.
func (s *session) shedLocked() {
	s.wbuf = nil
	if s.queue.empty() {
		s.queue.reset()
		s.queue.items = nil
	}
	if len(s.resp.done) == 0 {
		s.resp.done = nil
	}
	if len(s.resp.inTx) == 0 {
		s.resp.inTx = nil
	}
	s.retrySent = nil
	// Its metric series too: each holds a histogram or a counter and
	// entries in its family's maps. Folded into the totals, they count
	// the same in every scrape.
	s.srv.releaseInstruments(s.ins)
	s.ins = nil
}

// unparkLocked takes a parked session up on a goroutine of its own, with
// a read buffer again. s.mu must be held; a session not parked is left
// alone.
func (s *session) unparkLocked() {
	if !s.parked {
		return
	}
	s.parked = false
	s.br = s.srv.readers.Get().(*bufio.Reader)
	s.br.Reset(s.conn)
	s.r.Reset(s.br)
	s.instrumentsLocked()
	go s.serve()
}

// wakeParkedLocked is wakeLocked for a parked session: it is taken out of
// the set and taken up with its read already timed out, so that its loop
// sees at once why it ends. s.mu must be held.
func (s *session) wakeParkedLocked() {
	s.srv.parker.Load().remove(s.parkFD)
	_ = s.conn.SetReadDeadline(time.Now())
	s.unparkLocked()
}

// connFD is the socket descriptor of a TCP (or Unix) connection.
func connFD(c any) (int32, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var fd int32
	if err := rc.Control(func(f uintptr) { fd = int32(f) }); err != nil {
		return 0, err
	}
	return fd, nil
}

// ParkedClients is the number of clients parked now.
func (s *Server) ParkedClients() int {
	p := s.parker.Load()
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}
