package policy

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"
)

// Policy is a compiled policy file: the rules of every table, ready to
// judge values without further compiling. It is immutable and safe for
// concurrent use; a reload compiles a new one.
type Policy struct {
	databases map[string]map[string]*TableRules
	firewall  *Firewall
}

// TableRules are the compiled rules of one table. Columns are numbered at
// compile time (Index), so that the proxy resolves a prepared statement's
// columns once and judges each Bind with CheckValues, which does not
// allocate unless a CEL rule runs.
type TableRules struct {
	database, name string
	refuseUnknown  bool
	cols           []tableColumn // numbered by Index
	byName         map[string]int
	required       []int // columns whose rule is required, for the INSERT that leaves them out
	rows           []*rowRule
	transitions    []*transitionRule
}

// tableColumn is a column some rule reads: its own rule, a row rule or a
// transition.
type tableColumn struct {
	name string
	typ  valueType   // from its column rule; typeNone: string in CEL
	rule *columnRule // nil when only row rules or a transition read it
}

// Firewall returns the compiled firewall of the file's firewall section;
// nil when the file has none.
func (p *Policy) Firewall() *Firewall {
	if p == nil {
		return nil
	}
	return p.firewall
}

// Table returns the rules of table in database, nil when it has none.
func (p *Policy) Table(database, table string) *TableRules {
	if p == nil {
		return nil
	}
	return p.databases[database][table]
}

// Governs reports whether a rule CheckRow judges (a column or row rule)
// applies to table in database for service, so the proxy can skip every
// other write cheaply. Transitions do not count: a row alone cannot be
// judged for them (the generated SQL enforces them).
func (p *Policy) Governs(database, service, table string) bool {
	return p.Table(database, table).Governs(service)
}

// Governs reports whether a column or row rule of the table applies to
// service.
func (t *TableRules) Governs(service string) bool {
	if t == nil {
		return false
	}
	for i := range t.cols {
		if r := t.cols[i].rule; r != nil && r.scope.applies(service) {
			return true
		}
	}
	for _, r := range t.rows {
		if r.scope.applies(service) {
			return true
		}
	}
	return false
}

// Name returns the table's name.
func (t *TableRules) Name() string { return t.name }

// Index returns the number CheckValues knows column by, or -1 when no rule
// reads it (the caller passes -1 and the value is skipped).
func (t *TableRules) Index(column string) int {
	if t == nil {
		return -1
	}
	if i, ok := t.byName[column]; ok {
		return i
	}
	return -1
}

func (t *TableRules) ensureColumn(name string) int {
	if i, ok := t.byName[name]; ok {
		return i
	}
	t.cols = append(t.cols, tableColumn{name: name})
	t.byName[name] = len(t.cols) - 1
	return len(t.cols) - 1
}

// CheckRow judges one written row of table in database for service: cols
// and vals aligned, values in PostgreSQL's text form. It returns nil when
// the row is accepted.
//
// WriteInsert, WriteCopy and WriteUpsert (its VALUES rows) are judged as
// inserts: every rule of the table applies, and a required column fails
// when NULL, DEFAULT or left out. WriteUpdate (also the SET part of an
// upsert) judges only the assigned columns; required fails only for NULL,
// and a row rule runs only when every column it reads is assigned (else
// the generated SQL judges it). A ValueUnknown is accepted under
// on_unknown defer and refused under refuse.
//
// CheckRow allocates nothing for a table of up to 64 written columns
// unless a CEL rule runs.
func (p *Policy) CheckRow(database, service, table string, kind WriteKind, cols []string, vals []Value) *Violation {
	t := p.Table(database, table)
	if t == nil {
		return nil
	}
	var buf [64]int
	idx := buf[:0]
	if len(cols) > len(buf) {
		idx = make([]int, 0, len(cols))
	}
	for _, c := range cols {
		idx = append(idx, t.Index(c))
	}
	return t.CheckValues(service, kind, idx, vals)
}

// CheckValues is CheckRow with the columns resolved by Index: colIdx[i] is
// the column of vals[i], -1 for a column no rule reads. It allocates only
// to run CEL rules (column rules with cel, row rules) and to return a
// Violation.
func (t *TableRules) CheckValues(service string, kind WriteKind, colIdx []int, vals []Value) *Violation {
	if t == nil {
		return nil
	}
	n := min(len(colIdx), len(vals))
	colIdx, vals = colIdx[:n], vals[:n]
	insert := kind != WriteUpdate
	for i, ci := range colIdx {
		if ci < 0 || ci >= len(t.cols) {
			continue
		}
		r := t.cols[ci].rule
		if r == nil || !r.scope.applies(service) {
			continue
		}
		if v := r.check(vals[i], insert, t.refuseUnknown); v != nil {
			return v
		}
	}
	if insert {
		for _, ci := range t.required {
			r := t.cols[ci].rule
			if r.scope.applies(service) && !slices.Contains(colIdx, ci) {
				return r.violation(violRequiredDefault)
			}
		}
	}
	if len(t.rows) > 0 {
		return t.checkRows(service, insert, colIdx, vals)
	}
	return nil
}

// Transition judges a change of column from one value to another, for a
// caller that knows both (the row alone cannot tell; the generated SQL's
// trigger enforces transitions in PostgreSQL). A nil from or to is NULL,
// which no transition rule judges; an unchanged value is always allowed.
func (p *Policy) Transition(database, service, table, column string, from, to []byte) *Violation {
	t := p.Table(database, table)
	if t == nil || from == nil || to == nil || string(from) == string(to) {
		return nil
	}
	for _, r := range t.transitions {
		if r.column != column || !r.scope.applies(service) {
			continue
		}
		if !r.allows(from, to) {
			v := r.viol
			return &v
		}
	}
	return nil
}

// serviceScope is a rule's services / except_services.
type serviceScope struct {
	only, except []string
}

func (s serviceScope) applies(service string) bool {
	if len(s.only) > 0 {
		return slices.Contains(s.only, service)
	}
	return !slices.Contains(s.except, service)
}

func (s serviceScope) all() bool { return len(s.only) == 0 && len(s.except) == 0 }

// ruleKind is a kind of column rule; its String is the Violation's Kind
// and the suffix of the default constraint name.
type ruleKind uint8

const (
	kindRequired ruleKind = iota
	kindType
	kindLength
	kindRange
	kindPattern
	kindEnum
	kindCEL
	numColumnKinds
)

func (k ruleKind) String() string {
	switch k {
	case kindRequired:
		return "required"
	case kindType:
		return "type"
	case kindLength:
		return "length"
	case kindRange:
		return "range"
	case kindPattern:
		return "pattern"
	case kindEnum:
		return "enum"
	case kindCEL:
		return "cel"
	}
	return "rule"
}

// Which of a column rule's prepared violations.
const (
	violRequiredNull = iota
	violRequiredDefault
	violType
	violTooShort
	violTooLong
	violTooSmall
	violTooLarge
	violPattern
	violEnum
	violCEL
	violCELError
	violUnknown
	numViolations
)

// columnRule is one column's compiled rule. Its violations are prepared at
// compile time: the value never enters a message, so none depends on it.
type columnRule struct {
	table, column string
	name          string // the rule's name; "" when each kind is named <table>_<column>_<kind>
	named         bool
	scope         serviceScope
	inSQL         bool
	message       string

	typ            valueType
	required       bool
	minLen, maxLen int // -1: not set
	hasMin, hasMax bool
	min, max       float64
	pattern        *regexp.Regexp
	patternSrc     string
	enum           []string
	cel            cel.Program
	celExpr        celast.Expr
	celSrc         string

	viols [numViolations]Violation
}

// kinds lists the kinds the rule sets, in the order they are judged.
func (r *columnRule) kinds() []ruleKind {
	var ks []ruleKind
	if r.required {
		ks = append(ks, kindRequired)
	}
	if r.typ != typeNone && r.typ != typeText {
		ks = append(ks, kindType)
	}
	if r.minLen >= 0 || r.maxLen >= 0 {
		ks = append(ks, kindLength)
	}
	if r.hasMin || r.hasMax {
		ks = append(ks, kindRange)
	}
	if r.patternSrc != "" {
		ks = append(ks, kindPattern)
	}
	if r.enum != nil {
		ks = append(ks, kindEnum)
	}
	if r.celSrc != "" {
		ks = append(ks, kindCEL)
	}
	return ks
}

// constraint is the name of the rule's kind k: the Violation's Constraint
// and the name of the SQL constraint that enforces it.
func (r *columnRule) constraint(k ruleKind) string {
	if r.named {
		return r.name
	}
	return r.table + "_" + r.column + "_" + k.String()
}

func (r *columnRule) prepare() {
	set := func(which int, k ruleKind, code, reason, hint string) {
		if r.message != "" && which != violUnknown {
			reason = r.message
		}
		r.viols[which] = Violation{
			Code:       code,
			Message:    "new row for " + r.table + " violates rule \"" + r.constraint(k) + "\" on column " + r.column + ": " + reason,
			Hint:       hint,
			Table:      r.table,
			Column:     r.column,
			Constraint: r.constraint(k),
			Kind:       k.String(),
		}
	}
	qualified := r.table + "." + r.column
	set(violRequiredNull, kindRequired, "23502", qualified+" is required (it is NULL)", "")
	set(violRequiredDefault, kindRequired, "23502", qualified+" is required (the row leaves it out or sets it to DEFAULT)", "")
	set(violType, kindType, "23514", "not "+r.typ.article(), r.typ.hint())
	set(violTooShort, kindLength, "23514", "shorter than "+plural(r.minLen, "character"), "")
	set(violTooLong, kindLength, "23514", "longer than "+plural(r.maxLen, "character"), "")
	set(violTooSmall, kindRange, "23514", "less than "+formatBound(r.min), "")
	set(violTooLarge, kindRange, "23514", "greater than "+formatBound(r.max), "")
	set(violPattern, kindPattern, "23514", "does not match the pattern "+r.patternSrc, "")
	set(violEnum, kindEnum, "23514", "not one of the allowed values", "allowed values: "+strings.Join(r.enum, ", "))
	set(violCEL, kindCEL, "23514", "does not satisfy "+r.celSrc, "")
	set(violCELError, kindCEL, "23514", "the rule "+r.celSrc+" cannot be evaluated for this value", "")
	// A value the proxy cannot see is reported under the first kind that
	// judges a value's content (required is also about a value left out),
	// the constraint that judges it in PostgreSQL.
	first := kindType
	for i, k := range r.kinds() {
		if i == 0 || k != kindRequired {
			first = k
		}
		if k != kindRequired {
			break
		}
	}
	set(violUnknown, first, "23514", "the value is computed by the statement and cannot be checked by pgshield",
		"write the value itself, or set on_unknown: defer to leave it to the database's constraints")
}

// violation returns a copy of a prepared violation, so that a caller that
// edits its Violation cannot change the next one.
func (r *columnRule) violation(which int) *Violation {
	v := r.viols[which]
	return &v
}

// check judges one value; the text checks do not allocate.
func (r *columnRule) check(v Value, insert, refuseUnknown bool) *Violation {
	switch v.Kind {
	case ValueText:
	case ValueNull:
		if r.required {
			return r.violation(violRequiredNull)
		}
		return nil // as a CHECK constraint: NULL passes
	case ValueDefault:
		if r.required && insert {
			return r.violation(violRequiredDefault)
		}
		return nil // the column's default is the schema's business
	default:
		if refuseUnknown {
			return r.violation(violUnknown)
		}
		return nil
	}
	b := v.Text
	if !r.typ.valid(b) {
		return r.violation(violType)
	}
	if r.minLen >= 0 || r.maxLen >= 0 {
		n := utf8.RuneCount(b) // characters, as PostgreSQL's char_length
		if r.minLen >= 0 && n < r.minLen {
			return r.violation(violTooShort)
		}
		if r.maxLen >= 0 && n > r.maxLen {
			return r.violation(violTooLong)
		}
	}
	if r.hasMin || r.hasMax {
		f, ok := numberValue(r.typ, b)
		if ok && r.hasMin && f < r.min {
			return r.violation(violTooSmall)
		}
		if ok && r.hasMax && f > r.max {
			return r.violation(violTooLarge)
		}
	}
	if r.pattern != nil && !r.pattern.Match(b) {
		return r.violation(violPattern)
	}
	if r.enum != nil && !enumContains(r.enum, b) {
		return r.violation(violEnum)
	}
	if r.cel != nil {
		return r.checkCEL(b)
	}
	return nil
}

func enumContains(enum []string, b []byte) bool {
	for _, e := range enum {
		if e == string(b) {
			return true
		}
	}
	return false
}

// checkCEL runs the column's CEL rule; this allocates (the value's CEL
// form and the evaluation).
func (r *columnRule) checkCEL(b []byte) *Violation {
	val, ok := celValue(r.typ, b)
	if !ok {
		return r.violation(violType)
	}
	out, _, err := r.cel.Eval(valueActivation{val})
	if err != nil {
		return r.violation(violCELError)
	}
	if out != types.True {
		return r.violation(violCEL)
	}
	return nil
}

// valueActivation binds `value` without the map an Eval of a map builds.
type valueActivation struct{ v ref.Val }

func (a valueActivation) ResolveName(name string) (any, bool) {
	if name == "value" {
		return a.v, true
	}
	return nil, false
}

func (a valueActivation) Parent() interpreter.Activation { return nil }

// rowRule is a compiled row rule.
type rowRule struct {
	table, name string
	src         string
	message     string
	scope       serviceScope
	inSQL       bool
	prog        cel.Program
	expr        celast.Expr
	// reads are the columns the expression reads (Compile refuses a rule
	// that uses `row` other than by its fields).
	reads   []int
	viol    Violation
	violErr Violation
	violUnk Violation
	columns string // the read columns' names, for the messages
}

// prepareRow fills the violations once the read columns are known.
func (r *rowRule) prepareRow(t *TableRules) {
	names := make([]string, len(r.reads))
	for i, ci := range r.reads {
		names[i] = t.cols[ci].name
	}
	r.columns = strings.Join(names, ", ")
	on := ""
	switch {
	case len(names) == 1:
		on = " on column " + names[0]
	case len(names) > 1:
		on = " on columns " + r.columns
	}
	col := ""
	if len(names) == 1 {
		col = names[0]
	}
	mk := func(reason string) Violation {
		return Violation{
			Code:       "23514",
			Message:    "new row for " + r.table + " violates rule \"" + r.name + "\"" + on + ": " + reason,
			Table:      r.table,
			Column:     col,
			Constraint: r.name,
			Kind:       "row",
		}
	}
	reason := r.src + " is false"
	if r.message != "" {
		reason = r.message
	}
	r.viol = mk(reason)
	r.violErr = mk("the rule " + r.src + " cannot be evaluated for this row")
	r.violUnk = mk("a value it reads is computed by the statement and cannot be checked by pgshield")
	r.violUnk.Hint = "write the values themselves, or set on_unknown: defer to leave it to the database's constraints"
}

// celRow is the `row` of one evaluation: the values of the written
// columns, by column number; nil where absent.
type celRow struct {
	vals []ref.Val
	bad  []bool // the text is not of the column's type: rules reading it are skipped (its type rule judges it)
}

func (t *TableRules) newCELRow(colIdx []int, vals []Value) *celRow {
	row := &celRow{vals: make([]ref.Val, len(t.cols)), bad: make([]bool, len(t.cols))}
	for i, ci := range colIdx {
		if ci < 0 || ci >= len(t.cols) {
			continue
		}
		switch vals[i].Kind {
		case ValueNull:
			row.vals[ci] = types.NullValue
		case ValueText:
			if v, ok := celValue(t.cols[ci].typ, vals[i].Text); ok {
				row.vals[ci] = v
			} else {
				row.bad[ci] = true
			}
		}
	}
	return row
}

type rowActivation struct{ row *celRow }

func (a rowActivation) ResolveName(name string) (any, bool) {
	if name == "row" {
		return a.row, true
	}
	return nil, false
}

func (a rowActivation) Parent() interpreter.Activation { return nil }

// checkRows runs the row rules that apply; it allocates (CEL).
func (t *TableRules) checkRows(service string, insert bool, colIdx []int, vals []Value) *Violation {
	var row *celRow
	for _, r := range t.rows {
		if !r.scope.applies(service) {
			continue
		}
		skip, unknown, null := false, false, false
		judge := func(k ValueKind) {
			switch k {
			case ValueText:
			case ValueNull:
				null = true
			case ValueDefault:
				// The default is known to the database only: the
				// generated SQL judges the row.
				skip = true
			default:
				unknown = true
			}
		}
		for _, ci := range r.reads {
			pos := slices.Index(colIdx, ci)
			if pos < 0 {
				skip = true
				break
			}
			judge(vals[pos].Kind)
		}
		if skip {
			continue
		}
		if unknown {
			if t.refuseUnknown {
				v := r.violUnk
				return &v
			}
			continue
		}
		if row == nil {
			row = t.newCELRow(colIdx, vals)
		}
		if slices.ContainsFunc(r.reads, func(ci int) bool { return row.bad[ci] }) {
			continue
		}
		out, _, err := r.prog.Eval(rowActivation{row})
		switch {
		case err != nil && null:
			// As a CHECK constraint, whose NULL result passes: the
			// expression failed on a NULL it reads.
			continue
		case err != nil:
			v := r.violErr
			return &v
		case out != types.True:
			v := r.viol
			return &v
		}
	}
	return nil
}

// transitionRule is a compiled transition rule.
type transitionRule struct {
	table, column, name string
	message             string
	scope               serviceScope
	inSQL               bool
	from                []string // the keys of allowed, sorted
	allowed             map[string][]string
	viol                Violation
}

func (r *transitionRule) allows(from, to []byte) bool {
	for _, t := range r.allowed[string(from)] {
		if t == string(to) {
			return true
		}
	}
	return false
}

func (r *transitionRule) prepare() {
	reason := "this change of " + r.column + " is not an allowed transition"
	if r.message != "" {
		reason = r.message
	}
	r.viol = Violation{
		Code:       "23514",
		Message:    transitionMessage(r.table, r.name, r.column, reason),
		Hint:       r.hint(),
		Table:      r.table,
		Column:     r.column,
		Constraint: r.name,
		Kind:       "transition",
	}
}

// hint lists the allowed transitions: policy, not the refused value.
func (r *transitionRule) hint() string {
	var b strings.Builder
	b.WriteString("allowed transitions: ")
	for i, from := range r.from {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(from + " → " + strings.Join(r.allowed[from], ", "))
		if len(r.allowed[from]) == 0 {
			b.WriteString("(none)")
		}
	}
	b.WriteString("; any other value is final")
	return b.String()
}

func transitionMessage(table, rule, column, reason string) string {
	return "new row for " + table + " violates rule \"" + rule + "\" on column " + column + ": " + reason
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// formatBound prints a min or max as the file would write it (0.1, not
// 0.1000000000000000055511151231257827), which is also a valid SQL
// numeric literal.
func formatBound(f float64) string {
	return strconv.FormatFloat(f, 'f', -1, 64)
}
