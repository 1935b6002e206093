package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// CopyReader reads the rows of a COPY … FROM STDIN as the CopyData
// messages bring them, in the statement's format: text, CSV or binary. It
// keeps the part of a row a chunk ends in (a field, an escape, a quoted
// section, a line end) for the next one, and reuses its buffers: after
// the first rows, Feed does not allocate.
//
// Each row's values are aligned with the Write's Columns (every field as
// it comes when the Write has no Columns). Text and CSV values are
// unescaped (ValueText), NULL (ValueNull) or the DEFAULT marker
// (ValueDefault). Binary values (Binary reports the format) are the raw
// field bytes as ValueText, for DecodeBinary with the column's type
// (Write.ColumnTypes), or ValueNull.
//
// It reads as PostgreSQL's COPY FROM does: text format with its
// delimiter, null string and backslash escapes (\b \f \n \r \t \v, \digits
// octal, \xhex, any other character itself), CSV with its quote, escape,
// null string, FORCE_NULL and FORCE_NOT_NULL; a header line (CSV, and
// text since PostgreSQL 15) skipped; line ends \n, \r\n or \r, the first
// line's kind for all; the end marker \. (text: the end of the data, the
// rest is ignored; CSV: a line of only \., skipped). Binary: the PGCOPY
// signature, flags and header extension, then tuples of an int16 field
// count (-1 ends the data) and fields of an int32 length (-1 NULL) and
// bytes.
//
// A malformed stream is refused with SQLSTATE 22P04 (bad_copy_file_format)
// and Kind "copy", as PostgreSQL would; after a Violation the reader
// returns it again.
type CopyReader struct {
	format  copyFormat
	opts    CopyOptions
	table   string
	columns []string
	ncols   int // -1: any number of fields

	forceNull, forceNotNull []bool // per column (csv)

	data   []byte      // the current row's values, unescaped
	fields []copyField // the current row's fields, in data
	vals   []Value

	rows    int  // rows delivered
	line    int  // the line being read, from 1
	rowLine int  // the line the current row starts on
	header  bool // the header line is still to skip
	done    bool // after the end of the data
	err     *Violation

	// text and CSV
	state   uint8
	eol     uint8
	lineLen int // bytes of the current line read (without its end)
	raw     rawMatch
	quoted  bool // the field has a quoted part (csv)
	esc     int  // an octal or hex escape's value so far
	escN    int  // and its digits
	escRaw  rawMatch

	// binary
	bin     [11]byte // a header or length being read across chunks
	have    int
	need    int // bytes of the header extension or of the field still to come
	nfields int // of the current tuple
}

type copyFormat uint8

const (
	copyText copyFormat = iota
	copyCSV
	copyBinary
)

type copyField struct {
	start, end int
	kind       ValueKind
}

// rawMatch follows whether a field's raw text (before unescaping) is the
// null string or the DEFAULT marker, which PostgreSQL compares raw.
type rawMatch struct {
	n         int
	null, def bool
}

// Line end kinds, set by the first line end.
const (
	eolUnknown uint8 = iota
	eolNL
	eolCR
	eolCRNL
)

// Text and CSV reader states.
const (
	stField         uint8 = iota // in a field, outside quotes
	stEscape                     // text: after a backslash
	stOctal                      // text: in \ooo
	stHex                        // text: in \xhh
	stCR                         // after a carriage return, before what follows it
	stMarker                     // text: after \.
	stQuote                      // csv: in a quoted section
	stQuoteEscape                // csv: after the escape character in quotes
	stQuoteQuote                 // csv: after a quote in quotes, when it is also the escape
	stLineBackslash              // csv: a line starting with a backslash
	stLineMarker                 // csv: a line starting with \.
	stLineMarkerCR               // csv: \. and a carriage return
)

// Binary reader states (in state as well).
const (
	bsSignature uint8 = iota + 32
	bsFlags
	bsExtLength
	bsExtension
	bsCount
	bsLength
	bsData
	bsTrailer
)

// copySignature starts a binary COPY stream.
const copySignature = "PGCOPY\n\xff\r\n\x00"

// NewCopyReader returns a reader of the rows of the COPY FROM STDIN st
// for w, one of st's writes (of kind WriteCopy): the format and options
// come from st, the columns from w.
func NewCopyReader(st Statement, w Write) (*CopyReader, error) {
	if w.Kind != WriteCopy {
		return nil, errors.New("policy: COPY reader: not the write of a COPY")
	}
	r := &CopyReader{opts: st.CopyOptions, table: w.Table, columns: w.Columns, ncols: len(w.Columns), line: 1, rowLine: 1}
	if w.Columns == nil {
		r.ncols = -1
	}
	switch st.CopyFormat {
	case "", "text":
		r.format = copyText
	case "csv":
		r.format = copyCSV
	case "binary":
		r.format, r.state = copyBinary, bsSignature
	default:
		return nil, fmt.Errorf("policy: COPY reader: unknown format %q", st.CopyFormat)
	}
	if r.format != copyBinary {
		o := &r.opts
		if o.Delimiter == 0 {
			o.Delimiter = '\t'
			if r.format == copyCSV {
				o.Delimiter = ','
			}
		}
		if r.format == copyCSV {
			if o.Quote == 0 {
				o.Quote = '"'
			}
			if o.Escape == 0 {
				o.Escape = o.Quote
			}
			if o.Delimiter == o.Quote {
				return nil, errors.New("policy: COPY reader: the delimiter and the quote are the same")
			}
			var err error
			if r.forceNull, err = columnFlags(w.Columns, o.ForceNull); err != nil {
				return nil, fmt.Errorf("policy: COPY reader: FORCE_NULL: %w", err)
			}
			if r.forceNotNull, err = columnFlags(w.Columns, o.ForceNotNull); err != nil {
				return nil, fmt.Errorf("policy: COPY reader: FORCE_NOT_NULL: %w", err)
			}
		}
		if o.Delimiter == '\n' || o.Delimiter == '\r' {
			return nil, errors.New("policy: COPY reader: the delimiter is a line end")
		}
		if r.format == copyText && (o.Delimiter == '\\' || o.Delimiter == '.' || o.Delimiter >= 'a' && o.Delimiter <= 'z' || o.Delimiter >= '0' && o.Delimiter <= '9') {
			return nil, fmt.Errorf("policy: COPY reader: the delimiter %q is not allowed in text format", o.Delimiter)
		}
		r.header = o.Header
		r.startField()
	}
	return r, nil
}

// columnFlags marks the listed columns ("*": all).
func columnFlags(columns, list []string) ([]bool, error) {
	if len(list) == 0 {
		return nil, nil
	}
	flags := make([]bool, len(columns))
	for _, name := range list {
		if name == "*" {
			for i := range flags {
				flags[i] = true
			}
			continue
		}
		i := slices.Index(columns, name)
		if i < 0 {
			return nil, fmt.Errorf("column %q is not copied", name)
		}
		flags[i] = true
	}
	return flags, nil
}

// Binary reports a binary COPY, whose values are raw field bytes.
func (r *CopyReader) Binary() bool { return r.format == copyBinary }

// Rows returns how many rows the reader has delivered.
func (r *CopyReader) Rows() int { return r.rows }

// Feed reads data, the body of a CopyData message. For each row it
// completes it calls row with the row's number (from 1, without the
// header), the line it starts on (text and CSV; 0 for binary) and its
// values, which are valid only during the call. When row returns a
// Violation, Feed stops and returns it; so it does for a malformed stream.
func (r *CopyReader) Feed(data []byte, row func(rowNum, line int, vals []Value) *Violation) *Violation {
	if r.err != nil {
		return r.err
	}
	var v *Violation
	switch r.format {
	case copyBinary:
		v = r.feedBinary(data, row)
	case copyCSV:
		v = r.feedCSV(data, row)
	default:
		v = r.feedText(data, row)
	}
	if v != nil {
		r.err = v
	}
	return v
}

// End is called at CopyDone. A row the data has not ended (a last line
// without its line end, a binary tuple cut short) is an error: End cannot
// deliver it. PostgreSQL reads such a last line as a row; Finish does
// too.
func (r *CopyReader) End() *Violation {
	if r.err != nil {
		return r.err
	}
	if v := r.endCheck(); v != nil {
		r.err = v
		return v
	}
	if r.format == copyBinary || r.done || r.header {
		return nil
	}
	switch {
	case r.state == stLineMarkerCR: // a CSV line of \. and a carriage return
	case r.lineLen > 0 || r.state != stField:
		r.err = r.fail("the last row of the COPY data has no line end")
		return r.err
	}
	return nil
}

// Finish is End that, as PostgreSQL does, reads a last line without its
// line end as a row, calling row for it.
func (r *CopyReader) Finish(row func(rowNum, line int, vals []Value) *Violation) *Violation {
	if r.err != nil {
		return r.err
	}
	if v := r.endCheck(); v != nil {
		r.err = v
		return v
	}
	if r.format == copyBinary || r.done || r.header || (r.lineLen == 0 && r.state == stField) {
		return nil
	}
	switch r.state {
	case stEscape: // a backslash at the very end is dropped
		r.raw = r.escRaw
	case stOctal, stHex:
		r.endEscape()
	case stLineMarkerCR: // csv: a line of \. and a carriage return
		return nil
	case stLineBackslash:
		r.csvByte('\\')
	case stLineMarker: // csv: \. at the very end is data
		r.csvByte('\\')
		r.csvByte('.')
	}
	v := r.endLine(row)
	if v != nil {
		r.err = v
	}
	return v
}

// endCheck finds what is wrong with data ending here, whatever the last
// line: a quoted CSV field not closed, a binary stream cut short.
func (r *CopyReader) endCheck() *Violation {
	if r.done {
		return nil
	}
	switch r.state {
	case stCR:
		if r.eol == eolCRNL {
			if r.format == copyCSV {
				return r.fail("unquoted carriage return found in data")
			}
			return r.fail("literal carriage return found in data")
		}
	case stMarker: // text: \. needs its line end
		return r.fail("end-of-copy marker corrupt")
	case stQuote, stQuoteEscape:
		if r.header {
			return nil // all of the data is the header, which is not read
		}
		return r.fail("unterminated CSV quoted field")
	case bsSignature:
		return r.fail("COPY file signature not recognized")
	case bsFlags, bsExtLength, bsExtension:
		return r.fail("invalid COPY file header (missing data)")
	case bsLength, bsData:
		return r.fail("unexpected EOF in COPY data")
	case bsCount:
		if r.have > 0 {
			return r.fail("unexpected EOF in COPY data")
		}
	}
	return nil
}

// fail is a malformed stream, at the line being read.
func (r *CopyReader) fail(msg string) *Violation { return r.failAt(msg, r.line) }

func (r *CopyReader) failAt(msg string, line int) *Violation {
	v := &Violation{Code: "22P04", Message: msg, Table: r.table, Kind: "copy"}
	if r.format == copyBinary {
		v.Detail = "COPY " + r.table + ", row " + strconv.Itoa(r.rows+1)
	} else {
		v.Detail = "COPY " + r.table + ", line " + strconv.Itoa(line)
	}
	return v
}

func (r *CopyReader) startField() {
	r.raw = rawMatch{null: true, def: r.opts.HasDefault}
	r.quoted = false
}

// addRaw follows the field's raw text.
func (r *CopyReader) addRaw(b []byte) {
	m := &r.raw
	if m.null {
		m.null = m.n+len(b) <= len(r.opts.Null) && string(b) == r.opts.Null[m.n:m.n+len(b)]
	}
	if m.def {
		m.def = m.n+len(b) <= len(r.opts.Default) && string(b) == r.opts.Default[m.n:m.n+len(b)]
	}
	m.n += len(b)
}

func (r *CopyReader) addRawByte(c byte) {
	m := &r.raw
	if m.null {
		m.null = m.n < len(r.opts.Null) && r.opts.Null[m.n] == c
	}
	if m.def {
		m.def = m.n < len(r.opts.Default) && r.opts.Default[m.n] == c
	}
	m.n++
}

// endField closes the current field.
func (r *CopyReader) endField() {
	f := copyField{start: 0, end: len(r.data), kind: ValueText}
	if n := len(r.fields); n > 0 {
		f.start = r.fields[n-1].end
	}
	col := len(r.fields)
	switch {
	case r.raw.null && r.raw.n == len(r.opts.Null) && !r.quoted:
		f.kind = ValueNull
	case r.raw.def && r.raw.n == len(r.opts.Default):
		f.kind = ValueDefault
	case r.format == copyCSV && r.quoted && col < len(r.forceNull) && r.forceNull[col] &&
		string(r.data[f.start:f.end]) == r.opts.Null:
		f.kind = ValueNull
	}
	if f.kind == ValueNull && col < len(r.forceNotNull) && r.forceNotNull[col] {
		// FORCE_NOT_NULL: the null string (the field's text, as it is
		// not quoted) is a value.
		f.kind = ValueText
	}
	r.fields = append(r.fields, f)
	r.startField()
}

// endLine closes the current line: the header, or a row to deliver.
func (r *CopyReader) endLine(row func(rowNum, line int, vals []Value) *Violation) *Violation {
	r.endField()
	start := r.rowLine
	r.line++
	r.rowLine = r.line
	r.lineLen = 0
	if r.header {
		r.header = false
		r.resetRow()
		return nil
	}
	return r.deliver(row, start)
}

func (r *CopyReader) resetRow() {
	r.data = r.data[:0]
	r.fields = r.fields[:0]
}

// deliver checks the row's field count and calls row.
func (r *CopyReader) deliver(row func(rowNum, line int, vals []Value) *Violation, line int) *Violation {
	if r.ncols >= 0 && len(r.fields) != r.ncols {
		var v *Violation
		switch {
		case r.format == copyBinary:
			v = r.fail(fmt.Sprintf("row field count is %d, expected %d", len(r.fields), r.ncols))
		case len(r.fields) > r.ncols:
			v = r.failAt("extra data after last expected column", line)
		default:
			v = r.failAt(fmt.Sprintf("missing data for column %q", r.columns[len(r.fields)]), line)
			v.Column = r.columns[len(r.fields)]
		}
		r.resetRow()
		return v
	}
	r.vals = r.vals[:0]
	for _, f := range r.fields {
		v := Value{Kind: f.kind}
		if f.kind == ValueText {
			v.Text = r.data[f.start:f.end:f.end]
		}
		r.vals = append(r.vals, v)
	}
	r.rows++
	if r.format == copyBinary {
		line = 0
	}
	v := row(r.rows, line, r.vals)
	r.resetRow()
	return v
}

// lineEnd handles a line feed or carriage return outside quotes; it
// returns whether the byte was consumed (a CR may need the next byte).
func (r *CopyReader) lineEnd(c byte, row func(rowNum, line int, vals []Value) *Violation) (v *Violation) {
	what := "literal"
	if r.format == copyCSV {
		what = "unquoted"
	}
	if c == '\n' {
		switch r.eol {
		case eolUnknown:
			r.eol = eolNL
		case eolCR, eolCRNL:
			v = r.fail(what + " newline found in data")
			v.Hint = `Use "\n" to represent newline.`
			if r.format == copyCSV {
				v.Hint = "Use quoted CSV field to represent newline."
			}
			return v
		}
		return r.endLine(row)
	}
	// c == '\r'
	switch r.eol {
	case eolNL:
		v = r.fail(what + " carriage return found in data")
		v.Hint = `Use "\r" to represent carriage return.`
		if r.format == copyCSV {
			v.Hint = "Use quoted CSV field to represent carriage return."
		}
		return v
	case eolCR:
		return r.endLine(row)
	}
	r.state = stCR
	return nil
}

// afterCR handles the byte after a carriage return; it reports whether it
// consumed it.
func (r *CopyReader) afterCR(c byte, row func(rowNum, line int, vals []Value) *Violation) (bool, *Violation) {
	r.state = stField
	if c == '\n' {
		r.eol = eolCRNL
		return true, r.endLine(row)
	}
	if r.eol == eolCRNL {
		what := "literal"
		if r.format == copyCSV {
			what = "unquoted"
		}
		v := r.fail(what + " carriage return found in data")
		v.Hint = `Use "\r" to represent carriage return.`
		if r.format == copyCSV {
			v.Hint = "Use quoted CSV field to represent carriage return."
		}
		return false, v
	}
	r.eol = eolCR
	return false, r.endLine(row)
}

func (r *CopyReader) feedText(data []byte, row func(rowNum, line int, vals []Value) *Violation) *Violation {
	delim := r.opts.Delimiter
	for i := 0; i < len(data); {
		if r.done {
			return nil
		}
		c := data[i]
		switch r.state {
		case stField:
			// A run of plain bytes at once.
			j := i
			for j < len(data) && data[j] != '\\' && data[j] != delim && data[j] != '\n' && data[j] != '\r' {
				j++
			}
			if j > i {
				r.data = append(r.data, data[i:j]...)
				r.addRaw(data[i:j])
				r.lineLen += j - i
				i = j
				continue
			}
			i++
			switch c {
			case '\\':
				r.escRaw = r.raw
				r.addRawByte(c)
				r.lineLen++
				r.state = stEscape
			case delim:
				r.lineLen++
				r.endField()
			default: // line end
				if v := r.lineEnd(c, row); v != nil {
					return v
				}
			}
		case stEscape:
			i++
			r.lineLen++
			r.state = stField
			switch c {
			case '.':
				r.raw = r.escRaw
				r.state = stMarker
				continue
			case '0', '1', '2', '3', '4', '5', '6', '7':
				r.esc, r.escN, r.state = int(c-'0'), 1, stOctal
			case 'x':
				r.esc, r.escN, r.state = 0, 0, stHex
			case 'b':
				r.data = append(r.data, '\b')
			case 'f':
				r.data = append(r.data, '\f')
			case 'n':
				r.data = append(r.data, '\n')
			case 'r':
				r.data = append(r.data, '\r')
			case 't':
				r.data = append(r.data, '\t')
			case 'v':
				r.data = append(r.data, '\v')
			case '\n':
				r.data = append(r.data, c)
				r.line++ // an escaped line feed is data, on a new line
			default:
				r.data = append(r.data, c)
			}
			r.addRawByte(c)
		case stOctal:
			if c >= '0' && c <= '7' && r.escN < 3 {
				r.esc = r.esc*8 + int(c-'0')
				r.escN++
				r.addRawByte(c)
				r.lineLen++
				i++
				if r.escN == 3 {
					r.endEscape()
				}
				continue
			}
			r.endEscape() // c is read again as a plain byte
		case stHex:
			if h, ok := hexDigit(c); ok && r.escN < 2 {
				r.esc = r.esc*16 + h
				r.escN++
				r.addRawByte(c)
				r.lineLen++
				i++
				if r.escN == 2 {
					r.endEscape()
				}
				continue
			}
			r.endEscape()
		case stCR:
			consumed, v := r.afterCR(c, row)
			if v != nil {
				return v
			}
			if consumed {
				i++
			}
		case stMarker:
			if c != '\n' && c != '\r' {
				return r.fail("end-of-copy marker corrupt")
			}
			if c == '\n' && r.eol != eolUnknown && r.eol != eolNL || c == '\r' && r.eol == eolNL {
				return r.fail("end-of-copy marker does not match previous newline style")
			}
			// The end of the data. PostgreSQL before 18 reads what the
			// line has before \. as a last row.
			r.state = stField
			if r.lineLen > 2 {
				if v := r.endLine(row); v != nil {
					return v
				}
			}
			r.done = true
			return nil
		}
	}
	return nil
}

// endEscape ends an octal or hex escape (\x with no digit is x).
func (r *CopyReader) endEscape() {
	if r.state == stHex && r.escN == 0 {
		r.data = append(r.data, 'x')
	} else {
		r.data = append(r.data, byte(r.esc))
	}
	r.state = stField
}

func hexDigit(c byte) (int, bool) {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0'), true
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10, true
	}
	return 0, false
}

// csvByte reads one byte of a CSV stream in the field states (no line
// end): the bytes a line start held back.
func (r *CopyReader) csvByte(c byte) {
	o := &r.opts
	r.lineLen++
	switch {
	case c == o.Delimiter:
		r.endField()
	case c == o.Quote:
		r.quoted = true
		r.addRawByte(c)
		r.state = stQuote
	default:
		r.data = append(r.data, c)
		r.addRawByte(c)
	}
}

func (r *CopyReader) feedCSV(data []byte, row func(rowNum, line int, vals []Value) *Violation) *Violation {
	o := &r.opts
	delim, quote, escape := o.Delimiter, o.Quote, o.Escape
	for i := 0; i < len(data); {
		c := data[i]
		switch r.state {
		case stField:
			if r.lineLen == 0 && c == '\\' {
				// Perhaps the end marker: a line of only \.
				r.state = stLineBackslash
				i++
				continue
			}
			j := i
			for j < len(data) && data[j] != delim && data[j] != quote && data[j] != '\n' && data[j] != '\r' {
				j++
			}
			if j > i {
				r.data = append(r.data, data[i:j]...)
				r.addRaw(data[i:j])
				r.lineLen += j - i
				i = j
				continue
			}
			i++
			switch c {
			case delim, quote:
				r.csvByte(c)
			default:
				if v := r.lineEnd(c, row); v != nil {
					return v
				}
			}
		case stQuote:
			j := i
			for j < len(data) && data[j] != quote && data[j] != escape {
				j++
			}
			if j > i {
				run := data[i:j]
				r.data = append(r.data, run...)
				r.addRaw(run)
				r.countLines(run)
				r.lineLen += j - i
				i = j
				continue
			}
			i++
			r.addRawByte(c)
			r.lineLen++
			switch {
			case c == quote && quote == escape:
				r.state = stQuoteQuote
			case c == quote:
				r.state = stField
			default: // the escape
				r.state = stQuoteEscape
			}
		case stQuoteEscape:
			r.state = stQuote
			if c == quote || c == escape {
				r.data = append(r.data, c)
				r.addRawByte(c)
				r.lineLen++
				i++
				continue
			}
			r.data = append(r.data, escape) // and c is read again
		case stQuoteQuote:
			if c == quote { // a doubled quote
				r.data = append(r.data, c)
				r.addRawByte(c)
				r.lineLen++
				r.state = stQuote
				i++
				continue
			}
			r.state = stField // the closing quote; c is read again
		case stCR:
			consumed, v := r.afterCR(c, row)
			if v != nil {
				return v
			}
			if consumed {
				i++
			}
		case stLineBackslash:
			if c == '.' {
				r.state = stLineMarker
				i++
				continue
			}
			r.state = stField
			r.csvByte('\\')
		case stLineMarker:
			switch c {
			case '\n':
				r.skipMarkerLine()
				i++
			case '\r':
				r.state = stLineMarkerCR
				i++
			default:
				r.state = stField
				r.csvByte('\\')
				r.csvByte('.')
			}
		case stLineMarkerCR:
			r.skipMarkerLine()
			if c == '\n' {
				i++
			}
		}
	}
	return nil
}

// skipMarkerLine passes a CSV line of only \.: PostgreSQL before 18 ends
// the data there, 18 reads it as data; the rows after it are read (and
// judged) either way.
func (r *CopyReader) skipMarkerLine() {
	r.state = stField
	r.line++
	r.rowLine = r.line
	r.lineLen = 0
	r.resetRow()
	r.startField()
}

func (r *CopyReader) countLines(b []byte) {
	for _, c := range b {
		if c == '\n' || (c == '\r' && r.eol == eolCR) {
			r.line++
		}
	}
}

// binary reads n bytes of a header or length into r.bin across chunks; ok
// when they are all there.
func (r *CopyReader) binary(data []byte, i *int, n int) bool {
	k := min(n-r.have, len(data)-*i)
	copy(r.bin[r.have:], data[*i:*i+k])
	r.have += k
	*i += k
	if r.have < n {
		return false
	}
	r.have = 0
	return true
}

func (r *CopyReader) feedBinary(data []byte, row func(rowNum, line int, vals []Value) *Violation) *Violation {
	for i := 0; i < len(data); {
		switch r.state {
		case bsSignature:
			if !r.binary(data, &i, len(copySignature)) {
				continue
			}
			if string(r.bin[:len(copySignature)]) != copySignature {
				return r.fail("COPY file signature not recognized")
			}
			r.state = bsFlags
		case bsFlags:
			if !r.binary(data, &i, 4) {
				continue
			}
			flags := binary.BigEndian.Uint32(r.bin[:4])
			if flags&(1<<16) != 0 {
				return r.fail("invalid COPY file header (WITH OIDS)")
			}
			if flags>>17 != 0 {
				return r.fail("unrecognized critical flags in COPY file header")
			}
			r.state = bsExtLength
		case bsExtLength:
			if !r.binary(data, &i, 4) {
				continue
			}
			n := int32(binary.BigEndian.Uint32(r.bin[:4]))
			if n < 0 {
				return r.fail("invalid COPY file header (missing length)")
			}
			r.need, r.state = int(n), bsExtension
			if n == 0 {
				r.state = bsCount
			}
		case bsExtension:
			k := min(r.need, len(data)-i)
			i += k
			r.need -= k
			if r.need == 0 {
				r.state = bsCount
			}
		case bsCount:
			if !r.binary(data, &i, 2) {
				continue
			}
			n := int16(binary.BigEndian.Uint16(r.bin[:2]))
			if n == -1 {
				r.state, r.done = bsTrailer, true
				continue
			}
			if n < 0 {
				return r.fail(fmt.Sprintf("row field count is %d, expected %d", n, r.ncols))
			}
			r.nfields = int(n)
			if r.ncols >= 0 && r.nfields != r.ncols {
				return r.fail(fmt.Sprintf("row field count is %d, expected %d", n, r.ncols))
			}
			r.state = bsLength
			if r.nfields == 0 {
				r.state = bsCount
				if v := r.deliver(row, 0); v != nil {
					return v
				}
			}
		case bsLength:
			if !r.binary(data, &i, 4) {
				continue
			}
			n := int32(binary.BigEndian.Uint32(r.bin[:4]))
			switch {
			case n == -1:
				r.fields = append(r.fields, copyField{start: len(r.data), end: len(r.data), kind: ValueNull})
			case n < -1:
				return r.fail("invalid field size")
			default:
				r.need, r.state = int(n), bsData
			}
			if n <= 0 {
				if n == 0 {
					r.fields = append(r.fields, copyField{start: len(r.data), end: len(r.data), kind: ValueText})
				}
				if v := r.binaryFieldDone(row); v != nil {
					return v
				}
			}
		case bsData:
			k := min(r.need, len(data)-i)
			r.data = append(r.data, data[i:i+k]...)
			i += k
			r.need -= k
			if r.need == 0 {
				start := 0
				if n := len(r.fields); n > 0 {
					start = r.fields[n-1].end
				}
				r.fields = append(r.fields, copyField{start: start, end: len(r.data), kind: ValueText})
				if v := r.binaryFieldDone(row); v != nil {
					return v
				}
			}
		case bsTrailer:
			return r.fail("received copy data after EOF marker")
		}
	}
	return nil
}

func (r *CopyReader) binaryFieldDone(row func(rowNum, line int, vals []Value) *Violation) *Violation {
	if len(r.fields) < r.nfields {
		r.state = bsLength
		return nil
	}
	r.state = bsCount
	return r.deliver(row, 0)
}
