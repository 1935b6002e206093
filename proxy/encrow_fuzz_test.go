package proxy

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/policy"
)

// fuzzEnc is an encState with one table: ssn (randomized text), dob
// (randomized, plaintext date) and email (deterministic, masked for the
// service analytics).
func fuzzEnc(tb testing.TB) (*encState, *rowPlan, *crypto.Keyring) {
	tb.Helper()
	keys, err := crypto.NewKeyring(time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	mask, err := crypto.ParseMask("email")
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := New(Config{Users: []User{{Name: "app", Password: "x"}}}, noServers{}, nil, zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	srv.SetEncryption(&Encryption{Keys: keys, Columns: map[string]map[string]map[string]EncryptedColumn{
		"app": {"t": {"ssn": {}, "dob": {Type: "date"}, "email": {Deterministic: true}}},
	}, Masks: map[string]map[string]map[string]map[string]crypto.Mask{"analytics": {"app": {"t": {"email": mask}}}}}, nil)
	es := srv.enc.Load()
	rp := &rowPlan{db: "app", acts: []fieldAct{
		{idx: 0, col: es.cols["app"]["t"]["ssn"]},
		{idx: 1, col: es.cols["app"]["t"]["dob"], binary: true},
		{idx: 3, col: es.masked["analytics"]["app"]["t"]["email"]},
	}}
	return es, rp, keys
}

func dataRow(vals ...[]byte) []byte {
	out := binary.BigEndian.AppendUint16(nil, uint16(len(vals)))
	for _, v := range vals {
		if v == nil {
			out = binary.BigEndian.AppendUint32(out, 0xFFFFFFFF)
			continue
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(v)))
		out = append(out, v...)
	}
	return out
}

// FuzzRowRewrite feeds DataRow bodies to the decrypting Row hook: it must
// never panic, give either a well-formed row of as many columns or a
// refusal that holds none of the row's bytes, and never hand out a
// ciphertext or a value it did not decrypt in an encrypted column.
func FuzzRowRewrite(f *testing.F) {
	es, rp, keys := fuzzEnc(f)
	ssn, _ := keys.Encrypt("t.ssn", []byte("123-45-6789"), nil)
	dob, _ := keys.Encrypt("t.dob", []byte("1990-01-02"), nil)
	email, _ := keys.EncryptDeterministic("t.email", []byte("test@email.com"), nil)
	f.Add(dataRow(ssn, dob, []byte("plain"), email))
	f.Add(dataRow(nil, nil, nil, nil))
	f.Add(dataRow(ssn))
	f.Add(dataRow([]byte("pgs1:AAAA"), dob, nil, email))
	f.Add([]byte{0, 2, 0, 0, 0, 9, 'x'})
	si := SessionInfo{Database: "app", Service: "analytics"}
	f.Fuzz(func(t *testing.T, body []byte) {
		out, refusal := es.row(RowEvent{Session: si, State: rp, Body: body})
		if refusal != nil {
			if refusal.Code != "XX001" {
				t.Fatalf("refusal %s", refusal.Code)
			}
			if len(body) > 8 && bytes.Contains([]byte(refusal.Message+refusal.Detail+refusal.Hint), body[6:]) {
				t.Fatal("the refusal holds the row's bytes")
			}
			return
		}
		if out == nil {
			return // not a DataRow: forwarded as it is
		}
		n, cols, ok := wire.DataRow(out)
		in, _, _ := wire.DataRow(body)
		if !ok || n != in {
			t.Fatalf("rewritten row: %d columns (ok %v), the row had %d", n, ok, in)
		}
		for cols.Next() {
			if cols.Index == 0 && !cols.Null && crypto.IsCiphertext(cols.Value) {
				t.Fatal("a ciphertext handed out")
			}
		}
	})
}

// A row of ciphertexts reads as its plaintexts: text as it is, the date
// in binary, the masked email masked.
func TestRowRewrite(t *testing.T) {
	es, rp, keys := fuzzEnc(t)
	ssn, _ := keys.Encrypt("t.ssn", []byte("123-45-6789"), nil)
	dob, _ := keys.Encrypt("t.dob", []byte("1990-01-02"), nil)
	email, _ := keys.EncryptDeterministic("t.email", []byte("test@email.com"), nil)
	out, refusal := es.row(RowEvent{Session: SessionInfo{Database: "app", Service: "analytics"}, State: rp,
		Body: dataRow(ssn, dob, []byte("plain"), email)})
	if refusal != nil {
		t.Fatal(refusal.Message)
	}
	days := int32(-3651)
	want := dataRow([]byte("123-45-6789"), binary.BigEndian.AppendUint32(nil, uint32(days)), []byte("plain"), []byte("t**t@email.com"))
	if !bytes.Equal(out, want) {
		t.Errorf("row %q, want %q", out, want)
	}
	// Under another column's name, a value does not decrypt.
	moved, _ := keys.Encrypt("t.other", []byte("123-45-6789"), nil)
	if _, refusal := es.row(RowEvent{Session: SessionInfo{Database: "app"}, State: rp, Body: dataRow(moved, nil, nil, nil)}); refusal == nil || refusal.Code != "XX001" {
		t.Errorf("a value of another column: %v", refusal)
	}
}

// Numeric and timestamptz plaintexts encode to the binary forms the
// policy's decoder reads back.
func TestPlainTypesBinary(t *testing.T) {
	for _, tc := range []struct {
		typ        plainType
		text, back string
	}{
		{plainNumeric, "12.50", "12.50"}, {plainNumeric, "-0.0001", "-0.0001"}, {plainNumeric, "123456789.123", "123456789.123"},
		{plainNumeric, "0", "0"}, {plainNumeric, "10000", "10000"}, {plainNumeric, "1.5e3", "1500"},
		{plainInteger, "-42", "-42"}, {plainDate, "1990-01-02", "1990-01-02"}, {plainDate, "2024-02-29", "2024-02-29"},
		{plainTimestamptz, "2024-01-02 03:04:05.123456+00", "2024-01-02 03:04:05.123456+00"},
	} {
		b, err := tc.typ.appendBinary(nil, []byte(tc.text))
		if err != nil {
			t.Errorf("%s %q: %v", tc.typ, tc.text, err)
			continue
		}
		if !tc.typ.valid(tc.text) {
			t.Errorf("%s %q is not valid", tc.typ, tc.text)
		}
		got, err := policy.DecodeBinary(tc.typ.oid(), b, nil)
		if err != nil || string(got) != tc.back {
			t.Errorf("%s %q: binary %x reads back as %q (%v), want %q", tc.typ, tc.text, b, got, err, tc.back)
		}
	}
}
