package proxy

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/policy"
	"github.com/pgshield/pgshield/router"
)

// The policy: validation rules and the firewall, applied through the
// Hooks. A statement is analysed once per text (plans, an LRU): the tables
// it writes, where each value comes from, and for a governed table the
// rule index of each column. A Query is judged at once from its literals;
// a Parse keeps its plan on the statement (Verdict.Keep) and each Bind is
// judged from its parameters with no further analysis; a COPY FROM STDIN
// is judged row by row as its data streams. A statement that writes no
// governed table, from a service without firewall rules, costs a lookup
// per table it writes and no analysis.

// policyState is the policy in force and what it caches.
type policyState struct {
	p     *policy.Policy
	mu    sync.Mutex                               // guards plans' maps (not the caches)
	plans map[string]*lru.Cache[string, *stmtPlan] // by database, by text
	// fpPlans are plans of statements that write no governed table, for
	// the firewall only, by database and fingerprint: texts that differ in
	// their literals share one analysis.
	fpPlans map[string]*lru.Cache[string, *stmtPlan]
	// shapes are plans that serve every Query text of their shape, by
	// database and router.Shape key (see shape.go).
	shapes map[string]*lru.Cache[string, *stmtPlan]
	pool   sync.Pool // *judgeScratch
	srv    *Server
	counts policyCounter
}

// policyCounter counts refusals by kind (pgshield_policy_rejections_total).
type policyCounter interface {
	Rejected(service, database, kind string)
}

// stmtPlan is the analysis of one statement text.
type stmtPlan struct {
	stmts  []policy.Statement
	writes []planWrite // the writes to governed tables
	copy   *planWrite  // the COPY FROM STDIN to a governed table, if any
	copyOf *policy.Statement
	ddl    bool // changes the catalog: forget cached plans and columns after it
	// A plan shared by the texts of its shape (shape.go): the class of
	// each literal token of the text it was made from, where each judged
	// literal is among them (by Source.Pos), and the ordinals of negated
	// integers. Nil for a plan of one text.
	classes []litClass
	litAt   map[int]litRef
	negInts []int
}

// planWrite is a write to a governed table, its columns resolved to the
// table's rule indexes.
type planWrite struct {
	w      *policy.Write
	t      *policy.TableRules
	colIdx []int // per Columns (INSERT, COPY)
	setIdx []int // per Set
	types  []uint32
}

// judgeScratch are the buffers of one judgement, pooled.
type judgeScratch struct {
	vals   []policy.Value
	params [][]byte
	fmts   []int16
	nulls  []bool
	text   []byte
	// The Query being judged with a shared plan: its text, its literal
	// tokens and the plan's map of them (litAt nil: the plan is the
	// text's own and its literals are its values).
	key   []byte
	lits  []router.Literal
	query []byte
	litAt map[int]litRef
}

const planCacheSize = 4096

// SetPolicy puts p in force for every session at its next statement (nil:
// no policy); counts, when set, counts the refusals.
func (s *Server) SetPolicy(p *policy.Policy, counts policyCounter) {
	if p == nil {
		s.policy.Store(nil)
		s.installHooks()
		return
	}
	ps := &policyState{p: p, plans: make(map[string]*lru.Cache[string, *stmtPlan]),
		fpPlans: make(map[string]*lru.Cache[string, *stmtPlan]), shapes: make(map[string]*lru.Cache[string, *stmtPlan]),
		srv: s, counts: counts}
	ps.pool.New = func() any { return new(judgeScratch) }
	s.policy.Store(ps)
	s.catalogs.invalidate("")
	s.installHooks()
}

// Policy is the policy in force, nil when none.
func (s *Server) Policy() *policy.Policy {
	if ps := s.policy.Load(); ps != nil {
		return ps.p
	}
	return nil
}

// governed reports whether a statement of class may concern the policy
// for the session: it writes a governed table (writes), or the service
// has firewall rules (firewall).
func (ps *policyState) governed(si SessionInfo, class *router.Class) (writes, firewall bool) {
	firewall = ps.p.Firewall().Governs(si.Service)
	if class == nil {
		return true, firewall // not classified: analyse it
	}
	for _, t := range class.Writes {
		if ps.p.Governs(si.Database, si.Service, bareName(t)) {
			return true, firewall
		}
	}
	return false, firewall
}

// bareName drops a schema from a table name as the classifier wrote it.
func bareName(t string) string {
	if i := bytes.LastIndexByte([]byte(t), '.'); i >= 0 {
		return t[i+1:]
	}
	return t
}

// plansOf is a plan cache of a database, from m (plans or fpPlans).
func (ps *policyState) plansOf(m map[string]*lru.Cache[string, *stmtPlan], database string) *lru.Cache[string, *stmtPlan] {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	c := m[database]
	if c == nil {
		c, _ = lru.New[string, *stmtPlan](planCacheSize)
		m[database] = c
	}
	return c
}

// forget drops the cached plans of a database, after DDL.
func (ps *policyState) forget(database string) {
	ps.mu.Lock()
	delete(ps.plans, database)
	delete(ps.fpPlans, database)
	delete(ps.shapes, database)
	ps.mu.Unlock()
}

// plan returns the analysis of text, from the cache or made now. A
// statement that writes no governed table is cached by its fingerprint
// (fp, when known), which literals do not change. With shape set (a
// Query's router.Shape key and literal tokens), a new plan that can serve
// every text of the shape is cached under the key instead of the text.
func (ps *policyState) plan(si SessionInfo, text []byte, fp string, shape *judgeScratch) *stmtPlan {
	var cache *lru.Cache[string, *stmtPlan]
	key := fp
	if fp != "" {
		cache = ps.plansOf(ps.fpPlans, si.Database)
		if p, ok := cache.Get(fp); ok {
			return p
		}
	} else {
		cache = ps.plansOf(ps.plans, si.Database)
		if len(text) > 0 {
			// The lookup key aliases text: a cache does not keep keys it
			// is only asked for.
			if p, ok := cache.Get(unsafe.String(&text[0], len(text))); ok {
				return p
			}
		}
		key = string(text)
	}
	tree, err := router.Tree(text)
	if err != nil {
		return &stmtPlan{} // the server reports the syntax error
	}
	cat := ps.srv.catalogs.of(context.Background(), si.Database)
	stmts, err := policy.Analyze(tree, cat)
	if err != nil {
		ps.srv.log.Warn("policy: statement analysis failed; the statement is left to the database", zap.Error(err))
		return &stmtPlan{}
	}
	pl := &stmtPlan{stmts: stmts}
	for i := range stmts {
		st := &stmts[i]
		switch {
		case hasPrefix(st.Kind, "CREATE"), hasPrefix(st.Kind, "ALTER"), hasPrefix(st.Kind, "DROP"):
			pl.ddl = true
		}
		for j := range st.Writes {
			w := &st.Writes[j]
			t := ps.p.Table(si.Database, w.Table)
			if t == nil {
				continue
			}
			pw := planWrite{w: w, t: t, types: w.ColumnTypes}
			for _, c := range w.Columns {
				pw.colIdx = append(pw.colIdx, t.Index(c))
			}
			for _, a := range w.Set {
				pw.setIdx = append(pw.setIdx, t.Index(a.Column))
			}
			if w.Kind == policy.WriteCopy {
				pl.copy, pl.copyOf = &pw, st
				continue
			}
			pl.writes = append(pl.writes, pw)
		}
	}
	if shape != nil {
		if sharePlan(pl, text, shape.lits); pl.litAt != nil {
			ps.plansOf(ps.shapes, si.Database).Add(string(shape.key), pl)
			return pl
		}
	}
	cache.Add(key, pl)
	return pl
}

// planQuery is plan for a Query that writes a governed table: a plan of
// its shape when one fits (sc then reads the text's literals), else
// plan's.
func (ps *policyState) planQuery(si SessionInfo, text []byte, sc *judgeScratch) *stmtPlan {
	key, lits, ok := router.Shape(sc.key[:0], sc.lits[:0], text)
	sc.key, sc.lits = key, lits
	if !ok || len(key) == 0 {
		return ps.plan(si, text, "", nil)
	}
	if pl, hit := ps.plansOf(ps.shapes, si.Database).Get(unsafe.String(&key[0], len(key))); hit && pl.fits(text, lits) {
		sc.query, sc.litAt = text, pl.litAt
		return pl
	}
	pl := ps.plan(si, text, "", sc)
	if pl.litAt != nil {
		sc.query, sc.litAt = text, pl.litAt
	}
	return pl
}

func hasPrefix(s, p string) bool { return strings.HasPrefix(s, p) }

// statement is the Statement hook: the firewall, then a Query's literals.
func (ps *policyState) statement(ev StatementEvent) Verdict {
	writes, firewall := ps.governed(ev.Session, ev.Class)
	if !writes && !firewall {
		return Verdict{}
	}
	sc := ps.pool.Get().(*judgeScratch)
	defer ps.putScratch(sc)
	var pl *stmtPlan
	switch {
	case writes && ev.Message == 'Q':
		pl = ps.planQuery(ev.Session, ev.Text, sc)
	case !writes && ev.Class != nil:
		pl = ps.plan(ev.Session, ev.Text, ev.Class.Fingerprint, nil)
	default:
		pl = ps.plan(ev.Session, ev.Text, "", nil)
	}
	if fw := ps.p.Firewall(); fw.Governs(ev.Session.Service) {
		fp, normalized := "", ""
		if ev.Class != nil {
			fp, normalized = ev.Class.Fingerprint, ev.Class.Normalized
		}
		if v := fw.CheckNormalized(ev.Session.Service, pl.stmts, fp, normalized, len(ev.Text)); v != nil {
			return ps.refuse(ev.Session, v)
		}
	}
	if ev.Message == 'Q' {
		for i := range pl.writes {
			if v := ps.judgeWith(ev.Session, &pl.writes[i], nil, sc); v != nil {
				return ps.refuse(ev.Session, v)
			}
		}
	}
	return Verdict{Keep: pl}
}

// bind is the Bind hook: the prepared statement's writes, with the
// parameters.
func (ps *policyState) bind(ev BindEvent) Verdict {
	pl := keptPolicy(ev.Kept)
	if pl == nil || len(pl.writes) == 0 {
		return Verdict{}
	}
	sc := ps.pool.Get().(*judgeScratch)
	defer ps.putScratch(sc)
	sc.params, sc.fmts, sc.nulls = sc.params[:0], sc.fmts[:0], sc.nulls[:0]
	vals := ev.Bind.Values()
	for vals.Next() {
		sc.params = append(sc.params, vals.Value)
		sc.fmts = append(sc.fmts, ev.Bind.Format(vals.Index))
		sc.nulls = append(sc.nulls, vals.Null)
	}
	for i := range pl.writes {
		if v := ps.judgeWith(ev.Session, &pl.writes[i], bindParams{sc}, sc); v != nil {
			return ps.refuse(ev.Session, v)
		}
	}
	return Verdict{}
}

// bindParams gives a Bind's parameters to policy.Source.Resolve.
type bindParams struct{ sc *judgeScratch }

func (b bindParams) Param(n int) (data []byte, format int16, null bool, ok bool) {
	if n < 1 || n > len(b.sc.params) {
		return nil, 0, false, false
	}
	return b.sc.params[n-1], b.sc.fmts[n-1], b.sc.nulls[n-1], true
}

// putScratch returns sc to the pool, holding no statement's bytes.
func (ps *policyState) putScratch(sc *judgeScratch) {
	sc.query, sc.litAt = nil, nil
	ps.pool.Put(sc)
}

// judgeWith judges every row of a write: the VALUES rows, then the SET.
func (ps *policyState) judgeWith(si SessionInfo, pw *planWrite, params policy.Params, sc *judgeScratch) *policy.Violation {
	w := pw.w
	if !pw.t.Governs(si.Service) {
		return nil
	}
	ps.judged(si, pw.t, writeRows(w))
	if w.FromQuery {
		sc.vals = sc.vals[:0]
		for range w.Columns {
			sc.vals = append(sc.vals, policy.Value{Kind: policy.ValueUnknown})
		}
		return pw.t.CheckValues(si.Service, policy.WriteInsert, pw.colIdx, sc.vals)
	}
	for _, row := range w.Rows {
		sc.vals, sc.text = sc.vals[:0], sc.text[:0]
		for i, src := range row {
			var typ uint32
			if i < len(pw.types) {
				typ = pw.types[i]
			}
			sc.vals = append(sc.vals, ps.value(src, typ, params, sc))
		}
		kind := policy.WriteInsert
		if v := pw.t.CheckValues(si.Service, kind, pw.colIdx[:len(sc.vals)], sc.vals); v != nil {
			return v
		}
	}
	if len(w.Set) > 0 {
		sc.vals, sc.text = sc.vals[:0], sc.text[:0]
		for _, a := range w.Set {
			sc.vals = append(sc.vals, ps.value(a.Value, a.TypeOID, params, sc))
		}
		if v := pw.t.CheckValues(si.Service, policy.WriteUpdate, pw.setIdx, sc.vals); v != nil {
			return v
		}
	}
	return nil
}

// value turns a Source into the value the rules judge: a literal as it
// is, a parameter in text format as it is and in binary format decoded to
// its text form by the column's (or the cast's) type.
func (ps *policyState) value(src policy.Source, column uint32, params policy.Params, sc *judgeScratch) policy.Value {
	switch src.Kind {
	case policy.SourceLiteral:
		if sc.litAt != nil {
			// A shared plan: the value is this text's token.
			ref := sc.litAt[src.Pos]
			val, out := literalText(sc.query, sc.lits[ref.ord], ref.neg, sc.text)
			sc.text = out
			return policy.Value{Kind: policy.ValueText, Text: val}
		}
		return policy.Value{Kind: policy.ValueText, Text: src.Literal}
	case policy.SourceNull:
		return policy.Value{Kind: policy.ValueNull}
	case policy.SourceDefault:
		return policy.Value{Kind: policy.ValueDefault}
	case policy.SourceParam:
		if params == nil {
			return policy.Value{Kind: policy.ValueUnknown}
		}
		data, format, null, ok := src.Resolve(params)
		switch {
		case !ok:
			return policy.Value{Kind: policy.ValueUnknown}
		case null:
			return policy.Value{Kind: policy.ValueNull}
		case format == 0:
			return policy.Value{Kind: policy.ValueText, Text: data}
		}
		start := len(sc.text)
		out, err := policy.DecodeBinary(src.Type(column), data, sc.text)
		if err != nil {
			return policy.Value{Kind: policy.ValueUnknown}
		}
		sc.text = out
		return policy.Value{Kind: policy.ValueText, Text: out[start:len(out):len(out)]}
	}
	return policy.Value{Kind: policy.ValueUnknown}
}

// copyRun is the state of one COPY FROM STDIN being judged.
type copyRun struct {
	r  *policy.CopyReader
	pw *planWrite
	si SessionInfo
	ps *policyState
	sc judgeScratch
}

// copyData is the CopyData hook: rows are judged as they stream; the
// first bad one fails the COPY, naming its row and line.
func (ps *policyState) copyData(ev CopyEvent) Verdict {
	run, _ := (*ev.State).(*copyRun)
	if run == nil {
		pl := keptPolicy(ev.Kept)
		if pl == nil || pl.copy == nil || !pl.copy.t.Governs(ev.Session.Service) {
			*ev.State = false // not governed: nothing to do for this COPY
			return Verdict{}
		}
		r, err := policy.NewCopyReader(*pl.copyOf, *pl.copy.w)
		if err != nil {
			*ev.State = false
			return Verdict{}
		}
		run = &copyRun{r: r, pw: pl.copy, si: ev.Session, ps: ps}
		*ev.State = run
	}
	var v *policy.Violation
	if ev.Done {
		v = run.r.Finish(run.row)
	} else {
		v = run.r.Feed(ev.Data, run.row)
	}
	if v != nil {
		return ps.refuse(ev.Session, v)
	}
	return Verdict{}
}

// row judges one COPY row.
func (c *copyRun) row(rowNum, line int, vals []policy.Value) *policy.Violation {
	if c.r.Binary() {
		c.sc.text = c.sc.text[:0]
		for i := range vals {
			if vals[i].Kind != policy.ValueText || i >= len(c.pw.types) {
				continue
			}
			start := len(c.sc.text)
			out, err := policy.DecodeBinary(c.pw.types[i], vals[i].Text, c.sc.text)
			if err != nil {
				vals[i] = policy.Value{Kind: policy.ValueUnknown}
				continue
			}
			c.sc.text = out
			vals[i].Text = out[start:len(out):len(out)]
		}
	}
	idx := c.pw.colIdx
	if len(idx) > len(vals) {
		idx = idx[:len(vals)]
	}
	c.ps.judged(c.si, c.pw.t, 1)
	v := c.pw.t.CheckValues(c.si.Service, policy.WriteInsert, idx, vals[:len(idx)])
	if v == nil {
		return nil
	}
	out := *v
	where := "row " + strconv.Itoa(rowNum)
	if line > 0 {
		where += ", line " + strconv.Itoa(line)
	}
	out.Message = "COPY " + c.pw.w.Table + ", " + where + ": " + v.Message
	return &out
}

// commandComplete forgets cached plans and columns after DDL.
func (ps *policyState) commandComplete(ev CompleteEvent) {
	if len(ev.Tag) == 0 {
		return
	}
	switch ev.Tag[0] {
	case 'C', 'A', 'D':
		if hasPrefix(string(ev.Tag), "CREATE") || hasPrefix(string(ev.Tag), "ALTER") || hasPrefix(string(ev.Tag), "DROP") {
			ps.forget(ev.Session.Database)
			ps.srv.catalogs.invalidate(ev.Session.Database)
		}
	}
}

// refuse turns a Violation into the hook's refusal, counted and logged
// without the refused value (the violation's message never holds it).
func (ps *policyState) refuse(si SessionInfo, v *policy.Violation) Verdict {
	if ps.counts != nil {
		ps.counts.Rejected(si.Service, si.Database, v.Kind)
		ps.countRefusal(si, v)
	}
	ps.srv.log.Info("policy refused a statement", zap.String("service", si.Service), zap.String("database", si.Database),
		zap.String("code", v.Code), zap.String("kind", v.Kind), zap.String("table", v.Table), zap.String("column", v.Column),
		zap.String("constraint", v.Constraint))
	return Verdict{Refuse: &Refusal{Code: v.Code, Message: v.Message, Detail: v.Detail, Hint: v.Hint,
		Table: v.Table, Column: v.Column, Constraint: v.Constraint}}
}
