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
	i := 0
	for i < len(q) {
		c := q[i]
		switch {
		case c == '\'' || ((c == 'E' || c == 'e' || c == 'B' || c == 'b' || c == 'X' || c == 'x' || c == 'N' || c == 'n') && i+1 < len(q) && q[i+1] == '\'' && !identBefore(q, i)):
			escapes := c == 'E' || c == 'e'
			if c != '\'' {
				i++
			}
			j, ok := skipString(q, i+1, escapes)
			if !ok {
				return dst, false
			}
			dst = append(dst, '?')
			i = j
		case c == '"':
			j := i + 1
			for {
				if j >= len(q) {
					return dst, false
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
					return dst, false
				}
				end += j + 1
				dst = append(dst, '?')
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
					return dst, false
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
			i = j
		default:
			dst = append(dst, c)
			i++
		}
	}
	return dst, true
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
