package proxy

import (
	"slices"
	"sort"
	"time"

	"github.com/pgshield/pgshield/poolmgr"
)

// What the admin console reads of the proxy: snapshots taken under each
// session's lock, one session at a time.

// ClientInfo is one connected client.
type ClientInfo struct {
	ID                            uint32
	User, Database, Service, Mode string
	Remote, ApplicationName       string
	TLS                           bool
	State                         string // idle, active, idle in transaction, idle in transaction (aborted)
	Backend                       string // "" without a server
	ServerPID                     uint32
	ConnectedAt, TxStart          time.Time
	Queries, Transactions         int64
	BytesIn, BytesOut             int64
	Pins                          string // why the client is pinned; "" if not
}

// TxInfo is one open transaction (a block, or a batch still running).
type TxInfo struct {
	ClientID                         uint32
	User, Service, Database, Backend string
	Started                          time.Time
	State                            string
	Isolation                        string
	Statements                       int
	Tables                           []string
	Rows                             int64
	Long                             bool
}

// Clients returns every logged-in client, by id.
func (s *Server) Clients() []ClientInfo {
	sessions := s.sessionList()
	out := make([]ClientInfo, 0, len(sessions))
	for _, sess := range sessions {
		out = append(out, sess.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *session) info() ClientInfo {
	ci := ClientInfo{ID: s.id, User: s.user, Database: s.database, Service: s.service, Mode: string(s.mode),
		Remote: s.remote, ApplicationName: s.settings["application_name"], TLS: s.tls, ConnectedAt: s.connectedAt,
		Queries: s.stats.queries.Load(), Transactions: s.stats.transactions.Load(),
		BytesIn: s.stats.bytesIn.Load(), BytesOut: s.stats.bytesOut.Load()}
	s.mu.Lock()
	defer s.mu.Unlock()
	ci.State = s.stateLocked()
	if s.server != nil {
		ci.Backend, ci.ServerPID = s.server.Backend(), s.server.PID()
	}
	ci.TxStart = s.txSince
	if s.pins != 0 {
		ci.Pins = s.pins.String()
	}
	return ci
}

// stateLocked names what the client is doing, as pg_stat_activity would.
func (s *session) stateLocked() string {
	switch {
	case s.server != nil && (!s.queue.empty() || s.writing):
		return "active"
	case s.txStatus == 'T':
		return "idle in transaction"
	case s.txStatus == 'E':
		return "idle in transaction (aborted)"
	}
	return "idle"
}

// Transactions returns the open transactions, oldest first: blocks
// (BEGIN … COMMIT) and statements still running outside one.
func (s *Server) Transactions() []TxInfo {
	threshold := s.rt.Load().cfg.LongTransactionThreshold
	now := time.Now()
	var out []TxInfo
	for _, sess := range s.sessionList() {
		sess.mu.Lock()
		start := sess.txSince
		if start.IsZero() && sess.server != nil && !sess.queue.empty() {
			start = sess.batchStart
		}
		if start.IsZero() {
			sess.mu.Unlock()
			continue
		}
		ti := TxInfo{ClientID: sess.id, User: sess.user, Service: sess.service, Database: sess.database,
			Started: start, State: sess.stateLocked(), Isolation: sess.txIsolation, Statements: sess.txStatements,
			Tables: slices.Clone(sess.txTables), Rows: sess.txRows, Long: now.Sub(start) > threshold}
		if sess.server != nil {
			ti.Backend = sess.server.Backend()
		}
		if sess.txExpired {
			ti.State += " (past transaction_timeout)"
		}
		sess.mu.Unlock()
		out = append(out, ti)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

// Traffic returns the totals of every pool (service, database) that has
// had clients, ended sessions included.
func (s *Server) Traffic() []Traffic {
	s.mu.Lock()
	totals := make(map[[2]string]*Traffic, len(s.ended))
	for k, t := range s.ended {
		c := *t
		totals[k] = &c
	}
	for _, sess := range s.sessions {
		k := [2]string{sess.service, sess.database}
		t := totals[k]
		if t == nil {
			t = &Traffic{Service: sess.service, Database: sess.database}
			totals[k] = t
		}
		t.add(&sess.stats)
	}
	s.mu.Unlock()
	out := make([]Traffic, 0, len(totals))
	for _, t := range totals {
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Database < out[j].Database
	})
	return out
}

// ClientsByPool counts the clients of each pool attached to a server
// (active) and, for the primary pool of their (service, database), those
// without one (idle).
func (s *Server) ClientsByPool() (active, idle map[poolmgr.Key]int) {
	active, idle = map[poolmgr.Key]int{}, map[poolmgr.Key]int{}
	for _, sess := range s.sessionList() {
		sess.mu.Lock()
		if sess.server != nil {
			active[sess.server.Key()]++
		} else {
			idle[poolmgr.Key{Service: sess.service, Database: sess.database}]++
		}
		sess.mu.Unlock()
	}
	return active, idle
}

// Settings returns the proxy's configuration in force, for SHOW CONFIG
// and SET (passwords are not part of what SHOW CONFIG prints).
func (s *Server) Settings() Config { return s.rt.Load().cfg }
