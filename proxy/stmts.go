package proxy

import (
	"strconv"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// Named prepared statements in transaction mode.
//
// A client's statements live in session.stmts (client name → query and
// parameter types). Each server connection keeps, in serverStmts, the
// statements prepared on it, keyed by query and types, under names of the
// proxy's own; clients with the same text share one server statement. A
// statement is prepared lazily on the server a client is about to use, and
// closed there when the server's LRU evicts it.
//
// Responses the client is owed but the server would not send (ParseComplete
// for a statement already prepared, CloseComplete for a client's Close) are
// carried by a Close of a name nothing uses, whose CloseComplete the pump
// replaces. Every client message thus still gets exactly one answer from the
// server, in order, and a message the server skips after an error is
// skipped for the client too.

// noopStatement is never prepared; closing it only yields CloseComplete.
const noopStatement = "pgshield.noop"

var (
	msgParseComplete = []byte{'1', 0, 0, 0, 4}
	nul              = []byte{0}
	noopClose        = wire.AppendFrame(nil, 'C', []byte{'S'}, []byte(noopStatement), nul)
)

// clientStmt is a statement a client prepared.
type clientStmt struct {
	key   string // query + NUL + parameter type bytes: the identity shared across clients
	query []byte
	types []byte // parameter type count and OIDs, as in Parse
	class *router.Class
	// verified: some server has parsed it. A statement answered without a
	// server is forgotten if its first real Parse fails, as the client's
	// Parse would have failed on PostgreSQL.
	verified bool
	// rows: whether the Row hook wants its result rows, once a
	// RowDescription of it has been seen (guarded by s.mu).
	rows rowsHook
	// kept is the Statement hook's Verdict.Keep for it (client
	// goroutine).
	kept any
}

// rowsHook says whether the rows of a statement go to the Row hook.
type rowsHook uint8

const (
	rowsUnknown rowsHook = iota // not described yet
	rowsPlain                   // forwarded as they are
	rowsHooked                  // each DataRow goes to the Row hook
)

// addStmtLocked records a client's named statement.
func (s *session) addStmtLocked(name string, query, types []byte, class *router.Class) *clientStmt {
	if s.stmts == nil {
		s.stmts = make(map[string]*clientStmt)
	}
	st := &clientStmt{query: append([]byte(nil), query...), types: append([]byte(nil), types...), class: class, kept: s.keep}
	st.key = string(st.query) + "\x00" + string(st.types)
	s.stmts[name] = st
	return st
}

// serverStmts tracks the statements prepared on one server connection.
type serverStmts struct {
	lru     *simplelru.LRU[string, string] // key → server statement name
	next    uint64
	evicted []string // names to close on the server, filled by the LRU callback
}

func newServerStmts(size int) *serverStmts {
	ss := &serverStmts{}
	ss.lru, _ = simplelru.NewLRU[string, string](size, func(_ string, name string) {
		ss.evicted = append(ss.evicted, name)
	})
	return ss
}

// stmtsOf returns the prepared-statement state of srv.
func (s *session) stmtsOf(srv *poolmgr.Conn) *serverStmts {
	if ss, ok := srv.Ext.(*serverStmts); ok {
		return ss
	}
	ss := newServerStmts(s.srv.rt.Load().cfg.MaxPreparedStatements)
	srv.Ext = ss
	return ss
}

// ensurePreparedLocked makes sure st is prepared on srv, appending the
// Close of evicted statements and the Parse to s.wbuf and their entries to
// the queue. It returns the server-side name.
func (s *session) ensurePreparedLocked(srv *poolmgr.Conn, st *clientStmt) (name string, prepared bool) {
	ss := s.stmtsOf(srv)
	if name, ok := ss.lru.Get(st.key); ok {
		return name, true
	}
	ss.next++
	name = "pgshield_" + strconv.FormatUint(ss.next, 10)
	ss.lru.Add(st.key, name)
	for _, old := range ss.evicted {
		s.wbuf = wire.AppendFrame(s.wbuf, 'C', []byte{'S'}, []byte(old), nul)
		s.pushLocked(expected{typ: 'C', swallow: true})
	}
	ss.evicted = ss.evicted[:0]
	s.wbuf = wire.AppendFrame(s.wbuf, 'P', []byte(name), nul, st.query, nul, st.types)
	return name, false
}

// planStatementLocked handles Parse, Bind, Describe and Close in
// transaction mode. It appends what to send to s.wbuf and pushes the
// matching entries. raw reports that the client's message goes as is;
// rewritten, that body is a hook's rewrite of it.
func (s *session) planStatementLocked(typ byte, body []byte, srv *poolmgr.Conn, class *router.Class, rewritten bool) (raw bool, err error) {
	switch typ {
	case 'P':
		name, query, types, ok := wire.ParseFields(body)
		if !ok {
			return false, fatalf(codeProtocolViolation, "invalid Parse message")
		}
		if len(name) == 0 {
			s.unnamed.rows = rowsUnknown
			s.pushLocked(expected{typ: 'P'})
			return s.asIs(typ, body, rewritten), nil
		}
		cname := string(name)
		if _, exists := s.stmts[cname]; exists {
			s.refuseLocked(typ, errorf("42P05", "prepared statement %q already exists", cname))
			return false, nil
		}
		st := s.addStmtLocked(cname, query, types, class)
		_, prepared := s.ensurePreparedLocked(srv, st)
		if prepared {
			s.wbuf = append(s.wbuf, noopClose...)
			s.pushLocked(expected{typ: 'C', replaceWith: msgParseComplete, forgetClient: cname, forgetStmt: st})
		} else {
			s.pushLocked(expected{typ: 'P', forgetClient: cname, forgetStmt: st, forgetKey: st.key, verify: st})
		}
		return false, nil
	case 'B':
		portal, stmt, rest, ok := wire.BindStatement(body)
		if !ok {
			return false, fatalf(codeProtocolViolation, "invalid Bind message")
		}
		if len(stmt) == 0 {
			s.bindPortal(portal, &s.unnamed)
			s.pushLocked(expected{typ: 'B'})
			return s.asIs(typ, body, rewritten), nil
		}
		st, ok := s.stmts[string(stmt)]
		if !ok {
			s.refuseLocked(typ, errorf(codeInvalidSQLStatementName, "prepared statement %q does not exist", stmt))
			return false, nil
		}
		s.bindPortal(portal, st)
		name, prepared := s.ensurePreparedLocked(srv, st)
		if !prepared {
			s.pushLocked(s.lazyParseEntry(stmt, st))
		}
		s.wbuf = wire.AppendFrame(s.wbuf, 'B', portal, nul, []byte(name), nul, rest)
		s.pushLocked(expected{typ: 'B'})
		return false, nil
	case 'D', 'C':
		kind, cname, ok := wire.Target(body)
		if !ok {
			return false, fatalf(codeProtocolViolation, "invalid Describe or Close message")
		}
		if kind != 'S' || len(cname) == 0 {
			e := expected{typ: typ}
			if typ == 'D' && kind == 'S' {
				e.describes = &s.unnamed
			}
			if typ == 'D' && kind == 'P' {
				e.describes, e.portal = s.portalOf(cname).st, true
			}
			s.pushLocked(e)
			return s.asIs(typ, body, rewritten), nil
		}
		st, ok := s.stmts[string(cname)]
		if typ == 'C' {
			// Closing is the client's business only: the server statement
			// may serve others. Closing a missing statement is no error.
			if ok {
				delete(s.stmts, string(cname))
			}
			s.wbuf = append(s.wbuf, noopClose...)
			s.pushLocked(expected{typ: 'C'})
			return false, nil
		}
		if !ok {
			s.refuseLocked(typ, errorf(codeInvalidSQLStatementName, "prepared statement %q does not exist", cname))
			return false, nil
		}
		name, prepared := s.ensurePreparedLocked(srv, st)
		if !prepared {
			s.pushLocked(s.lazyParseEntry(cname, st))
		}
		s.wbuf = wire.AppendFrame(s.wbuf, 'D', []byte{'S'}, []byte(name), nul)
		s.pushLocked(expected{typ: 'D', describes: st})
		return false, nil
	}
	return s.asIs(typ, body, rewritten), nil
}

// trackStatementLocked handles Parse, Bind, Describe and Close in session
// mode: the server keeps the client's own names, so the messages go as
// they are (or as a hook rewrote them), and the proxy only keeps track of
// the statements and portals, for the hooks and the statistics.
func (s *session) trackStatementLocked(typ byte, body []byte, class *router.Class, rewritten bool) (raw bool) {
	e := expected{typ: typ}
	switch typ {
	case 'P':
		if name, query, types, ok := wire.ParseFields(body); ok && len(name) > 0 {
			cname := string(name)
			st := s.addStmtLocked(cname, query, types, class)
			e.forgetClient, e.forgetStmt = cname, st
		} else if ok {
			s.unnamed.rows = rowsUnknown
		}
	case 'B':
		if portal, stmt, _, ok := wire.BindStatement(body); ok {
			if len(stmt) == 0 {
				s.bindPortal(portal, &s.unnamed)
			} else {
				s.bindPortal(portal, s.stmts[string(stmt)])
			}
		}
	case 'D':
		if kind, name, ok := wire.Target(body); ok && kind == 'S' {
			if len(name) == 0 {
				e.describes = &s.unnamed
			} else {
				e.describes = s.stmts[string(name)]
			}
		} else if ok && kind == 'P' {
			e.describes, e.portal = s.portalOf(name).st, true
		}
	case 'C':
		if kind, name, ok := wire.Target(body); ok && kind == 'S' && len(name) > 0 {
			delete(s.stmts, string(name))
		}
	}
	s.pushLocked(e)
	return s.asIs(typ, body, rewritten)
}

// asIs reports that the client's frame goes to the server unchanged, or,
// when a hook rewrote its body, appends the rewritten frame to s.wbuf.
func (s *session) asIs(typ byte, body []byte, rewritten bool) bool {
	if !rewritten {
		return true
	}
	s.wbuf = wire.AppendFrame(s.wbuf, typ, body)
	return false
}

// lazyParseEntry is the entry of a Parse the proxy sends on its own to
// prepare st on a server before it is bound or described.
func (s *session) lazyParseEntry(clientName []byte, st *clientStmt) expected {
	e := expected{typ: 'P', swallow: true, forgetKey: st.key, verify: st}
	if !st.verified {
		e.forgetClient, e.forgetStmt = string(clientName), st
	}
	return e
}

// forgetLocked undoes the bookkeeping of a message the server did not carry
// out (it failed or was skipped after an error).
func (s *session) forgetLocked(e *expected, srv *poolmgr.Conn) {
	if e.forgetClient != "" && s.stmts[e.forgetClient] == e.forgetStmt {
		delete(s.stmts, e.forgetClient)
	}
	if e.forgetKey != "" && srv != nil {
		if ss, ok := srv.Ext.(*serverStmts); ok {
			ss.lru.Remove(e.forgetKey)
			ss.evicted = ss.evicted[:0]
		}
	}
}

// forgetServerStatements drops what is known of srv's prepared statements,
// after DISCARD ALL or DEALLOCATE ALL ran on it.
func forgetServerStatements(srv *poolmgr.Conn) {
	srv.Ext = nil
}
