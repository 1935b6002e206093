package policy

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"
)

// File is the policy file as written: the validation rules of each
// database's tables and the firewall of each service. cmd/pgshield decodes
// the YAML into it (this package reads no YAML); Compile validates it and
// turns it into a Policy.
//
//	on_unknown: defer            # defer (default) | refuse
//	databases:
//	  app:
//	    tables:
//	      leads:
//	        columns:
//	          email: {type: email, required: true, max_length: 255}
//	        transitions:
//	          - {column: status, allowed: {RECEIVED: [PROCESSING, REJECTED]}}
//	        rows:
//	          - {name: capacity, cel: "row.current_lead_count <= row.max_lead_capacity"}
//	firewall:
//	  analytics: {deny: [INSERT, UPDATE, DELETE]}
type File struct {
	// OnUnknown says what becomes of a value the proxy cannot evaluate
	// (an expression such as now() or col + 1, a subquery): "defer" (the
	// default) accepts it and leaves it to the generated SQL, "refuse"
	// refuses the statement. A table may override it.
	OnUnknown string                   `yaml:"on_unknown"`
	Databases map[string]FileDatabase  `yaml:"databases"`
	Firewall  map[string]FirewallRules `yaml:"firewall"`
}

// FileDatabase is the rules of one database (the name clients connect
// to).
type FileDatabase struct {
	Tables map[string]FileTable `yaml:"tables"`
}

// FileTable is the rules of one table.
type FileTable struct {
	// OnUnknown overrides File.OnUnknown for this table.
	OnUnknown   string                `yaml:"on_unknown"`
	Columns     map[string]ColumnRule `yaml:"columns"`
	Transitions []TransitionRule      `yaml:"transitions"`
	Rows        []RowRule             `yaml:"rows"`
}

// Scope limits a rule to some services: a rule with Services applies only
// to those, a rule with ExceptServices to every other. Neither: every
// service. PostgreSQL does not know the service, so a scoped rule is
// enforced by pgshield only (the generated SQL leaves it out).
type Scope struct {
	Services       []string `yaml:"services"`
	ExceptServices []string `yaml:"except_services"`
}

// ColumnRule is the rule of one column. Every key is optional; the kinds
// it sets (type, required, length, range, pattern, enum, cel) are judged
// in that order and the first broken one is reported.
type ColumnRule struct {
	// Type is one of email, phone (E.164: ^\+?[1-9]\d{1,14}$), url, uuid,
	// integer, number, boolean, date, timestamp, text. It also types
	// `value` in CEL and the column in row rules.
	Type string `yaml:"type"`
	// Required refuses NULL, and in an INSERT a column left out or set to
	// DEFAULT (23502).
	Required bool `yaml:"required"`
	// MinLength / MaxLength bound the length in characters of the text
	// form.
	MinLength *int `yaml:"min_length"`
	MaxLength *int `yaml:"max_length"`
	// Min / Max bound the value, inclusive; they need type integer or
	// number.
	Min *float64 `yaml:"min"`
	Max *float64 `yaml:"max"`
	// Pattern is an RE2 regular expression the text form must match
	// (anchor it with ^…$ to match all of it). The generated SQL uses it
	// with PostgreSQL's ~, so keep to the syntax both share.
	Pattern string `yaml:"pattern"`
	// Enum lists the allowed text forms, compared exactly.
	Enum []string `yaml:"enum"`
	// CEL is an expression over `value` (typed by Type: int, double, bool,
	// google.protobuf.Timestamp for date and timestamp, else string) that
	// must return bool; false refuses the value.
	CEL string `yaml:"cel"`
	// Message replaces the default reason in the violation's message (the
	// message still names the table, column and rule).
	Message string `yaml:"message"`
	// Name names the rule and its one SQL constraint; without it each kind
	// is its own constraint named <table>_<column>_<kind>.
	Name  string `yaml:"name"`
	Scope `yaml:",inline"`
	// SQL false leaves the rule out of the generated SQL (enforced by
	// pgshield only): for a column whose stored form is not what the
	// client wrote, such as an encrypted one.
	SQL *bool `yaml:"sql"`
}

// RowRule is a CEL expression over the written row (`row.<column>`, each
// typed by its column rule's type, else string) that must return bool.
type RowRule struct {
	Name    string `yaml:"name"`
	CEL     string `yaml:"cel"`
	Message string `yaml:"message"`
	Scope   `yaml:",inline"`
	SQL     *bool `yaml:"sql"`
}

// TransitionRule lists the allowed changes of a status column: from each
// value to the values it may become. A value that is not a key of Allowed
// is final. Setting a column to the value it has is always allowed.
type TransitionRule struct {
	// Name names the rule and its trigger; default
	// <table>_<column>_transition.
	Name    string              `yaml:"name"`
	Column  string              `yaml:"column"`
	Allowed map[string][]string `yaml:"allowed"`
	Message string              `yaml:"message"`
	Scope   `yaml:",inline"`
	SQL     *bool `yaml:"sql"`
}

// maxIdentifier is PostgreSQL's NAMEDATALEN-1: a longer constraint or
// trigger name would be truncated, and the Violation's Constraint would
// not be the one PostgreSQL reports.
const maxIdentifier = 63

// Compile validates the whole policy file and compiles it: regular
// expressions, CEL programs, column indexes, the firewall. Every problem is
// reported at once (errors.Join), each prefixed with its path in the file
// (databases.app.tables.leads.columns.email.pattern: invalid RE2: …).
// Compile runs when the file is loaded, never per statement.
func Compile(f File) (*Policy, error) {
	var errs []error
	fail := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	failErr := func(path, what string, err error) {
		errs = append(errs, fmt.Errorf("%s: %s: %w", path, what, err))
	}
	fileRefuse, ok := parseOnUnknown(f.OnUnknown)
	if !ok {
		fail("on_unknown", "%q is neither defer nor refuse", f.OnUnknown)
	}
	p := &Policy{databases: make(map[string]map[string]*TableRules, len(f.Databases))}
	envs := &celEnvs{}
	for _, db := range sortedKeys(f.Databases) {
		tables := make(map[string]*TableRules, len(f.Databases[db].Tables))
		p.databases[db] = tables
		for _, name := range sortedKeys(f.Databases[db].Tables) {
			path := "databases." + db + ".tables." + name
			ft := f.Databases[db].Tables[name]
			if !validIdentifier(name) {
				fail(path, "a table name is 1 to %d bytes without NUL", maxIdentifier)
			}
			t := &TableRules{database: db, name: name, byName: map[string]int{}, refuseUnknown: fileRefuse}
			if ft.OnUnknown != "" {
				refuse, ok := parseOnUnknown(ft.OnUnknown)
				if !ok {
					fail(path+".on_unknown", "%q is neither defer nor refuse", ft.OnUnknown)
				}
				t.refuseUnknown = refuse
			}
			c := tableCompiler{t: t, path: path, fail: fail, failErr: failErr, envs: envs}
			c.compile(ft)
			tables[name] = t
		}
	}
	if len(f.Firewall) > 0 {
		fw, err := CompileFirewall(f.Firewall)
		if err != nil {
			errs = append(errs, err)
		}
		p.firewall = fw
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// tableCompiler compiles one table, collecting problems through fail.
type tableCompiler struct {
	t       *TableRules
	path    string
	fail    func(path, format string, args ...any)
	failErr func(path, what string, err error)
	envs    *celEnvs
	names   map[string]string // constraint or trigger name → the path that gave it, to refuse duplicates
}

func (c *tableCompiler) compile(ft FileTable) {
	c.names = map[string]string{}
	for _, col := range sortedKeys(ft.Columns) {
		c.column(col, ft.Columns[col])
	}
	seen := map[string]int{}
	for i, tr := range ft.Transitions {
		path := fmt.Sprintf("%s.transitions[%d]", c.path, i)
		if j, dup := seen[tr.Column]; dup && tr.Column != "" {
			c.fail(path+".column", "%s already has transitions (transitions[%d])", tr.Column, j)
		}
		seen[tr.Column] = i
		c.transition(path, tr)
	}
	for i, rr := range ft.Rows {
		c.row(fmt.Sprintf("%s.rows[%d]", c.path, i), rr)
	}
	for i := range c.t.cols {
		if r := c.t.cols[i].rule; r != nil && r.required {
			c.t.required = append(c.t.required, i)
		}
	}
}

// claim records a constraint or trigger name, refusing one already used in
// the table (PostgreSQL would refuse the second ADD CONSTRAINT) or too long
// to survive PostgreSQL's truncation.
func (c *tableCompiler) claim(name, path string) {
	if !validIdentifier(name) {
		c.fail(path, "the rule name %q is longer than %d bytes (PostgreSQL would truncate it): set name", name, maxIdentifier)
	}
	if other, dup := c.names[name]; dup {
		c.fail(path, "the rule name %q is already used by %s", name, other)
		return
	}
	c.names[name] = path
}

func (c *tableCompiler) column(col string, cr ColumnRule) {
	path := c.path + ".columns." + col
	if !validIdentifier(col) {
		c.fail(path, "a column name is 1 to %d bytes without NUL", maxIdentifier)
	}
	r := &columnRule{table: c.t.name, column: col, required: cr.Required, minLen: -1, maxLen: -1,
		message: cr.Message, named: cr.Name != "", inSQL: cr.SQL == nil || *cr.SQL}
	r.scope = c.scope(path, cr.Scope)
	if cr.Type != "" {
		typ, ok := parseValueType(cr.Type)
		if !ok {
			c.fail(path+".type", "unknown type %q (one of %s)", cr.Type, valueTypeNames())
		}
		r.typ = typ
	}
	if cr.MinLength != nil {
		if *cr.MinLength < 0 {
			c.fail(path+".min_length", "must not be negative")
		}
		r.minLen = *cr.MinLength
	}
	if cr.MaxLength != nil {
		if *cr.MaxLength < 0 {
			c.fail(path+".max_length", "must not be negative")
		}
		r.maxLen = *cr.MaxLength
	}
	if r.minLen >= 0 && r.maxLen >= 0 && r.minLen > r.maxLen {
		c.fail(path, "min_length %d is greater than max_length %d", r.minLen, r.maxLen)
	}
	if cr.Min != nil || cr.Max != nil {
		if r.typ != typeInteger && r.typ != typeNumber {
			c.fail(path, "min and max need type integer or number (use min_length and max_length for text)")
		}
		for _, b := range []struct {
			key string
			v   *float64
		}{{"min", cr.Min}, {"max", cr.Max}} {
			if b.v != nil && (math.IsNaN(*b.v) || math.IsInf(*b.v, 0)) {
				c.fail(path+"."+b.key, "must be a finite number")
			}
		}
		if cr.Min != nil {
			r.hasMin, r.min = true, *cr.Min
		}
		if cr.Max != nil {
			r.hasMax, r.max = true, *cr.Max
		}
		if r.hasMin && r.hasMax && r.min > r.max {
			c.fail(path, "min %v is greater than max %v", r.min, r.max)
		}
	}
	if cr.Pattern != "" {
		re, err := regexp.Compile(cr.Pattern)
		if err != nil {
			c.failErr(path+".pattern", "invalid RE2", err)
		} else if strings.ContainsRune(cr.Pattern, 0) {
			c.fail(path+".pattern", "must not contain NUL")
		}
		r.pattern, r.patternSrc = re, cr.Pattern
	}
	if cr.Enum != nil {
		if len(cr.Enum) == 0 {
			c.fail(path+".enum", "lists no value")
		}
		for i, e := range cr.Enum {
			if strings.ContainsRune(e, 0) {
				c.fail(fmt.Sprintf("%s.enum[%d]", path, i), "must not contain NUL")
			}
		}
		r.enum = slices.Clone(cr.Enum)
	}
	if cr.CEL != "" {
		prog, expr, err := c.envs.compileValue(r.typ, cr.CEL)
		if err != nil {
			c.failErr(path+".cel", "invalid CEL", err)
		}
		r.cel, r.celExpr, r.celSrc = prog, expr, cr.CEL
	}
	if cr.Name != "" {
		c.claim(cr.Name, path+".name")
		r.name = cr.Name
	}
	for _, k := range r.kinds() {
		name := r.constraint(k)
		if cr.Name == "" {
			c.claim(name, path)
		}
	}
	r.prepare()
	idx := c.t.ensureColumn(col)
	c.t.cols[idx].typ = r.typ
	c.t.cols[idx].rule = r
}

func (c *tableCompiler) transition(path string, tr TransitionRule) {
	if tr.Column == "" {
		c.fail(path+".column", "is missing")
		return
	}
	if len(tr.Allowed) == 0 {
		c.fail(path+".allowed", "lists no transition")
	}
	r := &transitionRule{table: c.t.name, column: tr.Column, allowed: map[string][]string{},
		message: tr.Message, inSQL: tr.SQL == nil || *tr.SQL}
	r.scope = c.scope(path, tr.Scope)
	r.name = tr.Name
	if r.name == "" {
		r.name = c.t.name + "_" + tr.Column + "_transition"
		c.claim(r.name, path)
	} else {
		c.claim(r.name, path+".name")
	}
	if fn := transitionFunction(c.t.name, tr.Column); len(fn) > maxIdentifier {
		c.fail(path+".column", "the trigger function's name %s is longer than %d bytes: shorten the table or column name", fn, maxIdentifier)
	}
	idx := c.t.ensureColumn(tr.Column)
	var enum []string
	if cr := c.t.cols[idx].rule; cr != nil {
		enum = cr.enum
	}
	for _, from := range sortedKeys(tr.Allowed) {
		if enum != nil && !slices.Contains(enum, from) {
			c.fail(path+".allowed."+from, "%s is not one of the column's enum values", from)
		}
		for i, to := range tr.Allowed[from] {
			if enum != nil && !slices.Contains(enum, to) {
				c.fail(fmt.Sprintf("%s.allowed.%s[%d]", path, from, i), "%s is not one of the column's enum values", to)
			}
			if strings.ContainsRune(to, 0) || strings.ContainsRune(from, 0) {
				c.fail(path+".allowed", "a value must not contain NUL")
			}
		}
		r.allowed[from] = slices.Clone(tr.Allowed[from])
		r.from = append(r.from, from)
	}
	r.prepare()
	c.t.transitions = append(c.t.transitions, r)
}

func (c *tableCompiler) row(path string, rr RowRule) {
	if rr.Name == "" {
		c.fail(path+".name", "is missing (it names the rule in messages and its SQL constraint)")
	} else {
		c.claim(rr.Name, path+".name")
	}
	r := &rowRule{table: c.t.name, name: rr.Name, src: rr.CEL, message: rr.Message, inSQL: rr.SQL == nil || *rr.SQL}
	r.scope = c.scope(path, rr.Scope)
	if rr.CEL == "" {
		c.fail(path+".cel", "is missing")
		return
	}
	prog, expr, err := c.envs.compileRow(c.t, rr.CEL)
	if err != nil {
		c.failErr(path+".cel", "invalid CEL", err)
		return
	}
	reads, wholeRow := rowReads(c.t, expr)
	if wholeRow {
		c.fail(path+".cel", "reads row other than by its columns (row.<column>), so the columns it needs are unknown")
		return
	}
	r.prog, r.expr, r.reads = prog, expr, reads
	r.prepareRow(c.t)
	c.t.rows = append(c.t.rows, r)
}

func (c *tableCompiler) scope(path string, s Scope) serviceScope {
	if len(s.Services) > 0 && len(s.ExceptServices) > 0 {
		c.fail(path, "set services or except_services, not both")
	}
	for i, svc := range s.Services {
		if svc == "" {
			c.fail(fmt.Sprintf("%s.services[%d]", path, i), "is empty")
		}
	}
	for i, svc := range s.ExceptServices {
		if svc == "" {
			c.fail(fmt.Sprintf("%s.except_services[%d]", path, i), "is empty")
		}
	}
	return serviceScope{only: slices.Clone(s.Services), except: slices.Clone(s.ExceptServices)}
}

func parseOnUnknown(s string) (refuse, ok bool) {
	switch s {
	case "", "defer":
		return false, true
	case "refuse":
		return true, true
	}
	return false, false
}

// validIdentifier: PostgreSQL takes any name when quoted (the generated SQL
// always quotes), except an empty one, a NUL, or more than it keeps.
func validIdentifier(s string) bool {
	return s != "" && len(s) <= maxIdentifier && !strings.ContainsRune(s, 0)
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// valueType is a column rule's type. Each accepts the text forms of its
// regular expression (the re* constants, which the generated SQL checks
// with), so that the proxy and PostgreSQL agree; its Go check (valid, in
// values.go) is written by hand so that it does not allocate.
type valueType uint8

const (
	typeNone valueType = iota // no type: any text, string in CEL
	typeText
	typeEmail
	typePhone
	typeURL
	typeUUID
	typeInteger
	typeNumber
	typeBoolean
	typeDate
	typeTimestamp
	numValueTypes
)

func (t valueType) String() string {
	switch t {
	case typeText:
		return "text"
	case typeEmail:
		return "email"
	case typePhone:
		return "phone"
	case typeURL:
		return "url"
	case typeUUID:
		return "uuid"
	case typeInteger:
		return "integer"
	case typeNumber:
		return "number"
	case typeBoolean:
		return "boolean"
	case typeDate:
		return "date"
	case typeTimestamp:
		return "timestamp"
	}
	return ""
}

func parseValueType(s string) (valueType, bool) {
	for t := typeText; t < numValueTypes; t++ {
		if t.String() == s {
			return t, true
		}
	}
	return typeNone, false
}

func valueTypeNames() string {
	var names []string
	for t := typeText; t < numValueTypes; t++ {
		names = append(names, t.String())
	}
	return strings.Join(names, ", ")
}

// article names the type in a violation: "not an email address".
func (t valueType) article() string {
	switch t {
	case typeEmail:
		return "an email address"
	case typePhone:
		return "a phone number in E.164 form"
	case typeURL:
		return "a URL"
	case typeUUID:
		return "a UUID"
	case typeInteger:
		return "an integer"
	case typeNumber:
		return "a number"
	case typeBoolean:
		return "a boolean"
	case typeDate:
		return "a date"
	case typeTimestamp:
		return "a timestamp"
	}
	return "text"
}

// hint says which forms the type accepts.
func (t valueType) hint() string {
	switch t {
	case typePhone:
		return "an optional + and 2 to 15 digits, the first not 0: +14155550123"
	case typeURL:
		return "scheme://host[/path][?query][#fragment], printable ASCII"
	case typeUUID:
		return "8-4-4-4-12 hexadecimal digits"
	case typeInteger:
		return "digits with an optional sign, within 64 bits"
	case typeNumber:
		return "a decimal number such as -1.5 or 2e3"
	case typeBoolean:
		return "true, false, t, f, yes, no, y, n, on, off, 1 or 0"
	case typeDate:
		return "YYYY-MM-DD, optionally followed by BC"
	case typeTimestamp:
		return "YYYY-MM-DD[ HH:MM[:SS[.fraction]][Z|±HH[:MM]]], optionally followed by BC"
	}
	return ""
}

func (t valueType) celType() *cel.Type {
	switch t {
	case typeInteger:
		return cel.IntType
	case typeNumber:
		return cel.DoubleType
	case typeBoolean:
		return cel.BoolType
	case typeDate, typeTimestamp:
		return cel.TimestampType
	}
	return cel.StringType
}

// celCostLimit bounds one evaluation of a rule, so that an expression that
// loops over a long value cannot hold a client's statement for long.
const celCostLimit = 100000

// rowTypeName is the CEL type of `row`; each table's environment gives it
// that table's columns as fields.
const rowTypeName = "pgshield.Row"

// celEnvs are the CEL environments of one Compile: one per type of
// `value`, made when first needed, and one per table with row rules.
type celEnvs struct {
	value map[valueType]*cel.Env
}

func celOptions() []cel.EnvOption {
	return []cel.EnvOption{
		// value >= 0 for a number: CEL would otherwise refuse to compare a
		// double with an int literal.
		cel.CrossTypeNumericComparisons(true),
		ext.Strings(),
	}
}

func (e *celEnvs) compileValue(typ valueType, src string) (cel.Program, celast.Expr, error) {
	env := e.value[typ]
	if env == nil {
		var err error
		env, err = cel.NewEnv(append(celOptions(), cel.Variable("value", typ.celType()))...)
		if err != nil {
			return nil, nil, fmt.Errorf("CEL environment: %w", err)
		}
		if e.value == nil {
			e.value = map[valueType]*cel.Env{}
		}
		e.value[typ] = env
	}
	return compileCEL(env, src)
}

func (e *celEnvs) compileRow(t *TableRules, src string) (cel.Program, celast.Expr, error) {
	reg, err := types.NewRegistry()
	if err != nil {
		return nil, nil, fmt.Errorf("CEL registry: %w", err)
	}
	prov := &rowProvider{Registry: reg, t: t, fields: map[string]*types.FieldType{}}
	env, err := cel.NewEnv(append(celOptions(),
		cel.CustomTypeProvider(prov), cel.CustomTypeAdapter(reg),
		cel.Variable("row", cel.ObjectType(rowTypeName)))...)
	if err != nil {
		return nil, nil, fmt.Errorf("CEL environment: %w", err)
	}
	return compileCEL(env, src)
}

func compileCEL(env *cel.Env, src string) (cel.Program, celast.Expr, error) {
	ast, iss := env.Compile(src)
	if iss.Err() != nil {
		return nil, nil, iss.Err()
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		return nil, nil, fmt.Errorf("must return bool, returns %s", ast.OutputType())
	}
	prog, err := env.Program(ast, cel.CostLimit(celCostLimit), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, nil, fmt.Errorf("CEL program: %w", err)
	}
	return prog, ast.NativeRep().Expr(), nil
}

// rowProvider gives `row` the table's columns as typed fields: any name
// is a column (the policy does not know the table's schema), typed by its
// column rule, else string. A field it is asked for becomes a column of
// the table, so that CheckValues can find its value by number. It is
// used, and grows, only while Compile runs.
type rowProvider struct {
	*types.Registry
	t      *TableRules
	fields map[string]*types.FieldType
}

func (p *rowProvider) FindStructType(name string) (*types.Type, bool) {
	if name == rowTypeName {
		return types.NewTypeTypeWithParam(types.NewObjectType(rowTypeName)), true
	}
	return p.Registry.FindStructType(name)
}

func (p *rowProvider) FindStructFieldNames(name string) ([]string, bool) {
	if name == rowTypeName {
		names := make([]string, len(p.t.cols))
		for i, c := range p.t.cols {
			names[i] = c.name
		}
		return names, true
	}
	return p.Registry.FindStructFieldNames(name)
}

func (p *rowProvider) FindStructFieldType(name, field string) (*types.FieldType, bool) {
	if name != rowTypeName {
		return p.Registry.FindStructFieldType(name, field)
	}
	if ft, ok := p.fields[field]; ok {
		return ft, true
	}
	ci := p.t.ensureColumn(field)
	ft := &types.FieldType{
		Type: p.t.cols[ci].typ.celType(),
		IsSet: func(obj any) bool {
			r, ok := obj.(*celRow)
			return ok && r.vals[ci] != nil
		},
		GetFrom: func(obj any) (any, error) {
			r, ok := obj.(*celRow)
			if !ok || r.vals[ci] == nil {
				return nil, errNoColumn
			}
			return r.vals[ci], nil
		},
	}
	p.fields[field] = ft
	return ft, true
}

// errNoColumn: a row rule read a column the row does not have (CheckValues
// runs a rule only with its columns, so only has() sees it).
var errNoColumn = errors.New("the row has no such column")

// rowReads returns the columns a row rule reads (its row.<column>
// fields); wholeRow when it uses `row` in another way, which would leave
// the columns it reads unknown.
func rowReads(t *TableRules, expr celast.Expr) (reads []int, wholeRow bool) {
	fieldOperands := map[int64]bool{}
	celast.PreOrderVisit(expr, celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.SelectKind:
			sel := e.AsSelect()
			if op := sel.Operand(); op.Kind() == celast.IdentKind && op.AsIdent() == "row" {
				fieldOperands[op.ID()] = true
				// has(row.x) reads whether x is written, not its value:
				// the rule still runs when x is left out.
				if ci := t.Index(sel.FieldName()); !sel.IsTestOnly() && ci >= 0 && !slices.Contains(reads, ci) {
					reads = append(reads, ci)
				}
			}
		case celast.IdentKind:
			if e.AsIdent() == "row" && !fieldOperands[e.ID()] {
				wholeRow = true
			}
		}
	}))
	return reads, wholeRow
}
