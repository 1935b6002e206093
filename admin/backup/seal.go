package backup

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/tink-crypto/tink-go/v2/streamingaead/subtle"
	"golang.org/x/crypto/scrypt"
)

// The object format ("sealed object"), version 1:
//
//	header   "PGSB" | version (1 byte, 1) | key id (16 ASCII hex digits) |
//	         CRC-32C of the 21 bytes before it (4 bytes, big-endian)
//	body     Tink streaming AEAD AES256-GCM-HKDF (HKDF-SHA256, 32-byte
//	         derived keys, 1 MiB ciphertext segments) of the zstd stream of
//	         the plaintext; its associated data is the header followed by
//	         the object's name
//
// The CRC tells a damaged header (ErrCorrupt) from an object sealed with
// another key (ErrWrongKey): without it a flipped bit in the key id would
// read as a wrong key. Everything else is authenticated by the AEAD: each
// segment carries a GCM tag and its nonce marks the last one, so a changed,
// reordered, truncated or extended body fails, and so does an object put
// back under another name (the name is associated data), or a header
// changed to another version or key id.
const (
	sealMagic       = "PGSB"
	sealVersion     = 1
	keyIDLen        = 16
	sealHeaderLen   = len(sealMagic) + 1 + keyIDLen + 4
	sealSegmentSize = 1 << 20
	// tinkHeaderLen is the length of the streaming AEAD's own header (a
	// length byte, the 32-byte salt, the 7-byte nonce prefix), which
	// shortens its first segment.
	tinkHeaderLen = 1 + KeySize + 7
	gcmTagLen     = 16
	// sealMaxWindow bounds the decoder's window (ours writes 8 MiB ones);
	// only authenticated bytes reach it anyway.
	sealMaxWindow = 64 << 20
)

// KeySize is the length in bytes of a backup key (AES-256).
const KeySize = 32

// KeyEnv is the variable KeyFrom reads the backup passphrase from.
const KeyEnv = "BACKUP_ENCRYPTION_KEY"

// The key derivation of KeyFrom. The salt is fixed, not stored, so that
// the variable alone (with the repository) is enough to restore: the
// passphrase must carry the entropy (pgshield dev makes up 32 random
// bytes). Changing any of these changes every key and its id.
const (
	keySalt = "pgshield backup key v1"
	scryptN = 1 << 15
	scryptR = 8
	scryptP = 1
	keyIDIn = "pgshield backup key id"
)

// Key seals and opens backup objects. Its ID is public: it is written in
// every object's header and in messages, and it reveals nothing of the key
// (it is an HMAC of a fixed text under the key). The zero Key seals
// nothing.
//
// Key's String and GoString show only the id, so printing a Key by
// mistake leaks nothing.
type Key struct {
	// ID is 16 lowercase hex digits: the first 8 bytes of
	// HMAC-SHA256(key, "pgshield backup key id").
	ID     string
	secret []byte // KeySize bytes; never changed after NewKey
}

// KeyFrom reads the passphrase from BACKUP_ENCRYPTION_KEY with getenv
// (os.Getenv, or a map's lookup in a test) and derives the key from it
// with scrypt (N=2^15, r=8, p=1, a fixed salt; about 32 MiB and a few tens
// of milliseconds, so derive it once). The error for an unset variable
// names it and wraps ErrNoKey.
func KeyFrom(getenv func(string) string) (Key, error) {
	pass := getenv(KeyEnv)
	if pass == "" {
		return Key{}, fmt.Errorf("%w: %s is not set (the backup passphrase)", ErrNoKey, KeyEnv)
	}
	secret, err := scrypt.Key([]byte(pass), []byte(keySalt), scryptN, scryptR, scryptP, KeySize)
	if err != nil {
		return Key{}, fmt.Errorf("backup: deriving the key from %s: %w", KeyEnv, err)
	}
	return NewKey(secret)
}

// NewKey makes a Key of KeySize secret bytes (used as they are: no
// derivation). secret is copied.
func NewKey(secret []byte) (Key, error) {
	if len(secret) != KeySize {
		return Key{}, fmt.Errorf("backup: a key is %d bytes, not %d", KeySize, len(secret))
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(keyIDIn))
	return Key{
		ID:     hex.EncodeToString(mac.Sum(nil))[:keyIDLen],
		secret: bytes.Clone(secret),
	}, nil
}

// String shows the key's id, never the key.
func (k Key) String() string { return "backup key " + k.ID }

// GoString keeps %#v from printing the key.
func (k Key) GoString() string { return fmt.Sprintf("backup.Key{ID: %q}", k.ID) }

func (k Key) check() error {
	if len(k.secret) != KeySize {
		return errors.New("backup: no key (make one with KeyFrom or NewKey)")
	}
	return nil
}

func (k Key) aead() (*subtle.AESGCMHKDF, error) {
	return subtle.NewAESGCMHKDF(k.secret, "SHA256", KeySize, sealSegmentSize, 0)
}

func (k Key) header() []byte {
	h := make([]byte, 0, sealHeaderLen)
	h = append(h, sealMagic...)
	h = append(h, sealVersion)
	h = append(h, k.ID...)
	return binary.BigEndian.AppendUint32(h, crc32.Checksum(h, crc32.MakeTable(crc32.Castagnoli)))
}

// associatedData binds the body to its header and to the object's name.
func associatedData(header []byte, name string) []byte {
	return append(bytes.Clone(header), name...)
}

// Seal returns a writer that compresses and encrypts what is written to
// it into w, as the object name (the name it will have in the repository:
// Open must be given the same). It writes the header at once, then the
// body as segments fill: nothing is held but a segment and the
// compressor's window. Close flushes both layers and must be called (and
// its error checked) for the object to be whole; it does not close w.
func (k Key) Seal(w io.Writer, name string) (io.WriteCloser, error) {
	if err := k.check(); err != nil {
		return nil, err
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	aead, err := k.aead()
	if err != nil {
		return nil, fmt.Errorf("backup: sealing %s: %w", name, err)
	}
	hdr := k.header()
	if _, err := w.Write(hdr); err != nil {
		return nil, fmt.Errorf("backup: sealing %s: %w", name, err)
	}
	ew, err := aead.NewEncryptingWriter(w, associatedData(hdr, name))
	if err != nil {
		return nil, fmt.Errorf("backup: sealing %s: %w", name, err)
	}
	zw, err := zstd.NewWriter(ew, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, fmt.Errorf("backup: sealing %s: %w", name, err)
	}
	return &sealer{name: name, zw: zw, ew: ew}, nil
}

// sealer is the writer Seal returns; one goroutine uses it.
type sealer struct {
	name   string
	zw     *zstd.Encoder
	ew     io.WriteCloser
	closed bool
	err    error // of Close, returned again by later calls
}

func (s *sealer) Write(p []byte) (int, error) {
	if s.closed {
		return 0, fmt.Errorf("backup: sealing %s: write after close", s.name)
	}
	n, err := s.zw.Write(p)
	if err != nil {
		return n, fmt.Errorf("backup: sealing %s: %w", s.name, err)
	}
	return n, nil
}

func (s *sealer) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	if err := s.zw.Close(); err != nil {
		s.ew.Close()
		s.err = fmt.Errorf("backup: sealing %s: %w", s.name, err)
		return s.err
	}
	if err := s.ew.Close(); err != nil {
		s.err = fmt.Errorf("backup: sealing %s: %w", s.name, err)
	}
	return s.err
}

// Open returns a reader of the plaintext of the sealed object read from r,
// which was sealed as name. It reads and checks the header at once: a
// damaged or foreign header is ErrCorrupt, another key's id ErrWrongKey
// (naming both ids). Then it decrypts and decompresses as it is read,
// holding a segment and the decompressor's window.
//
// Every byte it returns comes from a segment that passed authentication,
// but only a Read that returns io.EOF proves the object whole: a later
// segment can still fail (ErrCorrupt, naming the object and the segment)
// or be missing. So treat any error as the failure of the whole object.
// Errors of r itself are returned wrapped, not as ErrCorrupt. Close
// releases the decompressor; it does not close r.
func (k Key) Open(r io.Reader, name string) (io.ReadCloser, error) {
	if err := k.check(); err != nil {
		return nil, err
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	src := &sourceReader{r: r}
	hdr := make([]byte, sealHeaderLen)
	if _, err := io.ReadFull(src, hdr); err != nil {
		if src.err != nil {
			return nil, fmt.Errorf("backup: reading object %s: %w", name, src.err)
		}
		return nil, corrupt(name, fmt.Errorf("truncated header (%d bytes; a sealed object starts with %d)", src.n, sealHeaderLen))
	}
	if string(hdr[:len(sealMagic)]) != sealMagic {
		return nil, corrupt(name, fmt.Errorf("no %s header: not a sealed pgshield backup object", sealMagic))
	}
	body := hdr[:sealHeaderLen-4]
	if crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)) != binary.BigEndian.Uint32(hdr[sealHeaderLen-4:]) {
		return nil, corrupt(name, errors.New("header checksum mismatch"))
	}
	if v := hdr[len(sealMagic)]; v != sealVersion {
		return nil, fmt.Errorf("backup: object %s has format version %d; this pgshield reads version %d (was it written by a newer one?)", name, v, sealVersion)
	}
	if id := string(hdr[len(sealMagic)+1 : sealHeaderLen-4]); id != k.ID {
		return nil, fmt.Errorf("object %s was sealed with backup key %s, but %s gives key %s: %w", name, id, KeyEnv, k.ID, ErrWrongKey)
	}
	aead, err := k.aead()
	if err != nil {
		return nil, fmt.Errorf("backup: opening %s: %w", name, err)
	}
	dr, err := aead.NewDecryptingReader(src, associatedData(hdr, name))
	if err != nil {
		if src.err != nil {
			return nil, fmt.Errorf("backup: reading object %s: %w", name, src.err)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("truncated (%d bytes): %w", src.n, err)
		}
		return nil, corrupt(name, fmt.Errorf("encryption header: %w", err))
	}
	ar := &authReader{name: name, r: dr, src: src}
	zr, err := zstd.NewReader(ar, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(sealMaxWindow))
	if err != nil {
		return nil, fmt.Errorf("backup: opening %s: %w", name, err)
	}
	return &opener{name: name, zr: zr, ar: ar}, nil
}

// sourceReader counts what is read from the stored object and keeps its
// first error that is not io.EOF: a failure to read is not corruption.
type sourceReader struct {
	r   io.Reader
	n   int64
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// authReader is the decrypted (still compressed) stream. It turns the
// AEAD's failures into ErrCorrupt naming the object and the segment, and
// keeps the first error so that the decompressor cannot hide it.
type authReader struct {
	name string
	r    io.Reader
	src  *sourceReader
	n    int64 // authenticated bytes returned
	eof  bool
	err  error
}

func (a *authReader) Read(p []byte) (int, error) {
	if a.err != nil {
		return 0, a.err
	}
	n, err := a.r.Read(p)
	a.n += int64(n)
	switch {
	case err == nil:
	case err == io.EOF:
		a.eof = true
	case a.src.err != nil:
		a.err = fmt.Errorf("backup: reading object %s: %w", a.name, a.src.err)
	default:
		seg, off := a.segment()
		a.err = corrupt(a.name, fmt.Errorf("segment %d (from byte %d) failed authentication: %w", seg, off, err))
	}
	if a.err != nil {
		return n, a.err
	}
	return n, err
}

// segment is the index of the segment being decrypted, and the offset of
// its first byte in the stored object. Every segment before it was
// returned whole, so the count of authenticated bytes says which it is.
func (a *authReader) segment() (int64, int64) {
	const first = sealSegmentSize - tinkHeaderLen - gcmTagLen // plaintext of segment 0
	if a.n < first {
		return 0, int64(sealHeaderLen + tinkHeaderLen)
	}
	seg := 1 + (a.n-first)/(sealSegmentSize-gcmTagLen)
	return seg, int64(sealHeaderLen) + seg*sealSegmentSize
}

// opener is the reader Open returns; one goroutine uses it.
type opener struct {
	name   string
	zr     *zstd.Decoder
	ar     *authReader
	closed bool
}

func (o *opener) Read(p []byte) (int, error) {
	if o.closed {
		return 0, fmt.Errorf("backup: opening %s: read after close", o.name)
	}
	n, err := o.zr.Read(p)
	switch {
	case err == nil:
		return n, nil
	case o.ar.err != nil:
		return n, o.ar.err
	case err != io.EOF:
		return n, corrupt(o.name, fmt.Errorf("decompressing: %w", err))
	case !o.ar.eof:
		// The decompressor ends at the end of its input; anything else
		// would be a stream this format does not write.
		return n, corrupt(o.name, errors.New("data after the end of the compressed stream"))
	}
	return n, io.EOF
}

func (o *opener) Close() error {
	if !o.closed {
		o.closed = true
		o.zr.Close()
	}
	return nil
}
