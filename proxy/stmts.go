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
}

// addStmtLocked records a client's named statement.
func (s *session) addStmtLocked(name string, query, types []byte, class *router.Class) *clientStmt {
	if s.stmts == nil {
		s.stmts = make(map[string]*clientStmt)
	}
	st := &clientStmt{query: append([]byte(nil), query...), types: append([]byte(nil), types...), class: class}
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
// matching entries. raw reports that the client's message goes as is.
func (s *session) planStatementLocked(typ byte, body []byte, srv *poolmgr.Conn, class *router.Class) (raw bool, err error) {
	switch typ {
	case 'P':
		name, query, types, ok := wire.ParseFields(body)
		if !ok {
			return false, fatalf(codeProtocolViolation, "invalid Parse message")
		}
		if len(name) == 0 {
			s.pushLocked(expected{typ: 'P'})
			return true, nil
		}
		cname := string(name)
		if _, exists := s.stmts[cname]; exists {
			s.refuseLocked(errorf("42P05", "prepared statement %q already exists", cname))
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
			s.boundClass = s.unnamedClass
			s.pushLocked(expected{typ: 'B'})
			return true, nil
		}
		st, ok := s.stmts[string(stmt)]
		if !ok {
			s.refuseLocked(errorf(codeInvalidSQLStatementName, "prepared statement %q does not exist", stmt))
			return false, nil
		}
		s.boundClass = st.class
		name, prepared := s.ensurePreparedLocked(srv, st)
		if !prepared {
			s.pushLocked(s.lazyParseEntry(stmt, st))
		}
		s.wbuf = wire.AppendFrame(s.wbuf, 'B', portal, nul, []byte(name), nul, rest)
		s.pushLocked(expected{typ: 'B'})
		return false, nil
	case 'D', 'C':
		if len(body) < 2 || body[len(body)-1] != 0 {
			return false, fatalf(codeProtocolViolation, "invalid Describe or Close message")
		}
		if body[0] != 'S' || len(body) == 2 {
			s.pushLocked(expected{typ: typ})
			return true, nil
		}
		cname := body[1 : len(body)-1]
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
			s.refuseLocked(errorf(codeInvalidSQLStatementName, "prepared statement %q does not exist", cname))
			return false, nil
		}
		name, prepared := s.ensurePreparedLocked(srv, st)
		if !prepared {
			s.pushLocked(s.lazyParseEntry(cname, st))
		}
		s.wbuf = wire.AppendFrame(s.wbuf, 'D', []byte{'S'}, []byte(name), nul)
		s.pushLocked(expected{typ: 'D'})
		return false, nil
	}
	return true, nil
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

// refuseLocked answers the current message with err, in its place in the
// stream: the server is sent a Parse that fails, so it also skips to Sync
// and its transaction fails as PostgreSQL's would.
func (s *session) refuseLocked(err *pgError) {
	s.wbuf = wire.AppendFrame(s.wbuf, 'P', nul, []byte(rejectedSQL), nul, []byte{0, 0})
	s.pushLocked(expected{typ: 'P', replaceErr: err})
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
