package wire

import "encoding/binary"

// Field access of the messages the proxy reads, in place: nothing here
// copies or allocates, and every accessor refuses a body that is shorter
// than its own fields say (ok false) rather than reading past it.

// QueryText returns the SQL of a Query body without its terminating NUL.
func QueryText(body []byte) ([]byte, bool) {
	if len(body) == 0 || body[len(body)-1] != 0 {
		return nil, false
	}
	return body[:len(body)-1], true
}

// Target returns the kind ('S' statement or 'P' portal) and name of a
// Describe or Close body.
func Target(body []byte) (kind byte, name []byte, ok bool) {
	if len(body) < 2 || body[len(body)-1] != 0 {
		return 0, nil, false
	}
	return body[0], body[1 : len(body)-1], true
}

// ErrorField returns one field (such as 'C', the SQLSTATE) of an
// ErrorResponse or NoticeResponse body; nil when it is absent.
func ErrorField(body []byte, field byte) []byte {
	for len(body) > 0 && body[0] != 0 {
		t := body[0]
		v, rest, ok := cstring(body[1:])
		if !ok {
			return nil
		}
		if t == field {
			return v
		}
		body = rest
	}
	return nil
}

// TagRows returns the row count that ends a CommandComplete tag ("INSERT 0
// 5", "SELECT 3", "COPY 7"); ok false when the tag carries none.
func TagRows(tag []byte) (n int64, ok bool) {
	if len(tag) > 0 && tag[len(tag)-1] == 0 {
		tag = tag[:len(tag)-1]
	}
	i := len(tag)
	for i > 0 && tag[i-1] >= '0' && tag[i-1] <= '9' {
		i--
	}
	if i == len(tag) || i == 0 || tag[i-1] != ' ' {
		return 0, false
	}
	for _, c := range tag[i:] {
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// Bind is a Bind body split into its parts, in place.
type Bind struct {
	Portal, Statement []byte
	// Formats are the parameter format codes, two bytes each: none (all
	// text), one (for every parameter) or one per parameter.
	Formats []byte
	// NumParams is how many parameter values follow; Values walks them.
	NumParams int
	values    []byte // the values, each a length and its bytes
	// Results is the result-column format part: a count and its codes.
	Results []byte
}

// ParseBind splits a Bind body.
func ParseBind(body []byte) (Bind, bool) {
	var b Bind
	var ok bool
	if b.Portal, body, ok = cstring(body); !ok {
		return Bind{}, false
	}
	if b.Statement, body, ok = cstring(body); !ok {
		return Bind{}, false
	}
	if len(body) < 2 {
		return Bind{}, false
	}
	nf := int(binary.BigEndian.Uint16(body))
	if len(body) < 2+2*nf+2 {
		return Bind{}, false
	}
	b.Formats = body[2 : 2+2*nf]
	body = body[2+2*nf:]
	b.NumParams = int(binary.BigEndian.Uint16(body))
	body = body[2:]
	start := body
	for i := 0; i < b.NumParams; i++ {
		if len(body) < 4 {
			return Bind{}, false
		}
		l := int32(binary.BigEndian.Uint32(body))
		body = body[4:]
		if l > 0 {
			if int(l) > len(body) {
				return Bind{}, false
			}
			body = body[l:]
		} else if l < -1 {
			return Bind{}, false
		}
	}
	b.values = start[:len(start)-len(body)]
	if len(body) < 2 || len(body) != 2+2*int(binary.BigEndian.Uint16(body)) {
		return Bind{}, false
	}
	b.Results = body
	return b, true
}

// Format returns the format code of parameter i: 0 text, 1 binary.
func (b *Bind) Format(i int) int16 {
	switch n := len(b.Formats) / 2; {
	case n == 0:
		return 0
	case n == 1:
		return int16(binary.BigEndian.Uint16(b.Formats))
	case i < n:
		return int16(binary.BigEndian.Uint16(b.Formats[2*i:]))
	}
	return 0
}

// Values walks the parameter values.
func (b *Bind) Values() Values { return Values{rest: b.values} }

// Values walks length-prefixed values: Bind parameters or DataRow
// columns. After Next returns true, Value holds the current value (nil and
// Null set for SQL NULL), valid as long as the message is.
type Values struct {
	rest    []byte
	started bool
	Index   int // of the current value, from 0
	Value   []byte
	Null    bool
}

// Next moves to the next value.
func (v *Values) Next() bool {
	if len(v.rest) < 4 {
		return false
	}
	if v.started {
		v.Index++
	}
	v.started = true
	l := int32(binary.BigEndian.Uint32(v.rest))
	v.rest = v.rest[4:]
	if l < 0 {
		v.Value, v.Null = nil, true
		return true
	}
	if int(l) > len(v.rest) {
		v.rest = nil
		return false
	}
	v.Value, v.Null = v.rest[:l:l], false
	v.rest = v.rest[l:]
	return true
}

// DataRow returns the column count of a DataRow body and a walker over its
// columns.
func DataRow(body []byte) (n int, cols Values, ok bool) {
	if len(body) < 2 {
		return 0, Values{}, false
	}
	return int(binary.BigEndian.Uint16(body)), Values{rest: body[2:]}, true
}
