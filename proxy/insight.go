package proxy

import (
	"bytes"
	"slices"
	"sync/atomic"
	"time"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/metrics"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// Per-statement statistics.
//
// A Query, Execute or FunctionCall records when it was sent (expected.sent)
// and is timed when its answer completes: a Query at its ReadyForQuery, an
// Execute at its CommandComplete or ErrorResponse. In a pipeline a
// statement waits for the one before it, so its time starts at the later
// of its send and the previous completion. Transactions are timed from the
// first statement of their first batch to the ReadyForQuery that reports
// them ended; an autocommit batch (statements and Sync, or a Query, outside
// a block) counts as one transaction, rolled back if anything in it failed.
//
// Nothing a statement or transaction writes is shared with other clients:
// the counters of SHOW STATS and SHOW CLIENTS and the series of the
// Prometheus histograms and counters are per session and summed when read
// (ended sessions fold into totals), and the per-fingerprint statistics
// and pool-wait sketches are striped, each session writing its own stripe.
// Nothing here allocates per statement.

// sessionStats are one client's counters, written by its goroutines and
// read by the admin console.
type sessionStats struct {
	queries, transactions, commits, rollbacks, errors counter
	bytesIn, bytesOut                                 counter
	queryNanos, txNanos                               counter
}

// counter is a session counter with one writer at a time: the client
// goroutine (bytesIn), whoever runs the pump (queries, errors, bytesOut),
// or the holder of the session lock (transactions). Adding is a plain load
// and store, not a locked instruction; readers load atomically.
type counter struct{ atomic.Int64 }

func (c *counter) add(n int64) { c.Store(c.Load() + n) }

// Traffic is the totals of a pool (service, database) since start, for
// SHOW STATS.
type Traffic struct {
	Service, Database                         string
	Queries, Transactions, Commits, Rollbacks int64
	Errors, BytesIn, BytesOut                 int64
	QueryTime, TransactionTime                time.Duration
}

func (t *Traffic) add(st *sessionStats) {
	t.Queries += st.queries.Load()
	t.Transactions += st.transactions.Load()
	t.Commits += st.commits.Load()
	t.Rollbacks += st.rollbacks.Load()
	t.Errors += st.errors.Load()
	t.BytesIn += st.bytesIn.Load()
	t.BytesOut += st.bytesOut.Load()
	t.QueryTime += time.Duration(st.queryNanos.Load())
	t.TransactionTime += time.Duration(st.txNanos.Load())
}

// instruments are a session's metric series (kept per session and summed
// at scrape, see metrics.Histograms). The first group is set at login; the
// rest belongs to whoever runs the pump (query durations) or the client
// goroutine (pool waits), and follows the attached backend.
type instruments struct {
	txDur            *metrics.Histogram
	commit, rollback *metrics.Counter
	slow             *metrics.Counter
	wait             *metrics.Histogram

	qd          []backendSeries // query durations, by backend
	handles     metrics.Handles // the statements the pump recorded last
	waitBackend string
	waitSketch  *metrics.Latency
}

type backendSeries struct {
	backend string
	h       *metrics.Histogram
}

// newInstruments returns the series of a session of (service, database),
// or nil without metrics.
func (s *Server) newInstruments(service, database string) *instruments {
	m := s.metrics
	if m == nil {
		return nil
	}
	return &instruments{
		txDur:    m.TxDuration.Local(service, database),
		commit:   m.Transactions.Local(service, database, "commit"),
		rollback: m.Transactions.Local(service, database, "rollback"),
		slow:     m.SlowQueries.Local(service, database),
		wait:     m.PoolWait.Local(service, database),
	}
}

// releaseInstruments folds a session's series into the totals; the
// session records nothing more.
func (s *Server) releaseInstruments(in *instruments) {
	if in == nil {
		return
	}
	m := s.metrics
	m.TxDuration.Release(in.txDur)
	m.Transactions.Release(in.commit)
	m.Transactions.Release(in.rollback)
	m.SlowQueries.Release(in.slow)
	m.PoolWait.Release(in.wait)
	for _, q := range in.qd {
		m.QueryDuration.Release(q.h)
	}
}

// queryDuration returns the session's query-duration series of backend
// (pump side).
func (s *session) queryDuration(backend string) *metrics.Histogram {
	in := s.ins
	for _, q := range in.qd {
		if q.backend == backend {
			return q.h
		}
	}
	h := s.srv.metrics.QueryDuration.Local(s.service, s.database, backend)
	in.qd = append(in.qd, backendSeries{backend, h})
	return h
}

// rec returns the session's series while statistics are on (nil while
// disable_stats is set). A statement sent while they were off is not
// timed when they come on before it ends.
func (s *session) rec() *instruments {
	if s.ins == nil || s.srv.statsOff.Load() {
		return nil
	}
	return s.ins
}

// waitLatency returns the pool-wait sketch of a pool, creating it.
func (s *Server) waitLatency(k poolmgr.Key) *metrics.Latency {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.waits[k]
	if !ok {
		l = metrics.NewLatency()
		s.waits[k] = l
	}
	return l
}

// WaitQuantiles returns the pool wait percentiles of a pool.
func (s *Server) WaitQuantiles(k poolmgr.Key) (p50, p95, p99 time.Duration) {
	s.mu.Lock()
	l := s.waits[k]
	s.mu.Unlock()
	if l == nil {
		return 0, 0, 0
	}
	return l.Quantiles()
}

// QueryStats returns the per-fingerprint statistics (never nil; while
// disable_stats is set they do not change).
func (s *Server) QueryStats() *metrics.QueryStats { return s.queryStats }

// waited records how long the client waited for a server of backend.
func (s *session) waited(d time.Duration, backend string) {
	in := s.ins
	in.wait.Observe(d)
	if in.waitBackend != backend {
		in.waitBackend = backend
		in.waitSketch = s.srv.waitLatency(poolmgr.Key{Service: s.service, Database: s.database, Backend: backend})
	}
	in.waitSketch.Add(in.handles.Stripe, d)
}

// tagged reads the row count of a CommandComplete tag (reader side).
func (s *session) tagged(tag []byte) {
	n, ok := wire.TagRows(tag)
	if !ok {
		return
	}
	s.resp.stmtRows += n
	switch tag[0] {
	case 'I', 'U', 'D', 'M', 'C': // INSERT, UPDATE, DELETE, MERGE, COPY
		if bytes.HasPrefix(tag, []byte("INSERT")) || bytes.HasPrefix(tag, []byte("UPDATE")) ||
			bytes.HasPrefix(tag, []byte("DELETE")) || bytes.HasPrefix(tag, []byte("MERGE")) ||
			bytes.HasPrefix(tag, []byte("COPY")) {
			s.resp.batchWriteRows += n
		}
	}
}

// finishedStmt is a statement timed but not yet recorded.
type finishedStmt struct {
	class   *router.Class
	backend string
	code    string
	d       time.Duration
	rows    int64
	at      time.Time
}

// maxFinished bounds the statements kept for recording: a long pipeline
// without Sync records as it goes.
const maxFinished = 64

// stmtDone times a finished statement (pump side). code is its SQLSTATE
// when it failed. It is recorded by recordFinished, after the client has
// been sent its answer, so that the client does not wait for it.
func (s *session) stmtDone(cl *router.Class, sent time.Time, srv *poolmgr.Conn, code string) {
	if sent.IsZero() {
		s.resp.stmtRows = 0 // sent while statistics were off: not timed, and its rows are not the next one's
		return
	}
	now := time.Now()
	start := sent
	if s.resp.lastDone.After(start) {
		start = s.resp.lastDone
	}
	s.resp.lastDone = now
	if cl != nil {
		s.resp.batchClasses = append(s.resp.batchClasses, cl)
	}
	s.resp.finished = append(s.resp.finished, finishedStmt{class: cl, backend: srv.Backend(), code: code, d: now.Sub(start), rows: s.resp.stmtRows, at: now})
	s.resp.stmtRows = 0
	if len(s.resp.finished) >= maxFinished {
		s.recordFinished()
	}
}

// recordFinished records the statements stmtDone timed (pump side).
func (s *session) recordFinished() {
	if len(s.resp.finished) == 0 {
		return
	}
	in := s.ins
	qs := s.srv.queryStats
	for i := range s.resp.finished {
		f := &s.resp.finished[i]
		s.stats.queries.add(1)
		s.stats.queryNanos.add(int64(f.d))
		s.queryDuration(f.backend).Observe(f.d)
		var slow bool
		if cl := f.class; cl != nil && cl.Fingerprint != "" {
			slow = qs.ObserveWith(&in.handles, metrics.Observation{Fingerprint: cl.Fingerprint, Query: cl.Normalized, Duration: f.d, Rows: f.rows,
				ErrorCode: f.code, Service: s.service, Database: s.database, Backend: f.backend, At: f.at})
		} else {
			th := qs.Threshold()
			slow = th > 0 && f.d >= th
		}
		if slow {
			in.slow.Inc()
		}
	}
	clear(s.resp.finished)
	s.resp.finished = s.resp.finished[:0]
}

// queryDone times the Query at the head of the queue, answered by the
// ReadyForQuery being handled (pump side).
func (s *session) queryDone(srv *poolmgr.Conn) {
	s.mu.Lock()
	h := s.queue.peek()
	if h == nil || h.typ != 'Q' {
		s.mu.Unlock()
		return
	}
	cl, sent, failed := h.class, h.sent, s.resp.entryErr
	s.mu.Unlock()
	code := ""
	if failed {
		code = s.resp.queryErr
	}
	s.stmtDone(cl, sent, srv, code)
}

// txBoundaryLocked does the transaction bookkeeping of a ReadyForQuery
// reporting status, before s.txStatus is updated. s.mu must be held.
func (s *session) txBoundaryLocked(status byte) {
	prev := s.txStatus
	in := s.rec()
	var now time.Time
	switch {
	case in != nil && !s.batchStart.IsZero() && !s.resp.lastDone.Before(s.batchStart):
		// The batch's last statement has just been timed: that clock
		// read serves here too.
		now = s.resp.lastDone
	case in != nil || status != 'I':
		now = time.Now()
	}
	if status == 'I' {
		if in != nil && (prev != 'I' || !s.batchStart.IsZero()) {
			start, commit := s.txSince, s.resp.txCommit
			if prev == 'I' {
				start, commit = s.batchStart, !s.resp.batchErr
			}
			if start.IsZero() {
				start = now
			}
			s.txEndedLocked(now.Sub(start), commit)
		}
		s.txSince = time.Time{}
		s.txStatements, s.txRows, s.txIsolation, s.txExpired = 0, 0, "", false
		s.txTables = s.txTables[:0]
	} else {
		if s.txSince.IsZero() {
			s.txSince = now
			if !s.batchStart.IsZero() {
				s.txSince = s.batchStart
			}
		}
		s.lastReady = now
		s.txStatements += len(s.resp.batchClasses)
		s.txRows += s.resp.batchWriteRows
		for _, cl := range s.resp.batchClasses {
			for _, t := range cl.Writes {
				if !slices.Contains(s.txTables, t) {
					s.txTables = append(s.txTables, t)
				}
			}
			if cl.Isolation != "" {
				s.txIsolation = cl.Isolation
			}
		}
	}
	s.batchStart = time.Time{}
	s.resp.batchErr = false
	s.resp.batchWriteRows = 0
	clear(s.resp.batchClasses)
	s.resp.batchClasses = s.resp.batchClasses[:0]
}

func (s *session) txEndedLocked(d time.Duration, commit bool) {
	s.stats.transactions.add(1)
	s.stats.txNanos.add(int64(d))
	s.ins.txDur.Observe(d)
	if commit {
		s.stats.commits.add(1)
		s.ins.commit.Inc()
	} else {
		s.stats.rollbacks.add(1)
		s.ins.rollback.Inc()
	}
}
