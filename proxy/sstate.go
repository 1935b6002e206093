package proxy

import "fmt"

// lifecycle is where a session is between login and close. It only moves
// forward, along the transitions of lifecycleMoves; setLifeLocked is the
// one place it changes.
type lifecycle uint8

const (
	// lifeOpen: serving the client.
	lifeOpen lifecycle = iota
	// lifeDraining: pgshield is shutting down; the session ends at its next
	// safe point (between transactions).
	lifeDraining
	// lifeEnding: KILL cancelled the statement the client had running; the
	// answer to it ends the session instead of a ReadyForQuery (endAtReady).
	lifeEnding
	// lifeClosing: the session is being torn down. Nothing may give its
	// server back to a pool but close(), which decides how.
	lifeClosing
	// lifeClosed: close() has finished; the server is back or destroyed.
	lifeClosed
)

var lifecycleNames = [...]string{"open", "draining", "ending", "closing", "closed"}

func (l lifecycle) String() string {
	if int(l) < len(lifecycleNames) {
		return lifecycleNames[l]
	}
	return fmt.Sprintf("lifecycle(%d)", uint8(l))
}

// lifecycleMoves lists, for each state, the states it may move to.
var lifecycleMoves = [...][]lifecycle{
	lifeOpen:     {lifeDraining, lifeEnding, lifeClosing},
	lifeDraining: {lifeEnding, lifeClosing},
	lifeEnding:   {lifeClosing},
	lifeClosing:  {lifeClosed},
	lifeClosed:   nil,
}

// setLifeLocked moves the session to next, if that is a move forward;
// asking for the state it is in, or for one it has passed, changes
// nothing (KILL, shutdown and a failing server may race to end a session).
// It reports whether the state changed. s.mu must be held.
func (s *session) setLifeLocked(next lifecycle) bool {
	for _, to := range lifecycleMoves[s.life] {
		if to == next {
			s.life = next
			s.lifeSeen.Store(uint32(next))
			return true
		}
	}
	return false
}

// lifeNow is s.life read without the lock, for the reader's check at
// every ReadyForQuery (a lock there would cost every transaction).
func (s *session) lifeNow() lifecycle { return lifecycle(s.lifeSeen.Load()) }

// reader says who reads the attached server's answers and forwards them
// to the client; only that goroutine may write to the client meanwhile.
type reader uint8

const (
	// readerNone: nobody; the client goroutine may write to the client
	// (writeDirect).
	readerNone reader = iota
	// readerInline: the client goroutine itself, up to a ReadyForQuery,
	// while the client waits for it (see afterWrite).
	readerInline
	// readerPump: a goroutine of its own (session.pump), for pipelines,
	// Flush-driven exchanges, COPY IN, session mode and pinned sessions.
	readerPump
)

var readerNames = [...]string{"none", "inline", "pump"}

func (r reader) String() string {
	if int(r) < len(readerNames) {
		return readerNames[r]
	}
	return fmt.Sprintf("reader(%d)", uint8(r))
}
