package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderLen is the size of a typed message header: one type byte and a
// four-byte length that counts itself.
const HeaderLen = 5

// ErrMalformed reports a frame whose length field is impossible.
var ErrMalformed = errors.New("malformed message length")

// TooLargeError reports a message whose body exceeds the reader's limit.
type TooLargeError struct {
	Type byte
	Len  int
	Max  int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("message %q of %d bytes exceeds the limit of %d bytes", e.Type, e.Len, e.Max)
}

// ReadError wraps a failure to read from the source stream in WriteTo, to
// tell it apart from a failure to write to the destination.
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return "read: " + e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

// scratchKeep is the largest scratch buffer kept between messages; bigger
// ones are dropped so an idle connection does not pin a large allocation.
const scratchKeep = 64 << 10

// Reader splits a stream of typed messages. It is not safe for concurrent
// use. A message returned by Next is valid until the following call to Next.
type Reader struct {
	br      *bufio.Reader
	max     int
	typ     byte
	n       int // body length of the current message
	pending int // bytes of the current frame still in br
	scratch []byte
	// held: the current frame, too large for br, was read whole into
	// scratch by Frame; WriteTo and Frame serve it from there.
	held bool
}

// NewReader returns a Reader over br that refuses bodies larger than max
// (max <= 0 means no limit).
func NewReader(br *bufio.Reader, max int) *Reader {
	return &Reader{br: br, max: max}
}

// Reset points r at a new stream and forgets the current message.
func (r *Reader) Reset(br *bufio.Reader) {
	r.br, r.typ, r.n, r.pending, r.held = br, 0, 0, 0, false
}

// SetMax changes the body size limit.
func (r *Reader) SetMax(max int) { r.max = max }

// Buffered reports how many bytes can be read without blocking, not counting
// the rest of the current message.
func (r *Reader) Buffered() int { return r.br.Buffered() - r.pending }

// Next discards whatever is left of the current message and reads the next
// header. It returns the message type and body length.
func (r *Reader) Next() (typ byte, n int, err error) {
	r.held = false
	if r.pending > 0 {
		if _, err := r.br.Discard(r.pending); err != nil {
			return 0, 0, err
		}
		r.pending = 0
	}
	hdr, err := r.br.Peek(HeaderLen)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, err
	}
	l := int(binary.BigEndian.Uint32(hdr[1:]))
	if l < 4 {
		return 0, 0, ErrMalformed
	}
	r.typ, r.n = hdr[0], l-4
	if r.max > 0 && r.n > r.max {
		return r.typ, r.n, &TooLargeError{Type: r.typ, Len: r.n, Max: r.max}
	}
	r.pending = HeaderLen + r.n
	return r.typ, r.n, nil
}

// Ahead returns the bytes already buffered after the current message,
// without reading more; nil when the current message is not wholly
// buffered. The slice is valid until the next call to Next.
func (r *Reader) Ahead() []byte {
	n := r.br.Buffered()
	if r.pending > n {
		return nil
	}
	buf, _ := r.br.Peek(n)
	return buf[r.pending:]
}

// Len returns the body length of the current message.
func (r *Reader) Len() int { return r.n }

// Frame returns the whole current message, header included. The slice
// aliases the reader's buffer when the frame fits in it.
func (r *Reader) Frame() ([]byte, error) {
	total := HeaderLen + r.n
	if total <= r.br.Size() {
		return r.br.Peek(total)
	}
	if r.held {
		return r.scratch[:total], nil
	}
	if cap(r.scratch) < total {
		r.scratch = make([]byte, total)
	}
	buf := r.scratch[:total]
	if _, err := io.ReadFull(r.br, buf); err != nil {
		return nil, err
	}
	r.pending = 0
	r.held = true
	return buf, nil
}

// Body returns the body of the current message.
func (r *Reader) Body() ([]byte, error) {
	f, err := r.Frame()
	if err != nil {
		return nil, err
	}
	return f[HeaderLen:], nil
}

// WriteTo copies the current message, header included, to w without
// keeping it whole in memory.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	total := HeaderLen + r.n
	if total <= r.br.Size() {
		f, err := r.br.Peek(total)
		if err != nil {
			return 0, &ReadError{err}
		}
		n, err := w.Write(f)
		return int64(n), err
	}
	if r.held {
		n, err := w.Write(r.scratch[:total])
		return int64(n), err
	}
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(r.br, hdr[:]); err != nil {
		return 0, &ReadError{err}
	}
	r.pending = r.n
	n, err := w.Write(hdr[:])
	if err != nil {
		return int64(n), err
	}
	m, err := io.CopyN(w, readErrors{r.br}, int64(r.n))
	r.pending -= int(m)
	return int64(n) + m, err
}

// Release drops a large scratch buffer; call it when the stream goes idle.
func (r *Reader) Release() {
	if cap(r.scratch) > scratchKeep {
		r.scratch = nil
	}
}

// ReadStartup reads an untyped startup-phase packet (StartupMessage,
// SSLRequest, GSSENCRequest, CancelRequest): a four-byte length that counts
// itself, then the body, which is returned. Bodies outside [4, max] are
// refused.
func ReadStartup(br *bufio.Reader, max int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, err
	}
	l := int(binary.BigEndian.Uint32(hdr[:]))
	if l < 8 {
		return nil, ErrMalformed
	}
	if l-4 > max {
		return nil, &TooLargeError{Type: 0, Len: l - 4, Max: max}
	}
	body := make([]byte, l-4)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, err
	}
	return body, nil
}

// readErrors marks errors from the underlying reader as ReadError.
type readErrors struct{ r io.Reader }

func (e readErrors) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		err = &ReadError{err}
	}
	return n, err
}

// cstring splits a NUL-terminated string off the front of b.
func cstring(b []byte) (s, rest []byte, ok bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}

// ParseFields returns the statement name, query and the rest (parameter
// type count and OIDs) of a Parse body, without copying.
func ParseFields(body []byte) (name, query, rest []byte, ok bool) {
	name, b, ok := cstring(body)
	if !ok {
		return nil, nil, nil, false
	}
	query, rest, ok = cstring(b)
	if !ok || len(rest) < 2 {
		return nil, nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+4*n {
		return nil, nil, nil, false
	}
	return name, query, rest, true
}

// BindStatement returns the portal and statement names of a Bind body and
// the bytes after them, without copying.
func BindStatement(body []byte) (portal, stmt, rest []byte, ok bool) {
	portal, b, ok := cstring(body)
	if !ok {
		return nil, nil, nil, false
	}
	stmt, rest, ok = cstring(b)
	return portal, stmt, rest, ok
}

// AppendFrame appends a typed message built from parts to dst.
func AppendFrame(dst []byte, typ byte, parts ...[]byte) []byte {
	n := 4
	for _, p := range parts {
		n += len(p)
	}
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return dst
}
