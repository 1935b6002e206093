package poolmgr

import (
	"context"
	"sync"
	"time"
)

// A Waiter is one client's wait for a server connection, kept between
// waits. Passed to Acquire as its context, it bounds each wait by the
// pool's wait_timeout with a timer it keeps, instead of a new
// context.WithTimeout per wait (a timer, a context and an entry in the
// parent's children each time: a few per cent of a transaction's CPU when
// clients queue for servers).
//
// It is done when its parent is, for good, or when the wait in progress
// passes its deadline; a later wait starts afresh. One goroutine waits
// with it at a time.
type Waiter struct {
	parent context.Context

	mu       sync.Mutex
	done     chan struct{} // closed when the current wait ends unsatisfied
	err      error         // why done was closed; nil while open
	deadline time.Time     // of the wait in progress; zero when none
	timer    *time.Timer   // fires expire; made at the first wait that waits
}

// NewWaiter returns a Waiter whose waits end when parent is done.
func NewWaiter(parent context.Context) *Waiter {
	w := &Waiter{parent: parent, done: make(chan struct{})}
	context.AfterFunc(parent, func() { w.close(parent.Err(), time.Time{}) })
	return w
}

// Deadline is that of the wait in progress.
func (w *Waiter) Deadline() (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.deadline, !w.deadline.IsZero()
}

// Done is closed when the wait in progress is over: its deadline passed or
// the parent is done.
func (w *Waiter) Done() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.done
}

// Err says why Done is closed: context.DeadlineExceeded, or the parent's
// error.
func (w *Waiter) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Value is the parent's.
func (w *Waiter) Value(key any) any { return w.parent.Value(key) }

// begin starts a wait that ends at deadline, unless the parent is done.
func (w *Waiter) begin(deadline time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if perr := w.parent.Err(); perr != nil { // done for good
		if w.err == nil {
			close(w.done)
		}
		w.err = perr
		return
	}
	if w.err != nil { // the last wait timed out: a fresh channel
		w.done, w.err = make(chan struct{}), nil
	}
	w.deadline = deadline
	d := time.Until(deadline)
	if w.timer == nil {
		w.timer = time.AfterFunc(d, w.expire)
	} else {
		w.timer.Reset(d)
	}
}

// end ends the wait in progress.
func (w *Waiter) end() {
	w.mu.Lock()
	w.deadline = time.Time{}
	w.mu.Unlock()
	// A fire that was already under way finds no deadline, or the next
	// wait's, not yet passed, and does nothing. There is no timer when the
	// parent was done before any wait armed one.
	if w.timer != nil {
		w.timer.Stop()
	}
}

// expire ends the wait in progress if its deadline has passed.
func (w *Waiter) expire() { w.close(context.DeadlineExceeded, time.Now()) }

// close closes done with err; with now set, only if the wait in progress
// has passed its deadline.
func (w *Waiter) close(err error, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return
	}
	if !now.IsZero() && (w.deadline.IsZero() || now.Before(w.deadline)) {
		return
	}
	w.err = err
	close(w.done)
}
