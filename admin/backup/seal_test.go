package backup_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/pgshield/pgshield/admin/backup"
)

// The object name the sealing tests use, shaped like a base backup's.
const sealName = "backups/20260101T020000Z/base.tar.zst.enc"

// segment is the format's ciphertext segment size (1 MiB).
const segment = 1 << 20

// fixedKey is the key of the golden object and of the fuzz corpus.
func fixedKey(t testing.TB) backup.Key {
	t.Helper()
	secret := sha256.Sum256([]byte("pgshield backup test key"))
	k, err := backup.NewKey(secret[:])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randomKey(t testing.TB) backup.Key {
	t.Helper()
	secret := make([]byte, backup.KeySize)
	for i := range secret {
		secret[i] = byte(rand.Uint32())
	}
	k, err := backup.NewKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// pseudoRandom is n incompressible bytes, the same for the same seed.
func pseudoRandom(seed byte, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{seed}), n)
}

// leadText is n bytes of compressible, CSV-like text.
func leadText(n int64) io.Reader { return io.LimitReader(&textReader{}, n) }

type textReader struct {
	line int
	buf  []byte
}

func (r *textReader) Read(p []byte) (int, error) {
	for len(r.buf) < len(p) {
		r.line++
		r.buf = fmt.Appendf(r.buf, "%d,lead%d@email.com,+1555%07d,RECEIVED,%d\n", r.line, r.line, r.line%10000000, r.line%101)
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func seal(t testing.TB, k backup.Key, name string, plain []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := k.Seal(&buf, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// open reads the whole plaintext of a sealed object; what it returns
// before an error is kept, to check that it is authentic.
func open(k backup.Key, name string, sealed io.Reader) ([]byte, error) {
	r, err := k.Open(sealed, name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// wantCorrupt checks that err is ErrCorrupt (and not ErrWrongKey), names
// the object, and that what was read before it is a prefix of the
// plaintext: no unauthenticated byte came out.
func wantCorrupt(t *testing.T, err error, got, plain []byte) {
	t.Helper()
	if !errors.Is(err, backup.ErrCorrupt) || errors.Is(err, backup.ErrWrongKey) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	if want := "object " + sealName + " is corrupt or was changed: "; !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("err = %q, want it to start with %q", err, want)
	}
	if !bytes.HasPrefix(plain, got) {
		t.Fatalf("read %d bytes that are not the plaintext's before the error", len(got))
	}
}

func flipped(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

func readAllBytes(t testing.TB, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSealRoundTripLarge streams 50 MB of compressible and of random data
// through Seal and Open joined by a pipe: Open reads while Seal writes, and
// neither side holds the object.
func TestSealRoundTripLarge(t *testing.T) {
	t.Parallel()
	const size = 50 << 20
	for _, tc := range []struct {
		name      string
		data      func() io.Reader
		maxSealed int64
	}{
		{"compressible", func() io.Reader { return leadText(size) }, size / 4},
		// Random data does not compress: the stored size is the data's plus
		// the header, a tag per 1 MiB segment and zstd's framing.
		{"random", func() io.Reader { return pseudoRandom(1, size) }, size + size/1000 + 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := randomKey(t)
			pr, pw := io.Pipe()
			var sealed countingWriter
			sealedHash := make(chan [32]byte, 1)
			go func() {
				h := sha256.New()
				w, err := k.Seal(io.MultiWriter(pw, h, &sealed), sealName)
				if err == nil {
					_, err = io.Copy(w, tc.data())
					if cerr := w.Close(); err == nil {
						err = cerr
					}
				}
				sealedHash <- [32]byte(h.Sum(nil))
				pw.CloseWithError(err)
			}()
			r, err := k.Open(pr, sealName)
			if err != nil {
				t.Fatal(err)
			}
			got := sha256.New()
			n, err := io.Copy(got, r)
			if err != nil {
				t.Fatal(err)
			}
			r.Close()
			<-sealedHash
			want := sha256.New()
			io.Copy(want, tc.data())
			if n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
				t.Fatalf("read back %d bytes (sha256 %x), want %d (sha256 %x)", n, got.Sum(nil), size, want.Sum(nil))
			}
			if sealed.n > tc.maxSealed {
				t.Fatalf("sealed %d bytes into %d, want at most %d", size, sealed.n, tc.maxSealed)
			}
			t.Logf("%s: %d bytes sealed into %d", tc.name, size, sealed.n)
		})
	}
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func TestSealRoundTripSmall(t *testing.T) {
	t.Parallel()
	k := randomKey(t)
	for _, plain := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("abc"), 1000)} {
		sealed := seal(t, k, "catalog/manifest.json", plain)
		got, err := open(k, "catalog/manifest.json", bytes.NewReader(sealed))
		if err != nil {
			t.Fatalf("%d bytes: %v", len(plain), err)
		}
		if !bytes.Equal(got, plain) {
			t.Fatalf("%d bytes: read back %q", len(plain), got)
		}
	}
	// Sealing is randomized: the same plaintext never seals the same.
	if a, b := seal(t, k, "a", []byte("same")), seal(t, k, "a", []byte("same")); bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are equal")
	}
}

func TestSealWriterClose(t *testing.T) {
	t.Parallel()
	k := randomKey(t)
	var buf bytes.Buffer
	w, err := k.Seal(&buf, "x")
	if err != nil {
		t.Fatal(err)
	}
	// Many small writes make one stream.
	for i := range 10000 {
		if _, err := w.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := w.Write([]byte("late")); err == nil {
		t.Fatal("Write after Close succeeded")
	}
	got, err := open(k, "x", &buf)
	if err != nil || len(got) != 10000 || got[9999] != byte(9999%256) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
}

// sampleTar is a small tar archive, as a base backup's starts.
func sampleTar(t testing.TB) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct{ name, body string }{
		{"PG_VERSION", "17\n"},
		{"global/pg_control", strings.Repeat("control ", 1000)},
		{"base/16384/2619", strings.Repeat("leads row: jane@example.com 078-05-1120\n", 2000)},
	} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o600, Size: int64(len(f.body))}); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, f.body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// looksLikeZstd reports whether b holds a zstd frame anywhere (its magic
// number), or decodes as zstd.
func looksLikeZstd(b []byte) bool {
	if bytes.Contains(b, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		return true
	}
	d, err := zstd.NewReader(bytes.NewReader(b))
	if err != nil {
		return false
	}
	defer d.Close()
	_, err = io.ReadAll(d)
	return err == nil
}

// looksLikeTar reports whether b holds a tar header anywhere, or reads as
// a tar archive.
func looksLikeTar(b []byte) bool {
	if bytes.Contains(b, []byte("ustar")) {
		return true
	}
	_, err := tar.NewReader(bytes.NewReader(b)).Next()
	return err == nil
}

// checkOpaque fails the test when sealed shows anything of the tar it
// holds: it must be neither zstd nor tar, nor contain its text.
func checkOpaque(t *testing.T, sealed []byte) {
	t.Helper()
	if looksLikeZstd(sealed) {
		t.Error("the sealed object holds a zstd stream")
	}
	if looksLikeTar(sealed) {
		t.Error("the sealed object holds a tar header")
	}
	for _, s := range []string{"PG_VERSION", "pg_control", "jane@example.com", "078-05-1120"} {
		if bytes.Contains(sealed, []byte(s)) {
			t.Errorf("the sealed object contains %q", s)
		}
	}
}

func TestSealedIsOpaque(t *testing.T) {
	t.Parallel()
	plain := sampleTar(t)
	// The detectors see through what is only compressed; otherwise this
	// test could not fail.
	if !looksLikeTar(plain) {
		t.Fatal("looksLikeTar misses a tar")
	}
	var z bytes.Buffer
	zw, _ := zstd.NewWriter(&z)
	zw.Write(plain)
	zw.Close()
	if !looksLikeZstd(z.Bytes()) {
		t.Fatal("looksLikeZstd misses a zstd stream")
	}

	k := randomKey(t)
	sealed := seal(t, k, sealName, plain)
	checkOpaque(t, sealed)
	if !bytes.HasPrefix(sealed, []byte("PGSB")) {
		t.Errorf("sealed object starts %q, want the PGSB magic", sealed[:4])
	}
	if !bytes.Contains(sealed[:32], []byte(k.ID)) {
		t.Error("the header does not carry the key id")
	}
}

// corruptionSample is a sealed object of a few segments and its plaintext.
func corruptionSample(t *testing.T) (backup.Key, []byte, []byte) {
	k := randomKey(t)
	plain := readAllBytes(t, pseudoRandom(7, 3*segment+12345))
	return k, plain, seal(t, k, sealName, plain)
}

func TestOpenFlippedByte(t *testing.T) {
	t.Parallel()
	k, plain, sealed := corruptionSample(t)
	segmentAt := func(i int) string { return fmt.Sprintf("segment %d ", (i-25)/segment) }
	for _, tc := range []struct {
		what string
		at   int
		want string // in the message
	}{
		{"magic", 0, "no PGSB header"},
		{"version", 4, "header checksum"},
		{"key id", 8, "header checksum"},
		{"header checksum", 22, "header checksum"},
		{"encryption header", 25, "encryption header"},
		{"salt", 40, "segment 0 (from byte 65)"},
		{"first segment", 1000, "segment 0 "},
		{"middle", len(sealed) / 2, segmentAt(len(sealed) / 2)},
		{"second segment's first byte", 25 + segment, "segment 1 (from byte 1048601)"},
		{"last byte", len(sealed) - 1, segmentAt(len(sealed) - 1)},
	} {
		t.Run(tc.what, func(t *testing.T) {
			got, err := open(k, sealName, bytes.NewReader(flipped(sealed, tc.at)))
			wantCorrupt(t, err, got, plain)
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %q, want it to say %q", err, tc.want)
			}
		})
	}
}

func TestOpenTruncatedOrExtended(t *testing.T) {
	t.Parallel()
	k, plain, sealed := corruptionSample(t)
	for _, n := range []int{0, 1, 24, 25, 26, 25 + 40, 25 + 41, 25 + 40 + 100, 25 + segment, 25 + 2*segment, len(sealed) - 16, len(sealed) - 1} {
		got, err := open(k, sealName, bytes.NewReader(sealed[:n]))
		t.Run(fmt.Sprintf("truncated to %d", n), func(t *testing.T) { wantCorrupt(t, err, got, plain) })
	}
	for _, extra := range [][]byte{{0}, bytes.Repeat([]byte{0xAA}, 17), sealed[25:1000]} {
		got, err := open(k, sealName, bytes.NewReader(append(bytes.Clone(sealed), extra...)))
		t.Run(fmt.Sprintf("extended by %d", len(extra)), func(t *testing.T) { wantCorrupt(t, err, got, plain) })
	}
	// Two segments swapped.
	swapped := bytes.Clone(sealed)
	copy(swapped[25+segment:], sealed[25+2*segment:25+3*segment])
	copy(swapped[25+2*segment:], sealed[25+segment:25+2*segment])
	got, err := open(k, sealName, bytes.NewReader(swapped))
	wantCorrupt(t, err, got, plain)
}

// An object put back under another name does not open: restore cannot be
// fed one backup's file for another's.
func TestOpenOtherName(t *testing.T) {
	t.Parallel()
	k := randomKey(t)
	plain := []byte("base backup of 2026-01-01")
	sealed := seal(t, k, "backups/20260102T020000Z/base.tar.zst.enc", plain)
	got, err := open(k, sealName, bytes.NewReader(sealed))
	wantCorrupt(t, err, got, plain)
	if len(got) != 0 {
		t.Fatalf("read %q from an object sealed under another name", got)
	}
}

func TestOpenWrongKey(t *testing.T) {
	t.Parallel()
	k1, k2 := randomKey(t), randomKey(t)
	sealed := seal(t, k1, sealName, []byte("secret"))
	got, err := open(k2, sealName, bytes.NewReader(sealed))
	if !errors.Is(err, backup.ErrWrongKey) || errors.Is(err, backup.ErrCorrupt) {
		t.Fatalf("err = %v, want ErrWrongKey", err)
	}
	for _, s := range []string{sealName, k1.ID, k2.ID, backup.KeyEnv} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("err = %q, want it to name %q", err, s)
		}
	}
	if got != nil {
		t.Fatalf("read %q with the wrong key", got)
	}
}

// A header of another version, with a right checksum, is refused as such:
// a newer pgshield's object is not "corrupt".
func TestOpenOtherVersion(t *testing.T) {
	t.Parallel()
	k := randomKey(t)
	sealed := seal(t, k, sealName, []byte("x"))
	sealed[4] = 2
	binary.BigEndian.PutUint32(sealed[21:25], crc32.Checksum(sealed[:21], crc32.MakeTable(crc32.Castagnoli)))
	_, err := open(k, sealName, bytes.NewReader(sealed))
	if err == nil || errors.Is(err, backup.ErrCorrupt) || !strings.Contains(err.Error(), "format version 2") {
		t.Fatalf("err = %v, want an unsupported format version", err)
	}
}

type failingReader struct {
	r   io.Reader
	n   int64 // bytes before failing
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if int64(len(p)) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= int64(n)
	return n, err
}

var errDisk = errors.New("disk on fire")

// A failure to read the stored object is reported as such, not as
// corruption: the object may be fine.
func TestOpenReadError(t *testing.T) {
	t.Parallel()
	k, _, sealed := corruptionSample(t)
	for _, n := range []int64{0, 10, 30, segment + 100} {
		_, err := open(k, sealName, &failingReader{r: bytes.NewReader(sealed), n: n, err: errDisk})
		if !errors.Is(err, errDisk) || errors.Is(err, backup.ErrCorrupt) {
			t.Fatalf("after %d bytes: err = %v, want the read error", n, err)
		}
		if !strings.Contains(err.Error(), sealName) {
			t.Fatalf("after %d bytes: err = %q, want the object named", n, err)
		}
	}
}

func TestKeyFrom(t *testing.T) {
	t.Parallel()
	_, err := backup.KeyFrom(func(string) string { return "" })
	if !errors.Is(err, backup.ErrNoKey) || !strings.Contains(err.Error(), "BACKUP_ENCRYPTION_KEY") {
		t.Fatalf("unset: err = %v, want ErrNoKey naming BACKUP_ENCRYPTION_KEY", err)
	}
	const pass = "correct horse battery staple, pgshield"
	env := func(v string) func(string) string {
		return func(name string) string {
			if name == backup.KeyEnv {
				return v
			}
			return ""
		}
	}
	k1, err := backup.KeyFrom(env(pass))
	if err != nil {
		t.Fatal(err)
	}
	k2, err := backup.KeyFrom(env(pass))
	if err != nil {
		t.Fatal(err)
	}
	k3, err := backup.KeyFrom(env(pass + "!"))
	if err != nil {
		t.Fatal(err)
	}
	// The derivation is part of the format: a restore years from now must
	// derive the same key from the same passphrase.
	if k1.ID != "c34e29c6bdf1e75c" {
		t.Fatalf("KeyFrom(%q).ID = %s: the key derivation changed", pass, k1.ID)
	}
	if k2.ID != k1.ID || k3.ID == k1.ID {
		t.Fatalf("ids %s, %s, %s: want equal for equal passphrases only", k1.ID, k2.ID, k3.ID)
	}
	// k2 opens what k1 sealed: same key.
	if got, err := open(k2, "a", bytes.NewReader(seal(t, k1, "a", []byte("hello")))); err != nil || string(got) != "hello" {
		t.Fatalf("open with the same passphrase: %q, %v", got, err)
	}
	// Printing a key shows its id only.
	for _, s := range []string{fmt.Sprint(k1), fmt.Sprintf("%+v", k1), fmt.Sprintf("%#v", k1), fmt.Sprintf("%v", &k1)} {
		if strings.Contains(s, pass) || !strings.Contains(s, k1.ID) || regexp.MustCompile(`\[[0-9 ]{20,}\]|[0-9a-f]{64}`).MatchString(s) {
			t.Errorf("a printed key shows %q", s)
		}
	}
}

func TestNewKey(t *testing.T) {
	t.Parallel()
	secret := bytes.Repeat([]byte{7}, backup.KeySize)
	k, err := backup.NewKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(k.ID) {
		t.Fatalf("ID = %q, want 16 hex digits", k.ID)
	}
	if strings.Contains(hex.EncodeToString(secret), k.ID) {
		t.Fatal("the id is a part of the key")
	}
	// The key is copied: changing the caller's slice changes nothing.
	sealed := seal(t, k, "a", []byte("x"))
	secret[0] = 8
	if _, err := open(k, "a", bytes.NewReader(sealed)); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := backup.NewKey(make([]byte, n)); err == nil {
			t.Errorf("NewKey of %d bytes succeeded", n)
		}
	}
	var zero backup.Key
	if _, err := zero.Seal(io.Discard, "a"); err == nil {
		t.Error("the zero Key sealed")
	}
	if _, err := zero.Open(bytes.NewReader(sealed), "a"); err == nil {
		t.Error("the zero Key opened")
	}
	if _, err := k.Seal(io.Discard, "/abs"); err == nil {
		t.Error("sealed under an invalid name")
	}
}

// goldenPlain is the plaintext of testdata/sealed-v1.bin and of the valid
// fuzz seeds, sealed with fixedKey as goldenName.
var goldenPlain = []byte(strings.Repeat("pgshield sealed object, format version 1\n", 20))

const goldenName = "golden/object"

// TestOpenGolden opens an object sealed by an earlier build: the format
// must stay readable.
func TestOpenGolden(t *testing.T) {
	t.Parallel()
	sealed, err := os.ReadFile(filepath.Join("testdata", "sealed-v1.bin"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := open(fixedKey(t), goldenName, bytes.NewReader(sealed))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, goldenPlain) {
		t.Fatalf("read %q", got)
	}
}

// FuzzOpen feeds arbitrary bytes to Open: it must not panic, must fail
// with ErrCorrupt or ErrWrongKey (or an unsupported version), and must
// never return a byte that is not authentic, i.e. not the golden
// plaintext's, the only one its key ever sealed under its name.
func FuzzOpen(f *testing.F) {
	k := fixedKey(f)
	if golden, err := os.ReadFile(filepath.Join("testdata", "sealed-v1.bin")); err == nil {
		f.Add(golden)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := open(k, goldenName, bytes.NewReader(data))
		if !bytes.HasPrefix(goldenPlain, got) {
			t.Fatalf("Open returned %d bytes that are not authentic (err %v)", len(got), err)
		}
		if err == nil {
			if !bytes.Equal(got, goldenPlain) {
				t.Fatalf("Open succeeded with %d bytes, a part of the plaintext", len(got))
			}
			return
		}
		if !errors.Is(err, backup.ErrCorrupt) && !errors.Is(err, backup.ErrWrongKey) && !strings.Contains(err.Error(), "format version") {
			t.Fatalf("err = %v, want ErrCorrupt or ErrWrongKey", err)
		}
	})
}
