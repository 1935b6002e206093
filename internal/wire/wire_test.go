package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func frame(typ byte, body []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(body)+4))
	return append(b, body...)
}

// readAll frames src with both Body and WriteTo and checks they agree with
// each other and with the input.
func readAll(t *testing.T, src []byte, bufSize, max int) (frames [][]byte, err error) {
	r := NewReader(bufio.NewReaderSize(bytes.NewReader(src), bufSize), max)
	r2 := NewReader(bufio.NewReaderSize(bytes.NewReader(src), bufSize), max)
	for {
		typ, n, err := r.Next()
		typ2, n2, err2 := r2.Next()
		if (err == nil) != (err2 == nil) || typ != typ2 || n != n2 {
			t.Fatalf("readers disagree: %v/%v %d/%d %d/%d", err, err2, typ, typ2, n, n2)
		}
		if err != nil {
			return frames, err
		}
		f, err := r.Frame()
		if err != nil {
			return frames, err
		}
		var out bytes.Buffer
		if _, err := r2.WriteTo(&out); err != nil {
			return frames, err
		}
		if !bytes.Equal(f, out.Bytes()) {
			t.Fatalf("Frame and WriteTo differ: %q vs %q", f, out.Bytes())
		}
		// The proxy reads a message and then forwards it from the same
		// reader.
		var again bytes.Buffer
		if _, err := r.WriteTo(&again); err != nil || !bytes.Equal(f, again.Bytes()) {
			t.Fatalf("WriteTo after Frame on one reader: %v, %d bytes, want %d", err, again.Len(), len(f))
		}
		if f[0] != typ || len(f) != HeaderLen+n {
			t.Fatalf("frame header mismatch")
		}
		frames = append(frames, append([]byte(nil), f...))
	}
}

func TestReaderSmallAndLarge(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 100_000)
	src := append(frame('Q', []byte("select 1\x00")), frame('d', big)...)
	src = append(src, frame('S', nil)...)
	frames, err := readAll(t, src, 4096, 0)
	if err != io.EOF {
		t.Fatalf("want EOF at end, got %v", err)
	}
	if len(frames) != 3 || frames[1][0] != 'd' || len(frames[1]) != HeaderLen+len(big) || frames[2][0] != 'S' {
		t.Fatalf("unexpected frames: %d", len(frames))
	}
}

func TestReaderLimits(t *testing.T) {
	_, err := readAll(t, frame('Q', make([]byte, 2000)), 4096, 1000)
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Len != 2000 || tl.Type != 'Q' {
		t.Fatalf("want TooLargeError, got %v", err)
	}
	bad := []byte{'Q', 0, 0, 0, 3}
	if _, err := readAll(t, bad, 4096, 0); !errors.Is(err, ErrMalformed) {
		t.Fatalf("want ErrMalformed, got %v", err)
	}
	if _, err := readAll(t, []byte{'Q', 0, 0}, 4096, 0); err != io.ErrUnexpectedEOF {
		t.Fatalf("want ErrUnexpectedEOF for a cut header, got %v", err)
	}
	if _, err := readAll(t, frame('Q', []byte("abc"))[:7], 4096, 0); err == nil {
		t.Fatal("want an error for a cut body")
	}
}

func TestReadStartup(t *testing.T) {
	pkt := []byte{0, 0, 0, 8, 4, 210, 22, 47}
	body, err := ReadStartup(bufio.NewReader(bytes.NewReader(pkt)), 10000)
	if err != nil || len(body) != 4 {
		t.Fatalf("got %v %v", body, err)
	}
	if _, err := ReadStartup(bufio.NewReader(bytes.NewReader([]byte{0, 0, 0, 4})), 10000); !errors.Is(err, ErrMalformed) {
		t.Fatalf("want ErrMalformed, got %v", err)
	}
	if _, err := ReadStartup(bufio.NewReader(bytes.NewReader([]byte{0x7f, 0, 0, 0})), 10000); err == nil {
		t.Fatal("want an error for an absurd length")
	}
}

// FuzzReader feeds arbitrary bytes to the framer: it must never panic,
// never return a frame longer than the limit, and agree with WriteTo.
func FuzzReader(f *testing.F) {
	f.Add(frame('Q', []byte("select 1\x00")), 64)
	f.Add(append(frame('P', []byte("\x00select $1\x00\x00\x00")), frame('S', nil)...), 16)
	f.Add([]byte{'X', 0, 0, 0, 4}, 4096)
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff}, 4096)
	f.Fuzz(func(t *testing.T, data []byte, bufSize int) {
		if bufSize < 16 || bufSize > 1<<16 {
			bufSize = 16
		}
		frames, _ := readAll(t, data, bufSize, 1<<12)
		total := 0
		for _, fr := range frames {
			if len(fr)-HeaderLen > 1<<12 {
				t.Fatalf("frame of %d bytes passed a limit of %d", len(fr), 1<<12)
			}
			total += len(fr)
		}
		if !bytes.HasPrefix(data, bytes.Join(frames, nil)) || total > len(data) {
			t.Fatal("frames are not a prefix of the input")
		}
	})
}

// TestFrameThenWriteTo: the proxy reads a message (Body, to classify it)
// and then forwards it (WriteTo) from the same reader; a message larger
// than the buffer must be forwarded whole, and the next one read intact.
func TestFrameThenWriteTo(t *testing.T) {
	big := bytes.Repeat([]byte("y"), 20_000)
	src := append(frame('Q', big), frame('Q', []byte("next\x00"))...)
	r := NewReader(bufio.NewReaderSize(bytes.NewReader(src), 4096), 0)
	if _, _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	f1, err := r.Frame()
	if err != nil {
		t.Fatal(err)
	}
	f2, err := r.Frame()
	if err != nil || !bytes.Equal(f1, f2) {
		t.Fatalf("a second Frame differs: %v", err)
	}
	if a := r.Ahead(); !bytes.Equal(a, frame('Q', []byte("next\x00"))[:len(a)]) {
		t.Fatalf("Ahead after a held frame: %q", a)
	}
	var out bytes.Buffer
	if _, err := r.WriteTo(&out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), frame('Q', big)) {
		t.Fatalf("WriteTo after Frame forwarded %d bytes, want the whole %d-byte frame", out.Len(), len(big)+HeaderLen)
	}
	typ, n, err := r.Next()
	if err != nil || typ != 'Q' || n != 5 {
		t.Fatalf("next message: %c %d %v", typ, n, err)
	}
	if body, err := r.Body(); err != nil || string(body) != "next\x00" {
		t.Fatalf("next body %q %v", body, err)
	}
}
