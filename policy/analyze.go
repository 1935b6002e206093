package policy

import (
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Analyze finds, for each statement of a parse result (a Query text may
// hold several), its kind, the functions it calls and the writes whose
// values the rules judge. cat may be nil: then no table is known.
//
// What it finds:
//
//   - INSERT … VALUES: one Write with a row per VALUES list. Without a
//     column list the columns are the catalog's (the first as many as the
//     rows have values); a table the catalog does not know leaves Columns
//     nil and every value SourceUnknown. Columns the INSERT leaves out are
//     not in Columns. DEFAULT VALUES is one empty row. INSERT … SELECT
//     (or a VALUES with ORDER BY, LIMIT …) sets FromQuery.
//   - ON CONFLICT DO NOTHING is a WriteInsert; DO UPDATE a WriteUpsert
//     with the rows and Set, where EXCLUDED.col is the value the rows
//     insert into col when every row inserts the same one (a column the
//     INSERT leaves out: its default), else SourceUnknown.
//   - UPDATE: a WriteUpdate with Set (SET (a, b) = (1, 2) as two
//     assignments) and Where.
//   - COPY … FROM STDIN: a WriteCopy with the column list or the
//     catalog's columns, and the statement's CopyFormat and CopyOptions.
//   - MERGE: a WriteInsert (one row) per WHEN … THEN INSERT and a
//     WriteUpdate (Where set: it updates matched rows only) per THEN
//     UPDATE.
//   - Writing CTEs (WITH x AS (INSERT …)), the query of COPY (…) TO, of
//     EXPLAIN ANALYZE and of PREPARE add their writes (a $n in a PREPARE
//     is an EXECUTE argument the proxy does not see: SourceUnknown). They
//     also set DeleteWithoutWhere and UpdateWithoutWhere.
//
// Values: a constant (integer, numeric, string, boolean; a sign before a
// number is folded; integer literals such as 0x1F or 1_000 are written in
// decimal) is SourceLiteral with the text PostgreSQL reads (the parser
// has already undone doubled quotes, E-strings, U&-strings and dollar
// quoting); $n is SourceParam; NULL SourceNull; DEFAULT SourceDefault. A
// cast to one of
// the common types (see typeOID) of a string constant, a parameter or
// NULL keeps the value and sets TypeOID; a cast that may change the value
// (a type modifier such as varchar(3), an array, an unknown type, 1.5::int)
// and anything else (functions, operators, column references, subqueries)
// is SourceUnknown.
//
// Kind is described at Kinds; Functions at Statement. Analyze returns an
// error only for a nil tree or an empty statement node.
func Analyze(tree *pg.ParseResult, cat Catalog) ([]Statement, error) {
	if tree == nil {
		return nil, errors.New("policy: analyze: no parse tree")
	}
	out := make([]Statement, 0, len(tree.GetStmts()))
	for i, raw := range tree.GetStmts() {
		n := raw.GetStmt()
		if n == nil || n.GetNode() == nil {
			return nil, fmt.Errorf("policy: analyze: statement %d is empty", i+1)
		}
		a := analyzer{cat: cat}
		a.st.Kind = kindOf(n)
		a.st.Functions = functionsOf(n)
		a.collect(n, true)
		out = append(out, a.st)
	}
	return out, nil
}

type analyzer struct {
	cat Catalog
	st  Statement
}

// collect adds the writes of n and of the statements it runs: writing
// CTEs, COPY's query, EXPLAIN ANALYZE's and PREPARE's. params is false
// inside a PREPARE, whose $n are not Bind parameters.
func (a *analyzer) collect(n *pg.Node, params bool) {
	switch s := n.GetNode().(type) {
	case *pg.Node_InsertStmt:
		a.with(s.InsertStmt.GetWithClause(), params)
		if sel := s.InsertStmt.GetSelectStmt().GetSelectStmt(); sel != nil {
			a.with(sel.GetWithClause(), params)
		}
		a.st.Writes = append(a.st.Writes, a.insert(s.InsertStmt, params))
	case *pg.Node_UpdateStmt:
		u := s.UpdateStmt
		a.with(u.GetWithClause(), params)
		w := Write{Kind: WriteUpdate, Where: u.GetWhereClause() != nil}
		w.Schema, w.Table = u.GetRelation().GetSchemaname(), u.GetRelation().GetRelname()
		w.Set = a.assigns(w.Schema, w.Table, u.GetTargetList(), params, nil)
		if !w.Where {
			a.st.UpdateWithoutWhere = true
		}
		a.st.Writes = append(a.st.Writes, w)
	case *pg.Node_DeleteStmt:
		a.with(s.DeleteStmt.GetWithClause(), params)
		if s.DeleteStmt.GetWhereClause() == nil {
			a.st.DeleteWithoutWhere = true
		}
	case *pg.Node_MergeStmt:
		a.with(s.MergeStmt.GetWithClause(), params)
		a.merge(s.MergeStmt, params)
	case *pg.Node_SelectStmt:
		a.selectWith(s.SelectStmt, params)
	case *pg.Node_CopyStmt:
		a.copyStmt(s.CopyStmt, params)
	case *pg.Node_ExplainStmt:
		if explainAnalyze(s.ExplainStmt) {
			a.collect(s.ExplainStmt.GetQuery(), params)
		}
	case *pg.Node_PrepareStmt:
		a.collect(s.PrepareStmt.GetQuery(), false)
	}
}

func (a *analyzer) with(w *pg.WithClause, params bool) {
	for _, c := range w.GetCtes() {
		if cte := c.GetCommonTableExpr(); cte != nil {
			a.collect(cte.GetCtequery(), params)
		}
	}
}

// selectWith looks into the WITH clauses of a SELECT and of the arms of
// its set operations.
func (a *analyzer) selectWith(s *pg.SelectStmt, params bool) {
	if s == nil {
		return
	}
	a.with(s.GetWithClause(), params)
	a.selectWith(s.GetLarg(), params)
	a.selectWith(s.GetRarg(), params)
}

func (a *analyzer) columns(schema, table string) ([]Column, bool) {
	if a.cat == nil || table == "" {
		return nil, false
	}
	return a.cat.Columns(schema, table)
}

// typesOf returns the type of each of names in the catalog's cols (0 for
// a name it does not have).
func typesOf(cols []Column, names []string) []uint32 {
	if names == nil {
		return nil
	}
	t := make([]uint32, len(names))
	for i, n := range names {
		for _, c := range cols {
			if c.Name == n {
				t[i] = c.TypeOID
				break
			}
		}
	}
	return t
}

func columnNames(cols []Column) []string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name
	}
	return names
}

func (a *analyzer) insert(ins *pg.InsertStmt, params bool) Write {
	w := Write{Kind: WriteInsert}
	w.Schema, w.Table = ins.GetRelation().GetSchemaname(), ins.GetRelation().GetRelname()
	cat, known := a.columns(w.Schema, w.Table)
	// indirect: a column list entry such as arr[1] or comp.f writes part
	// of the column, so its value is not the column's.
	var indirect []bool
	for i, c := range ins.GetCols() {
		rt := c.GetResTarget()
		w.Columns = append(w.Columns, rt.GetName())
		if len(rt.GetIndirection()) > 0 {
			if indirect == nil {
				indirect = make([]bool, len(ins.GetCols()))
			}
			indirect[i] = true
		}
	}
	hasList := len(ins.GetCols()) > 0
	sel := ins.GetSelectStmt().GetSelectStmt()
	switch {
	case ins.GetSelectStmt() == nil: // DEFAULT VALUES: every column left out
		w.Columns = nil
		w.Rows = [][]Source{{}}
	case sel != nil && plainValues(sel):
		width := len(sel.GetValuesLists()[0].GetList().GetItems())
		if !hasList {
			if known && width <= len(cat) {
				w.Columns = columnNames(cat[:width])
			} else {
				w.Columns = nil
			}
		}
		for _, vl := range sel.GetValuesLists() {
			items := vl.GetList().GetItems()
			n := len(w.Columns)
			if w.Columns == nil {
				n = len(items)
			}
			row := make([]Source, n)
			for i := range row {
				switch {
				case w.Columns == nil || i >= len(items) || (indirect != nil && indirect[i]):
					row[i] = Source{Kind: SourceUnknown}
				default:
					row[i] = value(items[i], params)
				}
			}
			w.Rows = append(w.Rows, row)
		}
	default:
		w.FromQuery = true
		if !hasList {
			if known {
				w.Columns = columnNames(cat)
			} else {
				w.Columns = nil
			}
		}
	}
	w.ColumnTypes = typesOf(cat, w.Columns)
	if oc := ins.GetOnConflictClause(); oc != nil && oc.GetAction() == pg.OnConflictAction_ONCONFLICT_UPDATE {
		w.Kind = WriteUpsert
		w.Where = oc.GetWhereClause() != nil
		w.Set = a.assigns(w.Schema, w.Table, oc.GetTargetList(), params, &w)
	}
	return w
}

// plainValues: the SELECT is a bare VALUES list, whose rows are what is
// inserted.
func plainValues(s *pg.SelectStmt) bool {
	return len(s.GetValuesLists()) > 0 && len(s.GetSortClause()) == 0 && s.GetLimitCount() == nil &&
		s.GetLimitOffset() == nil && len(s.GetLockingClause()) == 0 && s.GetOp() == pg.SetOperation_SETOP_NONE &&
		s.GetIntoClause() == nil
}

// assigns reads a SET list. ins is the INSERT of an ON CONFLICT DO
// UPDATE, whose rows EXCLUDED refers to.
func (a *analyzer) assigns(schema, table string, targets []*pg.Node, params bool, ins *Write) []Assign {
	cat, _ := a.columns(schema, table)
	var set []Assign
	for _, t := range targets {
		rt := t.GetResTarget()
		if rt == nil {
			continue
		}
		as := Assign{Column: rt.GetName()}
		if types := typesOf(cat, []string{as.Column}); len(types) == 1 {
			as.TypeOID = types[0]
		}
		val := rt.GetVal()
		if mar := val.GetMultiAssignRef(); mar != nil {
			// SET (a, b) = (1, 2) | ROW(1, 2): the colno-th of the row;
			// a subquery is unknown.
			val = nil
			if row := mar.GetSource().GetRowExpr(); row != nil {
				if i := int(mar.GetColno()) - 1; i >= 0 && i < len(row.GetArgs()) {
					val = row.GetArgs()[i]
				}
			}
		}
		switch {
		case val == nil || len(rt.GetIndirection()) > 0:
			as.Value = Source{Kind: SourceUnknown}
		case ins != nil && excludedColumn(val) != "":
			as.Value = excludedValue(ins, excludedColumn(val))
		default:
			as.Value = value(val, params)
		}
		set = append(set, as)
	}
	return set
}

// excludedColumn returns col for EXCLUDED.col, else "".
func excludedColumn(n *pg.Node) string {
	f := n.GetColumnRef().GetFields()
	if len(f) != 2 || f[0].GetString_().GetSval() != "excluded" {
		return ""
	}
	return f[1].GetString_().GetSval()
}

// excludedValue is the value the INSERT proposes for col: the same in
// every row, or unknown.
func excludedValue(w *Write, col string) Source {
	if w.FromQuery || w.Columns == nil || len(w.Rows) == 0 {
		return Source{Kind: SourceUnknown}
	}
	i := slices.Index(w.Columns, col)
	if i < 0 {
		return Source{Kind: SourceDefault}
	}
	first := w.Rows[0][i]
	for _, r := range w.Rows[1:] {
		if !sameSource(r[i], first) {
			return Source{Kind: SourceUnknown}
		}
	}
	return first
}

func sameSource(a, b Source) bool {
	return a.Kind == b.Kind && a.Param == b.Param && a.TypeOID == b.TypeOID && string(a.Literal) == string(b.Literal)
}

func (a *analyzer) merge(m *pg.MergeStmt, params bool) {
	schema, table := m.GetRelation().GetSchemaname(), m.GetRelation().GetRelname()
	for _, c := range m.GetMergeWhenClauses() {
		wc := c.GetMergeWhenClause()
		switch wc.GetCommandType() {
		case pg.CmdType_CMD_UPDATE:
			a.st.Writes = append(a.st.Writes, Write{Kind: WriteUpdate, Schema: schema, Table: table, Where: true,
				Set: a.assigns(schema, table, wc.GetTargetList(), params, nil)})
		case pg.CmdType_CMD_INSERT:
			w := Write{Kind: WriteInsert, Schema: schema, Table: table}
			cat, known := a.columns(schema, table)
			vals := wc.GetValues()
			indirect := make([]bool, len(vals))
			for i, t := range wc.GetTargetList() {
				w.Columns = append(w.Columns, t.GetResTarget().GetName())
				if i < len(indirect) && len(t.GetResTarget().GetIndirection()) > 0 {
					indirect[i] = true
				}
			}
			switch {
			case len(vals) == 0: // INSERT DEFAULT VALUES
				w.Columns = nil
			case w.Columns == nil && known && len(vals) <= len(cat):
				w.Columns = columnNames(cat[:len(vals)])
			}
			row := make([]Source, len(vals))
			for i, v := range vals {
				if w.Columns == nil || i >= len(w.Columns) || indirect[i] {
					row[i] = Source{Kind: SourceUnknown}
				} else {
					row[i] = value(v, params)
				}
			}
			if w.Columns != nil {
				row = row[:min(len(row), len(w.Columns))]
				for len(row) < len(w.Columns) {
					row = append(row, Source{Kind: SourceUnknown})
				}
			}
			w.Rows = [][]Source{row}
			w.ColumnTypes = typesOf(cat, w.Columns)
			a.st.Writes = append(a.st.Writes, w)
		}
	}
}

func (a *analyzer) copyStmt(c *pg.CopyStmt, params bool) {
	if c.GetIsProgram() {
		a.st.CopyProgram = true
	}
	if q := c.GetQuery(); q != nil {
		a.collect(q, params)
		return
	}
	if !c.GetIsFrom() || c.GetIsProgram() || c.GetFilename() != "" {
		return // COPY TO, or from a file the server reads
	}
	w := Write{Kind: WriteCopy}
	w.Schema, w.Table = c.GetRelation().GetSchemaname(), c.GetRelation().GetRelname()
	cat, known := a.columns(w.Schema, w.Table)
	for _, n := range c.GetAttlist() {
		w.Columns = append(w.Columns, n.GetString_().GetSval())
	}
	if w.Columns == nil && known {
		w.Columns = columnNames(cat)
	}
	w.ColumnTypes = typesOf(cat, w.Columns)
	a.st.Writes = append(a.st.Writes, w)
	a.st.CopyFormat, a.st.CopyOptions = copyOptions(c.GetOptions())
}

// copyOptions reads the options of COPY FROM STDIN, with the defaults of
// its format filled in.
func copyOptions(opts []*pg.Node) (string, CopyOptions) {
	format := "text"
	var o CopyOptions
	var delim, quote, escape, null *string
	for _, n := range opts {
		d := n.GetDefElem()
		if d == nil {
			continue
		}
		switch strings.ToLower(d.GetDefname()) {
		case "format":
			format = strings.ToLower(defString(d.GetArg()))
		case "csv": // old syntax spellings the parser may keep
			format = "csv"
		case "binary":
			format = "binary"
		case "delimiter":
			s := defString(d.GetArg())
			delim = &s
		case "quote":
			s := defString(d.GetArg())
			quote = &s
		case "escape":
			s := defString(d.GetArg())
			escape = &s
		case "null":
			s := defString(d.GetArg())
			null = &s
		case "default":
			o.Default, o.HasDefault = defString(d.GetArg()), true
		case "header":
			o.Header = defBool(d.GetArg())
		case "force_null":
			o.ForceNull = defColumns(d.GetArg())
		case "force_not_null":
			o.ForceNotNull = defColumns(d.GetArg())
		}
	}
	if format == "binary" {
		return format, CopyOptions{}
	}
	first := func(s *string, def byte) byte {
		if s == nil || len(*s) == 0 {
			return def
		}
		return (*s)[0]
	}
	if format == "csv" {
		o.Delimiter = first(delim, ',')
		o.Quote = first(quote, '"')
		o.Escape = first(escape, o.Quote)
		o.Null = ""
	} else {
		o.Delimiter = first(delim, '\t')
		o.Null = `\N`
		o.ForceNull, o.ForceNotNull = nil, nil
	}
	if null != nil {
		o.Null = *null
	}
	return format, o
}

func defString(n *pg.Node) string {
	switch v := n.GetNode().(type) {
	case *pg.Node_String_:
		return v.String_.GetSval()
	case *pg.Node_Integer:
		return strconv.Itoa(int(v.Integer.GetIval()))
	case *pg.Node_Float:
		return v.Float.GetFval()
	case *pg.Node_Boolean:
		return strconv.FormatBool(v.Boolean.GetBoolval())
	case *pg.Node_TypeName: // FORMAT binary may come as a type name
		if names := v.TypeName.GetNames(); len(names) > 0 {
			return names[len(names)-1].GetString_().GetSval()
		}
	}
	return ""
}

// defBool reads a boolean option as PostgreSQL's defGetBoolean does (no
// argument is true); HEADER MATCH is a header too.
func defBool(n *pg.Node) bool {
	if n == nil {
		return true
	}
	switch v := n.GetNode().(type) {
	case *pg.Node_Boolean:
		return v.Boolean.GetBoolval()
	case *pg.Node_Integer:
		return v.Integer.GetIval() != 0
	case *pg.Node_AStar:
		return true
	}
	switch strings.ToLower(defString(n)) {
	case "true", "on", "yes", "1", "t", "y", "match":
		return true
	}
	return false
}

func defColumns(n *pg.Node) []string {
	if n.GetAStar() != nil {
		return []string{"*"}
	}
	var cols []string
	for _, it := range n.GetList().GetItems() {
		cols = append(cols, it.GetString_().GetSval())
	}
	return cols
}

func explainAnalyze(e *pg.ExplainStmt) bool {
	for _, o := range e.GetOptions() {
		if d := o.GetDefElem(); d != nil && strings.EqualFold(d.GetDefname(), "analyze") && defBool(d.GetArg()) {
			return true
		}
	}
	return false
}

// origin is what a literal's text is, which decides which casts keep it.
type origin uint8

const (
	originNone    origin = iota // not a constant
	originString                // an untyped string constant: any type's input syntax
	originInteger               // an integer constant
	originNumeric               // a numeric constant with a fraction or exponent
	originBool                  // TRUE or FALSE
	originTyped                 // a cast constant: its type's input text, not output
	originCanon                 // a cast constant whose text is its type's output text
)

// value evaluates a written expression.
func value(n *pg.Node, params bool) Source {
	s, _ := eval(n, params)
	return s
}

func eval(n *pg.Node, params bool) (Source, origin) {
	unknown := Source{Kind: SourceUnknown}
	switch v := n.GetNode().(type) {
	case *pg.Node_AConst:
		c := v.AConst
		if c.GetIsnull() {
			return Source{Kind: SourceNull}, originNone
		}
		s, o := constant(c)
		if s.Kind == SourceLiteral {
			s.Pos = int(c.GetLocation()) + 1
		}
		return s, o
	case *pg.Node_AExpr:
		e := v.AExpr
		if e.GetKind() != pg.A_Expr_Kind_AEXPR_OP || e.GetLexpr() != nil || len(e.GetName()) != 1 {
			return unknown, originNone
		}
		op := e.GetName()[0].GetString_().GetSval()
		if op != "-" && op != "+" {
			return unknown, originNone
		}
		s, o := eval(e.GetRexpr(), params)
		if s.Kind != SourceLiteral || s.TypeOID != 0 || (o != originInteger && o != originNumeric) {
			return unknown, originNone
		}
		if op == "-" {
			s.Literal = negate(s.Literal)
		}
		s.Pos = 0 // no longer the text of one token
		return s, o
	case *pg.Node_TypeCast:
		return cast(v.TypeCast, params)
	case *pg.Node_CollateClause:
		return eval(v.CollateClause.GetArg(), params)
	case *pg.Node_ParamRef:
		if !params || v.ParamRef.GetNumber() < 1 {
			return unknown, originNone
		}
		return Source{Kind: SourceParam, Param: int(v.ParamRef.GetNumber()), Pos: int(v.ParamRef.GetLocation()) + 1}, originNone
	case *pg.Node_SetToDefault:
		return Source{Kind: SourceDefault}, originNone
	}
	return unknown, originNone
}

// constant evaluates a non-NULL constant.
func constant(c *pg.A_Const) (Source, origin) {
	unknown := Source{Kind: SourceUnknown}
	switch val := c.GetVal().(type) {
	case *pg.A_Const_Ival:
		return literal(strconv.FormatInt(int64(val.Ival.GetIval()), 10)), originInteger
	case *pg.A_Const_Fval:
		text, integer := numericText(val.Fval.GetFval())
		if text == "" {
			return unknown, originNone
		}
		if integer {
			return literal(text), originInteger
		}
		return literal(text), originNumeric
	case *pg.A_Const_Boolval:
		return literal(strconv.FormatBool(val.Boolval.GetBoolval())), originBool
	case *pg.A_Const_Sval:
		return literal(val.Sval.GetSval()), originString
	}
	return unknown, originNone // bit strings
}

func literal(s string) Source { return Source{Kind: SourceLiteral, Literal: []byte(s)} }

func negate(b []byte) []byte {
	switch {
	case len(b) > 0 && b[0] == '-':
		return b[1:]
	case strings.Trim(string(b), "0.") == "" && !strings.ContainsAny(string(b), "eE"):
		return b // -0 is 0
	}
	return append([]byte{'-'}, b...)
}

// numericText returns the text numeric input reads for a numeric
// constant's source text: underscores dropped, 0x/0o/0b integers in
// decimal; integer reports a whole number without exponent.
func numericText(s string) (text string, integer bool) {
	s = strings.ReplaceAll(s, "_", "")
	neg := strings.HasPrefix(s, "-")
	body := strings.TrimPrefix(s, "-")
	if len(body) > 2 && body[0] == '0' {
		base := 0
		switch body[1] {
		case 'x', 'X':
			base = 16
		case 'o', 'O':
			base = 8
		case 'b', 'B':
			base = 2
		}
		if base != 0 {
			var i big.Int
			if _, ok := i.SetString(body[2:], base); !ok {
				return "", false
			}
			if neg {
				i.Neg(&i)
			}
			return i.String(), true
		}
	}
	integer = body != "" && strings.Trim(body, "0123456789") == ""
	return s, integer
}

// cast evaluates `arg::type`, keeping the value only when the cast reads
// it unchanged.
func cast(tc *pg.TypeCast, params bool) (Source, origin) {
	unknown := Source{Kind: SourceUnknown}
	tn := tc.GetTypeName()
	if len(tn.GetTypmods()) > 0 || len(tn.GetArrayBounds()) > 0 || tn.GetSetof() || tn.GetPctType() {
		return unknown, originNone
	}
	oid := typeOID(tn)
	if oid == 0 {
		return unknown, originNone
	}
	s, o := eval(tc.GetArg(), params)
	switch s.Kind {
	case SourceNull:
		if s.TypeOID == 0 {
			s.TypeOID = oid
		}
		return s, originNone
	case SourceParam:
		// The parameter is sent as the first cast's type; a further cast
		// to or from a string type keeps its text.
		switch {
		case s.TypeOID == 0:
			s.TypeOID = oid
		case s.TypeOID != oid && !stringType(s.TypeOID) && !stringType(oid):
			return unknown, originNone
		}
		return s, originNone
	case SourceLiteral:
	default:
		return s, originNone
	}
	keep := false
	next := originCanon
	switch o {
	case originString:
		keep, next = true, originTyped
	case originTyped:
		// A string type's text is any type's input; else only a no-op
		// cast keeps the (non-canonical) text.
		keep = stringType(s.TypeOID) || s.TypeOID == oid
		next = originTyped
	case originCanon:
		keep = stringType(s.TypeOID) || s.TypeOID == oid || stringType(oid)
		if stringType(s.TypeOID) && !stringType(oid) {
			next = originTyped
		}
	case originInteger:
		keep = numberType(oid) || stringType(oid) || oid == oidBool
	case originNumeric:
		keep = oid == oidNumeric || oid == oidFloat4 || oid == oidFloat8 || stringType(oid)
	case originBool:
		keep = oid == oidBool || stringType(oid)
	}
	if !keep {
		return unknown, originNone
	}
	s.TypeOID = oid
	return s, next
}

// Type OIDs (pg_type.oid) of the types casts are read for.
const (
	oidBool        = 16
	oidBytea       = 17
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidText        = 25
	oidJSON        = 114
	oidFloat4      = 700
	oidFloat8      = 701
	oidBpchar      = 1042
	oidVarchar     = 1043
	oidDate        = 1082
	oidTime        = 1083
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidInterval    = 1186
	oidNumeric     = 1700
	oidUUID        = 2950
	oidJSONB       = 3802
)

func stringType(oid uint32) bool { return oid == oidText || oid == oidVarchar }

func numberType(oid uint32) bool {
	switch oid {
	case oidInt2, oidInt4, oidInt8, oidNumeric, oidFloat4, oidFloat8:
		return true
	}
	return false
}

// typeOID returns the OID of a cast's type for the common built-in types
// (int2/smallint, int4/integer/int, int8/bigint, float4/real,
// float8/double precision, numeric/decimal, bool/boolean, text, varchar,
// bpchar, bytea, json, jsonb, uuid, date, time, timestamp, timestamptz,
// interval), unqualified or in pg_catalog; 0 for any other.
func typeOID(tn *pg.TypeName) uint32 {
	names := tn.GetNames()
	switch {
	case len(names) == 1:
	case len(names) == 2 && names[0].GetString_().GetSval() == "pg_catalog":
	default:
		return 0
	}
	switch names[len(names)-1].GetString_().GetSval() {
	case "int2", "smallint":
		return oidInt2
	case "int4", "integer", "int":
		return oidInt4
	case "int8", "bigint":
		return oidInt8
	case "float4", "real":
		return oidFloat4
	case "float8", "double precision":
		return oidFloat8
	case "numeric", "decimal":
		return oidNumeric
	case "bool", "boolean":
		return oidBool
	case "text":
		return oidText
	case "varchar":
		return oidVarchar
	case "bpchar":
		return oidBpchar
	case "bytea":
		return oidBytea
	case "json":
		return oidJSON
	case "jsonb":
		return oidJSONB
	case "uuid":
		return oidUUID
	case "date":
		return oidDate
	case "time":
		return oidTime
	case "timestamp":
		return oidTimestamp
	case "timestamptz":
		return oidTimestamptz
	case "interval":
		return oidInterval
	}
	return 0
}

// functionsOf returns the functions called anywhere in n, lower case,
// without schema, sorted and once each.
func functionsOf(n *pg.Node) []string {
	var fns []string
	walkMessages(n.ProtoReflect(), func(m protoreflect.Message) {
		fc, ok := m.Interface().(*pg.FuncCall)
		if !ok || len(fc.GetFuncname()) == 0 {
			return
		}
		parts := fc.GetFuncname()
		name := strings.ToLower(parts[len(parts)-1].GetString_().GetSval())
		if name != "" && !slices.Contains(fns, name) {
			fns = append(fns, name)
		}
	})
	slices.Sort(fns)
	return fns
}

// walkMessages calls visit for m and every message below it.
func walkMessages(m protoreflect.Message, visit func(protoreflect.Message)) {
	visit(m)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap() || fd.Message() == nil:
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walkMessages(l.Get(i).Message(), visit)
			}
		default:
			walkMessages(v.Message(), visit)
		}
		return true
	})
}

// Params gives the Bind parameters of a statement: Param(n) returns the
// value of $n (n from 1), in text (format 0) or binary (1) format, or
// null; ok is false when the Bind has no $n.
type Params interface {
	Param(n int) (data []byte, format int16, null bool, ok bool)
}

// Resolve returns the value s stands for, given the Bind parameters p (nil
// when there are none, as for a simple Query): a literal in text format, a
// parameter as bound, NULL as null. ok is false when the value is not
// known (SourceDefault, SourceUnknown, a parameter p does not have). It
// does not allocate; data aliases the literal or the Bind message.
//
// A binary value is decoded with the type Type returns, unless the Parse
// message declared the parameter's type, which then takes precedence.
func (s Source) Resolve(p Params) (data []byte, format int16, null bool, ok bool) {
	switch s.Kind {
	case SourceLiteral:
		return s.Literal, 0, false, true
	case SourceNull:
		return nil, 0, true, true
	case SourceParam:
		if p == nil {
			return nil, 0, false, false
		}
		return p.Param(s.Param)
	}
	return nil, 0, false, false
}

// Type returns the type the value is read as: the cast's when the
// statement casts it, else column (the column's type).
func (s Source) Type(column uint32) uint32 {
	if s.TypeOID != 0 {
		return s.TypeOID
	}
	return column
}

// Kinds returns, sorted, the statement kinds Analyze gives (Statement.Kind),
// which the firewall's deny lists name. They are PostgreSQL's command tags
// as CreateCommandTag names them for the raw statement, with these
// choices: CREATE/ALTER/DROP USER and GROUP are CREATE/ALTER/DROP ROLE;
// GRANT and REVOKE of role membership are GRANT ROLE and REVOKE ROLE; a
// SELECT … INTO is SELECT INTO; TRUNCATE is TRUNCATE; ALTER … RENAME,
// OWNER TO and SET SCHEMA are ALTER of the object's kind (ALTER TABLE for
// a column or constraint). A kind is stable: a new PostgreSQL statement
// adds one, none is renamed.
func Kinds() []string {
	kinds := []string{
		"ALTER DATABASE", "ALTER DEFAULT PRIVILEGES", "ALTER ROLE", "ALTER SYSTEM", "ANALYZE",
		"BEGIN", "CALL", "CHECKPOINT", "CLOSE CURSOR", "CLOSE CURSOR ALL", "CLUSTER", "COMMENT",
		"COMMIT", "COMMIT PREPARED", "COPY", "CREATE DATABASE", "CREATE ROLE", "CREATE TABLE AS",
		"DEALLOCATE", "DEALLOCATE ALL", "DECLARE CURSOR", "DELETE", "DISCARD ALL", "DISCARD PLANS",
		"DISCARD SEQUENCES", "DISCARD TEMP", "DO", "DROP DATABASE", "DROP OWNED", "DROP ROLE",
		"EXECUTE", "EXPLAIN", "FETCH", "GRANT", "GRANT ROLE", "IMPORT FOREIGN SCHEMA", "INSERT",
		"LISTEN", "LOAD", "LOCK TABLE", "MERGE", "MOVE", "NOTIFY", "PREPARE", "PREPARE TRANSACTION",
		"REASSIGN OWNED", "REFRESH MATERIALIZED VIEW", "REINDEX", "RELEASE", "RESET", "REVOKE",
		"REVOKE ROLE", "ROLLBACK", "ROLLBACK PREPARED", "SAVEPOINT", "SECURITY LABEL", "SELECT",
		"SELECT INTO", "SET", "SET CONSTRAINTS", "SHOW", "START TRANSACTION", "TRUNCATE", "UNLISTEN",
		"UPDATE", "VACUUM",
	}
	for _, o := range []string{
		"ACCESS METHOD", "AGGREGATE", "CAST", "COLLATION", "CONVERSION", "DOMAIN", "EVENT TRIGGER",
		"EXTENSION", "FOREIGN DATA WRAPPER", "FOREIGN TABLE", "FUNCTION", "INDEX", "LANGUAGE",
		"LARGE OBJECT", "MATERIALIZED VIEW", "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "POLICY",
		"PROCEDURE", "PUBLICATION", "ROUTINE", "RULE", "SCHEMA", "SEQUENCE", "SERVER", "STATISTICS",
		"SUBSCRIPTION", "TABLE", "TABLESPACE", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY",
		"TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TRANSFORM", "TRIGGER", "TYPE", "USER MAPPING", "VIEW",
	} {
		kinds = append(kinds, "CREATE "+o, "ALTER "+o, "DROP "+o)
	}
	slices.Sort(kinds)
	return slices.Compact(kinds)
}

// objectName is the name of an object type in a command tag.
func objectName(t pg.ObjectType) string {
	switch t {
	case pg.ObjectType_OBJECT_ACCESS_METHOD:
		return "ACCESS METHOD"
	case pg.ObjectType_OBJECT_AGGREGATE:
		return "AGGREGATE"
	case pg.ObjectType_OBJECT_AMOP, pg.ObjectType_OBJECT_AMPROC, pg.ObjectType_OBJECT_OPFAMILY:
		return "OPERATOR FAMILY"
	case pg.ObjectType_OBJECT_ATTRIBUTE, pg.ObjectType_OBJECT_TYPE:
		return "TYPE"
	case pg.ObjectType_OBJECT_CAST:
		return "CAST"
	case pg.ObjectType_OBJECT_COLUMN, pg.ObjectType_OBJECT_DEFAULT, pg.ObjectType_OBJECT_TABCONSTRAINT, pg.ObjectType_OBJECT_TABLE:
		return "TABLE"
	case pg.ObjectType_OBJECT_COLLATION:
		return "COLLATION"
	case pg.ObjectType_OBJECT_CONVERSION:
		return "CONVERSION"
	case pg.ObjectType_OBJECT_DATABASE:
		return "DATABASE"
	case pg.ObjectType_OBJECT_DEFACL:
		return "DEFAULT PRIVILEGES"
	case pg.ObjectType_OBJECT_DOMAIN, pg.ObjectType_OBJECT_DOMCONSTRAINT:
		return "DOMAIN"
	case pg.ObjectType_OBJECT_EVENT_TRIGGER:
		return "EVENT TRIGGER"
	case pg.ObjectType_OBJECT_EXTENSION:
		return "EXTENSION"
	case pg.ObjectType_OBJECT_FDW:
		return "FOREIGN DATA WRAPPER"
	case pg.ObjectType_OBJECT_FOREIGN_SERVER:
		return "SERVER"
	case pg.ObjectType_OBJECT_FOREIGN_TABLE:
		return "FOREIGN TABLE"
	case pg.ObjectType_OBJECT_FUNCTION:
		return "FUNCTION"
	case pg.ObjectType_OBJECT_INDEX:
		return "INDEX"
	case pg.ObjectType_OBJECT_LANGUAGE:
		return "LANGUAGE"
	case pg.ObjectType_OBJECT_LARGEOBJECT:
		return "LARGE OBJECT"
	case pg.ObjectType_OBJECT_MATVIEW:
		return "MATERIALIZED VIEW"
	case pg.ObjectType_OBJECT_OPCLASS:
		return "OPERATOR CLASS"
	case pg.ObjectType_OBJECT_OPERATOR:
		return "OPERATOR"
	case pg.ObjectType_OBJECT_POLICY:
		return "POLICY"
	case pg.ObjectType_OBJECT_PROCEDURE:
		return "PROCEDURE"
	case pg.ObjectType_OBJECT_PUBLICATION, pg.ObjectType_OBJECT_PUBLICATION_NAMESPACE, pg.ObjectType_OBJECT_PUBLICATION_REL:
		return "PUBLICATION"
	case pg.ObjectType_OBJECT_ROLE:
		return "ROLE"
	case pg.ObjectType_OBJECT_ROUTINE:
		return "ROUTINE"
	case pg.ObjectType_OBJECT_RULE:
		return "RULE"
	case pg.ObjectType_OBJECT_SCHEMA:
		return "SCHEMA"
	case pg.ObjectType_OBJECT_SEQUENCE:
		return "SEQUENCE"
	case pg.ObjectType_OBJECT_SUBSCRIPTION:
		return "SUBSCRIPTION"
	case pg.ObjectType_OBJECT_STATISTIC_EXT:
		return "STATISTICS"
	case pg.ObjectType_OBJECT_TABLESPACE:
		return "TABLESPACE"
	case pg.ObjectType_OBJECT_TRANSFORM:
		return "TRANSFORM"
	case pg.ObjectType_OBJECT_TRIGGER:
		return "TRIGGER"
	case pg.ObjectType_OBJECT_TSCONFIGURATION:
		return "TEXT SEARCH CONFIGURATION"
	case pg.ObjectType_OBJECT_TSDICTIONARY:
		return "TEXT SEARCH DICTIONARY"
	case pg.ObjectType_OBJECT_TSPARSER:
		return "TEXT SEARCH PARSER"
	case pg.ObjectType_OBJECT_TSTEMPLATE:
		return "TEXT SEARCH TEMPLATE"
	case pg.ObjectType_OBJECT_USER_MAPPING:
		return "USER MAPPING"
	case pg.ObjectType_OBJECT_VIEW:
		return "VIEW"
	}
	return "OBJECT"
}

// kindOf returns the statement's kind (see Kinds).
func kindOf(n *pg.Node) string {
	switch s := n.GetNode().(type) {
	case *pg.Node_InsertStmt:
		return "INSERT"
	case *pg.Node_UpdateStmt:
		return "UPDATE"
	case *pg.Node_DeleteStmt:
		return "DELETE"
	case *pg.Node_MergeStmt:
		return "MERGE"
	case *pg.Node_SelectStmt:
		if selectInto(s.SelectStmt) {
			return "SELECT INTO"
		}
		return "SELECT"
	case *pg.Node_CopyStmt:
		return "COPY"
	case *pg.Node_TransactionStmt:
		switch s.TransactionStmt.GetKind() {
		case pg.TransactionStmtKind_TRANS_STMT_BEGIN:
			return "BEGIN"
		case pg.TransactionStmtKind_TRANS_STMT_START:
			return "START TRANSACTION"
		case pg.TransactionStmtKind_TRANS_STMT_COMMIT:
			return "COMMIT"
		case pg.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
			return "SAVEPOINT"
		case pg.TransactionStmtKind_TRANS_STMT_RELEASE:
			return "RELEASE"
		case pg.TransactionStmtKind_TRANS_STMT_PREPARE:
			return "PREPARE TRANSACTION"
		case pg.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:
			return "COMMIT PREPARED"
		case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
			return "ROLLBACK PREPARED"
		}
		return "ROLLBACK" // ROLLBACK, ROLLBACK TO SAVEPOINT
	case *pg.Node_VariableSetStmt:
		switch s.VariableSetStmt.GetKind() {
		case pg.VariableSetKind_VAR_RESET, pg.VariableSetKind_VAR_RESET_ALL:
			return "RESET"
		}
		return "SET"
	case *pg.Node_VariableShowStmt:
		return "SHOW"
	case *pg.Node_DiscardStmt:
		switch s.DiscardStmt.GetTarget() {
		case pg.DiscardMode_DISCARD_PLANS:
			return "DISCARD PLANS"
		case pg.DiscardMode_DISCARD_SEQUENCES:
			return "DISCARD SEQUENCES"
		case pg.DiscardMode_DISCARD_TEMP:
			return "DISCARD TEMP"
		}
		return "DISCARD ALL"
	case *pg.Node_FetchStmt:
		if s.FetchStmt.GetIsmove() {
			return "MOVE"
		}
		return "FETCH"
	case *pg.Node_ClosePortalStmt:
		if s.ClosePortalStmt.GetPortalname() == "" {
			return "CLOSE CURSOR ALL"
		}
		return "CLOSE CURSOR"
	case *pg.Node_DeclareCursorStmt:
		return "DECLARE CURSOR"
	case *pg.Node_PrepareStmt:
		return "PREPARE"
	case *pg.Node_ExecuteStmt:
		return "EXECUTE"
	case *pg.Node_DeallocateStmt:
		if s.DeallocateStmt.GetIsall() || s.DeallocateStmt.GetName() == "" {
			return "DEALLOCATE ALL"
		}
		return "DEALLOCATE"
	case *pg.Node_ExplainStmt:
		return "EXPLAIN"
	case *pg.Node_VacuumStmt:
		if s.VacuumStmt.GetIsVacuumcmd() {
			return "VACUUM"
		}
		return "ANALYZE"
	case *pg.Node_CreateTableAsStmt:
		switch {
		case s.CreateTableAsStmt.GetObjtype() == pg.ObjectType_OBJECT_MATVIEW:
			return "CREATE MATERIALIZED VIEW"
		case s.CreateTableAsStmt.GetIsSelectInto():
			return "SELECT INTO"
		}
		return "CREATE TABLE AS"
	case *pg.Node_TruncateStmt:
		return "TRUNCATE"
	case *pg.Node_GrantStmt:
		if s.GrantStmt.GetIsGrant() {
			return "GRANT"
		}
		return "REVOKE"
	case *pg.Node_GrantRoleStmt:
		if s.GrantRoleStmt.GetIsGrant() {
			return "GRANT ROLE"
		}
		return "REVOKE ROLE"
	case *pg.Node_AlterDefaultPrivilegesStmt:
		return "ALTER DEFAULT PRIVILEGES"
	case *pg.Node_CreateRoleStmt:
		return "CREATE ROLE"
	case *pg.Node_AlterRoleStmt, *pg.Node_AlterRoleSetStmt:
		return "ALTER ROLE"
	case *pg.Node_DropRoleStmt:
		return "DROP ROLE"
	case *pg.Node_DropOwnedStmt:
		return "DROP OWNED"
	case *pg.Node_ReassignOwnedStmt:
		return "REASSIGN OWNED"
	case *pg.Node_DropStmt:
		return "DROP " + objectName(s.DropStmt.GetRemoveType())
	case *pg.Node_DropdbStmt:
		return "DROP DATABASE"
	case *pg.Node_DropTableSpaceStmt:
		return "DROP TABLESPACE"
	case *pg.Node_DropUserMappingStmt:
		return "DROP USER MAPPING"
	case *pg.Node_DropSubscriptionStmt:
		return "DROP SUBSCRIPTION"
	case *pg.Node_AlterTableStmt:
		return "ALTER " + objectName(s.AlterTableStmt.GetObjtype())
	case *pg.Node_AlterTableMoveAllStmt:
		return "ALTER " + objectName(s.AlterTableMoveAllStmt.GetObjtype())
	case *pg.Node_RenameStmt:
		t := s.RenameStmt.GetRenameType()
		if t == pg.ObjectType_OBJECT_COLUMN || t == pg.ObjectType_OBJECT_ATTRIBUTE {
			t = s.RenameStmt.GetRelationType()
		}
		return "ALTER " + objectName(t)
	case *pg.Node_AlterObjectDependsStmt:
		return "ALTER " + objectName(s.AlterObjectDependsStmt.GetObjectType())
	case *pg.Node_AlterObjectSchemaStmt:
		return "ALTER " + objectName(s.AlterObjectSchemaStmt.GetObjectType())
	case *pg.Node_AlterOwnerStmt:
		return "ALTER " + objectName(s.AlterOwnerStmt.GetObjectType())
	case *pg.Node_AlterFunctionStmt:
		return "ALTER " + objectName(s.AlterFunctionStmt.GetObjtype())
	case *pg.Node_AlterDomainStmt:
		return "ALTER DOMAIN"
	case *pg.Node_AlterEnumStmt, *pg.Node_AlterTypeStmt:
		return "ALTER TYPE"
	case *pg.Node_AlterOperatorStmt:
		return "ALTER OPERATOR"
	case *pg.Node_AlterOpFamilyStmt:
		return "ALTER OPERATOR FAMILY"
	case *pg.Node_AlterCollationStmt:
		return "ALTER COLLATION"
	case *pg.Node_AlterStatsStmt:
		return "ALTER STATISTICS"
	case *pg.Node_AlterPolicyStmt:
		return "ALTER POLICY"
	case *pg.Node_AlterEventTrigStmt:
		return "ALTER EVENT TRIGGER"
	case *pg.Node_AlterExtensionStmt, *pg.Node_AlterExtensionContentsStmt:
		return "ALTER EXTENSION"
	case *pg.Node_AlterFdwStmt:
		return "ALTER FOREIGN DATA WRAPPER"
	case *pg.Node_AlterForeignServerStmt:
		return "ALTER SERVER"
	case *pg.Node_AlterUserMappingStmt:
		return "ALTER USER MAPPING"
	case *pg.Node_AlterSeqStmt:
		return "ALTER SEQUENCE"
	case *pg.Node_AlterDatabaseStmt, *pg.Node_AlterDatabaseSetStmt, *pg.Node_AlterDatabaseRefreshCollStmt:
		return "ALTER DATABASE"
	case *pg.Node_AlterSystemStmt:
		return "ALTER SYSTEM"
	case *pg.Node_AlterTableSpaceOptionsStmt:
		return "ALTER TABLESPACE"
	case *pg.Node_AlterTsdictionaryStmt:
		return "ALTER TEXT SEARCH DICTIONARY"
	case *pg.Node_AlterTsconfigurationStmt:
		return "ALTER TEXT SEARCH CONFIGURATION"
	case *pg.Node_AlterPublicationStmt:
		return "ALTER PUBLICATION"
	case *pg.Node_AlterSubscriptionStmt:
		return "ALTER SUBSCRIPTION"
	case *pg.Node_DefineStmt:
		return "CREATE " + objectName(s.DefineStmt.GetKind())
	case *pg.Node_CreateStmt:
		return "CREATE TABLE"
	case *pg.Node_CreateForeignTableStmt:
		return "CREATE FOREIGN TABLE"
	case *pg.Node_IndexStmt:
		return "CREATE INDEX"
	case *pg.Node_ViewStmt:
		return "CREATE VIEW"
	case *pg.Node_CreateSeqStmt:
		return "CREATE SEQUENCE"
	case *pg.Node_CreateSchemaStmt:
		return "CREATE SCHEMA"
	case *pg.Node_CreateDomainStmt:
		return "CREATE DOMAIN"
	case *pg.Node_CompositeTypeStmt, *pg.Node_CreateEnumStmt, *pg.Node_CreateRangeStmt:
		return "CREATE TYPE"
	case *pg.Node_CreateFunctionStmt:
		if s.CreateFunctionStmt.GetIsProcedure() {
			return "CREATE PROCEDURE"
		}
		return "CREATE FUNCTION"
	case *pg.Node_CreateTrigStmt:
		return "CREATE TRIGGER"
	case *pg.Node_CreateEventTrigStmt:
		return "CREATE EVENT TRIGGER"
	case *pg.Node_CreatePlangStmt:
		return "CREATE LANGUAGE"
	case *pg.Node_CreateExtensionStmt:
		return "CREATE EXTENSION"
	case *pg.Node_CreateFdwStmt:
		return "CREATE FOREIGN DATA WRAPPER"
	case *pg.Node_CreateForeignServerStmt:
		return "CREATE SERVER"
	case *pg.Node_CreateUserMappingStmt:
		return "CREATE USER MAPPING"
	case *pg.Node_ImportForeignSchemaStmt:
		return "IMPORT FOREIGN SCHEMA"
	case *pg.Node_CreatePolicyStmt:
		return "CREATE POLICY"
	case *pg.Node_CreateAmStmt:
		return "CREATE ACCESS METHOD"
	case *pg.Node_CreateOpClassStmt:
		return "CREATE OPERATOR CLASS"
	case *pg.Node_CreateOpFamilyStmt:
		return "CREATE OPERATOR FAMILY"
	case *pg.Node_CreateConversionStmt:
		return "CREATE CONVERSION"
	case *pg.Node_CreateCastStmt:
		return "CREATE CAST"
	case *pg.Node_CreateTransformStmt:
		return "CREATE TRANSFORM"
	case *pg.Node_CreateStatsStmt:
		return "CREATE STATISTICS"
	case *pg.Node_CreatePublicationStmt:
		return "CREATE PUBLICATION"
	case *pg.Node_CreateSubscriptionStmt:
		return "CREATE SUBSCRIPTION"
	case *pg.Node_CreatedbStmt:
		return "CREATE DATABASE"
	case *pg.Node_CreateTableSpaceStmt:
		return "CREATE TABLESPACE"
	case *pg.Node_RuleStmt:
		return "CREATE RULE"
	case *pg.Node_CommentStmt:
		return "COMMENT"
	case *pg.Node_SecLabelStmt:
		return "SECURITY LABEL"
	case *pg.Node_DoStmt:
		return "DO"
	case *pg.Node_CallStmt:
		return "CALL"
	case *pg.Node_NotifyStmt:
		return "NOTIFY"
	case *pg.Node_ListenStmt:
		return "LISTEN"
	case *pg.Node_UnlistenStmt:
		return "UNLISTEN"
	case *pg.Node_LoadStmt:
		return "LOAD"
	case *pg.Node_ClusterStmt:
		return "CLUSTER"
	case *pg.Node_ReindexStmt:
		return "REINDEX"
	case *pg.Node_CheckPointStmt:
		return "CHECKPOINT"
	case *pg.Node_LockStmt:
		return "LOCK TABLE"
	case *pg.Node_ConstraintsSetStmt:
		return "SET CONSTRAINTS"
	case *pg.Node_RefreshMatViewStmt:
		return "REFRESH MATERIALIZED VIEW"
	}
	// A statement this version does not know: its node name, spaced
	// (FooBarStmt → FOO BAR).
	m := n.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().Get(0))
	if fd == nil {
		return "UNKNOWN"
	}
	var b strings.Builder
	for i, r := range strings.TrimSuffix(string(fd.Name()), "Stmt") {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

func selectInto(s *pg.SelectStmt) bool {
	if s == nil {
		return false
	}
	return s.GetIntoClause() != nil || selectInto(s.GetLarg())
}
