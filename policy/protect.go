package policy

import (
	"slices"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The analysis of encrypted columns: which values a statement writes into
// them, which equality searches on them the proxy rewrites to ciphertext,
// whether its results carry them, and which uses it must refuse because
// the database would compute on ciphertext and answer wrongly without
// saying so (ORDER BY ssn, ssn LIKE '1%', upper(ssn), GROUP BY on a
// randomized column …). It fails closed: a use it does not recognise as
// safe is refused.

// Protected says which columns are encrypted.
type Protected interface {
	// Encrypted reports whether schema.table.column is stored encrypted
	// (schema "" when the statement names none), and whether
	// deterministically.
	Encrypted(schema, table, column string) (deterministic, ok bool)
	// Has reports whether the table has any encrypted column (cheap
	// pre-check).
	Has(schema, table string) bool
}

// Protection is what one statement (one element of a Query's statements,
// or a Parse) needs. When Refusal is set the other fields are empty: the
// statement is not to be forwarded at all.
type Protection struct {
	// Refusal is the first use that cannot be allowed: Code "0A000", Kind
	// "encryption", Message naming table.column and what is wrong, Hint
	// saying what is allowed on that kind of column, Table and Column set
	// (Column is "" when the statement's use concerns a table whose
	// columns the catalog does not know). Nil when the statement is fine.
	Refusal *Violation
	// Values are the values written into encrypted columns (INSERT …
	// VALUES rows, UPDATE SET, ON CONFLICT DO UPDATE SET, also in writing
	// CTEs), in statement order; each a literal, a parameter, NULL or
	// DEFAULT.
	Values []ProtectedValue
	// Searches are the equality searches on deterministic columns (`col =
	// v`, `v = col`, `col <> v`, `col IN (v, …)`, `col NOT IN (…)`) in
	// WHERE, JOIN … ON, HAVING and aggregate FILTER clauses of any
	// (sub)query, where every v is a literal or a parameter.
	Searches []ProtectedSearch
	// Reads is true when the statement's results may carry an encrypted
	// column (a target list or RETURNING names one, or `*` / `t.*` over a
	// relation that has one).
	Reads bool
	// Copy is set for COPY … FROM STDIN into a table with encrypted
	// columns: which fields of each row are encrypted.
	Copy []ProtectedCopyColumn
}

// ProtectedValue is one value written into an encrypted column.
type ProtectedValue struct {
	Schema, Table, Column string // Schema "" when the statement names none
	Deterministic         bool
	// Value is a SourceLiteral, SourceParam, SourceNull or SourceDefault;
	// a literal or parameter is uncast or cast to text or varchar.
	Value Source
}

// SearchOp is the operator of an equality search.
type SearchOp uint8

// The operators of ProtectedSearch.
const (
	SearchEq    SearchOp = iota + 1 // col = v
	SearchNe                        // col <> v, col != v
	SearchIn                        // col IN (v, …)
	SearchNotIn                     // col NOT IN (v, …)
)

// String returns the operator as SQL writes it.
func (o SearchOp) String() string {
	switch o {
	case SearchEq:
		return "="
	case SearchNe:
		return "<>"
	case SearchIn:
		return "IN"
	case SearchNotIn:
		return "NOT IN"
	}
	return "?"
}

// ProtectedSearch is one equality search on a deterministic column, whose
// compared values the proxy replaces by their ciphertext.
type ProtectedSearch struct {
	Schema, Table, Column string
	Op                    SearchOp
	// Positions are 1-based byte offsets in the parsed text (the whole
	// Query text when it holds several statements), like Source.Pos.
	// ColumnPos is that of the column reference
	// (its first name: `l` of `l.email`); OpPos that of the operator (`=`,
	// `<>` / `!=`, or the IN or NOT keyword).
	ColumnPos, OpPos int
	// ColumnFirst: the column is the left operand (always for IN).
	ColumnFirst bool
	// Values are the compared literals or parameters, in order; a
	// literal or parameter is uncast or cast to text or varchar.
	Values []Source
}

// ProtectedCopyColumn is an encrypted field of COPY … FROM STDIN rows.
type ProtectedCopyColumn struct {
	// Index is the field's position, from 0, in the COPY's column list
	// (the catalog's column order when it has none).
	Index         int
	Column        string
	Deterministic bool
}

// Protect analyses one parsed Query or Parse text: one Protection per
// statement, aligned with tree.Stmts. cat gives a table's columns (for an
// INSERT or COPY without a column list, `*`, and ORDER BY by position); it
// may be nil, and then statements that need it on a table with encrypted
// columns are refused. A statement that names no table with an encrypted
// column (by enc.Has) gets a zero Protection without further analysis.
//
// Column references are resolved as PostgreSQL does: qualified ones
// through the FROM aliases and table names, unqualified ones through the
// FROM clauses of the query and of the enclosing ones; a name that cannot
// be resolved for sure is taken for an encrypted column of that name of a
// table the statement names, if there is one. A column of a subquery, CTE
// or RETURNING that is a plain reference to an encrypted column is
// encrypted too.
//
// Allowed: plain references in target lists and RETURNING; `*`; writing a
// literal, parameter, NULL or DEFAULT (and, in ON CONFLICT DO UPDATE,
// EXCLUDED.col into col); col IS [NOT] NULL; count(col); for
// deterministic columns also the searches of Protection.Searches, SELECT
// DISTINCT, GROUP BY, count(DISTINCT col), ON CONFLICT (col), and unique
// indexes and constraints. Everything else that touches an encrypted
// column is refused: other operators, functions, casts, CASE, ORDER BY,
// window clauses, joins and comparisons with other columns, set
// operations, INSERT … SELECT, expressions written into it, copying it
// elsewhere (SELECT INTO, CREATE TABLE AS, COPY … TO, CREATE VIEW),
// MERGE, SQL-level PREPARE and cursors over it, and DDL that would
// compute on it.
func Protect(tree *pg.ParseResult, cat Catalog, enc Protected) []Protection {
	if tree == nil {
		return nil
	}
	out := make([]Protection, len(tree.GetStmts()))
	if enc == nil {
		return out
	}
	for i, raw := range tree.GetStmts() {
		n := raw.GetStmt()
		tables := encryptedTables(n, enc)
		if len(tables) == 0 {
			continue
		}
		p := protector{cat: cat, enc: enc, tables: tables}
		p.statement(n)
		if p.prot.Refusal != nil {
			p.prot = Protection{Refusal: p.prot.Refusal}
		}
		out[i] = p.prot
	}
	return out
}

// tableRef is a table as a statement names it.
type tableRef struct{ schema, table string }

// encryptedTables returns the tables n names that have an encrypted
// column, each once.
func encryptedTables(n *pg.Node, enc Protected) []tableRef {
	var seen, out []tableRef
	visitRangeVars(n, func(rv *pg.RangeVar) {
		t := tableRef{rv.GetSchemaname(), rv.GetRelname()}
		if slices.Contains(seen, t) {
			return
		}
		seen = append(seen, t)
		if enc.Has(t.schema, t.table) {
			out = append(out, t)
		}
	})
	return out
}

// visitRangeVars calls f for every RangeVar in n. It steps over the
// leaves that make up most of a big statement (constants, parameters,
// column references) and over VALUES lists without reflection.
func visitRangeVars(n *pg.Node, f func(*pg.RangeVar)) {
	switch v := n.GetNode().(type) {
	case nil, *pg.Node_AConst, *pg.Node_ParamRef, *pg.Node_ColumnRef, *pg.Node_String_, *pg.Node_Integer,
		*pg.Node_Float, *pg.Node_Boolean, *pg.Node_BitString, *pg.Node_SetToDefault, *pg.Node_AStar, *pg.Node_TypeName:
	case *pg.Node_RangeVar:
		f(v.RangeVar)
	case *pg.Node_List:
		for _, it := range v.List.GetItems() {
			visitRangeVars(it, f)
		}
	default:
		visitRangeVarsIn(n.ProtoReflect(), f)
	}
}

func visitRangeVarsIn(m protoreflect.Message, f func(*pg.RangeVar)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil || fd.IsMap() {
			return true
		}
		visit := func(cm protoreflect.Message) {
			switch x := cm.Interface().(type) {
			case *pg.Node:
				visitRangeVars(x, f)
			case *pg.RangeVar:
				f(x)
			default:
				visitRangeVarsIn(cm, f)
			}
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				visit(l.Get(i).Message())
			}
		} else {
			visit(v.Message())
		}
		return true
	})
}

// encCol is an encrypted column: the table's own, also when a subquery or
// CTE passes it on. column is "" for "some encrypted column of table",
// when the catalog cannot say which.
type encCol struct {
	schema, table, column string
	det                   bool
}

func (c *encCol) name() string {
	n := c.table
	if c.schema != "" {
		n = c.schema + "." + n
	}
	if c.column != "" {
		n += "." + c.column
	}
	return n
}

// relation is an entry of a FROM clause (or the target of a write).
type relation struct {
	name   string // what qualified references call it: alias, table or CTE name
	schema string // a base table's schema as the statement names it
	table  string // a base table; "" for a derived relation
	// cols are a base table's column names as the query sees them
	// (renamed by an alias's column list), real the catalog's; nil when
	// the catalog does not know the table.
	cols, real []string
	out        []outCol    // a derived relation's columns
	open       bool        // a derived relation may have columns out does not list
	joined     []*relation // an aliased join: the relations it joins
}

// outCol is an output column of a query, or of a derived relation.
type outCol struct {
	name string
	enc  *encCol   // the encrypted column it passes on, nil for a plain one
	star *relation // set for a * whose columns are not known: all of star's
}

// colStatus is what a relation knows of a column name, in increasing
// certainty.
type colStatus uint8

const (
	colAbsent colStatus = iota // the relation has no such column
	colMaybe                   // it may have it; if so, not encrypted
	colPlain                   // it has it, not encrypted
	colEnc                     // it has it, encrypted
)

// scope is one query level.
type scope struct {
	parent *scope
	rels   []*relation // the FROM items, and aliased joins as wholes
	ctes   []*relation // the CTEs of its WITH, by name
	// targets are the query's output columns, which ORDER BY, GROUP BY
	// and DISTINCT ON may name or number.
	targets []outCol
}

func (s *scope) cte(name string) *relation {
	for ; s != nil; s = s.parent {
		for i := len(s.ctes) - 1; i >= 0; i-- {
			if s.ctes[i].name == name {
				return s.ctes[i]
			}
		}
	}
	return nil
}

// qualified finds the relation a qualifier (rel, or schema.rel, or
// db.schema.rel) names.
func (s *scope) qualified(qual []string) *relation {
	name, schema := qual[len(qual)-1], ""
	if len(qual) >= 2 {
		schema = qual[len(qual)-2]
	}
	for ; s != nil; s = s.parent {
		for i := len(s.rels) - 1; i >= 0; i-- {
			r := s.rels[i]
			if r.name != name || (schema != "" && (r.table == "" || (r.schema != "" && r.schema != schema))) {
				continue
			}
			return r
		}
	}
	return nil
}

type protector struct {
	cat    Catalog
	enc    Protected
	tables []tableRef // the statement's tables with encrypted columns
	prot   Protection
	used   *encCol // the first encrypted column the statement uses
	read   *encCol // the first encrypted column its results carry
}

func (p *protector) done() bool { return p.prot.Refusal != nil }

func (p *protector) use(c *encCol) {
	if p.used == nil {
		p.used = c
	}
}

// refuse records the first refusal: "<col> is encrypted: <what> is not
// possible". Messages hold names only, never a value of the statement.
func (p *protector) refuse(c *encCol, what string) {
	if c.column == "" {
		p.refuseText(c, c.name()+" has encrypted columns: "+what+" is not possible")
		return
	}
	p.refuseText(c, c.name()+" is encrypted: "+what+" is not possible")
}

func (p *protector) refuseText(c *encCol, msg string) {
	if p.prot.Refusal != nil {
		return
	}
	p.prot.Refusal = &Violation{Code: "0A000", Kind: "encryption", Message: msg, Hint: protectHint(c),
		Table: c.table, Column: c.column}
}

func protectHint(c *encCol) string {
	n := c.name()
	switch {
	case c.column == "":
		return "the encrypted columns of " + n + " can be written with a literal or a parameter and read as plain columns; " +
			"name the columns (a column list) so that the proxy can tell which are encrypted"
	case c.det:
		return n + " is encrypted (deterministic): it can be written with a literal or a parameter and read as a plain column; " +
			"it can also be searched with = or IN against literals or parameters"
	}
	return n + " is encrypted (randomized): it can be written with a literal or a parameter and read as a plain column; " +
		"it cannot be searched, sorted, grouped or computed on"
}

func (p *protector) encrypted(schema, table, column string) *encCol {
	if table == "" || column == "" {
		return nil
	}
	det, ok := p.enc.Encrypted(schema, table, column)
	if !ok {
		return nil
	}
	return &encCol{schema: schema, table: table, column: column, det: det}
}

func (p *protector) catalog(schema, table string) ([]string, bool) {
	if p.cat == nil || table == "" {
		return nil, false
	}
	cols, ok := p.cat.Columns(schema, table)
	if !ok {
		return nil, false
	}
	return columnNames(cols), true
}

// lookup says what r knows of column name.
func (p *protector) lookup(r *relation, name string) (colStatus, *encCol) {
	best := colAbsent
	switch {
	case r.joined != nil:
		for _, j := range r.joined {
			st, c := p.lookup(j, name)
			if st == colEnc {
				return st, c
			}
			best = max(best, st)
		}
		return best, nil
	case r.table != "":
		real := name
		if r.cols != nil {
			i := slices.Index(r.cols, name)
			if i < 0 {
				return colAbsent, nil
			}
			real = r.real[i]
		}
		if c := p.encrypted(r.schema, r.table, real); c != nil {
			return colEnc, c
		}
		if r.cols != nil {
			return colPlain, nil
		}
		return colMaybe, nil
	}
	if r.open {
		best = colMaybe
	}
	for _, o := range r.out {
		if o.star != nil {
			st, c := p.lookup(o.star, name)
			if st == colEnc {
				return st, c
			}
			best = max(best, st)
			continue
		}
		if o.name == name {
			if o.enc != nil {
				return colEnc, o.enc
			}
			best = colPlain
		}
	}
	return best, nil
}

func (p *protector) hasEnc(r *relation) bool {
	switch {
	case r.joined != nil:
		return slices.ContainsFunc(r.joined, p.hasEnc)
	case r.table != "":
		return p.enc.Has(r.schema, r.table)
	}
	return p.firstEncOut(r.out) != nil
}

// columns returns all of r's columns, when they are known.
func (p *protector) columns(r *relation) ([]outCol, bool) {
	var cols []outCol
	switch {
	case r.joined != nil:
		for _, j := range r.joined {
			c, ok := p.columns(j)
			if !ok {
				return nil, false
			}
			cols = append(cols, c...)
		}
	case r.table != "":
		if r.cols == nil {
			return nil, false
		}
		for _, n := range r.cols {
			_, c := p.lookup(r, n)
			cols = append(cols, outCol{name: n, enc: c})
		}
	default:
		if r.open {
			return nil, false
		}
		for _, o := range r.out {
			if o.star == nil {
				cols = append(cols, o)
				continue
			}
			c, ok := p.columns(o.star)
			if !ok {
				return nil, false
			}
			cols = append(cols, c...)
		}
	}
	return cols, true
}

// firstEnc returns an encrypted column of r (r must have one): the first
// when r's columns are known, else the table with column "".
func (p *protector) firstEnc(r *relation) *encCol {
	if cols, ok := p.columns(r); ok {
		if c := p.firstEncOut(cols); c != nil {
			return c
		}
	}
	switch {
	case r.joined != nil:
		for _, j := range r.joined {
			if p.hasEnc(j) {
				return p.firstEnc(j)
			}
		}
	case r.table != "":
		return &encCol{schema: r.schema, table: r.table}
	default:
		if c := p.firstEncOut(r.out); c != nil {
			return c
		}
	}
	return &encCol{table: r.name}
}

func (p *protector) firstEncOut(outs []outCol) *encCol {
	for _, o := range outs {
		if o.enc != nil {
			return o.enc
		}
		if o.star != nil && p.hasEnc(o.star) {
			return p.firstEnc(o.star)
		}
	}
	return nil
}

// rename applies an alias's column list to a derived relation.
func (p *protector) rename(r *relation, name string, colnames []*pg.Node) *relation {
	if len(colnames) == 0 {
		return &relation{name: name, out: r.out, open: r.open, joined: r.joined}
	}
	cols, ok := p.columns(r)
	if !ok {
		if p.hasEnc(r) {
			p.refuse(p.firstEnc(r), "renaming the columns of a relation whose columns are not known")
		}
		return &relation{name: name, open: true}
	}
	cols = slices.Clone(cols)
	for i, c := range colnames {
		if i < len(cols) {
			cols[i].name = c.GetString_().GetSval()
		}
	}
	return &relation{name: name, out: cols}
}

// colRef is what a column reference names.
type colRef struct {
	enc   *encCol   // the encrypted column, nil for a plain one
	whole *relation // a whole-row reference to this relation
	field bool      // enc is reached through a field selection (col.field)
}

func stringsOf(nodes []*pg.Node) ([]string, bool) {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		s := n.GetString_()
		if s == nil {
			return nil, false
		}
		out = append(out, s.GetSval())
	}
	return out, true
}

// star returns the relations a `*` or `q.*` reference expands, and
// whether cr is one.
func (p *protector) star(sc *scope, cr *pg.ColumnRef) ([]*relation, bool) {
	f := cr.GetFields()
	if len(f) == 0 || f[len(f)-1].GetAStar() == nil {
		return nil, false
	}
	qual, ok := stringsOf(f[:len(f)-1])
	if !ok {
		return nil, true
	}
	if len(qual) == 0 {
		var rels []*relation
		for _, r := range sc.rels {
			if r.joined == nil {
				rels = append(rels, r)
			}
		}
		return rels, true
	}
	if r := sc.qualified(qual); r != nil {
		return []*relation{r}, true
	}
	name := qual[len(qual)-1]
	for _, t := range p.tables {
		if t.table == name {
			return []*relation{{name: name, schema: t.schema, table: t.table}}, true
		}
	}
	return nil, true
}

// resolve finds what a (non-star) column reference names.
func (p *protector) resolve(sc *scope, cr *pg.ColumnRef) colRef {
	names, ok := stringsOf(cr.GetFields())
	if !ok || len(names) == 0 {
		return colRef{}
	}
	col := names[len(names)-1]
	if len(names) == 1 {
		for s := sc; s != nil; s = s.parent {
			best := colAbsent
			for _, r := range s.rels {
				if r.joined != nil {
					continue
				}
				st, c := p.lookup(r, col)
				if st == colEnc {
					return colRef{enc: c}
				}
				best = max(best, st)
			}
			if best == colPlain {
				return colRef{}
			}
		}
		if r := sc.qualified(names); r != nil {
			return colRef{whole: r}
		}
		return colRef{enc: p.unresolved(col)}
	}
	if r := sc.qualified(names[:len(names)-1]); r != nil {
		_, c := p.lookup(r, col)
		return colRef{enc: c}
	}
	if len(names) == 2 {
		// col.field of a composite column
		if inner := p.resolve(sc, &pg.ColumnRef{Fields: cr.GetFields()[:1]}); inner.enc != nil {
			return colRef{enc: inner.enc, field: true}
		}
	}
	return colRef{enc: p.unresolved(col)}
}

// unresolved is the conservative reading of a name no relation in scope
// surely has: an encrypted column of that name of any table of the
// statement.
func (p *protector) unresolved(col string) *encCol {
	for _, t := range p.tables {
		if c := p.encrypted(t.schema, t.table, col); c != nil {
			return c
		}
	}
	return nil
}

// directEnc returns the encrypted column n is a plain reference to.
func (p *protector) directEnc(n *pg.Node, sc *scope) (*encCol, *pg.ColumnRef) {
	cr := n.GetColumnRef()
	if cr == nil {
		return nil, nil
	}
	if _, star := p.star(sc, cr); star {
		return nil, nil
	}
	rf := p.resolve(sc, cr)
	if rf.enc == nil || rf.field {
		return nil, nil
	}
	return rf.enc, cr
}

// statement analyses one top-level statement.
func (p *protector) statement(n *pg.Node) {
	switch s := n.GetNode().(type) {
	case *pg.Node_SelectStmt, *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt, *pg.Node_MergeStmt:
		if c := p.firstEncOut(p.query(n, nil)); c != nil {
			p.prot.Reads, p.read = true, c
		}
	case *pg.Node_CopyStmt:
		p.copyStmt(s.CopyStmt)
	case *pg.Node_ExplainStmt:
		// The plan is text; the statement runs only under ANALYZE, and
		// its values and searches are rewritten the same either way.
		p.statement(s.ExplainStmt.GetQuery())
		p.prot.Reads, p.prot.Copy = false, nil
	case *pg.Node_PrepareStmt:
		// EXECUTE's arguments and results pass through the proxy as
		// other statements: it can neither encrypt nor decrypt them.
		p.statement(s.PrepareStmt.GetQuery())
		if c := either(p.used, p.read); c != nil {
			p.refuse(c, "PREPARE of a statement that uses it (prepare it with the protocol's Parse message instead)")
		}
	case *pg.Node_DeclareCursorStmt:
		// FETCH returns the rows, and the proxy cannot decrypt them.
		p.statement(s.DeclareCursorStmt.GetQuery())
		if p.prot.Reads {
			p.refuse(p.read, "DECLARE CURSOR of a query that returns it")
		}
	case *pg.Node_CreateTableAsStmt:
		if c := p.firstEncOut(p.query(s.CreateTableAsStmt.GetQuery(), nil)); c != nil {
			p.refuse(c, "copying it with "+kindOf(n))
		}
	case *pg.Node_ViewStmt:
		if c := p.firstEncOut(p.query(s.ViewStmt.GetQuery(), nil)); c != nil {
			p.refuse(c, "exposing it through CREATE VIEW")
		}
	case *pg.Node_CreateStmt:
		p.createTable(s.CreateStmt)
	case *pg.Node_IndexStmt:
		p.createIndex(s.IndexStmt)
	case *pg.Node_AlterTableStmt:
		p.alterTable(s.AlterTableStmt)
	case *pg.Node_RenameStmt:
		r := s.RenameStmt
		if rv := r.GetRelation(); rv != nil {
			if c := p.encrypted(rv.GetSchemaname(), rv.GetRelname(), r.GetSubname()); c != nil {
				p.refuse(c, "renaming it")
			}
		}
		p.renameOrMove(r.GetRelation(), "renaming its table or one of its columns")
	case *pg.Node_AlterObjectSchemaStmt:
		p.renameOrMove(s.AlterObjectSchemaStmt.GetRelation(), "moving its table to another schema")
	case *pg.Node_TruncateStmt, *pg.Node_VacuumStmt, *pg.Node_LockStmt, *pg.Node_GrantStmt, *pg.Node_CommentStmt,
		*pg.Node_SecLabelStmt, *pg.Node_ClusterStmt, *pg.Node_ReindexStmt, *pg.Node_RefreshMatViewStmt,
		*pg.Node_DropStmt, *pg.Node_AlterOwnerStmt:
		// They do not compute on column values.
	default:
		p.mentions(n)
	}
}

func either(a, b *encCol) *encCol {
	if a != nil {
		return a
	}
	return b
}

// query analyses a query, or a data-modifying statement (in WITH, COPY
// or PREPARE), and returns its output columns.
func (p *protector) query(n *pg.Node, sc *scope) []outCol {
	switch v := n.GetNode().(type) {
	case *pg.Node_SelectStmt:
		return p.selectStmt(v.SelectStmt, sc)
	case *pg.Node_InsertStmt:
		return p.insert(v.InsertStmt, sc)
	case *pg.Node_UpdateStmt:
		return p.update(v.UpdateStmt, sc)
	case *pg.Node_DeleteStmt:
		return p.delete(v.DeleteStmt, sc)
	case *pg.Node_MergeStmt:
		return p.merge(v.MergeStmt, sc)
	}
	p.children(n.ProtoReflect(), sc, "a statement over it")
	return nil
}

func (p *protector) with(w *pg.WithClause, sc *scope) {
	for _, n := range w.GetCtes() {
		cte := n.GetCommonTableExpr()
		if cte == nil || p.done() {
			continue
		}
		if w.GetRecursive() {
			// Its own references see it with columns not known; the
			// finished CTE, appended below, hides this one afterwards.
			sc.ctes = append(sc.ctes, &relation{name: cte.GetCtename(), open: true})
		}
		r := p.rename(&relation{out: p.query(cte.GetCtequery(), sc)}, cte.GetCtename(), cte.GetAliascolnames())
		for _, c := range cte.GetSearchClause().GetSearchColList() {
			if st, e := p.lookup(r, c.GetString_().GetSval()); st == colEnc {
				p.refuse(e, "SEARCH … BY on it")
			}
		}
		for _, c := range cte.GetCycleClause().GetCycleColList() {
			if st, e := p.lookup(r, c.GetString_().GetSval()); st == colEnc {
				p.refuse(e, "CYCLE on it")
			}
		}
		sc.ctes = append(sc.ctes, r)
	}
}

func setOpName(op pg.SetOperation) string {
	switch op {
	case pg.SetOperation_SETOP_INTERSECT:
		return "INTERSECT"
	case pg.SetOperation_SETOP_EXCEPT:
		return "EXCEPT"
	}
	return "UNION"
}

func (p *protector) selectStmt(s *pg.SelectStmt, outer *scope) []outCol {
	if s == nil || p.done() {
		return nil
	}
	sc := &scope{parent: outer}
	p.with(s.GetWithClause(), sc)
	var outs []outCol
	switch {
	case s.GetOp() != pg.SetOperation_SETOP_NONE && s.GetOp() != pg.SetOperation_SET_OPERATION_UNDEFINED:
		l := p.selectStmt(s.GetLarg(), sc)
		r := p.selectStmt(s.GetRarg(), sc)
		if c := p.firstEncOut(append(slices.Clone(l), r...)); c != nil {
			p.refuse(c, setOpName(s.GetOp())+" of it")
		}
		for _, o := range l {
			outs = append(outs, outCol{name: o.name})
		}
	case len(s.GetValuesLists()) > 0:
		for _, row := range s.GetValuesLists() {
			p.expr(row, sc, "a VALUES list of it")
		}
		for i := range s.GetValuesLists()[0].GetList().GetItems() {
			outs = append(outs, outCol{name: "column" + strconv.Itoa(i+1)})
		}
	default:
		for _, f := range s.GetFromClause() {
			p.fromItem(f, sc)
		}
		outs = p.targets(s.GetTargetList(), sc)
		sc.targets = outs
		p.pred(s.GetWhereClause(), sc)
		p.groupBy(s.GetGroupClause(), sc)
		p.pred(s.GetHavingClause(), sc)
		for _, w := range s.GetWindowClause() {
			p.window(w.GetWindowDef(), sc)
		}
		p.distinct(s.GetDistinctClause(), sc)
	}
	sc.targets = outs
	p.sortClause(s.GetSortClause(), sc, "ORDER BY on it", true)
	p.expr(s.GetLimitCount(), sc, "LIMIT on it")
	p.expr(s.GetLimitOffset(), sc, "OFFSET on it")
	if s.GetIntoClause() != nil {
		if c := p.firstEncOut(outs); c != nil {
			p.refuse(c, "copying it with SELECT … INTO")
		}
	}
	return outs
}

// targets analyses a target list (or RETURNING) and returns its columns.
// A plain reference to an encrypted column is allowed there.
func (p *protector) targets(list []*pg.Node, sc *scope) []outCol {
	var outs []outCol
	for _, t := range list {
		rt := t.GetResTarget()
		if rt == nil {
			continue
		}
		val := rt.GetVal()
		cr := val.GetColumnRef()
		if cr == nil {
			p.expr(val, sc, "an expression over it")
			outs = append(outs, outCol{name: outputName(rt)})
			continue
		}
		if rels, star := p.star(sc, cr); star {
			for _, r := range rels {
				if cols, ok := p.columns(r); ok {
					outs = append(outs, cols...)
				} else {
					outs = append(outs, outCol{star: r})
				}
			}
			continue
		}
		rf := p.resolve(sc, cr)
		switch {
		case rf.whole != nil:
			if p.hasEnc(rf.whole) {
				p.refuse(p.firstEnc(rf.whole), "a whole-row reference to it")
			}
		case rf.enc != nil && rf.field:
			p.refuse(rf.enc, "a field of it")
		case rf.enc != nil:
			p.use(rf.enc)
			outs = append(outs, outCol{name: outputName(rt), enc: rf.enc})
			continue
		}
		outs = append(outs, outCol{name: outputName(rt)})
	}
	return outs
}

// outputName is the name PostgreSQL gives a target list entry, near
// enough: only plain references, whose names are exact, can be encrypted.
func outputName(rt *pg.ResTarget) string {
	if rt.GetName() != "" {
		return rt.GetName()
	}
	return figureName(rt.GetVal())
}

func figureName(n *pg.Node) string {
	switch v := n.GetNode().(type) {
	case *pg.Node_ColumnRef:
		if f := v.ColumnRef.GetFields(); len(f) > 0 {
			if s := f[len(f)-1].GetString_(); s != nil {
				return s.GetSval()
			}
		}
	case *pg.Node_FuncCall:
		if f := v.FuncCall.GetFuncname(); len(f) > 0 {
			return f[len(f)-1].GetString_().GetSval()
		}
	case *pg.Node_TypeCast:
		if s := figureName(v.TypeCast.GetArg()); s != "?column?" {
			return s
		}
		if f := v.TypeCast.GetTypeName().GetNames(); len(f) > 0 {
			return f[len(f)-1].GetString_().GetSval()
		}
	case *pg.Node_CoalesceExpr:
		return "coalesce"
	case *pg.Node_CaseExpr:
		return "case"
	}
	return "?column?"
}

// fromItem adds a FROM item's relations to sc.
func (p *protector) fromItem(n *pg.Node, sc *scope) {
	if p.done() {
		return
	}
	switch v := n.GetNode().(type) {
	case *pg.Node_RangeVar:
		sc.rels = append(sc.rels, p.rangeVar(v.RangeVar, sc, true))
	case *pg.Node_RangeSubselect:
		rs := v.RangeSubselect
		outs := p.query(rs.GetSubquery(), sc)
		sc.rels = append(sc.rels, p.rename(&relation{out: outs}, rs.GetAlias().GetAliasname(), rs.GetAlias().GetColnames()))
	case *pg.Node_RangeFunction:
		rf := v.RangeFunction
		name := rf.GetAlias().GetAliasname()
		for _, f := range rf.GetFunctions() {
			items := f.GetList().GetItems()
			if len(items) > 0 {
				if name == "" {
					name = figureName(items[0])
				}
				p.expr(items[0], sc, "a function in FROM over it")
			}
		}
		sc.rels = append(sc.rels, &relation{name: name, open: true})
	case *pg.Node_JoinExpr:
		p.join(v.JoinExpr, sc)
	case *pg.Node_RangeTableSample:
		ts := v.RangeTableSample
		p.fromItem(ts.GetRelation(), sc)
		p.expr(&pg.Node{Node: &pg.Node_List{List: &pg.List{Items: ts.GetArgs()}}}, sc, "TABLESAMPLE on it")
		p.expr(ts.GetRepeatable(), sc, "TABLESAMPLE on it")
	default:
		// XMLTABLE, JSON_TABLE: their expressions, and columns of their own
		p.children(n.ProtoReflect(), sc, "a table function over it")
		name := ""
		switch t := v.(type) {
		case *pg.Node_RangeTableFunc:
			name = t.RangeTableFunc.GetAlias().GetAliasname()
		case *pg.Node_JsonTable:
			name = t.JsonTable.GetAlias().GetAliasname()
		}
		sc.rels = append(sc.rels, &relation{name: name, open: true})
	}
}

// rangeVar makes the relation of a table name: a CTE (when ctes and the
// name is one in scope) or a base table.
func (p *protector) rangeVar(rv *pg.RangeVar, sc *scope, ctes bool) *relation {
	alias := rv.GetAlias()
	if ctes && rv.GetSchemaname() == "" && rv.GetCatalogname() == "" {
		if cte := sc.cte(rv.GetRelname()); cte != nil {
			name := rv.GetRelname()
			if alias != nil {
				name = alias.GetAliasname()
			}
			return p.rename(cte, name, alias.GetColnames())
		}
	}
	r := &relation{name: rv.GetRelname(), schema: rv.GetSchemaname(), table: rv.GetRelname()}
	if alias != nil {
		r.name = alias.GetAliasname()
	}
	if cols, ok := p.catalog(r.schema, r.table); ok {
		r.cols, r.real = cols, slices.Clone(cols)
	}
	if colnames := alias.GetColnames(); len(colnames) > 0 {
		if r.cols == nil {
			if p.enc.Has(r.schema, r.table) {
				p.refuse(&encCol{schema: r.schema, table: r.table}, "renaming its columns in FROM when the catalog does not know them")
			}
			return r
		}
		for i, c := range colnames {
			if i < len(r.cols) {
				r.cols[i] = c.GetString_().GetSval()
			}
		}
	}
	return r
}

func (p *protector) join(j *pg.JoinExpr, sc *scope) {
	start := len(sc.rels)
	p.fromItem(j.GetLarg(), sc)
	mid := len(sc.rels)
	p.fromItem(j.GetRarg(), sc)
	left, right := slices.Clone(sc.rels[start:mid]), slices.Clone(sc.rels[mid:])
	both := append(slices.Clone(left), right...)
	for _, u := range j.GetUsingClause() {
		for _, r := range both {
			if st, c := p.lookup(r, u.GetString_().GetSval()); st == colEnc {
				p.refuse(c, "JOIN … USING on it")
			}
		}
	}
	if j.GetIsNatural() {
		p.natural(left, right)
	}
	p.pred(j.GetQuals(), sc)
	if a := j.GetAlias(); a != nil {
		sc.rels = append(sc.rels, p.rename(&relation{joined: both}, a.GetAliasname(), a.GetColnames()))
	}
}

func (p *protector) natural(left, right []*relation) {
	lc, lok := p.columns(&relation{joined: left})
	rc, rok := p.columns(&relation{joined: right})
	if !lok || !rok {
		for _, r := range append(slices.Clone(left), right...) {
			if p.hasEnc(r) {
				p.refuse(p.firstEnc(r), "NATURAL JOIN on it")
				return
			}
		}
		return
	}
	for _, l := range lc {
		for _, r := range rc {
			if l.name == r.name && (l.enc != nil || r.enc != nil) {
				p.refuse(either(l.enc, r.enc), "NATURAL JOIN on it")
				return
			}
		}
	}
}

// pred analyses a condition (WHERE, JOIN … ON, HAVING, FILTER), where the
// equality searches are allowed.
func (p *protector) pred(n *pg.Node, sc *scope) {
	if n == nil || n.GetNode() == nil || p.done() {
		return
	}
	switch v := n.GetNode().(type) {
	case *pg.Node_BoolExpr:
		for _, a := range v.BoolExpr.GetArgs() {
			p.pred(a, sc)
		}
		return
	case *pg.Node_AExpr:
		if p.search(v.AExpr, sc) {
			return
		}
	}
	p.expr(n, sc, "using it as a condition")
}

// simpleOp returns the operator of an A_Expr named without a schema.
func simpleOp(e *pg.A_Expr) (string, bool) {
	if len(e.GetName()) != 1 {
		return "", false
	}
	s := e.GetName()[0].GetString_()
	return s.GetSval(), s != nil
}

// search handles an equality search on an encrypted column, recording it
// or refusing it; false when e is not one.
func (p *protector) search(e *pg.A_Expr, sc *scope) bool {
	op, ok := simpleOp(e)
	if !ok || (op != "=" && op != "<>") {
		return false
	}
	switch e.GetKind() {
	case pg.A_Expr_Kind_AEXPR_OP:
		c, cr := p.directEnc(e.GetLexpr(), sc)
		other, first := e.GetRexpr(), true
		if c == nil {
			c, cr = p.directEnc(e.GetRexpr(), sc)
			other, first = e.GetLexpr(), false
		}
		if c == nil {
			return false
		}
		kind := SearchEq
		if op == "<>" {
			kind = SearchNe
		}
		p.addSearch(c, cr, e, kind, first, []*pg.Node{other})
		return true
	case pg.A_Expr_Kind_AEXPR_IN:
		c, cr := p.directEnc(e.GetLexpr(), sc)
		items := e.GetRexpr().GetList().GetItems()
		if c == nil || len(items) == 0 {
			return false
		}
		kind := SearchIn
		if op == "<>" {
			kind = SearchNotIn
		}
		p.addSearch(c, cr, e, kind, true, items)
		return true
	}
	return false
}

func (p *protector) addSearch(c *encCol, cr *pg.ColumnRef, e *pg.A_Expr, op SearchOp, first bool, vals []*pg.Node) {
	for _, v := range vals {
		if v.GetColumnRef() != nil {
			p.refuse(c, "comparing it with another column (a join)")
			return
		}
	}
	if !c.det {
		p.refuseText(c, c.name()+" is encrypted: randomized encryption cannot be searched; declare it deterministic to search by equality")
		return
	}
	s := ProtectedSearch{Schema: c.schema, Table: c.table, Column: c.column, Op: op,
		ColumnPos: int(cr.GetLocation()) + 1, OpPos: int(e.GetLocation()) + 1, ColumnFirst: first}
	for _, v := range vals {
		src := value(v, true)
		switch {
		case src.Kind == SourceNull:
			p.refuse(c, "comparing it with NULL (use IS NULL)")
			return
		case castAway(src):
			p.refuse(c, "a search on it against a value cast to another type")
			return
		case !plainValue(src):
			p.refuse(c, "a search on it against an expression")
			return
		}
		s.Values = append(s.Values, src)
	}
	p.use(c)
	p.prot.Searches = append(p.prot.Searches, s)
}

// plainValue: a literal or parameter the proxy can replace by its
// ciphertext: uncast, or cast to a string type (a cast to another type
// would make the database read the ciphertext as that type).
func plainValue(s Source) bool {
	return (s.Kind == SourceLiteral || s.Kind == SourceParam) && (s.TypeOID == 0 || stringType(s.TypeOID))
}

// castAway: a literal or parameter cast to a type other than a string
// type.
func castAway(s Source) bool {
	return (s.Kind == SourceLiteral || s.Kind == SourceParam) && !plainValue(s)
}

// writable: a value the proxy can write into an encrypted column.
func writable(s Source) bool {
	return plainValue(s) || s.Kind == SourceNull || s.Kind == SourceDefault
}

// expr analyses an expression. ctx names the construct n is an operand of
// ("function lower on it"), for when n is itself an encrypted column.
func (p *protector) expr(n *pg.Node, sc *scope, ctx string) {
	if n == nil || p.done() {
		return
	}
	switch v := n.GetNode().(type) {
	case nil, *pg.Node_AConst, *pg.Node_ParamRef, *pg.Node_SetToDefault, *pg.Node_String_, *pg.Node_Integer,
		*pg.Node_Float, *pg.Node_Boolean, *pg.Node_BitString, *pg.Node_TypeName, *pg.Node_SqlvalueFunction, *pg.Node_AStar:
	case *pg.Node_ColumnRef:
		p.columnUse(v.ColumnRef, sc, ctx)
	case *pg.Node_List:
		for _, it := range v.List.GetItems() {
			p.expr(it, sc, ctx)
		}
	case *pg.Node_AExpr:
		what := aexprName(v.AExpr)
		p.expr(v.AExpr.GetLexpr(), sc, what)
		p.expr(v.AExpr.GetRexpr(), sc, what)
	case *pg.Node_BoolExpr:
		for _, a := range v.BoolExpr.GetArgs() {
			p.expr(a, sc, "a boolean operator on it")
		}
	case *pg.Node_NullTest:
		if c, _ := p.directEnc(v.NullTest.GetArg(), sc); c != nil {
			p.use(c)
			return
		}
		p.expr(v.NullTest.GetArg(), sc, "IS NULL on it")
	case *pg.Node_BooleanTest:
		p.expr(v.BooleanTest.GetArg(), sc, "IS TRUE or IS FALSE on it")
	case *pg.Node_FuncCall:
		p.funcCall(v.FuncCall, sc)
	case *pg.Node_TypeCast:
		p.expr(v.TypeCast.GetArg(), sc, "a cast of it")
	case *pg.Node_CollateClause:
		p.expr(v.CollateClause.GetArg(), sc, "COLLATE on it")
	case *pg.Node_CaseExpr:
		p.expr(v.CaseExpr.GetArg(), sc, "CASE over it")
		for _, w := range v.CaseExpr.GetArgs() {
			p.expr(w.GetCaseWhen().GetExpr(), sc, "CASE over it")
			p.expr(w.GetCaseWhen().GetResult(), sc, "CASE over it")
		}
		p.expr(v.CaseExpr.GetDefresult(), sc, "CASE over it")
	case *pg.Node_CoalesceExpr:
		for _, a := range v.CoalesceExpr.GetArgs() {
			p.expr(a, sc, "COALESCE over it")
		}
	case *pg.Node_MinMaxExpr:
		what := "GREATEST over it"
		if v.MinMaxExpr.GetOp() == pg.MinMaxOp_IS_LEAST {
			what = "LEAST over it"
		}
		for _, a := range v.MinMaxExpr.GetArgs() {
			p.expr(a, sc, what)
		}
	case *pg.Node_SubLink:
		p.sublink(v.SubLink, sc)
	case *pg.Node_RowExpr:
		for _, a := range v.RowExpr.GetArgs() {
			p.expr(a, sc, "a row expression of it")
		}
	case *pg.Node_AArrayExpr:
		for _, a := range v.AArrayExpr.GetElements() {
			p.expr(a, sc, "an array of it")
		}
	case *pg.Node_AIndirection:
		p.expr(v.AIndirection.GetArg(), sc, "a subscript or field of it")
		for _, i := range v.AIndirection.GetIndirection() {
			p.expr(i, sc, "a subscript over it")
		}
	case *pg.Node_GroupingFunc:
		for _, a := range v.GroupingFunc.GetArgs() {
			p.expr(a, sc, "GROUPING on it")
		}
	case *pg.Node_NamedArgExpr:
		p.expr(v.NamedArgExpr.GetArg(), sc, ctx)
	case *pg.Node_ResTarget:
		p.expr(v.ResTarget.GetVal(), sc, ctx)
	case *pg.Node_SelectStmt, *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt, *pg.Node_MergeStmt:
		if c := p.firstEncOut(p.query(n, sc)); c != nil {
			p.refuse(c, "a subquery returning it inside an expression")
		}
	default:
		p.children(n.ProtoReflect(), sc, "an expression over it")
	}
}

// children analyses the expressions below m, each with ctx.
func (p *protector) children(m protoreflect.Message, sc *scope, ctx string) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil || fd.IsMap() {
			return true
		}
		each := func(cm protoreflect.Message) {
			if node, ok := cm.Interface().(*pg.Node); ok {
				p.expr(node, sc, ctx)
			} else {
				p.children(cm, sc, ctx)
			}
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				each(l.Get(i).Message())
			}
		} else {
			each(v.Message())
		}
		return !p.done()
	})
}

// columnUse is a column reference where no use of an encrypted column is
// allowed.
func (p *protector) columnUse(cr *pg.ColumnRef, sc *scope, ctx string) {
	if rels, star := p.star(sc, cr); star {
		for _, r := range rels {
			if p.hasEnc(r) {
				p.refuse(p.firstEnc(r), ctx)
				return
			}
		}
		return
	}
	rf := p.resolve(sc, cr)
	switch {
	case rf.whole != nil:
		if p.hasEnc(rf.whole) {
			p.refuse(p.firstEnc(rf.whole), "a whole-row reference to it")
		}
	case rf.enc != nil && rf.field:
		p.refuse(rf.enc, "a field of it")
	case rf.enc != nil:
		p.refuse(rf.enc, ctx)
	}
}

// aexprName names an operator for a message: "operator > on it".
func aexprName(e *pg.A_Expr) string {
	parts, _ := stringsOf(e.GetName())
	op := strings.Join(parts, ".")
	not := strings.HasPrefix(op, "!")
	pick := func(yes, no string) string {
		if not {
			return no
		}
		return yes
	}
	switch e.GetKind() {
	case pg.A_Expr_Kind_AEXPR_OP:
		if op == "=" || op == "<>" {
			return "operator " + op + " on it outside WHERE, JOIN … ON and HAVING"
		}
		return "operator " + op + " on it"
	case pg.A_Expr_Kind_AEXPR_OP_ANY:
		return "operator " + op + " ANY on it"
	case pg.A_Expr_Kind_AEXPR_OP_ALL:
		return "operator " + op + " ALL on it"
	case pg.A_Expr_Kind_AEXPR_DISTINCT:
		return "IS DISTINCT FROM on it"
	case pg.A_Expr_Kind_AEXPR_NOT_DISTINCT:
		return "IS NOT DISTINCT FROM on it"
	case pg.A_Expr_Kind_AEXPR_NULLIF:
		return "NULLIF on it"
	case pg.A_Expr_Kind_AEXPR_IN:
		if op == "<>" {
			return "NOT IN on it outside WHERE, JOIN … ON and HAVING"
		}
		return "IN on it outside WHERE, JOIN … ON and HAVING"
	case pg.A_Expr_Kind_AEXPR_LIKE:
		return pick("LIKE on it", "NOT LIKE on it")
	case pg.A_Expr_Kind_AEXPR_ILIKE:
		return pick("ILIKE on it", "NOT ILIKE on it")
	case pg.A_Expr_Kind_AEXPR_SIMILAR:
		return pick("SIMILAR TO on it", "NOT SIMILAR TO on it")
	case pg.A_Expr_Kind_AEXPR_BETWEEN, pg.A_Expr_Kind_AEXPR_NOT_BETWEEN, pg.A_Expr_Kind_AEXPR_BETWEEN_SYM,
		pg.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM:
		return "BETWEEN on it"
	}
	return "an operator on it"
}

func (p *protector) funcCall(fc *pg.FuncCall, sc *scope) {
	parts, _ := stringsOf(fc.GetFuncname())
	name := ""
	if len(parts) > 0 {
		name = strings.ToLower(parts[len(parts)-1])
	}
	what := "function " + name + " on it"
	args := fc.GetArgs()
	count := name == "count" && (len(parts) == 1 || parts[0] == "pg_catalog")
	if count && len(args) == 1 && len(fc.GetAggOrder()) == 0 && !fc.GetFuncVariadic() && !fc.GetAggWithinGroup() {
		// count(col) counts the rows where col is not null, which its
		// ciphertext is exactly when it is; count(DISTINCT col) compares
		// ciphertexts, which only deterministic encryption keeps apart.
		if c, _ := p.directEnc(args[0], sc); c != nil {
			if fc.GetAggDistinct() && !c.det {
				p.refuse(c, "count(DISTINCT …) on it")
				return
			}
			p.use(c)
			args = nil
		}
	}
	for _, a := range args {
		p.expr(a, sc, what)
	}
	order := "ORDER BY on it"
	if fc.GetAggWithinGroup() {
		order = what
	}
	p.sortClause(fc.GetAggOrder(), sc, order, false)
	p.pred(fc.GetAggFilter(), sc)
	p.window(fc.GetOver(), sc)
}

func (p *protector) sublink(s *pg.SubLink, sc *scope) {
	outs := p.query(s.GetSubselect(), sc)
	switch s.GetSubLinkType() {
	case pg.SubLinkType_EXISTS_SUBLINK:
	case pg.SubLinkType_ANY_SUBLINK, pg.SubLinkType_ALL_SUBLINK, pg.SubLinkType_ROWCOMPARE_SUBLINK:
		p.expr(s.GetTestexpr(), sc, "comparing it with a subquery")
		if c := p.firstEncOut(outs); c != nil {
			p.refuse(c, "comparing it with a subquery")
		}
	default:
		if c := p.firstEncOut(outs); c != nil {
			p.refuse(c, "a subquery returning it inside an expression")
		}
	}
}

// keyEnc reads an ORDER BY, GROUP BY, DISTINCT ON or PARTITION BY item:
// key is true when it is a column (by reference, or, when outputs, by
// output name or position), and c the encrypted column it is, if one.
func (p *protector) keyEnc(n *pg.Node, sc *scope, outputs bool) (c *encCol, key bool) {
	if outputs {
		if ac := n.GetAConst(); ac != nil {
			if iv, ok := ac.GetVal().(*pg.A_Const_Ival); ok {
				return p.targetAt(sc.targets, int(iv.Ival.GetIval())), true
			}
		}
	}
	cr := n.GetColumnRef()
	if cr == nil {
		return nil, false
	}
	if rels, star := p.star(sc, cr); star {
		for _, r := range rels {
			if p.hasEnc(r) {
				return p.firstEnc(r), true
			}
		}
		return nil, true
	}
	if f := cr.GetFields(); outputs && len(f) == 1 {
		name := f[0].GetString_().GetSval()
		for _, t := range sc.targets {
			if t.star == nil && t.name == name && t.enc != nil {
				return t.enc, true
			}
		}
	}
	rf := p.resolve(sc, cr)
	switch {
	case rf.whole != nil:
		if p.hasEnc(rf.whole) {
			return p.firstEnc(rf.whole), true
		}
		return nil, true
	case rf.field:
		return nil, false
	}
	return rf.enc, true
}

// targetAt returns the encrypted column at output position k (from 1);
// past a * whose columns are not known, any encrypted column from there.
func (p *protector) targetAt(targets []outCol, k int) *encCol {
	pos := 0
	for i, t := range targets {
		if t.star != nil {
			return p.firstEncOut(targets[i:])
		}
		if pos++; pos == k {
			return t.enc
		}
	}
	return nil
}

func (p *protector) groupBy(items []*pg.Node, sc *scope) {
	for _, n := range items {
		if gs := n.GetGroupingSet(); gs != nil {
			p.groupBy(gs.GetContent(), sc)
			continue
		}
		c, key := p.keyEnc(n, sc, true)
		switch {
		case !key:
			p.expr(n, sc, "GROUP BY on it")
		case c == nil:
		case c.det:
			p.use(c)
		default:
			p.refuse(c, "GROUP BY on it")
		}
	}
}

func (p *protector) distinct(items []*pg.Node, sc *scope) {
	if len(items) == 1 && items[0].GetNode() == nil { // SELECT DISTINCT
		for _, t := range sc.targets {
			switch {
			case t.star != nil:
				if p.hasEnc(t.star) {
					p.refuse(p.firstEnc(t.star), "DISTINCT on it")
				}
			case t.enc != nil && !t.enc.det:
				p.refuse(t.enc, "DISTINCT on it")
			}
		}
		return
	}
	for _, n := range items {
		if c, key := p.keyEnc(n, sc, true); c != nil {
			p.refuse(c, "DISTINCT ON on it")
		} else if !key {
			p.expr(n, sc, "DISTINCT ON on it")
		}
	}
}

func (p *protector) sortClause(items []*pg.Node, sc *scope, what string, outputs bool) {
	for _, n := range items {
		key := n
		if sb := n.GetSortBy(); sb != nil {
			key = sb.GetNode()
		}
		if c, isKey := p.keyEnc(key, sc, outputs); c != nil {
			p.refuse(c, what)
		} else if !isKey {
			p.expr(key, sc, what)
		}
	}
}

func (p *protector) window(w *pg.WindowDef, sc *scope) {
	if w == nil {
		return
	}
	for _, n := range w.GetPartitionClause() {
		if c, key := p.keyEnc(n, sc, false); c != nil {
			p.refuse(c, "window PARTITION BY on it")
		} else if !key {
			p.expr(n, sc, "window PARTITION BY on it")
		}
	}
	p.sortClause(w.GetOrderClause(), sc, "window ORDER BY on it", false)
	p.expr(w.GetStartOffset(), sc, "a window frame on it")
	p.expr(w.GetEndOffset(), sc, "a window frame on it")
}

// insert analyses an INSERT: the values it writes into encrypted
// columns, ON CONFLICT, and RETURNING (its output columns).
func (p *protector) insert(ins *pg.InsertStmt, outer *scope) []outCol {
	sc := &scope{parent: outer}
	p.with(ins.GetWithClause(), sc)
	target := p.rangeVar(ins.GetRelation(), sc, false)
	schema, table := target.schema, target.table
	var cols []string
	var indirect []bool
	for _, c := range ins.GetCols() {
		rt := c.GetResTarget()
		cols = append(cols, rt.GetName())
		indirect = append(indirect, len(rt.GetIndirection()) > 0)
	}
	catCols, known := p.catalog(schema, table)
	unknownColumns := func() {
		p.refuse(&encCol{schema: schema, table: table}, "INSERT without a column list into it when the catalog does not know its columns")
	}
	sel := ins.GetSelectStmt().GetSelectStmt()
	switch {
	case ins.GetSelectStmt() == nil: // DEFAULT VALUES
	case sel != nil && plainValues(sel):
		p.with(sel.GetWithClause(), sc)
		if len(cols) == 0 {
			if !known {
				if p.enc.Has(schema, table) {
					unknownColumns()
				}
				break
			}
			cols = catCols[:min(len(catCols), len(sel.GetValuesLists()[0].GetList().GetItems()))]
			indirect = make([]bool, len(cols))
		}
		for _, row := range sel.GetValuesLists() {
			for i, item := range row.GetList().GetItems() {
				var c *encCol
				if i < len(cols) {
					c = p.encrypted(schema, table, cols[i])
				}
				if c == nil {
					p.expr(item, sc, "writing it into another column")
					continue
				}
				p.write(c, item, indirect[i], false)
			}
		}
	default: // INSERT … SELECT, or VALUES with ORDER BY, LIMIT …
		outs := p.query(ins.GetSelectStmt(), sc)
		if len(cols) == 0 {
			if !known {
				if p.enc.Has(schema, table) {
					unknownColumns()
				}
				break
			}
			// The first len(outs) columns, or all when a * of the query
			// has columns not known.
			cols = catCols
			if _, all := p.columns(&relation{out: outs}); all {
				cols = catCols[:min(len(catCols), len(outs))]
			}
		}
		// Name a randomized column first: a query can never fill one.
		var first *encCol
		for _, name := range cols {
			if c := p.encrypted(schema, table, name); c != nil && (first == nil || first.det && !c.det) {
				first = c
			}
		}
		if first != nil {
			p.refuse(first, "INSERT … SELECT into it")
		}
		if c := p.firstEncOut(outs); c != nil {
			p.refuse(c, "copying it with INSERT … SELECT")
		}
	}
	if oc := ins.GetOnConflictClause(); oc != nil {
		excluded := *target
		excluded.name = "excluded"
		osc := &scope{parent: sc, rels: []*relation{target, &excluded}}
		infer := oc.GetInfer()
		for _, n := range infer.GetIndexElems() {
			ie := n.GetIndexElem()
			if ie.GetExpr() != nil {
				p.expr(ie.GetExpr(), osc, "an ON CONFLICT index expression on it")
				continue
			}
			if c := p.encrypted(schema, table, ie.GetName()); c != nil {
				if !c.det || len(ie.GetOpclass()) > 0 || len(ie.GetCollation()) > 0 {
					p.refuse(c, "ON CONFLICT on it")
				}
				p.use(c)
			}
		}
		p.expr(infer.GetWhereClause(), osc, "an ON CONFLICT index predicate on it")
		if oc.GetAction() == pg.OnConflictAction_ONCONFLICT_UPDATE {
			p.assignments(oc.GetTargetList(), target, osc, true)
			p.pred(oc.GetWhereClause(), osc)
		}
	}
	return p.targets(ins.GetReturningList(), &scope{parent: sc, rels: []*relation{target}})
}

// write checks the value an INSERT or UPDATE writes into encrypted column
// c, and records it. excluded: EXCLUDED.<same column> is allowed (the
// value the INSERT's row proposes, already encrypted).
func (p *protector) write(c *encCol, val *pg.Node, indirect, excluded bool) {
	if indirect {
		p.refuse(c, "writing part of it (a subscript or field)")
		return
	}
	if excluded && excludedColumn(val) == c.column {
		p.use(c)
		return
	}
	v := value(val, true)
	switch {
	case writable(v):
		p.use(c)
		p.prot.Values = append(p.prot.Values, ProtectedValue{Schema: c.schema, Table: c.table, Column: c.column,
			Deterministic: c.det, Value: v})
	case castAway(v):
		p.refuse(c, "writing a value cast to another type into it")
	case val.GetColumnRef() != nil:
		p.refuse(c, "writing another column into it")
	case val.GetSubLink() != nil:
		p.refuse(c, "writing a subquery into it")
	default:
		p.refuse(c, "writing an expression into it")
	}
}

// assignments analyses a SET list of an UPDATE (or of ON CONFLICT DO
// UPDATE, upsert) on target.
func (p *protector) assignments(list []*pg.Node, target *relation, sc *scope, upsert bool) {
	for _, n := range list {
		rt := n.GetResTarget()
		if rt == nil || p.done() {
			continue
		}
		c := p.encrypted(target.schema, target.table, rt.GetName())
		val := rt.GetVal()
		if mar := val.GetMultiAssignRef(); mar != nil {
			row := mar.GetSource().GetRowExpr()
			if row == nil {
				// SET (a, b) = (SELECT …): the source is the same in
				// every column of the list; analyse it once.
				if mar.GetColno() == 1 {
					p.expr(mar.GetSource(), sc, "writing it into another column")
				}
				if c != nil {
					p.refuse(c, "writing a subquery into it")
				}
				continue
			}
			val = nil
			if i := int(mar.GetColno()) - 1; i >= 0 && i < len(row.GetArgs()) {
				val = row.GetArgs()[i]
			}
		}
		if c == nil {
			p.expr(val, sc, "writing it into another column")
			continue
		}
		p.write(c, val, len(rt.GetIndirection()) > 0, upsert)
	}
}

func (p *protector) update(u *pg.UpdateStmt, outer *scope) []outCol {
	sc := &scope{parent: outer}
	p.with(u.GetWithClause(), sc)
	target := p.rangeVar(u.GetRelation(), sc, false)
	sc.rels = append(sc.rels, target)
	for _, f := range u.GetFromClause() {
		p.fromItem(f, sc)
	}
	p.assignments(u.GetTargetList(), target, sc, false)
	p.pred(u.GetWhereClause(), sc)
	return p.targets(u.GetReturningList(), sc)
}

func (p *protector) delete(d *pg.DeleteStmt, outer *scope) []outCol {
	sc := &scope{parent: outer}
	p.with(d.GetWithClause(), sc)
	sc.rels = append(sc.rels, p.rangeVar(d.GetRelation(), sc, false))
	for _, f := range d.GetUsingClause() {
		p.fromItem(f, sc)
	}
	p.pred(d.GetWhereClause(), sc)
	return p.targets(d.GetReturningList(), sc)
}

// merge refuses a MERGE whose target or source has an encrypted column:
// its WHEN clauses mix conditions, inserts and updates in ways the proxy
// does not rewrite.
func (p *protector) merge(m *pg.MergeStmt, outer *scope) []outCol {
	sc := &scope{parent: outer}
	p.with(m.GetWithClause(), sc)
	sc.rels = append(sc.rels, p.rangeVar(m.GetRelation(), sc, false))
	p.fromItem(m.GetSourceRelation(), sc)
	for _, r := range sc.rels {
		if r.joined == nil && p.hasEnc(r) {
			p.refuse(p.firstEnc(r), "MERGE on it")
			return nil
		}
	}
	p.expr(m.GetJoinCondition(), sc, "MERGE on it")
	for _, w := range m.GetMergeWhenClauses() {
		p.expr(w, sc, "MERGE on it")
	}
	return p.targets(m.GetReturningList(), sc)
}

func (p *protector) copyStmt(c *pg.CopyStmt) {
	if q := c.GetQuery(); q != nil {
		if e := p.firstEncOut(p.query(q, nil)); e != nil {
			p.refuse(e, "exporting it with COPY … TO")
		}
		return
	}
	rv := c.GetRelation()
	schema, table := rv.GetSchemaname(), rv.GetRelname()
	if !p.enc.Has(schema, table) {
		return
	}
	names, _ := stringsOf(c.GetAttlist())
	if len(names) == 0 {
		cols, ok := p.catalog(schema, table)
		if !ok {
			p.refuse(&encCol{schema: schema, table: table}, "COPY without a column list when the catalog does not know its columns")
			return
		}
		names = cols
	}
	var fields []ProtectedCopyColumn
	var first *encCol
	for i, n := range names {
		if e := p.encrypted(schema, table, n); e != nil {
			fields = append(fields, ProtectedCopyColumn{Index: i, Column: n, Deterministic: e.det})
			first = either(first, e)
		}
	}
	switch {
	case first == nil:
		return
	case !c.GetIsFrom():
		p.refuse(first, "exporting it with COPY … TO")
		return
	case c.GetIsProgram() || c.GetFilename() != "":
		p.refuse(first, "COPY … FROM a file or program into it (the proxy encrypts COPY … FROM STDIN only)")
		return
	}
	rel := &relation{name: table, schema: schema, table: table}
	p.expr(c.GetWhereClause(), &scope{rels: []*relation{rel}}, "COPY … WHERE on it")
	p.use(first)
	p.prot.Copy = fields
}

// baseScope is the scope of a DDL statement's expressions: its table.
func (p *protector) baseScope(rv *pg.RangeVar) (*relation, *scope) {
	r := p.rangeVar(&pg.RangeVar{Schemaname: rv.GetSchemaname(), Relname: rv.GetRelname()}, nil, false)
	return r, &scope{rels: []*relation{r}}
}

func (p *protector) createTable(cs *pg.CreateStmt) {
	rel, sc := p.baseScope(cs.GetRelation())
	for _, e := range cs.GetTableElts() {
		switch v := e.GetNode().(type) {
		case *pg.Node_ColumnDef:
			for _, con := range v.ColumnDef.GetConstraints() {
				p.constraint(con.GetConstraint(), rel, v.ColumnDef.GetColname(), sc)
			}
		case *pg.Node_Constraint:
			p.constraint(v.Constraint, rel, "", sc)
		}
	}
	for _, n := range cs.GetInhRelations() {
		if rv := n.GetRangeVar(); rv != nil && p.enc.Has(rv.GetSchemaname(), rv.GetRelname()) {
			parent, _ := p.baseScope(rv)
			p.refuse(p.firstEnc(parent), "a table inheriting it (INHERITS or PARTITION OF)")
		}
	}
	for _, n := range cs.GetPartspec().GetPartParams() {
		pe := n.GetPartitionElem()
		if c := p.encrypted(rel.schema, rel.table, pe.GetName()); c != nil {
			p.refuse(c, "PARTITION BY on it")
		}
		p.expr(pe.GetExpr(), sc, "PARTITION BY on it")
	}
}

// constraint analyses a table constraint, or a constraint of column.
func (p *protector) constraint(con *pg.Constraint, rel *relation, column string, sc *scope) {
	if con == nil {
		return
	}
	col := func(name string) *encCol { return p.encrypted(rel.schema, rel.table, name) }
	keys := func(list []*pg.Node) []string {
		names, _ := stringsOf(list)
		if len(names) == 0 && column != "" {
			names = []string{column}
		}
		return names
	}
	switch con.GetContype() {
	case pg.ConstrType_CONSTR_DEFAULT:
		if c := col(column); c != nil && !con.GetRawExpr().GetAConst().GetIsnull() {
			p.refuse(c, "a default for it (it would be stored unencrypted)")
		}
		p.expr(con.GetRawExpr(), sc, "a default over it")
	case pg.ConstrType_CONSTR_IDENTITY, pg.ConstrType_CONSTR_GENERATED:
		if c := col(column); c != nil {
			p.refuse(c, "a generated value for it")
		}
		p.expr(con.GetRawExpr(), sc, "a generated column over it")
	case pg.ConstrType_CONSTR_CHECK:
		p.expr(con.GetRawExpr(), sc, "a CHECK constraint on it")
	case pg.ConstrType_CONSTR_PRIMARY, pg.ConstrType_CONSTR_UNIQUE:
		for _, k := range keys(con.GetKeys()) {
			if c := col(k); c != nil && !c.det {
				p.refuse(c, "a unique constraint on it")
			}
		}
	case pg.ConstrType_CONSTR_EXCLUSION:
		for _, ex := range con.GetExclusions() {
			if items := ex.GetList().GetItems(); len(items) > 0 {
				ie := items[0].GetIndexElem()
				if c := col(ie.GetName()); c != nil {
					p.refuse(c, "an EXCLUDE constraint on it")
				}
				p.expr(ie.GetExpr(), sc, "an EXCLUDE constraint on it")
			}
		}
		p.expr(con.GetWhereClause(), sc, "an EXCLUDE constraint on it")
	case pg.ConstrType_CONSTR_FOREIGN:
		for _, k := range keys(con.GetFkAttrs()) {
			if c := col(k); c != nil {
				p.refuse(c, "a foreign key on it")
			}
		}
		pk := con.GetPktable()
		pkAttrs, _ := stringsOf(con.GetPkAttrs())
		for _, k := range pkAttrs {
			if c := p.encrypted(pk.GetSchemaname(), pk.GetRelname(), k); c != nil {
				p.refuse(c, "a foreign key on it")
			}
		}
	}
}

func (p *protector) createIndex(is *pg.IndexStmt) {
	rel, sc := p.baseScope(is.GetRelation())
	for _, n := range append(slices.Clone(is.GetIndexParams()), is.GetIndexIncludingParams()...) {
		ie := n.GetIndexElem()
		if ie.GetExpr() != nil {
			p.expr(ie.GetExpr(), sc, "an index expression on it")
			continue
		}
		c := p.encrypted(rel.schema, rel.table, ie.GetName())
		switch {
		case c == nil:
		case len(ie.GetOpclass()) > 0 || len(ie.GetCollation()) > 0:
			p.refuse(c, "an index operator class or collation on it")
		case (is.GetUnique() || is.GetPrimary()) && !c.det:
			p.refuse(c, "a unique index on it")
		}
	}
	p.expr(is.GetWhereClause(), sc, "an index predicate on it")
}

func (p *protector) alterTable(at *pg.AlterTableStmt) {
	rel, sc := p.baseScope(at.GetRelation())
	for _, n := range at.GetCmds() {
		cmd := n.GetAlterTableCmd()
		if cmd == nil {
			continue
		}
		c := p.encrypted(rel.schema, rel.table, cmd.GetName())
		switch cmd.GetSubtype() {
		case pg.AlterTableType_AT_AddColumn:
			if cd := cmd.GetDef().GetColumnDef(); cd != nil {
				for _, con := range cd.GetConstraints() {
					p.constraint(con.GetConstraint(), rel, cd.GetColname(), sc)
				}
			}
		case pg.AlterTableType_AT_AddConstraint:
			p.constraint(cmd.GetDef().GetConstraint(), rel, "", sc)
		case pg.AlterTableType_AT_ColumnDefault:
			if c != nil && cmd.GetDef() != nil && !cmd.GetDef().GetAConst().GetIsnull() {
				p.refuse(c, "a default for it (it would be stored unencrypted)")
			}
			p.expr(cmd.GetDef(), sc, "a default over it")
		case pg.AlterTableType_AT_AlterColumnType:
			if c != nil {
				p.refuse(c, "changing its type")
			}
			p.expr(cmd.GetDef().GetColumnDef().GetRawDefault(), sc, "ALTER COLUMN … USING over it")
		case pg.AlterTableType_AT_DropColumn, pg.AlterTableType_AT_DropNotNull, pg.AlterTableType_AT_SetNotNull,
			pg.AlterTableType_AT_SetStatistics, pg.AlterTableType_AT_SetStorage, pg.AlterTableType_AT_SetCompression,
			pg.AlterTableType_AT_SetOptions, pg.AlterTableType_AT_ResetOptions, pg.AlterTableType_AT_DropConstraint,
			pg.AlterTableType_AT_ValidateConstraint:
			// They change no value (a constraint's name is not a column's).
		default:
			if c != nil {
				p.refuse(c, "changing it with ALTER TABLE")
			}
			p.expr(cmd.GetDef(), sc, "ALTER TABLE over it")
		}
	}
}

// renameOrMove refuses renaming or moving a table with encrypted
// columns, or one of them: the configuration names them.
func (p *protector) renameOrMove(rv *pg.RangeVar, what string) {
	if rv == nil || !p.enc.Has(rv.GetSchemaname(), rv.GetRelname()) {
		return
	}
	r, _ := p.baseScope(rv)
	p.refuse(p.firstEnc(r), what)
}

// mentions is the net for the statements the analysis does not know
// (CREATE TRIGGER, CREATE POLICY, CREATE RULE, CREATE FUNCTION … BEGIN
// ATOMIC …): any name in them that is an encrypted column of a table the
// statement names refuses it.
func (p *protector) mentions(n *pg.Node) {
	kind := kindOf(n)
	var visit func(m protoreflect.Message)
	visit = func(m protoreflect.Message) {
		if _, ok := m.Interface().(*pg.A_Const); ok || p.done() {
			return
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.Kind() == protoreflect.StringKind && !fd.IsList():
				if c := p.unresolved(v.String()); c != nil {
					p.refuse(c, kind+" naming it")
				}
			case fd.Message() == nil || fd.IsMap():
			case fd.IsList():
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					visit(l.Get(i).Message())
				}
			default:
				visit(v.Message())
			}
			return !p.done()
		})
	}
	visit(n.ProtoReflect())
}
