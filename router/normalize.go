package router

import "bytes"

// normalize appends to dst the query text with every string and numeric
// literal replaced by '?', so texts that differ only in literals share a
// key. It reports false when the text cannot be scanned with confidence
// (unterminated quote or comment), and then only the exact text is cached.
//
// The key only ever names a class that does not depend on literal values
// (see Class.literalFree); anything the scanner gets wrong can at worst
// cost a cache miss, because a text is classified by parsing its own exact
// bytes before its class is stored under the key.
func normalize(dst, q []byte) ([]byte, bool) {
	dst, _, ok := scan(dst, nil, q, false)
	return dst, ok
}

// LiteralKind is what kind of token a literal is.
type LiteralKind uint8

const (
	LiteralString   LiteralKind = iota + 1 // '…', quotes doubled inside
	LiteralPrefixed                        // E'…', B'…', X'…', N'…'
	LiteralDollar                          // $tag$…$tag$
	LiteralNumber                          // 42, 3.14, 1e5, 0x1F …
)

// Literal is where one literal token is in a query text: q[Start:End].
type Literal struct {
	Start, End int
	Kind       LiteralKind
}

// Shape appends to dst the key normalize gives the text (every literal a
// '?'), and to lits the literal tokens it replaced, in order. Texts with
// one key differ only in their literals' contents and kinds, so the i-th
// literal of one is the i-th of the other. ok is false when the text
// cannot be scanned with confidence; then neither is meaningful.
func Shape(dst []byte, lits []Literal, q []byte) ([]byte, []Literal, bool) {
	return scan(dst, lits, q, true)
}

func scan(dst []byte, lits []Literal, q []byte, record bool) ([]byte, []Literal, bool) {
	lit := func(start, end int, kind LiteralKind) {
		if record {
			lits = append(lits, Literal{Start: start, End: end, Kind: kind})
		}
	}
	i := 0
	for i < len(q) {
		c := q[i]
		switch {
		case c == '\'' || ((c == 'E' || c == 'e' || c == 'B' || c == 'b' || c == 'X' || c == 'x' || c == 'N' || c == 'n') && i+1 < len(q) && q[i+1] == '\'' && !identBefore(q, i)):
			escapes := c == 'E' || c == 'e'
			start, kind := i, LiteralString
			if c != '\'' {
				i++
				kind = LiteralPrefixed
			}
			j, ok := skipString(q, i+1, escapes)
			if !ok {
				return dst, lits, false
			}
			dst = append(dst, '?')
			lit(start, j, kind)
			i = j
		case c == '"':
			j := i + 1
			for {
				if j >= len(q) {
					return dst, lits, false
				}
				if q[j] == '"' {
					if j+1 < len(q) && q[j+1] == '"' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			dst = append(dst, q[i:j+1]...)
			i = j + 1
		case c == '$' && !identBefore(q, i):
			// $1 parameters stay; $tag$ … $tag$ strings become '?'.
			j := i + 1
			for j < len(q) && q[j] != '$' && isIdent(q[j]) && !(q[j] >= '0' && q[j] <= '9' && j == i+1) {
				j++
			}
			if j < len(q) && q[j] == '$' {
				tag := q[i : j+1]
				end := bytes.Index(q[j+1:], tag)
				if end < 0 {
					return dst, lits, false
				}
				end += j + 1
				dst = append(dst, '?')
				lit(i, end+len(tag), LiteralDollar)
				i = end + len(tag)
				continue
			}
			dst = append(dst, c)
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			depth, j := 1, i+2
			for depth > 0 {
				if j+1 >= len(q) {
					return dst, lits, false
				}
				switch {
				case q[j] == '/' && q[j+1] == '*':
					depth++
					j += 2
				case q[j] == '*' && q[j+1] == '/':
					depth--
					j += 2
				default:
					j++
				}
			}
			i = j
		case (c >= '0' && c <= '9' || c == '.' && i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9') && !identBefore(q, i):
			j := i
			for j < len(q) && (isIdent(q[j]) || q[j] == '.' || ((q[j] == '+' || q[j] == '-') && (q[j-1] == 'e' || q[j-1] == 'E'))) {
				j++
			}
			dst = append(dst, '?')
			lit(i, j, LiteralNumber)
			i = j
		default:
			dst = append(dst, c)
			i++
		}
	}
	return dst, lits, true
}

func isIdent(c byte) bool {
	return c == '_' || c == '$' || c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// identBefore reports whether q[i] continues an identifier or parameter.
func identBefore(q []byte, i int) bool { return i > 0 && isIdent(q[i-1]) }

func skipString(q []byte, i int, escapes bool) (int, bool) {
	for i < len(q) {
		switch {
		case escapes && q[i] == '\\':
			i += 2
		case q[i] == '\'':
			if i+1 < len(q) && q[i+1] == '\'' {
				i += 2
				continue
			}
			return i + 1, true
		default:
			i++
		}
	}
	return i, false
}
