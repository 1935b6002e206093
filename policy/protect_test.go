package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
	"github.com/pgshield/pgshield/internal/example"
)

// exampleProtected is the example application's encryption: leads.email
// deterministic, the other sensitive columns randomized. Tables are in
// the search path's first schema, public.
type exampleProtected map[string]bool // table.column → deterministic

func newExampleProtected() exampleProtected {
	return exampleProtected{
		"leads.ssn": false, "leads.credit_card": false, "leads.bank_account": false, "leads.date_of_birth": false,
		"agents.license_number": false, "carriers.api_key": false, "leads.email": true,
	}
}

func (e exampleProtected) Encrypted(schema, table, column string) (bool, bool) {
	if schema != "" && schema != "public" {
		return false, false
	}
	det, ok := e[table+"."+column]
	return det, ok
}

func (e exampleProtected) Has(schema, table string) bool {
	if schema != "" && schema != "public" {
		return false
	}
	for k := range e {
		if strings.HasPrefix(k, table+".") {
			return true
		}
	}
	return false
}

// countingProtected counts the questions asked of it.
type countingProtected struct {
	Protected
	encrypted, has int
}

func (c *countingProtected) Encrypted(schema, table, column string) (bool, bool) {
	c.encrypted++
	return c.Protected.Encrypted(schema, table, column)
}

func (c *countingProtected) Has(schema, table string) bool {
	c.has++
	return c.Protected.Has(schema, table)
}

// schemaCatalog has the tables of the example schema, in its column
// order, read from the schema itself.
func schemaCatalog(t testing.TB) fakeCatalog {
	t.Helper()
	tree, err := pg.Parse(example.Schema())
	if err != nil {
		t.Fatal(err)
	}
	cat := fakeCatalog{}
	for _, raw := range tree.GetStmts() {
		cs := raw.GetStmt().GetCreateStmt()
		if cs == nil {
			continue
		}
		var cols []Column
		for _, e := range cs.GetTableElts() {
			if cd := e.GetColumnDef(); cd != nil {
				cols = append(cols, Column{Name: cd.GetColname(), TypeOID: typeOID(cd.GetTypeName())})
			}
		}
		cat[cs.GetRelation().GetRelname()] = cols
	}
	if len(cat["leads"]) == 0 || cat["carriers"][2].Name != "api_key" {
		t.Fatalf("example schema read wrongly: %v", cat)
	}
	return cat
}

func renderProtected(s Source) string {
	r := renderSource(s)
	if s.Pos > 0 {
		r += "@" + strconv.Itoa(s.Pos)
	}
	return r
}

func renderProtections(ps []Protection) string {
	var b strings.Builder
	for i, p := range ps {
		if v := p.Refusal; v != nil {
			fmt.Fprintf(&b, "stmt %d: refused %s %s %s\n  message: %s\n  hint: %s\n", i+1, v.Code, v.Kind,
				qualified("", v.Table, v.Column), v.Message, v.Hint)
			continue
		}
		fmt.Fprintf(&b, "stmt %d: allowed\n", i+1)
		for _, v := range p.Values {
			fmt.Fprintf(&b, "  value %s%s = %s\n", qualified(v.Schema, v.Table, v.Column), detMark(v.Deterministic),
				renderProtected(v.Value))
		}
		for _, s := range p.Searches {
			vals := make([]string, len(s.Values))
			for i, v := range s.Values {
				vals[i] = renderProtected(v)
			}
			order := "column first"
			if !s.ColumnFirst {
				order = "value first"
			}
			fmt.Fprintf(&b, "  search %s %s (%s) column@%d op@%d %s\n", qualified(s.Schema, s.Table, s.Column), s.Op,
				strings.Join(vals, ", "), s.ColumnPos, s.OpPos, order)
		}
		if p.Reads {
			b.WriteString("  reads\n")
		}
		if p.Copy != nil {
			cols := make([]string, len(p.Copy))
			for i, c := range p.Copy {
				cols[i] = fmt.Sprintf("%d:%s%s", c.Index, c.Column, detMark(c.Deterministic))
			}
			fmt.Fprintf(&b, "  copy %s\n", strings.Join(cols, " "))
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func qualified(schema, table, column string) string {
	n := table
	if schema != "" {
		n = schema + "." + n
	}
	if column != "" {
		n += "." + column
	}
	return n
}

func detMark(det bool) string {
	if det {
		return " (deterministic)"
	}
	return ""
}

// checkProtection checks what must hold of any Protection: the refusal's
// fields, and that every position points at the token it claims.
func checkProtection(sql string, tree *pg.ParseResult, ps []Protection) error {
	if len(ps) != len(tree.GetStmts()) {
		return fmt.Errorf("%d protections for %d statements", len(ps), len(tree.GetStmts()))
	}
	scan, err := pg.Scan(sql)
	if err != nil {
		return err
	}
	toks := scan.GetTokens()
	at := func(pos int) (int, *pg.ScanToken) {
		for i, t := range toks {
			if int(t.GetStart()) == pos-1 {
				return i, t
			}
		}
		return -1, nil
	}
	source := func(what string, s Source) error {
		if s.Pos == 0 {
			if s.Kind == SourceParam {
				return fmt.Errorf("%s: parameter $%d without a position", what, s.Param)
			}
			return nil
		}
		i, t := at(s.Pos)
		if t == nil {
			return fmt.Errorf("%s: no token at %d", what, s.Pos)
		}
		switch tok := t.GetToken(); {
		case s.Kind == SourceParam && tok == pg.Token_PARAM:
			if sql[s.Pos-1:t.GetEnd()] != "$"+strconv.Itoa(s.Param) {
				return fmt.Errorf("%s: $%d at %q", what, s.Param, sql[s.Pos-1:t.GetEnd()])
			}
		case s.Kind != SourceLiteral:
			return fmt.Errorf("%s: %s at token %v", what, renderSource(s), tok)
		case tok == pg.Token_SCONST || tok == pg.Token_USCONST || tok == pg.Token_ICONST || tok == pg.Token_FCONST ||
			tok == pg.Token_TRUE_P || tok == pg.Token_FALSE_P:
		case tok == pg.Token_ASCII_45 && i+1 < len(toks) &&
			(toks[i+1].GetToken() == pg.Token_ICONST || toks[i+1].GetToken() == pg.Token_FCONST):
		default:
			return fmt.Errorf("%s: literal at token %v %q", what, tok, sql[s.Pos-1:t.GetEnd()])
		}
		return nil
	}
	for n, p := range ps {
		if v := p.Refusal; v != nil {
			if v.Code != "0A000" || v.Kind != "encryption" || v.Table == "" || v.Message == "" || v.Hint == "" {
				return fmt.Errorf("stmt %d: incomplete refusal %+v", n+1, *v)
			}
			if p.Values != nil || p.Searches != nil || p.Reads || p.Copy != nil {
				return fmt.Errorf("stmt %d: a refusal with more", n+1)
			}
		}
		for _, v := range p.Values {
			if v.Table == "" || v.Column == "" || !writable(v.Value) {
				return fmt.Errorf("stmt %d: value %+v", n+1, v)
			}
			if err := source(fmt.Sprintf("stmt %d: value of %s", n+1, v.Column), v.Value); err != nil {
				return err
			}
		}
		for _, s := range p.Searches {
			if s.Table == "" || s.Column == "" || len(s.Values) == 0 || s.Op < SearchEq || s.Op > SearchNotIn {
				return fmt.Errorf("stmt %d: search %+v", n+1, s)
			}
			if _, t := at(s.ColumnPos); t == nil || (t.GetToken() != pg.Token_IDENT && t.GetKeywordKind() == pg.KeywordKind_NO_KEYWORD) {
				return fmt.Errorf("stmt %d: search on %s: no name at column@%d", n+1, s.Column, s.ColumnPos)
			}
			_, t := at(s.OpPos)
			want := map[SearchOp][]pg.Token{SearchEq: {pg.Token_ASCII_61}, SearchNe: {pg.Token_NOT_EQUALS},
				SearchIn: {pg.Token_IN_P}, SearchNotIn: {pg.Token_NOT}}[s.Op]
			if t == nil || t.GetToken() != want[0] {
				return fmt.Errorf("stmt %d: search on %s: no %s at op@%d", n+1, s.Column, s.Op, s.OpPos)
			}
			for _, v := range s.Values {
				if !plainValue(v) {
					return fmt.Errorf("stmt %d: search value %s", n+1, renderSource(v))
				}
				if err := source(fmt.Sprintf("stmt %d: search on %s", n+1, s.Column), v); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// noCatalog marks a golden case analysed without a catalog.
const noCatalog = "[no catalog]"

func TestProtectGolden(t *testing.T) {
	path := filepath.Join("testdata", "protect_decisions.txt")
	cases := readGolden(t, path)
	if len(cases) < 60 {
		t.Fatalf("%d cases, want at least 60", len(cases))
	}
	cat := schemaCatalog(t)
	enc := newExampleProtected()
	got := make([]string, len(cases))
	for i, c := range cases {
		tree, err := pg.Parse(c.input)
		if err != nil {
			got[i] = "parse error: " + err.Error()
			continue
		}
		var ps []Protection
		if strings.Contains(c.name, noCatalog) {
			ps = Protect(tree, nil, enc)
		} else {
			ps = Protect(tree, cat, enc)
		}
		got[i] = renderProtections(ps)
		if err := checkProtection(c.input, tree, ps); err != nil {
			t.Errorf("case %q: %v", c.name, err)
		}
		if err := noLiteralIn(c.input, ps); err != nil {
			t.Errorf("case %q: %v", c.name, err)
		}
	}
	checkGolden(t, path, cases, got)
}

// noLiteralIn checks that no refusal repeats a string constant of the
// statement (they may be personal data).
func noLiteralIn(sql string, ps []Protection) error {
	scan, err := pg.Scan(sql)
	if err != nil {
		return err
	}
	for _, p := range ps {
		if p.Refusal == nil {
			continue
		}
		text := p.Refusal.Message + " " + p.Refusal.Hint + " " + p.Refusal.Detail
		names := map[string]bool{}
		for _, tok := range scan.GetTokens() {
			if tok.GetToken() == pg.Token_IDENT {
				names[sql[tok.GetStart():tok.GetEnd()]] = true
			}
		}
		for _, tok := range scan.GetTokens() {
			if tok.GetToken() != pg.Token_SCONST {
				continue
			}
			// A literal that is also a name of the statement ('leads')
			// may be in the message as that name.
			lit := strings.Trim(sql[tok.GetStart():tok.GetEnd()], "'")
			if len(lit) >= 3 && !names[lit] && strings.Contains(text, lit) {
				return fmt.Errorf("refusal %q holds the literal %q", p.Refusal.Message, lit)
			}
		}
	}
	return nil
}

// Statements that name no table with an encrypted column are answered
// from Has alone, however big they are.
func TestProtectSkipsStatementsWithoutEncryptedTables(t *testing.T) {
	var rows []string
	for i := range 2000 {
		rows = append(rows, fmt.Sprintf("(%d, 'update', 'app', '{\"a\": %d}')", i, i))
	}
	for _, sql := range []string{
		"SELECT 1",
		"BEGIN; SET search_path = public; COMMIT",
		"SELECT * FROM lead_assignments a JOIN partnerships p ON p.agent_id = a.agent_id ORDER BY a.lead_id",
		"INSERT INTO audit_log (row_id, action, changed_by, new_row) VALUES " + strings.Join(rows, ", "),
		"UPDATE partnerships SET commission_rate = commission_rate * 2 WHERE contract_end > now()",
		"SELECT lower(email) FROM crm.leads ORDER BY ssn",
	} {
		tree, err := pg.Parse(sql)
		if err != nil {
			t.Fatal(err)
		}
		enc := &countingProtected{Protected: newExampleProtected()}
		ps := Protect(tree, schemaCatalog(t), enc)
		if len(ps) != len(tree.GetStmts()) {
			t.Fatalf("%.60s: %d protections for %d statements", sql, len(ps), len(tree.GetStmts()))
		}
		for i, p := range ps {
			if p.Refusal != nil || p.Values != nil || p.Searches != nil || p.Reads || p.Copy != nil {
				t.Errorf("%.60s: stmt %d: %+v", sql, i+1, p)
			}
		}
		if enc.encrypted != 0 || enc.has > 3 {
			t.Errorf("%.60s: %d Encrypted and %d Has calls", sql, enc.encrypted, enc.has)
		}
	}
}

func TestProtectNilInputs(t *testing.T) {
	if ps := Protect(nil, nil, newExampleProtected()); ps != nil {
		t.Errorf("nil tree: %v", ps)
	}
	tree, err := pg.Parse("SELECT ssn FROM leads ORDER BY ssn; SELECT 1")
	if err != nil {
		t.Fatal(err)
	}
	ps := Protect(tree, nil, nil)
	if len(ps) != 2 || ps[0].Refusal != nil || ps[1].Refusal != nil {
		t.Errorf("no encrypted columns: %+v", ps)
	}
	ps = Protect(tree, nil, newExampleProtected())
	if len(ps) != 2 || ps[0].Refusal == nil || ps[1].Refusal != nil {
		t.Errorf("not aligned with the statements: %+v", ps)
	}
}

func TestSearchOpString(t *testing.T) {
	for op, want := range map[SearchOp]string{SearchEq: "=", SearchNe: "<>", SearchIn: "IN", SearchNotIn: "NOT IN", 0: "?"} {
		if got := op.String(); got != want {
			t.Errorf("%d: %q, want %q", op, got, want)
		}
	}
}

func FuzzProtect(f *testing.F) {
	data, err := os.ReadFile(filepath.Join("testdata", "protect_decisions.txt"))
	if err != nil {
		f.Fatal(err)
	}
	for _, block := range strings.Split(string(data), "\n=== ")[1:] {
		_, rest, _ := strings.Cut(block, "\n")
		if sql, _, ok := strings.Cut(rest, "\n---\n"); ok {
			f.Add(sql)
		}
	}
	cat := schemaCatalog(f)
	enc := newExampleProtected()
	f.Fuzz(func(t *testing.T, sql string) {
		tree, err := pg.Parse(sql)
		if err != nil {
			return
		}
		for _, c := range []Catalog{cat, nil} {
			if err := checkProtection(sql, tree, Protect(tree, c, enc)); err != nil {
				t.Fatal(err)
			}
		}
	})
}
