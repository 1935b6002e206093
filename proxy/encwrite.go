package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/policy"
	"github.com/pgshield/pgshield/router"
)

// The write side of column encryption: what a statement's text becomes
// (its literals written into encrypted columns replaced by their
// ciphertext, its searches on deterministic columns turned into
// comparisons with ciphertexts) and what each Bind parameter becomes.

// encPlan is the encryption's analysis of one statement text.
type encPlan struct {
	refusal *policy.Violation
	// reads: the results may carry an encrypted or masked column.
	reads bool
	// sites are the parts of the text to replace, in order.
	sites []encSite
	// params are the roles of the parameters, by number - 1 (nil: no
	// parameter is encrypted).
	params []paramRole
	// copy: the COPY FROM STDIN writes encrypted columns.
	copy *encCopy
}

// siteKind is what a part of the text becomes.
type siteKind uint8

const (
	siteValue siteKind = iota + 1 // a literal written: its ciphertext
	siteEq                        // col = literal, col <> literal (not): the literal's ciphertexts
	siteParam                     // col = $n, col <> $n (not): ANY($n::text[]), ALL($n::text[])
	siteSwap                      // literal or $n = col: "col = ANY(…)" in place of the whole comparison
	siteIn                        // IN (…), NOT IN (…) (not): = ANY(…), <> ALL(…)
)

// encSite is one part of the text to replace: text[start:end].
type encSite struct {
	kind       siteKind
	start, end int
	col        *colSpec
	vals       []policy.Source // the literal or parameter (one), or the IN list
	not        bool
	colText    string // siteSwap: the column as written
}

// paramRole is what a Bind parameter is for.
type paramRole struct {
	col    *colSpec // nil: not encrypted
	search bool     // compared with a deterministic column: an array of its ciphertexts
}

// protectedOf is policy.Protected for a database's encrypted columns.
type protectedOf struct {
	tables map[string]map[string]*colSpec
}

func (p protectedOf) Encrypted(schema, table, column string) (deterministic, ok bool) {
	c := p.tables[table][column]
	if c == nil {
		return false, false
	}
	return c.det, true
}

func (p protectedOf) Has(schema, table string) bool { return len(p.tables[table]) > 0 }

// touches reports whether a statement of class may concern encryption or
// the masks of the session's service.
func (es *encState) touches(si SessionInfo, class *router.Class) bool {
	if class == nil {
		return true
	}
	enc, masks := es.cols[si.Database], es.masked[si.Service][si.Database]
	for _, t := range class.Tables {
		t = bareName(t)
		if len(enc[t]) > 0 || len(masks[t]) > 0 {
			return true
		}
	}
	return false
}

const encPlanCacheSize = 4096

// plan returns the analysis of text, from the cache or made now.
func (es *encState) plan(si SessionInfo, text []byte) *encPlan {
	// A service that sees masks has plans of its own: its masked columns
	// are guarded too.
	key := si.Database
	if len(es.masked[si.Service][si.Database]) > 0 {
		key = si.Database + "\x00" + si.Service
	}
	es.mu.Lock()
	cache := es.plans[key]
	if cache == nil {
		cache, _ = lru.New[string, *encPlan](encPlanCacheSize)
		es.plans[key] = cache
	}
	es.mu.Unlock()
	if len(text) > 0 {
		if pl, ok := cache.Get(unsafe.String(&text[0], len(text))); ok {
			return pl
		}
	}
	pl := es.analyse(si, text)
	cache.Add(string(text), pl)
	return pl
}

// analyse makes the plan of text.
func (es *encState) analyse(si SessionInfo, text []byte) *encPlan {
	tree, err := router.Tree(text)
	if err != nil {
		return &encPlan{} // the server reports the syntax error
	}
	cat := es.srv.catalogs.get(context.Background(), si.Database)
	tables := es.cols[si.Database]
	prots := policy.Protect(tree, cat, protectedOf{tables: es.guarded(si)})
	pl := &encPlan{}
	_, lits, _ := router.Shape(nil, nil, text)
	refuse := func(c *colSpec, format string, a ...any) {
		if pl.refusal == nil {
			pl.refusal = &policy.Violation{Code: "0A000", Kind: "encryption", Table: c.table, Column: c.column,
				Message: fmt.Sprintf(format, a...), Hint: encHint(c)}
		}
	}
	role := func(c *colSpec, n int, search bool) {
		for len(pl.params) < n {
			pl.params = append(pl.params, paramRole{})
		}
		r := &pl.params[n-1]
		if r.col != nil && (r.col != c || r.search != search) {
			refuse(c, "%s.%s is encrypted: parameter $%d is used for it and for something else", c.table, c.column, n)
			return
		}
		r.col, r.search = c, search
	}
	for i, p := range prots {
		if p.Refusal != nil && pl.refusal == nil {
			pl.refusal = es.maskedRefusal(si, p.Refusal)
		}
		pl.reads = pl.reads || p.Reads
		for _, v := range p.Values {
			c := tables[v.Table][v.Column]
			if c == nil {
				continue
			}
			switch v.Value.Kind {
			case policy.SourceLiteral:
				if t := v.Value.TypeOID; t != 0 && t != oidTextType && t != oidVarcharType {
					refuse(c, "%s.%s is encrypted: a value written into it cannot be cast; write it as a plain literal or a parameter", c.table, c.column)
					continue
				}
				start, end, ok := literalSpan(text, lits, v.Value.Pos)
				if !ok {
					refuse(c, "%s.%s is encrypted: pgshield cannot find the value written into it in the statement", c.table, c.column)
					continue
				}
				pl.sites = append(pl.sites, encSite{kind: siteValue, start: start, end: end, col: c, vals: []policy.Source{v.Value}})
			case policy.SourceParam:
				role(c, v.Value.Param, false)
			case policy.SourceNull, policy.SourceDefault:
			default:
				refuse(c, "%s.%s is encrypted: pgshield cannot encrypt a value it cannot see (an expression, a function, a subquery)", c.table, c.column)
			}
		}
		for _, s := range p.Searches {
			c := tables[s.Table][s.Column]
			if c == nil {
				continue
			}
			es.searchSites(pl, text, lits, c, s, refuse, role)
		}
		if len(p.Copy) > 0 && pl.copy == nil {
			pl.copy = &encCopy{}
			table := copyTable(tree, i)
			for _, cc := range p.Copy {
				if c := tables[table][cc.Column]; c != nil {
					pl.copy.cols = append(pl.copy.cols, copyCol{index: cc.Index, col: c})
				}
			}
			es.copyStatement(pl.copy, tree, si)
		}
	}
	slices.SortFunc(pl.sites, func(a, b encSite) int { return a.start - b.start })
	for i := 1; i < len(pl.sites); i++ {
		if pl.sites[i].start < pl.sites[i-1].end {
			c := pl.sites[i].col
			refuse(c, "%s.%s is encrypted: pgshield cannot rewrite this use of it", c.table, c.column)
		}
	}
	return pl
}

// searchSites plans one equality search on a deterministic column.
func (es *encState) searchSites(pl *encPlan, text []byte, lits []router.Literal, c *colSpec, s policy.ProtectedSearch,
	refuse func(*colSpec, string, ...any), role func(*colSpec, int, bool)) {
	not := s.Op == policy.SearchNe || s.Op == policy.SearchNotIn
	for _, v := range s.Values {
		if v.Kind == policy.SourceParam {
			role(c, v.Param, true)
		}
	}
	switch s.Op {
	case policy.SearchEq, policy.SearchNe:
		if len(s.Values) != 1 {
			refuse(c, "%s.%s is encrypted: pgshield cannot rewrite this comparison", c.table, c.column)
			return
		}
		v := s.Values[0]
		start, end, ok := sourceSpan(text, lits, v)
		if !ok {
			refuse(c, "%s.%s is encrypted: pgshield cannot find the value compared with it", c.table, c.column)
			return
		}
		// email = ($1): the parentheses go with the value replaced.
		start, end = widenParens(text, start, end)
		if s.ColumnFirst {
			kind := siteEq
			if v.Kind == policy.SourceParam {
				kind = siteParam
			}
			pl.sites = append(pl.sites, encSite{kind: kind, start: start, end: end, col: c, vals: s.Values, not: not})
			return
		}
		colStart := s.ColumnPos - 1
		colEnd, ok := columnRefEnd(text, colStart)
		if !ok || colStart < end {
			refuse(c, "%s.%s is encrypted: pgshield cannot rewrite this comparison; write the column first", c.table, c.column)
			return
		}
		pl.sites = append(pl.sites, encSite{kind: siteSwap, start: start, end: colEnd, col: c, vals: s.Values, not: not,
			colText: string(text[colStart:colEnd])})
	case policy.SearchIn, policy.SearchNotIn:
		start := s.OpPos - 1
		end, ok := inListEnd(text, start)
		if !ok {
			refuse(c, "%s.%s is encrypted: pgshield cannot rewrite this IN list", c.table, c.column)
			return
		}
		pl.sites = append(pl.sites, encSite{kind: siteIn, start: start, end: end, col: c, vals: s.Values, not: not})
	}
}

// guarded are the columns a session's statements are analysed for: the
// encrypted ones, and those its service sees masked, which it must not
// compute on either (lower(phone) would give the value the mask hides).
// A masked column that is not encrypted is guarded as a randomized one:
// read as a plain column only.
func (es *encState) guarded(si SessionInfo) map[string]map[string]*colSpec {
	masks := es.masked[si.Service][si.Database]
	if len(masks) == 0 {
		return es.cols[si.Database]
	}
	out := map[string]map[string]*colSpec{}
	for t, cols := range es.cols[si.Database] {
		out[t] = maps.Clone(cols)
	}
	for t, cols := range masks {
		if out[t] == nil {
			out[t] = map[string]*colSpec{}
		}
		for c, spec := range cols {
			if out[t][c] == nil {
				out[t][c] = spec
			}
		}
	}
	return out
}

// maskedRefusal words a refusal on a column the service sees masked (and
// is not encrypted) as what it is.
func (es *encState) maskedRefusal(si SessionInfo, v *policy.Violation) *policy.Violation {
	if v.Table == "" || es.cols[si.Database][v.Table][v.Column] != nil || es.masked[si.Service][si.Database][v.Table][v.Column] == nil {
		return v
	}
	out := *v
	what := v.Table + "." + v.Column
	out.Message = strings.Replace(v.Message, what+" is encrypted", what+" is masked for service "+si.Service, 1)
	out.Hint = what + " is masked for service " + si.Service + ": it can be read as a plain column, and shows masked; it cannot be searched, sorted, grouped or computed on"
	return &out
}

// encHint says what can be done with an encrypted column.
func encHint(c *colSpec) string {
	if c.det {
		return c.table + "." + c.column + " is encrypted (deterministic): it can be written with a literal or a parameter, read as a plain column, and searched with = or IN against literals or parameters; it cannot be sorted, compared by range, matched with LIKE or computed on"
	}
	return c.table + "." + c.column + " is encrypted (randomized): it can be written with a literal or a parameter and read as a plain column; it cannot be searched, sorted, grouped or computed on"
}

// literalSpan is the byte range of the literal token at a Source.Pos (a
// negative number's sign included).
func literalSpan(text []byte, lits []router.Literal, pos int) (start, end int, ok bool) {
	ref, found := tokenAt(text, lits, pos)
	if !found {
		return 0, 0, false
	}
	return pos - 1, lits[ref.ord].End, true
}

// sourceSpan is the byte range of a literal's or a parameter's token.
func sourceSpan(text []byte, lits []router.Literal, v policy.Source) (start, end int, ok bool) {
	switch v.Kind {
	case policy.SourceLiteral:
		return literalSpan(text, lits, v.Pos)
	case policy.SourceParam:
		start = v.Pos - 1
		if start < 0 || start >= len(text) || text[start] != '$' {
			return 0, 0, false
		}
		end = start + 1
		for end < len(text) && text[end] >= '0' && text[end] <= '9' {
			end++
		}
		return start, end, end > start+1
	}
	return 0, 0, false
}

// widenParens extends text[start:end] over parentheses that hold only
// it: ( $1 ), (('x')).
func widenParens(text []byte, start, end int) (int, int) {
	for {
		i, j := start-1, end
		for i >= 0 && isSpace(text[i]) {
			i--
		}
		for j < len(text) && isSpace(text[j]) {
			j++
		}
		if i < 0 || j >= len(text) || text[i] != '(' || text[j] != ')' {
			return start, end
		}
		start, end = i, j+1
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }

// columnRefEnd is where the column reference starting at start ends: names
// (plain or "quoted") joined by dots.
func columnRefEnd(text []byte, start int) (int, bool) {
	i := start
	for {
		if i >= len(text) {
			return 0, false
		}
		if text[i] == '"' {
			j := i + 1
			for {
				if j >= len(text) {
					return 0, false
				}
				if text[j] == '"' {
					if j+1 < len(text) && text[j+1] == '"' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			i = j + 1
		} else {
			j := i
			for j < len(text) && isIdentByte(text[j]) {
				j++
			}
			if j == i {
				return 0, false
			}
			i = j
		}
		if i < len(text) && text[i] == '.' {
			i++
			continue
		}
		return i, true
	}
}

func isIdentByte(c byte) bool {
	return c == '_' || c == '$' || c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// inListEnd is the end of `IN (…)` or `NOT IN (…)` starting at start: just
// after the parenthesis that closes the list.
func inListEnd(text []byte, start int) (int, bool) {
	i := start
	for i < len(text) && text[i] != '(' {
		i++
	}
	depth := 0
	for ; i < len(text); i++ {
		switch text[i] {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return i + 1, true
			}
		case '\'':
			j := i + 1
			for {
				if j >= len(text) {
					return 0, false
				}
				if text[j] == '\'' {
					if j+1 < len(text) && text[j+1] == '\'' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			i = j
		case '"', '$', '\\', '-', '/':
			if text[i] == '$' && i+1 < len(text) && text[i+1] >= '0' && text[i+1] <= '9' {
				continue // a parameter
			}
			return 0, false // quoted names, dollar quotes, comments: not in a list pgshield rewrites
		}
	}
	return 0, false
}

// statement is the encryption's Statement hook.
func (es *encState) statement(ev StatementEvent) Verdict {
	if !es.touches(ev.Session, ev.Class) {
		return Verdict{}
	}
	pl := es.plan(ev.Session, ev.Text)
	if pl.refusal != nil {
		return es.refuse(ev.Session, pl.refusal)
	}
	if len(pl.sites) == 0 && len(pl.params) == 0 {
		return Verdict{Keep: pl}
	}
	text, v := es.rewriteText(ev.Session, pl, ev.Text)
	if v != nil {
		return es.refuse(ev.Session, v)
	}
	switch ev.Message {
	case 'Q':
		return Verdict{Keep: pl, Rewrite: append(text, 0)}
	case 'P':
		return Verdict{Keep: pl, Rewrite: parseBody(ev.Name, text, ev.ParamTypes, pl.params)}
	}
	return Verdict{Keep: pl}
}

// rewriteText applies the plan's sites to text.
func (es *encState) rewriteText(si SessionInfo, pl *encPlan, text []byte) ([]byte, *policy.Violation) {
	keys := es.keys.Load()
	out := make([]byte, 0, len(text)+len(pl.sites)*96)
	at := 0
	var cts [][]byte
	for i := range pl.sites {
		st := &pl.sites[i]
		out = append(out, text[at:st.start]...)
		at = st.end
		var err error
		switch st.kind {
		case siteValue:
			plain := st.vals[0].Literal
			if v := st.col.typ.check(st.col, plain); v != nil {
				return nil, v
			}
			out = append(out, '\'')
			out, err = encryptValue(keys, st.col, plain, out)
			out = append(out, '\'')
		case siteEq:
			if cts, err = keys.EncryptDeterministicAll(st.col.ad, st.vals[0].Literal, cts[:0]); err == nil {
				out = appendSearchLiteral(out, cts, st.not)
			}
		case siteParam:
			out = appendAnyParam(out, text[st.start:st.end], st.not)
		case siteSwap:
			out = append(out, st.colText...)
			if st.not {
				out = append(out, " <> "...)
			} else {
				out = append(out, " = "...)
			}
			if v := st.vals[0]; v.Kind == policy.SourceParam {
				out = appendAnyParam(out, []byte("$"+strconv.Itoa(v.Param)), st.not)
			} else if cts, err = keys.EncryptDeterministicAll(st.col.ad, v.Literal, cts[:0]); err == nil {
				out = appendSearchLiteral(out, cts, st.not)
			}
		case siteIn:
			if st.not {
				out = append(out, "<> ALL("...)
			} else {
				out = append(out, "= ANY("...)
			}
			for j, v := range st.vals {
				if j > 0 {
					out = append(out, " || "...)
				}
				switch v.Kind {
				case policy.SourceParam:
					out = append(out, '$')
					out = strconv.AppendInt(out, int64(v.Param), 10)
					out = append(out, "::text[]"...)
				case policy.SourceNull:
					out = append(out, "'{NULL}'::text[]"...)
				default:
					if cts, err = keys.EncryptDeterministicAll(st.col.ad, v.Literal, cts[:0]); err == nil {
						out = append(out, "'{"...)
						for k, ct := range cts {
							if k > 0 {
								out = append(out, ',')
							}
							out = append(out, ct...)
						}
						out = append(out, "}'::text[]"...)
					}
				}
			}
			out = append(out, ')')
		}
		if err != nil {
			es.srv.log.Error("encrypting a value failed", zap.String("database", si.Database), zap.String("table", st.col.table),
				zap.String("column", st.col.column), zap.Error(err))
			return nil, &policy.Violation{Code: "XX000", Kind: "encryption", Table: st.col.table, Column: st.col.column,
				Message: "pgshield could not encrypt the value for " + st.col.table + "." + st.col.column}
		}
	}
	return append(out, text[at:]...), nil
}

// appendSearchLiteral appends what a literal compared with a
// deterministic column becomes: its one ciphertext, or (while keys
// rotate) ANY or ALL of an array of them.
func appendSearchLiteral(out []byte, cts [][]byte, not bool) []byte {
	if len(cts) == 1 {
		out = append(out, '\'')
		out = append(out, cts[0]...)
		return append(out, '\'')
	}
	if not {
		out = append(out, "ALL('{"...)
	} else {
		out = append(out, "ANY('{"...)
	}
	for i, ct := range cts {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, ct...)
	}
	return append(out, "}'::text[])"...)
}

// appendAnyParam appends what a parameter compared with a deterministic
// column becomes: its Bind value is the array of its ciphertexts.
func appendAnyParam(out, param []byte, not bool) []byte {
	if not {
		out = append(out, "ALL("...)
	} else {
		out = append(out, "ANY("...)
	}
	out = append(out, param...)
	return append(out, "::text[])"...)
}

// encryptValue appends the stored form of plain for column c.
func encryptValue(keys *crypto.Keyring, c *colSpec, plain, out []byte) ([]byte, error) {
	if c.det {
		return keys.EncryptDeterministic(c.ad, plain, out)
	}
	return keys.Encrypt(c.ad, plain, out)
}

// parseBody is a Parse body with text and, for every encrypted
// parameter, the type text: the server stores ciphertext (or compares an
// array of them), whatever type the client declared.
func parseBody(name, text, types []byte, roles []paramRole) []byte {
	n := 0
	if len(types) >= 2 {
		n = int(binary.BigEndian.Uint16(types))
	}
	oids := make([]uint32, max(n, len(roles)))
	for i := 0; i < n && 2+4*i+4 <= len(types); i++ {
		oids[i] = binary.BigEndian.Uint32(types[2+4*i:])
	}
	for i, r := range roles {
		if r.col != nil {
			oids[i] = oidTextType
		}
	}
	out := make([]byte, 0, len(name)+len(text)+4+4*len(oids))
	out = append(append(out, name...), 0)
	out = append(append(out, text...), 0)
	out = binary.BigEndian.AppendUint16(out, uint16(len(oids)))
	for _, o := range oids {
		out = binary.BigEndian.AppendUint32(out, o)
	}
	return out
}

// bind is the encryption's Bind hook: each encrypted parameter's
// plaintext is checked against the column's type and encrypted; a search
// parameter becomes the array of its ciphertexts under every active
// deterministic key. Those parameters are sent in text format.
func (es *encState) bind(ev BindEvent) Verdict {
	pl := keptEnc(ev.Kept)
	if pl == nil || len(pl.params) == 0 {
		return Verdict{}
	}
	keys := es.keys.Load()
	b := ev.Bind
	out := make([]byte, 0, len(b.Portal)+len(b.Statement)+64+b.NumParams*96)
	out = append(append(out, b.Portal...), 0)
	out = append(append(out, b.Statement...), 0)
	out = binary.BigEndian.AppendUint16(out, uint16(b.NumParams))
	for i := 0; i < b.NumParams; i++ {
		f := b.Format(i)
		if i < len(pl.params) && pl.params[i].col != nil {
			f = 0
		}
		out = binary.BigEndian.AppendUint16(out, uint16(f))
	}
	out = binary.BigEndian.AppendUint16(out, uint16(b.NumParams))
	vals := b.Values()
	var cts [][]byte
	var text []byte
	for vals.Next() {
		i := vals.Index
		if i >= len(pl.params) || pl.params[i].col == nil {
			if vals.Null {
				out = binary.BigEndian.AppendUint32(out, 0xFFFFFFFF)
				continue
			}
			out = binary.BigEndian.AppendUint32(out, uint32(len(vals.Value)))
			out = append(out, vals.Value...)
			continue
		}
		r := pl.params[i]
		if vals.Null {
			if r.search {
				// NULL compares as NULL, inside an IN list too.
				out = binary.BigEndian.AppendUint32(out, 6)
				out = append(out, "{NULL}"...)
				continue
			}
			out = binary.BigEndian.AppendUint32(out, 0xFFFFFFFF)
			continue
		}
		plain := vals.Value
		if b.Format(i) == 1 {
			var err error
			if text, err = policy.DecodeBinary(r.col.typ.oid(), vals.Value, text[:0]); err != nil {
				return es.refuse(ev.Session, &policy.Violation{Code: "22P03", Kind: "encryption", Table: r.col.table, Column: r.col.column,
					Message: fmt.Sprintf("parameter $%d for %s.%s is not a valid binary %s", i+1, r.col.table, r.col.column, r.col.typ)})
			}
			plain = text
		}
		if v := r.col.typ.check(r.col, plain); v != nil {
			return es.refuse(ev.Session, v)
		}
		lenAt := len(out)
		out = append(out, 0, 0, 0, 0)
		var err error
		if r.search {
			if cts, err = keys.EncryptDeterministicAll(r.col.ad, plain, cts[:0]); err == nil {
				out = append(out, '{')
				for k, ct := range cts {
					if k > 0 {
						out = append(out, ',')
					}
					out = append(out, ct...)
				}
				out = append(out, '}')
			}
		} else {
			out, err = encryptValue(keys, r.col, plain, out)
		}
		if err != nil {
			es.srv.log.Error("encrypting a parameter failed", zap.String("database", ev.Session.Database),
				zap.String("table", r.col.table), zap.String("column", r.col.column), zap.Error(err))
			return es.refuse(ev.Session, &policy.Violation{Code: "XX000", Kind: "encryption", Table: r.col.table, Column: r.col.column,
				Message: "pgshield could not encrypt the value for " + r.col.table + "." + r.col.column})
		}
		binary.BigEndian.PutUint32(out[lenAt:], uint32(len(out)-lenAt-4))
	}
	out = append(out, b.Results...)
	return Verdict{Rewrite: out}
}

// paramsDescribed gives the client the plaintext type of each encrypted
// parameter, where the server knows only text.
func (es *encState) paramsDescribed(ev ParamsDescribedEvent) []byte {
	pl := keptEnc(ev.Kept)
	if pl == nil || len(pl.params) == 0 || len(ev.Body) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(ev.Body))
	if len(ev.Body) != 2+4*n {
		return nil
	}
	var out []byte
	for i := 0; i < n && i < len(pl.params); i++ {
		r := pl.params[i]
		if r.col == nil || r.col.typ == plainText {
			continue
		}
		if out == nil {
			out = append([]byte(nil), ev.Body...)
		}
		binary.BigEndian.PutUint32(out[2+4*i:], r.col.typ.oid())
	}
	return out
}

// commandComplete forgets cached plans after DDL.
func (es *encState) commandComplete(ev CompleteEvent) {
	if len(ev.Tag) == 0 {
		return
	}
	switch ev.Tag[0] {
	case 'C', 'A', 'D':
		if hasPrefix(string(ev.Tag), "CREATE") || hasPrefix(string(ev.Tag), "ALTER") || hasPrefix(string(ev.Tag), "DROP") {
			es.mu.Lock()
			delete(es.plans, ev.Session.Database)
			es.mu.Unlock()
			es.srv.catalogs.invalidate(ev.Session.Database)
		}
	}
}

// refuse turns a Violation into the hook's refusal, logged without any
// value.
func (es *encState) refuse(si SessionInfo, v *policy.Violation) Verdict {
	es.srv.log.Info("encryption refused a statement", zap.String("service", si.Service), zap.String("database", si.Database),
		zap.String("code", v.Code), zap.String("table", v.Table), zap.String("column", v.Column))
	return Verdict{Refuse: &Refusal{Code: v.Code, Message: v.Message, Detail: v.Detail, Hint: v.Hint,
		Table: v.Table, Column: v.Column, Constraint: v.Constraint}}
}
