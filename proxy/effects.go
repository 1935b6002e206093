package proxy

import (
	"bytes"
	"strings"

	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// Session state in transaction mode.
//
// Pins are taken when a statement that may create unreplayable state is
// sent (pessimistically: a failed LISTEN still pins until the client
// disconnects or clears it), and keep the server attached. Everything else
// — SET tracking, unpinning, DISCARD and DEALLOCATE bookkeeping — applies
// when the statement has succeeded, and inside a transaction block only
// when the block commits, as PostgreSQL reverts session settings on
// rollback. Savepoint rollbacks inside a committed block are not tracked.

// unknownState marks a server whose session settings are not known, so the
// next client to attach resets and replays everything.
const unknownState = "\x00unknown"

func (s *session) pinLocked(p router.Pin) {
	if p == 0 {
		return
	}
	before := s.pins
	s.pins |= p
	if before == 0 {
		s.srv.pinned.Add(1)
	}
}

func (s *session) unpinLocked(p router.Pin) {
	before := s.pins
	s.pins &^= p
	if before != 0 && s.pins == 0 {
		s.srv.pinned.Add(-1)
	}
}

// noteCommit notes a tag that ends a transaction block: COMMIT and
// PREPARE TRANSACTION keep what the block did to session state (as
// PostgreSQL keeps its settings), ROLLBACK does not. Other tags leave it.
// The session's effects and the transaction statistics both read it.
func (s *session) noteCommit(tag []byte) {
	if len(tag) == 0 {
		return
	}
	switch tag[0] {
	case 'C':
		if bytes.HasPrefix(tag, []byte("COMMIT")) {
			s.resp.txCommit = true
		}
	case 'P':
		if bytes.HasPrefix(tag, []byte("PREPARE TRANSACTION")) {
			s.resp.txCommit = true
		}
	case 'R':
		if bytes.HasPrefix(tag, []byte("ROLLBACK")) {
			s.resp.txCommit = false
		}
	}
}

// succeeded records a statement that completed, for its effects. In
// session mode they only matter for the statements the proxy tracks
// (DISCARD ALL, DEALLOCATE ALL); the server keeps the rest itself.
func (s *session) succeeded(cl *router.Class) {
	if cl != nil && len(cl.Effects) > 0 {
		s.resp.done = append(s.resp.done, cl)
	}
}

// settleLocked applies or drops recorded effects at ReadyForQuery.
func (s *session) settleLocked(status byte, srv *poolmgr.Conn) {
	switch status {
	case 'I':
		if len(s.resp.inTx) > 0 && s.resp.txCommit {
			s.applyLocked(s.resp.inTx, srv)
		}
		s.applyLocked(s.resp.done, srv)
		s.resp.inTx, s.resp.done, s.resp.txCommit = s.resp.inTx[:0], s.resp.done[:0], false
	case 'T':
		s.resp.inTx = append(s.resp.inTx, s.resp.done...)
		s.resp.done = s.resp.done[:0]
	default: // 'E': what ran in the failed block is rolled back
		s.resp.done = s.resp.done[:0]
	}
}

func (s *session) applyLocked(classes []*router.Class, srv *poolmgr.Conn) {
	if len(classes) == 0 {
		return
	}
	settingsChanged, reset := false, false
	for _, cl := range classes {
		for _, e := range cl.Effects {
			switch e.Kind {
			case router.EffectSet:
				s.setTrackedLocked(e.Name, e.SQL)
				settingsChanged = true
			case router.EffectReset:
				s.dropTrackedLocked(e.Name)
				settingsChanged, reset = true, true
			case router.EffectResetAll:
				s.tracked = s.tracked[:0]
				settingsChanged, reset = true, true
			case router.EffectUnpin:
				s.unpinLocked(e.Unpin)
			case router.EffectDiscardAll:
				s.unpinLocked(e.Unpin)
				s.tracked = s.tracked[:0]
				s.stmts = nil
				settingsChanged, reset = true, true
				if srv != nil {
					forgetServerStatements(srv)
				}
			case router.EffectDeallocateAll:
				s.unpinLocked(e.Unpin)
				s.stmts = nil
				if srv != nil {
					forgetServerStatements(srv)
				}
			}
		}
	}
	if !settingsChanged {
		return
	}
	var b strings.Builder
	b.WriteString(s.startupSQL)
	for _, t := range s.tracked {
		b.WriteString(t.sql)
		b.WriteString(";")
	}
	s.settingsSQL = b.String()
	s.settingsKey = s.settingsSQL
	if srv != nil {
		if reset {
			// The server's values now come from its own defaults, not
			// the client's startup settings: replay all next time.
			srv.State = unknownState
		} else if srv.State != unknownState {
			srv.State = s.settingsKey
		}
	}
}

func (s *session) setTrackedLocked(name, sql string) {
	for i := range s.tracked {
		if s.tracked[i].name == name {
			s.tracked[i].sql = sql
			return
		}
	}
	s.tracked = append(s.tracked, trackedSet{name: name, sql: sql})
}

func (s *session) dropTrackedLocked(name string) {
	for i := range s.tracked {
		if s.tracked[i].name == name {
			s.tracked = append(s.tracked[:i], s.tracked[i+1:]...)
			return
		}
	}
}

// PinnedCount returns the number of clients pinned to their server by
// session state.
func (s *Server) PinnedCount() int { return int(s.pinned.Load()) }
