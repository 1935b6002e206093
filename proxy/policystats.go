package proxy

import (
	"sync"
	"sync/atomic"

	"github.com/pgshield/pgshield/policy"
)

// What the policy judged, for the admin console's SHOW POLICY: the rows
// judged per table and the refusals per rule. Counting a row is on the
// path of every governed write, so it takes no lock, allocates nothing
// (but the first time a table is seen) and spreads the sessions over a
// few counters on cache lines of their own.

// checkStripes is how many counters a table's checks are spread over,
// by session id.
const checkStripes = 8

// PolicyCounts counts what the policy judged, and passes each refusal on
// to the counter it wraps (the metrics' pgshield_policy_rejections_total).
// Give it to SetPolicy as its counts: one PolicyCounts serves every
// policy put in force in turn, and Server.PolicyStats reports the counts
// of the tables of the policy in force only, so that they start again
// when the policy file is loaded again (a reload compiles new tables).
type PolicyCounts struct {
	next interface {
		Rejected(service, database, kind string)
	}

	// tables is read without a lock; a table not yet in it is added
	// under mu, to a copy.
	tables atomic.Pointer[map[*policy.TableRules]*tableChecks]

	mu       sync.Mutex // guards adding to tables, and refusals
	refusals map[refusalKey]int64
}

// tableChecks are one table's counters.
type tableChecks struct {
	stripes [checkStripes]paddedCount
}

// paddedCount is a counter alone on its cache line (64 bytes), so that
// sessions counting on different stripes do not contend.
type paddedCount struct {
	n atomic.Int64
	_ [56]byte
}

type refusalKey struct {
	t          *policy.TableRules
	constraint string
}

// NewPolicyCounts returns counts that pass refusals on to next (nil:
// none), such as *metrics.Metrics.
func NewPolicyCounts(next interface {
	Rejected(service, database, kind string)
}) *PolicyCounts {
	c := &PolicyCounts{next: next, refusals: map[refusalKey]int64{}}
	empty := map[*policy.TableRules]*tableChecks{}
	c.tables.Store(&empty)
	return c
}

// Rejected passes a refusal on (policyCounter).
func (c *PolicyCounts) Rejected(service, database, kind string) {
	if c.next != nil {
		c.next.Rejected(service, database, kind)
	}
}

// checked counts rows judged rows of table t, on the session's stripe.
func (c *PolicyCounts) checked(cur *policy.Policy, t *policy.TableRules, session uint32, rows int) {
	tc := (*c.tables.Load())[t]
	if tc == nil {
		tc = c.addTable(cur, t)
	}
	tc.stripes[session%checkStripes].n.Add(int64(rows))
}

// addTable adds t's counters, dropping those of tables no longer in
// force (cur is the policy in force).
func (c *PolicyCounts) addTable(cur *policy.Policy, t *policy.TableRules) *tableChecks {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.tables.Load()
	if tc := old[t]; tc != nil {
		return tc
	}
	next := make(map[*policy.TableRules]*tableChecks, len(old)+1)
	for k, v := range old {
		if inForce(cur, k) {
			next[k] = v
		}
	}
	tc := &tableChecks{}
	next[t] = tc
	c.tables.Store(&next)
	return tc
}

// refused counts a refusal by rule t's constraint.
func (c *PolicyCounts) refused(cur *policy.Policy, t *policy.TableRules, constraint string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := refusalKey{t, constraint}
	if _, ok := c.refusals[k]; !ok {
		for old := range c.refusals {
			if !inForce(cur, old.t) {
				delete(c.refusals, old)
			}
		}
	}
	c.refusals[k]++
}

// inForce reports whether t is a table of the policy cur (not of one
// loaded before it).
func inForce(cur *policy.Policy, t *policy.TableRules) bool {
	return cur.Table(t.Database(), t.Name()) == t
}

// snapshot sums the counts of the tables of cur.
func (c *PolicyCounts) snapshot(cur *policy.Policy) (checks map[[2]string]int64, refusals map[[3]string]int64) {
	checks, refusals = map[[2]string]int64{}, map[[3]string]int64{}
	for t, tc := range *c.tables.Load() {
		if !inForce(cur, t) {
			continue
		}
		var n int64
		for i := range tc.stripes {
			n += tc.stripes[i].n.Load()
		}
		checks[[2]string{t.Database(), t.Name()}] = n
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, n := range c.refusals {
		if inForce(cur, k.t) {
			refusals[[3]string{k.t.Database(), k.t.Name(), k.constraint}] = n
		}
	}
	return checks, refusals
}

// PolicyStats returns what the policy in force has judged since it was
// loaded: the rows judged by (database, table) and the refusals by
// (database, table, constraint), the rule's name. Both are empty without
// a policy, or when SetPolicy was given counts other than a
// *PolicyCounts.
func (s *Server) PolicyStats() (checks map[[2]string]int64, refusals map[[3]string]int64) {
	ps := s.policy.Load()
	if ps == nil {
		return map[[2]string]int64{}, map[[3]string]int64{}
	}
	c, _ := ps.counts.(*PolicyCounts)
	if c == nil {
		return map[[2]string]int64{}, map[[3]string]int64{}
	}
	return c.snapshot(ps.p)
}

// judged counts rows judged rows of table t for the session.
func (ps *policyState) judged(si SessionInfo, t *policy.TableRules, rows int) {
	if c, ok := ps.counts.(*PolicyCounts); ok {
		c.checked(ps.p, t, si.ID, rows)
	}
}

// writeRows is how many rows a write judges: its VALUES rows, else one
// (the SET of an UPDATE, the unknown row of INSERT … SELECT).
func writeRows(w *policy.Write) int { return max(len(w.Rows), 1) }

// countRefusal counts a refusal by the rule that refused, for a rule of
// a table (a firewall refusal names none).
func (ps *policyState) countRefusal(si SessionInfo, v *policy.Violation) {
	c, ok := ps.counts.(*PolicyCounts)
	if !ok || v.Table == "" {
		return
	}
	if t := ps.p.Table(si.Database, v.Table); t != nil {
		c.refused(ps.p, t, v.Constraint)
	}
}
