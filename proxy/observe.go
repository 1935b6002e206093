package proxy

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/pgshield/pgshield/metrics"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// MetricsSource reports the proxy's, the pools' and the topology's state
// to the metrics collectors at each scrape.
func MetricsSource(srv *Server, pools *poolmgr.Manager, topo *router.Topology) metrics.Source {
	return &source{srv: srv, pools: pools, topo: topo}
}

type source struct {
	srv   *Server
	pools *poolmgr.Manager
	topo  *router.Topology
}

func (s *source) Pools() []metrics.PoolSample {
	stats := s.pools.Stats()
	out := make([]metrics.PoolSample, 0, len(stats))
	for _, st := range stats {
		out = append(out, metrics.PoolSample{Service: st.Service, Database: st.Database, Backend: st.Backend,
			Active: st.Active, Idle: st.Idle, Waiting: st.Waiting, Max: st.Max})
	}
	return out
}

func (s *source) Backends() []metrics.BackendSample {
	var out []metrics.BackendSample
	for _, n := range s.topo.Status() {
		b := metrics.BackendSample{Database: n.Database, Backend: n.Addr, Role: string(n.Role), Up: n.Healthy && !n.Fenced,
			LagBytes: float64(n.LagBytes), LagSeconds: n.ReplayDelay.Seconds()}
		switch s.pools.Breaker(n.Addr) {
		case poolmgr.BreakerHalfOpen:
			b.Breaker = 1
		case poolmgr.BreakerOpen:
			b.Breaker = 2
		}
		out = append(out, b)
	}
	return out
}

func (s *source) PinnedClients() int { return s.srv.PinnedCount() }

func (s *source) ParseCache() (hits, misses uint64) {
	if s.srv.classifier == nil {
		return 0, 0
	}
	s.srv.mu.Lock()
	lookups := s.srv.endedLookups
	for _, sess := range s.srv.sessions {
		lookups += sess.lookups.Load()
	}
	s.srv.mu.Unlock()
	misses = s.srv.classifier.Misses()
	if lookups < misses {
		// A miss is counted before its session's lookup: in flight.
		return 0, misses
	}
	return lookups - misses, misses
}

// classifyText classifies a query text, counting the lookup for the parse
// cache metric on the session's own counter.
func (s *session) classifyText(q []byte) *router.Class {
	s.lookups.Add(1)
	return s.srv.classifier.Classify(q)
}

// LongTransactions counts, per pool, the clients whose transaction has
// been open longer than long_transaction_threshold.
func (s *source) LongTransactions() []metrics.LongTxSample {
	threshold := s.srv.rt.Load().cfg.LongTransactionThreshold
	now := time.Now()
	counts := map[[2]string]int{}
	for _, st := range s.pools.Stats() {
		counts[[2]string{st.Service, st.Database}] = 0
	}
	for _, sess := range s.srv.sessionList() {
		sess.mu.Lock()
		since := sess.txSince
		sess.mu.Unlock()
		key := [2]string{sess.service, sess.database}
		if _, ok := counts[key]; !ok {
			counts[key] = 0
		}
		if !since.IsZero() && now.Sub(since) > threshold {
			counts[key]++
		}
	}
	out := make([]metrics.LongTxSample, 0, len(counts))
	for k, n := range counts {
		out = append(out, metrics.LongTxSample{Service: k[0], Database: k[1], Count: n})
	}
	return out
}

// Databases reports each database's buffer cache hit ratio, read by the
// health checks of its primary.
func (s *source) Databases() []metrics.DatabaseSample {
	var out []metrics.DatabaseSample
	for _, n := range s.topo.Status() {
		if n.IsPrimary && n.CacheHitRatio > 0 {
			out = append(out, metrics.DatabaseSample{Database: n.Database, CacheHitRatio: n.CacheHitRatio,
				BlocksHit: n.BlocksHit, BlocksRead: n.BlocksRead})
		}
	}
	return out
}

// sessionList returns the current sessions.
func (s *Server) sessionList() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		out = append(out, sess)
	}
	return out
}

// Ready reports whether every database has a healthy primary in service,
// for /readyz.
func Ready(topo *router.Topology) func(context.Context) error {
	return func(context.Context) error {
		status := topo.Status()
		ok := map[string]bool{}
		for _, n := range status {
			if _, seen := ok[n.Database]; !seen {
				ok[n.Database] = false
			}
			if n.IsPrimary && n.Healthy && !n.Fenced && n.Role == router.RolePrimary {
				ok[n.Database] = true
			}
		}
		var down []string
		for db, up := range ok {
			if !up {
				down = append(down, db)
			}
		}
		if len(down) > 0 {
			sort.Strings(down)
			return fmt.Errorf("no healthy primary for %s", strings.Join(down, ", "))
		}
		return nil
	}
}

// SetMetrics makes the proxy record into m. Call before serving.
func (s *Server) SetMetrics(m *metrics.Metrics) { s.metrics = m }

// Metrics is what SetMetrics gave, nil without metrics.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// countError records an ErrorResponse from the server by its SQLSTATE:
// errors by class, and deadlocks (also those the proxy then retries).
func (s *session) countError(code []byte) {
	s.stats.errors.add(1)
	m := s.srv.metrics
	if m == nil {
		return
	}
	m.QueryErrors.WithLabelValues(s.service, s.database, metrics.ErrorClass(string(code))).Inc()
	if string(code) == "40P01" {
		m.Deadlocks.WithLabelValues(s.service, s.database).Inc()
	}
}
