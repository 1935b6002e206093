package policy

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	pg "github.com/pganalyze/pg_query_go/v6"
)

// copyReaderFor analyzes a COPY statement with the example catalog and
// returns a reader of its rows.
func copyReaderFor(t testing.TB, sql string) *CopyReader {
	t.Helper()
	tree, err := pg.Parse(sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	stmts, err := Analyze(tree, exampleCatalog())
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if len(stmts) != 1 || len(stmts[0].Writes) != 1 {
		t.Fatalf("%s: not one COPY write: %+v", sql, stmts)
	}
	r, err := NewCopyReader(stmts[0], stmts[0].Writes[0])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return r
}

func renderValue(v Value) string {
	switch v.Kind {
	case ValueText:
		return strconv.Quote(string(v.Text))
	case ValueNull:
		return "NULL"
	case ValueDefault:
		return "DEFAULT"
	case ValueUnknown:
		return "?"
	}
	return fmt.Sprintf("<kind %d>", v.Kind)
}

func renderViolation(v *Violation) string {
	if v == nil {
		return "ok"
	}
	s := v.Code + " " + v.Message
	if v.Detail != "" {
		s += " (" + v.Detail + ")"
	}
	return s
}

// readCopy feeds data in the chunks given by cuts (offsets) and renders
// the rows, then what End and Finish say.
func readCopy(t testing.TB, sql string, data []byte, cuts []int) string {
	var b strings.Builder
	row := func(n, line int, vals []Value) *Violation {
		fmt.Fprintf(&b, "row %d line %d:", n, line)
		for _, v := range vals {
			b.WriteString(" " + renderValue(v))
		}
		b.WriteString("\n")
		return nil
	}
	r := copyReaderFor(t, sql)
	prev := 0
	var v *Violation
	for _, c := range append(cuts, len(data)) {
		if v = r.Feed(data[prev:c], row); v != nil {
			break
		}
		prev = c
	}
	if v != nil {
		fmt.Fprintf(&b, "feed: %s", renderViolation(v))
		return b.String()
	}
	// End, then Finish on a second reader fed the same way (End marks
	// the reader failed).
	end := renderViolation(r.End())
	r2 := copyReaderFor(t, sql)
	r2.Feed(data, func(int, int, []Value) *Violation { return nil })
	var fb strings.Builder
	fin := r2.Finish(func(n, line int, vals []Value) *Violation {
		fmt.Fprintf(&fb, "finish row %d line %d:", n, line)
		for _, v := range vals {
			fb.WriteString(" " + renderValue(v))
		}
		fb.WriteString("\n")
		return nil
	})
	fmt.Fprintf(&b, "end: %s", end)
	if fb.Len() > 0 || renderViolation(fin) != end {
		fmt.Fprintf(&b, "\n%sfinish: %s", fb.String(), renderViolation(fin))
	}
	return b.String()
}

// TestCopyGolden reads the COPY data of testdata/copy_rows.txt: each
// case's input is the COPY statement and, on the next line, the data as a
// Go string literal. Every split of the data into two chunks, and
// byte-by-byte chunks, give the same rows.
func TestCopyGolden(t *testing.T) {
	path := filepath.Join("testdata", "copy_rows.txt")
	cases := readGolden(t, path)
	got := make([]string, len(cases))
	for i, c := range cases {
		sql, lit, ok := strings.Cut(c.input, "\n")
		if !ok {
			t.Fatalf("case %q: no data line", c.name)
		}
		s, err := strconv.Unquote(lit)
		if err != nil {
			t.Fatalf("case %q: data: %v", c.name, err)
		}
		data := []byte(s)
		got[i] = readCopy(t, sql, data, nil)
		for cut := 0; cut <= len(data); cut++ {
			if split := readCopy(t, sql, data, []int{cut}); split != got[i] {
				t.Errorf("case %q split at %d:\n%s\nunsplit:\n%s", c.name, cut, split, got[i])
				break
			}
		}
		var bytewise []int
		for k := 1; k < len(data); k++ {
			bytewise = append(bytewise, k, k) // with empty chunks too
		}
		if split := readCopy(t, sql, data, bytewise); split != got[i] {
			t.Errorf("case %q byte by byte:\n%s\nunsplit:\n%s", c.name, split, got[i])
		}
	}
	checkGolden(t, path, cases, got)
}

func TestCopyRowViolationStops(t *testing.T) {
	r := copyReaderFor(t, "COPY leads (email) FROM STDIN")
	stop := &Violation{Code: "23514", Message: "no"}
	n := 0
	v := r.Feed([]byte("a\nb\nc\n"), func(rowNum, line int, vals []Value) *Violation {
		n++
		if rowNum == 2 {
			return stop
		}
		return nil
	})
	if v != stop || n != 2 {
		t.Fatalf("Feed returned %v after %d rows", v, n)
	}
	if r.Feed([]byte("d\n"), func(int, int, []Value) *Violation { t.Fatal("row after a violation"); return nil }) != stop {
		t.Error("Feed after a violation does not return it")
	}
	if r.End() != stop {
		t.Error("End after a violation does not return it")
	}
}

func TestNewCopyReaderErrors(t *testing.T) {
	st := Statement{Kind: "COPY", CopyFormat: "text"}
	if _, err := NewCopyReader(st, Write{Kind: WriteInsert}); err == nil {
		t.Error("an INSERT write: no error")
	}
	if _, err := NewCopyReader(Statement{CopyFormat: "xml"}, Write{Kind: WriteCopy}); err == nil {
		t.Error("format xml: no error")
	}
	if _, err := NewCopyReader(Statement{CopyFormat: "csv", CopyOptions: CopyOptions{Delimiter: '"', Quote: '"'}}, Write{Kind: WriteCopy}); err == nil {
		t.Error("delimiter = quote: no error")
	}
	if _, err := NewCopyReader(Statement{CopyFormat: "text", CopyOptions: CopyOptions{Delimiter: 'n'}}, Write{Kind: WriteCopy}); err == nil {
		t.Error("delimiter n in text: no error")
	}
	if _, err := NewCopyReader(Statement{CopyFormat: "csv", CopyOptions: CopyOptions{ForceNull: []string{"x"}}}, Write{Kind: WriteCopy, Columns: []string{"a"}}); err == nil {
		t.Error("FORCE_NULL of a column not copied: no error")
	}
}

// binaryCopy builds a binary COPY stream of rows (nil: NULL).
func binaryCopy(rows [][][]byte, trailer bool) []byte {
	b := []byte(copySignature)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, 0)
	for _, r := range rows {
		b = binary.BigEndian.AppendUint16(b, uint16(len(r)))
		for _, f := range r {
			if f == nil {
				b = binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
				continue
			}
			b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
			b = append(b, f...)
		}
	}
	if trailer {
		b = binary.BigEndian.AppendUint16(b, 0xFFFF)
	}
	return b
}

func TestCopyBinaryErrors(t *testing.T) {
	sql := "COPY leads (email, quality_score) FROM STDIN (FORMAT binary)"
	good := binaryCopy([][][]byte{{[]byte("a"), {0, 0, 0, 1}}}, true)
	withFlags := func(flags uint32, ext []byte) []byte {
		b := []byte(copySignature)
		b = binary.BigEndian.AppendUint32(b, flags)
		b = binary.BigEndian.AppendUint32(b, uint32(len(ext)))
		b = append(b, ext...)
		return append(b, good[19:]...)
	}
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"good", good, "row 1 line 0: \"a\" \"\\x00\\x00\\x00\\x01\"\nend: ok"},
		{"no trailer", good[:len(good)-2], "row 1 line 0: \"a\" \"\\x00\\x00\\x00\\x01\"\nend: ok"},
		{"low flag bits and an extension are ignored", withFlags(0xFFFF, []byte("ext")), "row 1 line 0: \"a\" \"\\x00\\x00\\x00\\x01\"\nend: ok"},
		{"bad signature", append([]byte("PGCOPX\n\xff\r\n\x00"), good[11:]...), "feed: 22P04 COPY file signature not recognized (COPY leads, row 1)"},
		{"with oids", withFlags(1<<16, nil), "feed: 22P04 invalid COPY file header (WITH OIDS) (COPY leads, row 1)"},
		{"critical flags", withFlags(1<<20, nil), "feed: 22P04 unrecognized critical flags in COPY file header (COPY leads, row 1)"},
		{"empty", nil, "end: 22P04 COPY file signature not recognized (COPY leads, row 1)"},
		{"header cut", good[:15], "end: 22P04 invalid COPY file header (missing data) (COPY leads, row 1)"},
		{"tuple cut", good[:25], "end: 22P04 unexpected EOF in COPY data (COPY leads, row 1)"},
		{"count cut", good[:20], "end: 22P04 unexpected EOF in COPY data (COPY leads, row 1)"},
		{"field count", binaryCopy([][][]byte{{[]byte("a")}}, true), "feed: 22P04 row field count is 1, expected 2 (COPY leads, row 1)"},
		{"data after the trailer", append(good, 0), "row 1 line 0: \"a\" \"\\x00\\x00\\x00\\x01\"\nfeed: 22P04 received copy data after EOF marker (COPY leads, row 2)"},
		{"bad field size", append(append([]byte{}, good[:21]...), 0xFF, 0xFF, 0xFF, 0xFE), "feed: 22P04 invalid field size (COPY leads, row 1)"},
		{"null and empty", binaryCopy([][][]byte{{nil, {}}}, true), "row 1 line 0: NULL \"\"\nend: ok"},
	} {
		got := readCopy(t, sql, c.data, nil)
		if got != c.want {
			t.Errorf("%s:\n%s\nwant:\n%s", c.name, got, c.want)
		}
		for cut := 0; cut <= len(c.data); cut++ {
			if split := readCopy(t, sql, c.data, []int{cut}); split != got {
				t.Errorf("%s split at %d:\n%s\nunsplit:\n%s", c.name, cut, split, got)
				break
			}
		}
	}
}

// Steady-state Feed does not allocate.
func TestCopyFeedDoesNotAllocate(t *testing.T) {
	for _, c := range []struct {
		sql  string
		data []byte
	}{
		{"COPY leads (email, phone, quality_score) FROM STDIN", []byte("ann@example.com\t+1555\\t0100\t5\nbob@example.com\t\\N\t7\n")},
		{"COPY leads (email, phone, quality_score) FROM STDIN (FORMAT csv)", []byte("ann@example.com,\"+1555,\"\"0100\"\"\",5\nbob@example.com,,7\n")},
		{"COPY leads (email, phone, quality_score) FROM STDIN (FORMAT binary)",
			binaryCopy([][][]byte{{[]byte("ann@example.com"), []byte("+1555"), {0, 0, 0, 5}}, {[]byte("bob@example.com"), nil, {0, 0, 0, 7}}}, false)},
	} {
		r := copyReaderFor(t, c.sql)
		row := func(int, int, []Value) *Violation { return nil }
		body := c.data
		if r.Binary() {
			header := 19
			if v := r.Feed(body[:header], row); v != nil {
				t.Fatal(v)
			}
			body = body[header:]
		}
		// warm up the buffers
		for i := 0; i < 3; i++ {
			if v := r.Feed(body, row); v != nil {
				t.Fatal(v)
			}
		}
		half := len(body) / 2
		if n := testing.AllocsPerRun(200, func() {
			r.Feed(body[:half], row)
			r.Feed(body[half:], row)
		}); n != 0 {
			t.Errorf("%s: Feed allocates %v times", c.sql, n)
		}
	}
}

func BenchmarkCopyReaderText(b *testing.B) {
	var buf bytes.Buffer
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&buf, "lead%d@example.com\t+1555%07d\tFirst\\tName\t%d\n", i, i, i%100)
	}
	data := buf.Bytes()
	r := copyReaderFor(b, "COPY leads (email, phone, first_name, quality_score) FROM STDIN")
	row := func(int, int, []Value) *Violation { return nil }
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		for off := 0; off < len(data); off += 8192 {
			r.Feed(data[off:min(off+8192, len(data))], row)
		}
	}
}

func FuzzCopyReader(f *testing.F) {
	f.Add("COPY leads (email, phone) FROM STDIN", []byte("a\tb\nc\t\\N\n\\.\n"), uint16(3))
	f.Add("COPY leads (email, phone) FROM STDIN (FORMAT csv, HEADER)", []byte("email,phone\n\"a,\"\"b\",\n\"multi\nline\",x\r\n"), uint16(7))
	f.Add("COPY leads (email, phone) FROM STDIN (FORMAT csv, QUOTE '''', ESCAPE '\\', NULL 'NULL', FORCE_NULL (phone))", []byte("'a\\'b',NULL\n'x','NULL'\n"), uint16(1))
	f.Add("COPY leads (email, phone) FROM STDIN (FORMAT binary)", binaryCopy([][][]byte{{[]byte("a"), nil}, {{}, []byte("b")}}, true), uint16(5))
	f.Add("COPY leads (email) FROM STDIN (DELIMITER ',', NULL '', DEFAULT '\\D')", []byte("\\101\\x41\\q\r\n\\D\r\n\r\n"), uint16(2))
	f.Add("COPY leads FROM STDIN", []byte("1\ta\n"), uint16(0))
	f.Fuzz(func(t *testing.T, sql string, data []byte, seed uint16) {
		tree, err := pg.Parse(sql)
		if err != nil {
			return
		}
		stmts, err := Analyze(tree, exampleCatalog())
		if err != nil || len(stmts) != 1 || len(stmts[0].Writes) != 1 || stmts[0].Writes[0].Kind != WriteCopy {
			return
		}
		read := func(chunks [][]byte) string {
			r, err := NewCopyReader(stmts[0], stmts[0].Writes[0])
			if err != nil {
				return "new: " + err.Error()
			}
			var b strings.Builder
			row := func(n, line int, vals []Value) *Violation {
				if r.ncols >= 0 && len(vals) != r.ncols {
					t.Fatalf("%d values for %d columns", len(vals), r.ncols)
				}
				fmt.Fprintf(&b, "%d %d", n, line)
				for _, v := range vals {
					b.WriteString(" " + renderValue(v))
				}
				b.WriteString("\n")
				return nil
			}
			for _, c := range chunks {
				if v := r.Feed(c, row); v != nil {
					return b.String() + "feed: " + renderViolation(v)
				}
			}
			return b.String() + "finish: " + renderViolation(r.Finish(row))
		}
		whole := read([][]byte{data})
		// Chunk sizes from the seed, 1 to 16 bytes.
		var chunks [][]byte
		s := uint32(seed) | 1
		for rest := data; len(rest) > 0; {
			s = s*1103515245 + 12345
			n := min(int(s>>16)%16+1, len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		if got := read(chunks); got != whole {
			t.Fatalf("chunked:\n%s\nwhole:\n%s", got, whole)
		}
	})
}

// fakeCopyServer speaks just enough of the protocol for pgx's CopyFrom
// on conn: the startup, the Parse/Describe pgx sends for the column
// types, then the COPY, whose CopyData bodies it returns.
func fakeCopyServer(conn net.Conn, fields []pgproto3.FieldDescription) ([][]byte, error) {
	defer conn.Close()
	be := pgproto3.NewBackend(conn, conn)
	if _, err := be.ReceiveStartupMessage(); err != nil {
		return nil, err
	}
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "17.0"})
	be.Send(&pgproto3.ParameterStatus{Name: "client_encoding", Value: "UTF8"})
	be.Send(&pgproto3.ParameterStatus{Name: "standard_conforming_strings", Value: "on"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 2}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := be.Flush(); err != nil {
		return nil, err
	}
	var chunks [][]byte
	rows := 0
	for {
		msg, err := be.Receive()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.Parse:
			be.Send(&pgproto3.ParseComplete{})
		case *pgproto3.Describe:
			be.Send(&pgproto3.ParameterDescription{})
			be.Send(&pgproto3.RowDescription{Fields: fields})
		case *pgproto3.Sync:
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Query:
			formats := make([]uint16, len(fields))
			for i := range formats {
				formats[i] = 1
			}
			be.Send(&pgproto3.CopyInResponse{OverallFormat: 1, ColumnFormatCodes: formats})
		case *pgproto3.CopyData:
			chunks = append(chunks, bytes.Clone(m.Data))
		case *pgproto3.CopyDone:
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("COPY " + strconv.Itoa(rows))})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Terminate:
			return chunks, nil
		default:
			return nil, fmt.Errorf("fake server: unexpected %T", msg)
		}
		if err := be.Flush(); err != nil {
			return nil, err
		}
	}
}

// The binary stream pgx's CopyFrom sends, in the CopyData chunks it
// sends, reads back as the values it encoded.
func TestCopyBinaryFromPgx(t *testing.T) {
	cols := []string{"id", "email", "phone", "quality_score", "date_of_birth", "metadata", "created_at"}
	oids := []uint32{oidInt8, oidText, oidText, oidInt4, oidDate, oidJSONB, oidTimestamptz}
	fields := make([]pgproto3.FieldDescription, len(cols))
	for i, c := range cols {
		fields[i] = pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: oids[i], DataTypeSize: -1, TypeModifier: -1, Format: 1}
	}
	base := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	const n = 5000 // several CopyData messages, rows across them
	src := make([][]any, n)
	for i := range src {
		var phone any
		if i%3 != 0 {
			phone = fmt.Sprintf("+1555%07d", i)
		}
		src[i] = []any{int64(i) << 20, fmt.Sprintf("lead%d@example.com", i), phone, int32(i % 100),
			base.AddDate(-30, 0, -i), map[string]any{"n": i, "tag": "x\ty"}, base.Add(time.Duration(i) * time.Second)}
	}

	client, server := net.Pipe()
	type result struct {
		chunks [][]byte
		err    error
	}
	done := make(chan result, 1)
	go func() {
		chunks, err := fakeCopyServer(server, fields)
		done <- result{chunks, err}
	}()
	ctx := context.Background()
	cfg, err := pgx.ParseConfig("host=127.0.0.1 port=5432 user=app dbname=app sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) { return client, nil }
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"leads"}, cols, pgx.CopyFromRows(src)); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if len(res.chunks) < 3 {
		t.Fatalf("pgx sent %d CopyData messages, want several", len(res.chunks))
	}

	r := copyReaderFor(t, "COPY leads ("+strings.Join(cols, ", ")+") FROM STDIN (FORMAT binary)")
	if !r.Binary() {
		t.Fatal("not binary")
	}
	m := pgtype.NewMap()
	got := 0
	row := func(rowNum, line int, vals []Value) *Violation {
		want := src[rowNum-1]
		if line != 0 || len(vals) != len(cols) {
			t.Fatalf("row %d: line %d, %d values", rowNum, line, len(vals))
		}
		for i, v := range vals {
			if want[i] == nil {
				if v.Kind != ValueNull {
					t.Fatalf("row %d %s: %s, want NULL", rowNum, cols[i], renderValue(v))
				}
				continue
			}
			if v.Kind != ValueText {
				t.Fatalf("row %d %s: %s", rowNum, cols[i], renderValue(v))
			}
			// The raw bytes are the binary encoding of the value.
			enc, err := m.Encode(oids[i], pgtype.BinaryFormatCode, want[i], nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(enc, v.Text) {
				t.Fatalf("row %d %s: %x, want %x", rowNum, cols[i], v.Text, enc)
			}
			var back any
			if err := m.Scan(oids[i], pgtype.BinaryFormatCode, v.Text, &back); err != nil {
				t.Fatalf("row %d %s: %v", rowNum, cols[i], err)
			}
		}
		got++
		return nil
	}
	for _, c := range res.chunks {
		if v := r.Feed(c, row); v != nil {
			t.Fatal(v)
		}
	}
	if v := r.End(); v != nil {
		t.Fatal(v)
	}
	if got != n {
		t.Fatalf("read %d rows, want %d", got, n)
	}
}
