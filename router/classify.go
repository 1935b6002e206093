package router

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	lru "github.com/hashicorp/golang-lru/v2"
	pg "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Pin is a kind of session state that ties a client to its server.
type Pin uint8

// Pins, as bits.
const (
	PinListen Pin = 1 << iota
	PinAdvisoryLock
	PinTempObject
	PinHoldCursor
	PinLoad
	PinSQLPrepare
	PinSetConfig
)

// String names the pins in p.
func (p Pin) String() string {
	var names []string
	for _, n := range []struct {
		p    Pin
		name string
	}{
		{PinListen, "LISTEN"}, {PinAdvisoryLock, "session advisory lock"}, {PinTempObject, "temporary object"},
		{PinHoldCursor, "cursor WITH HOLD"}, {PinLoad, "LOAD"}, {PinSQLPrepare, "SQL PREPARE"},
		{PinSetConfig, "set_config()"},
	} {
		if p&n.p != 0 {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, ", ")
}

// EffectKind is what a statement does to session state.
type EffectKind uint8

// Effects.
const (
	// EffectSet: a session-level SET; Name and SQL (the statement,
	// deparsed) are set.
	EffectSet EffectKind = iota + 1
	// EffectReset: RESET Name (or SET Name TO DEFAULT).
	EffectReset
	// EffectResetAll: RESET ALL.
	EffectResetAll
	// EffectUnpin: the statement clears the pins in Unpin.
	EffectUnpin
	// EffectDiscardAll: DISCARD ALL resets everything.
	EffectDiscardAll
	// EffectDeallocateAll: DEALLOCATE ALL drops every prepared statement.
	EffectDeallocateAll
)

// Effect is one change to session state, applied once the statement has
// succeeded.
type Effect struct {
	Kind  EffectKind
	Name  string
	SQL   string
	Unpin Pin
}

// Class is what the proxy needs to know about a query text.
type Class struct {
	// Statements is the number of statements in the text.
	Statements int
	// ReadOnly: every statement is provably read-only (a plain SELECT
	// without locking clause, INTO, data-modifying CTE or function known to
	// write or lock; SHOW; EXPLAIN without ANALYZE; BEGIN READ ONLY), so
	// the text may run on a replica.
	ReadOnly bool
	// Transaction: every statement is transaction control (BEGIN, COMMIT,
	// ROLLBACK, SAVEPOINT …), which writes nothing by itself.
	Transaction bool
	// Pins is the session state the text may create: it ties the client
	// to its server from the moment the statement is sent.
	Pins Pin
	// Effects apply, in order, when the statements succeed.
	Effects []Effect
	// SyntaxError is set when the parser refused the text; the server
	// will report it.
	SyntaxError string
	// SyntaxCursor is the 1-based position of the syntax error.
	SyntaxCursor int
	// Fingerprint identifies the statement shape (pg_query fingerprint:
	// the same for texts differing only in literal values), for query
	// statistics; "" when the text does not parse.
	Fingerprint string
	// Normalized is the text with every literal replaced by $n (pg_query
	// normalize): safe to show and log, as it holds no values.
	Normalized string
	// Writes lists the tables the statements write (INSERT, UPDATE,
	// DELETE, MERGE, COPY FROM, TRUNCATE), as written in the text.
	Writes []string
	// Tables lists every relation the statements name (read or written,
	// CTE names included), as written in the text, schema-qualified when
	// the text qualifies it: what column encryption and masking look up.
	Tables []string
	// Isolation is the isolation level a BEGIN / START TRANSACTION / SET
	// TRANSACTION sets, lower case ("serializable"); "" if none.
	Isolation string
	// literalFree: nothing above depends on a literal value, so the class
	// also serves texts that differ only in literals.
	literalFree bool
}

// Classifier classifies and caches. It is safe for concurrent use.
type Classifier struct {
	cache  *lru.Cache[string, *Class]
	bufs   sync.Pool     // *[]byte for normalized keys
	misses atomic.Uint64 // texts parsed; hits are not counted here: a
	// counter shared by every client on the hit path costs more than the
	// lookup (callers count their lookups)
}

// Config configures the classifier.
type Config struct {
	// ParseCacheSize is the number of distinct query texts remembered.
	ParseCacheSize int `yaml:"parse_cache_size"`
}

// DefaultParseCacheSize is used when the size is not set.
const DefaultParseCacheSize = 10000

// New returns a Classifier.
func New(cfg Config) *Classifier {
	if cfg.ParseCacheSize <= 0 {
		cfg.ParseCacheSize = DefaultParseCacheSize
	}
	c, _ := lru.New[string, *Class](cfg.ParseCacheSize)
	return &Classifier{cache: c}
}

// Classify returns the class of sql. The result is shared and must not be
// modified. A cache hit does not allocate.
func (c *Classifier) Classify(sql []byte) *Class {
	if len(sql) == 0 {
		return &Class{ReadOnly: true}
	}
	// The lookup key aliases sql: the cache does not keep keys it is only
	// asked for, so no copy is needed unless the text is new.
	if cl, ok := c.cache.Get(unsafe.String(&sql[0], len(sql))); ok {
		return cl
	}
	bp, _ := c.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	defer c.bufs.Put(bp)
	// Normalized keys start with NUL, which no query text does.
	key, ok := normalize(append((*bp)[:0], 0), sql)
	*bp = key
	if ok {
		if cl, hit := c.cache.Get(unsafe.String(&key[0], len(key))); hit {
			return cl
		}
	}
	c.misses.Add(1)
	text := string(sql)
	cl := classify(text)
	c.cache.Add(text, cl)
	if ok && cl.literalFree {
		c.cache.Add(string(key), cl)
	}
	return cl
}

// Misses returns how many texts had to be parsed (cache misses).
func (c *Classifier) Misses() uint64 { return c.misses.Load() }

// Len returns the number of cached texts.
func (c *Classifier) Len() int { return c.cache.Len() }

// Resize changes how many texts the cache keeps (n <= 0: the default),
// evicting the least recently used ones beyond it at once. It is safe to
// call while other goroutines classify.
func (c *Classifier) Resize(n int) {
	if n <= 0 {
		n = DefaultParseCacheSize
	}
	c.cache.Resize(n)
}

// classify parses text; it is the slow path.
func classify(text string) *Class {
	tree, err := pg.Parse(text)
	if err != nil {
		cl := &Class{SyntaxError: err.Error()}
		var pe *parser.Error
		if errors.As(err, &pe) {
			cl.SyntaxError, cl.SyntaxCursor = pe.Message, pe.Cursorpos
		}
		return cl
	}
	cl := &Class{Statements: len(tree.Stmts), ReadOnly: len(tree.Stmts) > 0, Transaction: len(tree.Stmts) > 0, literalFree: true}
	for _, raw := range tree.Stmts {
		classifyStmt(cl, raw, tree.Version)
		cl.Writes = appendWrites(cl.Writes, raw.GetStmt())
		cl.Tables = appendTables(cl.Tables, raw.GetStmt())
		if iso := isolationOf(raw.GetStmt()); iso != "" {
			cl.Isolation = iso
		}
	}
	// Both are the same for every literal variant of the text, so a class
	// shared by such variants still describes each of them.
	if fp, err := pg.Fingerprint(text); err == nil {
		cl.Fingerprint = fp
	}
	if n, err := pg.Normalize(text); err == nil {
		cl.Normalized = n
	}
	if cl.Pins != 0 || len(cl.Effects) > 0 {
		cl.literalFree = false
	}
	return cl
}

func classifyStmt(cl *Class, raw *pg.RawStmt, version int32) {
	n := raw.GetStmt()
	readOnly := false
	if n.GetTransactionStmt() == nil {
		cl.Transaction = false
	}
	switch {
	case n.GetSelectStmt() != nil:
		s := n.GetSelectStmt()
		readOnly = s.GetIntoClause() == nil && len(s.GetLockingClause()) == 0 && !hasLockingOrInto(s) && !hasWritingCTE(n)
	case n.GetVariableShowStmt() != nil:
		readOnly = true
	case n.GetTransactionStmt() != nil:
		// BEGIN READ ONLY / START TRANSACTION READ ONLY: the whole
		// transaction can run on a replica.
		ts := n.GetTransactionStmt()
		if k := ts.GetKind(); k == pg.TransactionStmtKind_TRANS_STMT_BEGIN || k == pg.TransactionStmtKind_TRANS_STMT_START {
			for _, o := range ts.GetOptions() {
				if d := o.GetDefElem(); d != nil && d.GetDefname() == "transaction_read_only" && isTrueConst(d.GetArg()) {
					readOnly = true
				}
			}
		}
	case n.GetExplainStmt() != nil:
		cl.literalFree = false // EXPLAIN (ANALYZE 'off') turns on a literal
		readOnly = !explainAnalyze(n.GetExplainStmt()) && isReadOnlyNode(n.GetExplainStmt().GetQuery(), version)
	case n.GetVariableSetStmt() != nil:
		setEffect(cl, raw, n.GetVariableSetStmt(), version)
	case n.GetListenStmt() != nil:
		cl.Pins |= PinListen
	case n.GetUnlistenStmt() != nil:
		if n.GetUnlistenStmt().GetConditionname() == "" {
			cl.Effects = append(cl.Effects, Effect{Kind: EffectUnpin, Unpin: PinListen})
		}
	case n.GetCreateStmt() != nil:
		if n.GetCreateStmt().GetRelation().GetRelpersistence() == "t" {
			cl.Pins |= PinTempObject
		}
	case n.GetViewStmt() != nil:
		if n.GetViewStmt().GetView().GetRelpersistence() == "t" {
			cl.Pins |= PinTempObject
		}
	case n.GetCreateSeqStmt() != nil:
		if n.GetCreateSeqStmt().GetSequence().GetRelpersistence() == "t" {
			cl.Pins |= PinTempObject
		}
	case n.GetCreateTableAsStmt() != nil:
		if n.GetCreateTableAsStmt().GetInto().GetRel().GetRelpersistence() == "t" {
			cl.Pins |= PinTempObject
		}
	case n.GetDeclareCursorStmt() != nil:
		const cursorOptHold = 0x0020
		if n.GetDeclareCursorStmt().GetOptions()&cursorOptHold != 0 {
			cl.Pins |= PinHoldCursor
		}
	case n.GetClosePortalStmt() != nil:
		if n.GetClosePortalStmt().GetPortalname() == "" {
			cl.Effects = append(cl.Effects, Effect{Kind: EffectUnpin, Unpin: PinHoldCursor})
		}
	case n.GetLoadStmt() != nil:
		cl.Pins |= PinLoad
	case n.GetPrepareStmt() != nil:
		cl.Pins |= PinSQLPrepare
	case n.GetDeallocateStmt() != nil:
		if n.GetDeallocateStmt().GetIsall() || n.GetDeallocateStmt().GetName() == "" {
			cl.Effects = append(cl.Effects, Effect{Kind: EffectDeallocateAll, Unpin: PinSQLPrepare})
		}
	case n.GetDiscardStmt() != nil:
		switch n.GetDiscardStmt().GetTarget() {
		case pg.DiscardMode_DISCARD_ALL:
			cl.Effects = append(cl.Effects, Effect{Kind: EffectDiscardAll,
				Unpin: PinListen | PinAdvisoryLock | PinTempObject | PinHoldCursor | PinSQLPrepare | PinSetConfig})
		case pg.DiscardMode_DISCARD_TEMP:
			cl.Effects = append(cl.Effects, Effect{Kind: EffectUnpin, Unpin: PinTempObject})
		}
	}
	// Functions anywhere in the statement.
	walkFuncs(n.ProtoReflect(), func(name string, args []*pg.Node) {
		switch name {
		case "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared":
			cl.Pins |= PinAdvisoryLock
			readOnly = false
		case "pg_advisory_unlock_all":
			cl.Effects = append(cl.Effects, Effect{Kind: EffectUnpin, Unpin: PinAdvisoryLock})
			readOnly = false
		case "set_config":
			cl.literalFree = false
			// set_config(name, value, is_local): only a session-level
			// change (is_local false) outlives the transaction.
			if len(args) == 3 && !isTrueConst(args[2]) {
				cl.Pins |= PinSetConfig
			}
			readOnly = false
		default:
			if writingFunctions[name] {
				readOnly = false
			}
		}
	})
	if !readOnly {
		cl.ReadOnly = false
	}
}

// writingFunctions write or take locks; a SELECT that calls one is not a
// read.
var writingFunctions = map[string]bool{
	"nextval": true, "setval": true, "currval": false, "lastval": false,
	"pg_advisory_xact_lock": true, "pg_advisory_xact_lock_shared": true,
	"pg_try_advisory_xact_lock": true, "pg_try_advisory_xact_lock_shared": true,
	"pg_advisory_unlock": true, "pg_advisory_unlock_shared": true,
	"lo_create": true, "lo_import": true, "lo_unlink": true, "lo_put": true, "lo_from_bytea": true,
	"pg_notify": true, "txid_current": true, "pg_current_xact_id": true,
	"pg_terminate_backend": true, "pg_cancel_backend": true, "pg_reload_conf": true,
	"pg_promote": true, "pg_switch_wal": true, "pg_create_restore_point": true,
}

func setEffect(cl *Class, raw *pg.RawStmt, s *pg.VariableSetStmt, version int32) {
	if s.GetIsLocal() {
		return
	}
	name := strings.ToLower(s.GetName())
	switch s.GetKind() {
	case pg.VariableSetKind_VAR_SET_VALUE, pg.VariableSetKind_VAR_SET_CURRENT:
		sql, err := pg.Deparse(&pg.ParseResult{Version: version, Stmts: []*pg.RawStmt{{Stmt: raw.GetStmt()}}})
		if err != nil {
			return
		}
		cl.Effects = append(cl.Effects, Effect{Kind: EffectSet, Name: name, SQL: sql})
	case pg.VariableSetKind_VAR_SET_DEFAULT, pg.VariableSetKind_VAR_RESET:
		cl.Effects = append(cl.Effects, Effect{Kind: EffectReset, Name: name})
	case pg.VariableSetKind_VAR_RESET_ALL:
		cl.Effects = append(cl.Effects, Effect{Kind: EffectResetAll})
	case pg.VariableSetKind_VAR_SET_MULTI:
		// SET TRANSACTION / SESSION CHARACTERISTICS: SESSION
		// CHARACTERISTICS is session state.
		if name == "session characteristics" {
			sql, err := pg.Deparse(&pg.ParseResult{Version: version, Stmts: []*pg.RawStmt{{Stmt: raw.GetStmt()}}})
			if err == nil {
				cl.Effects = append(cl.Effects, Effect{Kind: EffectSet, Name: name, SQL: sql})
			}
		}
	}
}

func explainAnalyze(e *pg.ExplainStmt) bool {
	for _, o := range e.GetOptions() {
		if d := o.GetDefElem(); d != nil && strings.EqualFold(d.GetDefname(), "analyze") {
			if a := d.GetArg(); a == nil || !isFalseConst(a) {
				return true
			}
		}
	}
	return false
}

func isReadOnlyNode(n *pg.Node, version int32) bool {
	cl := &Class{ReadOnly: true}
	classifyStmt(cl, &pg.RawStmt{Stmt: n}, version)
	return cl.ReadOnly && cl.Pins == 0
}

// hasLockingOrInto looks into set operations (UNION …) for FOR UPDATE/SHARE
// or INTO.
func hasLockingOrInto(s *pg.SelectStmt) bool {
	found := false
	walk(s.ProtoReflect(), func(m protoreflect.Message) {
		if sel, ok := m.Interface().(*pg.SelectStmt); ok && (sel.GetIntoClause() != nil || len(sel.GetLockingClause()) > 0) {
			found = true
		}
	})
	return found
}

// hasWritingCTE reports a data-modifying statement anywhere inside n.
func hasWritingCTE(n *pg.Node) bool {
	found := false
	walk(n.ProtoReflect(), func(m protoreflect.Message) {
		switch m.Interface().(type) {
		case *pg.InsertStmt, *pg.UpdateStmt, *pg.DeleteStmt, *pg.MergeStmt:
			found = true
		}
	})
	return found
}

// walkFuncs calls fn for every function call inside m, with its
// lower-cased unqualified name (pg_catalog. is the only schema treated as
// the built-in one).
func walkFuncs(m protoreflect.Message, fn func(name string, args []*pg.Node)) {
	walk(m, func(m protoreflect.Message) {
		fc, ok := m.Interface().(*pg.FuncCall)
		if !ok {
			return
		}
		parts := fc.GetFuncname()
		if len(parts) == 0 || len(parts) > 2 {
			return
		}
		if len(parts) == 2 && parts[0].GetString_().GetSval() != "pg_catalog" {
			return
		}
		fn(strings.ToLower(parts[len(parts)-1].GetString_().GetSval()), fc.GetArgs())
	})
}

// walk visits every message in the tree below m.
func walk(m protoreflect.Message, visit func(protoreflect.Message)) {
	visit(m)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walk(l.Get(i).Message(), visit)
			}
		case fd.Message() != nil && !fd.IsMap():
			walk(v.Message(), visit)
		}
		return true
	})
}

func isTrueConst(n *pg.Node) bool {
	c := n.GetAConst()
	if c == nil {
		return false
	}
	if b := c.GetBoolval(); b != nil {
		return b.GetBoolval()
	}
	if i := c.GetIval(); i != nil {
		return i.GetIval() != 0
	}
	if s := c.GetSval(); s != nil {
		v := strings.ToLower(s.GetSval())
		return v == "t" || v == "true" || v == "on" || v == "yes" || v == "1"
	}
	return false
}

func isFalseConst(n *pg.Node) bool {
	if s := n.GetString_(); s != nil {
		v := strings.ToLower(s.GetSval())
		return v == "f" || v == "false" || v == "off" || v == "no" || v == "0"
	}
	c := n.GetAConst()
	if c == nil {
		return false
	}
	if b := c.GetBoolval(); b != nil {
		return !b.GetBoolval()
	}
	if s := c.GetSval(); s != nil {
		v := strings.ToLower(s.GetSval())
		return v == "f" || v == "false" || v == "off" || v == "no" || v == "0"
	}
	return false
}
