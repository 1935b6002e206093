package poolmgr

import (
	"context"
	"errors"
	"testing"
	"time"
)

// One Waiter serves wait after wait: a wait that times out does not leave
// the next one done, a satisfied wait leaves it open for the next, and the
// parent's end ends the waits for good.
func TestWaiterReusedAcrossWaits(t *testing.T) {
	m := newManager(t, testConfig(1, 0, Settings{WaitTimeout: 200 * time.Millisecond}))
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := NewWaiter(parent)

	held, err := m.Acquire(w, "svc", "db", "")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // twice: the second wait has a fresh channel
		if _, err := m.Acquire(w, "svc", "db", ""); !errors.Is(err, ErrWaitTimeout) {
			t.Fatalf("wait %d: want ErrWaitTimeout, got %v", i, err)
		}
	}
	if st := stat(m, "svc"); st.WaitTimeout != 2 {
		t.Fatalf("wait timeouts counted: %+v", st)
	}

	// A wait satisfied before its deadline, then another with the same
	// waiter.
	c := acquireReleased(t, m, w, held)
	select {
	case <-w.Done():
		t.Fatal("a satisfied wait left the waiter done")
	default:
	}
	c2 := acquireReleased(t, m, w, c)

	// The parent's end: waits end at once with its error, and stay ended.
	cancel()
	for i := 0; i < 2; i++ {
		if _, err := m.Acquire(w, "svc", "db", ""); !errors.Is(err, context.Canceled) {
			t.Fatalf("after the parent's end, wait %d: want context.Canceled, got %v", i, err)
		}
	}
	c2.Release()
}

// A Waiter whose parent ended before it ever waited (a client killed as
// its first wait begins) ends that wait with the parent's error.
func TestWaiterOfEndedParent(t *testing.T) {
	m := newManager(t, testConfig(1, 0, Settings{WaitTimeout: time.Minute}))
	held, err := m.Acquire(context.Background(), "svc", "db", "")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	parent, cancel := context.WithCancel(context.Background())
	w := NewWaiter(parent)
	cancel()
	if _, err := m.Acquire(w, "svc", "db", ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}

// acquireReleased waits with w for the pool's one server, which held is,
// released from another goroutine once w queues.
func acquireReleased(t *testing.T, m *Manager, w *Waiter, held *Conn) *Conn {
	t.Helper()
	go func() {
		eventually(t, "the waiter to queue", func() bool { return stat(m, "svc").Waiting == 1 })
		held.Release()
	}()
	c, err := m.Acquire(w, "svc", "db", "")
	if err != nil {
		t.Fatalf("a satisfied wait: %v", err)
	}
	return c
}
