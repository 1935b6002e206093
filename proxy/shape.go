package proxy

import (
	"github.com/pgshield/pgshield/policy"
	"github.com/pgshield/pgshield/router"
)

// Plans shared by texts that differ only in their literals. A simple-mode
// client sends each INSERT with its own values, so a plan per text would
// parse every statement; instead a plan whose literal values can be read
// straight from the tokens of the text is also cached under the text's
// shape (router.Shape: the text with every literal a '?'), and a later
// text of that shape is judged with its own literals read from its
// tokens, without parsing.
//
// A plan is shared only when that reading is exact: every literal the
// rules judge is a plain '…' string or a number whose text PostgreSQL
// reads unchanged, checked against the parse tree's value when the plan is
// made. A text of the same shape reuses the plan only when each of its
// literals is of the same class as the planned text's (a string where
// there was a string, an integer where there was an integer …), because
// the analysis of a cast or an operator depends on that class and on
// nothing else of the value.

// litClass is what the analysis can tell apart in a literal token.
type litClass uint8

const (
	litString  litClass = iota + 1 // '…'
	litEscape                      // E'…', N'…'
	litBits                        // B'…', X'…'
	litDollar                      // $tag$…$tag$
	litInteger                     // digits only, no leading zero
	litDecimal                     // digits with a point or an exponent
	litOther                       // any other number (0x1F, 1_000, 007)
)

// classOf is the class of the literal token q[l.Start:l.End].
func classOf(q []byte, l router.Literal) litClass {
	t := q[l.Start:l.End]
	switch l.Kind {
	case router.LiteralString:
		return litString
	case router.LiteralDollar:
		return litDollar
	case router.LiteralPrefixed:
		switch t[0] {
		case 'E', 'e', 'N', 'n':
			return litEscape
		}
		return litBits
	}
	digits, point := true, false
	for _, c := range t {
		switch {
		case c >= '0' && c <= '9':
		case c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-':
			digits, point = false, true
		default:
			return litOther
		}
	}
	switch {
	case digits && (len(t) == 1 || t[0] != '0'):
		return litInteger
	case point:
		return litDecimal
	}
	return litOther
}

// litRef is where a judged literal of a shared plan is among the text's
// literal tokens: the ordinal, and whether a minus sign precedes it (the
// parser folds -5 into one constant at the sign's position).
type litRef struct {
	ord int
	neg bool
}

// sharePlan decides whether pl, made from text, can serve every text of
// its shape, and records what it needs to: the class of each literal of
// the text, and for each judged literal (by its Source.Pos) its token.
func sharePlan(pl *stmtPlan, text []byte, lits []router.Literal) {
	if pl.copy != nil || len(pl.writes) == 0 {
		return // COPY options are literals the plan holds; nothing to judge
	}
	classes := make([]litClass, len(lits))
	for i, l := range lits {
		classes[i] = classOf(text, l)
	}
	refs := map[int]litRef{}
	ok := true
	check := func(src policy.Source) {
		if !ok || src.Kind != policy.SourceLiteral {
			return
		}
		ref, found := tokenAt(text, lits, src.Pos)
		if !found {
			ok = false
			return
		}
		switch c := classes[ref.ord]; {
		case c == litString, c == litInteger && !(ref.neg && zeros(text, lits[ref.ord])), c == litDecimal:
		default:
			ok = false
			return
		}
		got, _ := literalText(text, lits[ref.ord], ref.neg, nil)
		if string(got) != string(src.Literal) {
			ok = false
			return
		}
		refs[src.Pos] = ref
	}
	for i := range pl.writes {
		w := pl.writes[i].w
		for _, row := range w.Rows {
			for _, src := range row {
				check(src)
			}
		}
		for _, a := range w.Set {
			check(a.Value)
		}
	}
	if ok {
		pl.classes, pl.litAt = classes, refs
		for _, ref := range refs {
			if ref.neg && classes[ref.ord] == litInteger {
				pl.negInts = append(pl.negInts, ref.ord)
			}
		}
	}
}

// tokenAt finds the literal token a Source.Pos names: the one starting
// there, or after a minus sign there (and spaces).
func tokenAt(text []byte, lits []router.Literal, pos int) (litRef, bool) {
	at := pos - 1
	if at < 0 || at >= len(text) {
		return litRef{}, false
	}
	neg := false
	if text[at] == '-' {
		neg = true
		at++
		for at < len(text) && (text[at] == ' ' || text[at] == '\t' || text[at] == '\n' || text[at] == '\r') {
			at++
		}
	}
	lo, hi := 0, len(lits)
	for lo < hi {
		m := (lo + hi) / 2
		if lits[m].Start < at {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(lits) || lits[lo].Start != at || (neg && lits[lo].Kind != router.LiteralNumber) {
		return litRef{}, false
	}
	return litRef{ord: lo, neg: neg}, true
}

// zeros reports whether a number token is all zeros (-0 reads as 0).
func zeros(text []byte, l router.Literal) bool {
	for _, c := range text[l.Start:l.End] {
		if c != '0' {
			return false
		}
	}
	return true
}

// literalText is the value PostgreSQL reads from a plain string or number
// token: a string without its quotes, doubled quotes single (appended to
// buf when it has any); a number as written, after its sign.
func literalText(text []byte, l router.Literal, neg bool, buf []byte) (val, out []byte) {
	t := text[l.Start:l.End]
	if l.Kind == router.LiteralNumber {
		if !neg {
			return t, buf
		}
		start := len(buf)
		buf = append(append(buf, '-'), t...)
		return buf[start:len(buf):len(buf)], buf
	}
	body := t[1 : len(t)-1]
	quoted := false
	for _, c := range body {
		if c == '\'' {
			quoted = true
			break
		}
	}
	if !quoted {
		return body, buf
	}
	start := len(buf)
	for i := 0; i < len(body); i++ {
		buf = append(buf, body[i])
		if body[i] == '\'' {
			i++ // its double
		}
	}
	return buf[start:len(buf):len(buf)], buf
}

// fits reports whether the literals of a text of the plan's shape are of
// the classes the plan was made with.
func (pl *stmtPlan) fits(text []byte, lits []router.Literal) bool {
	if len(lits) != len(pl.classes) {
		return false
	}
	for i, l := range lits {
		if classOf(text, l) != pl.classes[i] {
			return false
		}
	}
	for _, ord := range pl.negInts {
		if zeros(text, lits[ord]) {
			return false
		}
	}
	return true
}
