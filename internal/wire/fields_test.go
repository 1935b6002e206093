package wire

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestBindFields(t *testing.T) {
	m := &pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1", ParameterFormatCodes: []int16{0, 1},
		Parameters: [][]byte{[]byte("7"), nil, {}, {0, 0, 0, 1}}, ResultFormatCodes: []int16{1}}
	frame, err := m.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, ok := ParseBind(frame[HeaderLen:])
	if !ok {
		t.Fatal("ParseBind refused a valid Bind")
	}
	if string(b.Portal) != "p" || string(b.Statement) != "s1" || b.NumParams != 4 {
		t.Fatalf("portal %q statement %q params %d", b.Portal, b.Statement, b.NumParams)
	}
	if b.Format(0) != 0 || b.Format(1) != 1 {
		t.Errorf("formats %d %d", b.Format(0), b.Format(1))
	}
	v := b.Values()
	var got []string
	for v.Next() {
		if v.Null {
			got = append(got, "NULL")
		} else {
			got = append(got, string(v.Value))
		}
		if v.Index != len(got)-1 {
			t.Errorf("index %d at value %d", v.Index, len(got)-1)
		}
	}
	if want := []string{"7", "NULL", "", "\x00\x00\x00\x01"}; len(got) != 4 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Errorf("values %q, want %q", got, want)
	}
	for i := 0; i < len(frame)-HeaderLen; i++ {
		if _, ok := ParseBind(frame[HeaderLen : HeaderLen+i]); ok {
			t.Fatalf("a Bind cut to %d bytes was accepted", i)
		}
	}
}

func TestDataRowAndTags(t *testing.T) {
	frame, _ := (&pgproto3.DataRow{Values: [][]byte{[]byte("a"), nil}}).Encode(nil)
	n, cols, ok := DataRow(frame[HeaderLen:])
	if !ok || n != 2 {
		t.Fatalf("DataRow: %d %v", n, ok)
	}
	if !cols.Next() || string(cols.Value) != "a" || !cols.Next() || !cols.Null || cols.Next() {
		t.Error("walking the columns")
	}
	for tag, want := range map[string]int64{"INSERT 0 5\x00": 5, "SELECT 3": 3, "COPY 12": 12, "BEGIN": -1, "UPDATE x": -1, "7": -1} {
		n, ok := TagRows([]byte(tag))
		if (want < 0) == ok || (ok && n != want) {
			t.Errorf("TagRows(%q) = %d %v", tag, n, ok)
		}
	}
	e, _ := (&pgproto3.ErrorResponse{Severity: "ERROR", Code: "40001", Message: "m"}).Encode(nil)
	if c := ErrorField(e[HeaderLen:], 'C'); !bytes.Equal(c, []byte("40001")) {
		t.Errorf("ErrorField C = %q", c)
	}
	if ErrorField([]byte{'C', 'x'}, 'C') != nil {
		t.Error("an unterminated field was read")
	}
}

// The walkers allocate nothing.
func TestFieldsDoNotAllocate(t *testing.T) {
	frame, _ := (&pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte("1"), []byte("2")}}).Encode(nil)
	body := frame[HeaderLen:]
	if n := testing.AllocsPerRun(100, func() {
		b, _ := ParseBind(body)
		v := b.Values()
		for v.Next() {
		}
	}); n != 0 {
		t.Errorf("%v allocations per Bind walk", n)
	}
}

func FuzzFields(f *testing.F) {
	frame, _ := (&pgproto3.Bind{PreparedStatement: "s", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{[]byte("1"), nil}, ResultFormatCodes: []int16{0}}).Encode(nil)
	f.Add(frame[HeaderLen:])
	row, _ := (&pgproto3.DataRow{Values: [][]byte{[]byte("a"), nil}}).Encode(nil)
	f.Add(row[HeaderLen:])
	f.Fuzz(func(t *testing.T, body []byte) {
		if b, ok := ParseBind(body); ok {
			v := b.Values()
			n := 0
			for v.Next() {
				n++
			}
			if n != b.NumParams {
				t.Fatalf("walked %d values of %d", n, b.NumParams)
			}
			_ = b.Format(n)
		}
		if _, cols, ok := DataRow(body); ok {
			for cols.Next() {
			}
		}
		_ = ErrorField(body, 'C')
		_, _ = TagRows(body)
		_, _, _ = Target(body)
	})
}
