package policy

import (
	"math"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// typeCorpus are text forms for every type, valid and not, near the
// edges of each form. The PostgreSQL test runs them through the SQL
// checks too, so that the proxy and the database agree on each.
func typeCorpus() map[valueType][]string {
	return map[valueType][]string{
		typeEmail: {"a@b.co", "first.last+tag@example.com", "x@sub.example.co.uk", "o'brien@example.ie", "{x}@a-b.c9",
			"", "@b.co", "a@", "a@b", "a@b.", "a@.b", "a@-b.co", "a@b-.co", "a@@b.co", "a b@c.de", "a@b_c.de", "é@b.co",
			"a@" + strings.Repeat("x", 63) + ".com", "a@" + strings.Repeat("x", 64) + ".com", "a@b.co\n"},
		typePhone: {"+14155550123", "14155550123", "12", "+123456789012345", "", "+", "+0123", "1", "+1234567890123456",
			"+1 415", "415-555", "+１２", "1234567890123456"},
		typeURL: {"https://example.com", "http://a", "https://example.com/path?q=1#frag", "ftp+x.y-z://h:21", "https://u:p@h:8080/",
			"", "example.com", "https:/x", "https://", "https:// x", "https://x/ y", "1http://x", "https://x/é", "http://x\t",
			"https://[::1]/", "https://x?", "https://x#"},
		typeUUID: {"123e4567-e89b-12d3-a456-426614174000", "123E4567-E89B-12D3-A456-426614174000", "",
			"123e4567e89b12d3a456426614174000", "{123e4567-e89b-12d3-a456-426614174000}", "123e4567-e89b-12d3-a456-42661417400g",
			"123e4567-e89b-12d3-a456-4266141740000"},
		typeInteger: {"0", "-0", "+7", "42", "-9223372036854775808", "9223372036854775807", "00000000000000000000042",
			"9223372036854775808", "-9223372036854775809", "99999999999999999999999", "", "+", "-", "1.0", "1e3", " 1", "1 ", "0x10", "1_000"},
		typeNumber: {"0", "1.5", "-1.5", "+.5", "5.", "1e3", "1E-3", "-2.5e+10", "1e400", "007", "", ".", "e3", "1e", "1e+",
			"NaN", "Infinity", "1,5", " 1", "1..2", "--1"},
		typeBoolean: {"t", "true", "TRUE", "True", "y", "yes", "on", "1", "f", "false", "n", "no", "off", "OFF", "0",
			"", "tr", "yess", " t", "2", "ſ"},
		typeDate: {"2024-01-02", "2024-02-29", "2000-02-29", "0001-01-01", "9999-12-31", "0044-03-15 BC", "4713-01-01 BC",
			"", "2023-02-29", "1900-02-29", "2024-13-01", "2024-00-10", "2024-01-00", "2024-04-31", "0000-01-01", "24-01-02",
			"2024-1-2", "2024/01/02", "2024-01-02 ", "12345-01-01", "2024-01-02T00:00"},
		typeTimestamp: {"2024-01-02", "2024-01-02 03:04", "2024-01-02 03:04:05", "2024-01-02T03:04:05Z", "2024-01-02 03:04:05.123456",
			"2024-01-02 03:04:05.123456789+05:30", "2024-01-02 03:04:05+00", "2024-01-02 03:04:05-0800", "2024-01-02 03:04:05+15:59:59",
			"2024-01-02 23:59:59", "2024-01-02 03:04:05+00 BC", "0044-03-15 12:00:00 BC",
			"", "2024-01-02 24:00:00", "2024-01-02 03:60", "2024-01-02 03:04:60", "2024-01-02 03:04:05+16", "2024-01-02 03:04:05.",
			"2024-01-02 3:04", "2024-01-02 03:04:05 +00", "2024-01-02 03:04:05z", "2024-02-30 00:00", "2024-01-02 03:04:05+05:3"},
	}
}

// typeRegexp is the SQL regular expression of each type, which the Go
// check must accept exactly (beyond it, integer, date and timestamp also
// check the value's range or that the day exists).
func typeRegexp(t valueType) string {
	switch t {
	case typeEmail:
		return reEmail
	case typePhone:
		return rePhone
	case typeURL:
		return reURL
	case typeUUID:
		return reUUID
	case typeInteger:
		return reInteger
	case typeNumber:
		return reNumber
	case typeDate:
		return reDate
	case typeTimestamp:
		return reTimestamp
	case typeBoolean:
		// ASCII case only, as the SQL's lower() for these words ((?i)
		// would also fold ſ into s).
		return `^([tT]|[tT][rR][uU][eE]|[yY]|[yY][eE][sS]|[oO][nN]|1|[fF]|[fF][aA][lL][sS][eE]|[nN]|[nN][oO]|[oO][fF][fF]|0)$`
	}
	return ""
}

// exactRegexp: the Go check and the regular expression accept the same
// texts (the others add a check of the value beyond the syntax).
func exactRegexp(t valueType) bool {
	return t != typeInteger && t != typeDate && t != typeTimestamp
}

func TestTypeChecksFollowTheirRegexp(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	// Characters the forms are made of, and a few that none accepts.
	alphabet := []byte("09aZeEtT+-.:@/?#_ %'BCxz\tſ")
	for typ := typeEmail; typ < numValueTypes; typ++ {
		re := regexp.MustCompile(typeRegexp(typ))
		judge := func(s string) {
			got, want := typ.valid([]byte(s)), re.MatchString(s)
			if got != want && (exactRegexp(typ) || got) {
				t.Errorf("%s %q: Go check %v, regexp %v", typ, s, got, want)
			}
		}
		for _, s := range typeCorpus()[typ] {
			judge(s)
			// Mutations of each corpus value: a character changed,
			// dropped or doubled.
			for range 200 {
				if s == "" {
					break
				}
				b := []byte(s)
				i := rng.IntN(len(b))
				switch rng.IntN(3) {
				case 0:
					b[i] = alphabet[rng.IntN(len(alphabet))]
				case 1:
					b = append(b[:i], b[i+1:]...)
				default:
					b = append(b[:i+1], b[i:]...)
				}
				judge(string(b))
			}
		}
	}
}

func TestTypeChecks(t *testing.T) {
	valid := map[valueType][]string{
		typeEmail:     {"a@b.co", "o'brien@example.ie"},
		typePhone:     {"+14155550123", "12"},
		typeURL:       {"https://example.com/x?y#z"},
		typeUUID:      {"123e4567-e89b-12d3-a456-426614174000"},
		typeInteger:   {"-9223372036854775808", "9223372036854775807", "+0"},
		typeNumber:    {"1e400", ".5", "5."},
		typeBoolean:   {"TRUE", "off"},
		typeDate:      {"2024-02-29", "4713-12-31 BC"},
		typeTimestamp: {"2024-01-02 03:04:05.123456+05:30", "2024-01-02T03:04Z", "2024-01-02"},
		typeText:      {"", "anything"},
	}
	invalid := map[valueType][]string{
		typeEmail:     {"a@b", "a@b_c.de", "a@" + strings.Repeat("x", 64) + ".com"},
		typePhone:     {"+0123", "1", "+1234567890123456"},
		typeURL:       {"example.com", "https://x/ y", "https://"},
		typeUUID:      {"123e4567e89b12d3a456426614174000"},
		typeInteger:   {"9223372036854775808", "-9223372036854775809", "1.0"},
		typeNumber:    {"NaN", "Infinity", "."},
		typeBoolean:   {"tr", "ſ"},
		typeDate:      {"2023-02-29", "0000-01-01", "4714-12-31 BC", "2024-04-31"},
		typeTimestamp: {"2024-01-02 24:00", "2024-01-02 03:04:05+16", "2024-02-30 00:00"},
	}
	for typ, vs := range valid {
		for _, v := range vs {
			if !typ.valid([]byte(v)) {
				t.Errorf("%s %q refused", typ, v)
			}
			if _, ok := celValue(typ, []byte(v)); !ok {
				t.Errorf("%s %q has no CEL value", typ, v)
			}
		}
	}
	for typ, vs := range invalid {
		for _, v := range vs {
			if typ.valid([]byte(v)) {
				t.Errorf("%s %q accepted", typ, v)
			}
		}
	}
}

func TestCELValues(t *testing.T) {
	ts := func(b string) time.Time {
		c, ok := textTimestamp([]byte(b))
		if !ok {
			t.Fatalf("%q is no timestamp", b)
		}
		return c.time()
	}
	for _, c := range []struct {
		text string
		want time.Time
	}{
		{"2024-01-02 03:04:05.5+05:30", time.Date(2024, 1, 1, 21, 34, 5, 5e8, time.UTC)},
		{"2024-01-02T03:04Z", time.Date(2024, 1, 2, 3, 4, 0, 0, time.UTC)},
		{"2024-01-02 03:04:05-08", time.Date(2024, 1, 2, 11, 4, 5, 0, time.UTC)},
		{"2024-01-02", time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC)},
		{"0044-03-15 12:00:00 BC", time.Date(-43, 3, 15, 12, 0, 0, 0, time.UTC)},
	} {
		if got := ts(c.text); !got.Equal(c.want) {
			t.Errorf("%q: %v, want %v", c.text, got, c.want)
		}
	}
	if f, ok := numberValue(typeNumber, []byte("1e400")); !ok || !math.IsInf(f, 1) {
		t.Errorf("1e400: %v %v", f, ok)
	}
	if n, ok := textInteger([]byte("-9223372036854775808")); !ok || n != math.MinInt64 {
		t.Errorf("min int64: %v %v", n, ok)
	}
}

// binaryCase is one value encoded by pgx's binary codecs, and the text
// PostgreSQL prints for it (checked against a real server by
// TestPostgres).
type binaryCase struct {
	oid   uint32
	value any
	want  string
}

func binaryCases(t testing.TB) []binaryCase {
	num := func(s string) pgtype.Numeric {
		var n pgtype.Numeric
		if err := n.Scan(s); err != nil {
			t.Fatalf("numeric %s: %v", s, err)
		}
		return n
	}
	uuid := func(s string) pgtype.UUID {
		var u pgtype.UUID
		if err := u.Scan(s); err != nil {
			t.Fatalf("uuid %s: %v", s, err)
		}
		return u
	}
	day := func(y, m, d int) time.Time { return time.Date(y, time.Month(m), d, 0, 0, 0, 0, time.UTC) }
	return []binaryCase{
		{oidBool, true, "t"}, {oidBool, false, "f"},
		{oidInt2, int16(-32768), "-32768"}, {oidInt2, int16(32767), "32767"},
		{oidInt4, int32(-2147483648), "-2147483648"}, {oidInt4, int32(101), "101"},
		{oidInt8, int64(math.MinInt64), "-9223372036854775808"}, {oidInt8, int64(math.MaxInt64), "9223372036854775807"},
		{oidFloat8, 1.5, "1.5"}, {oidFloat8, 0.1, "0.1"}, {oidFloat8, 1e15, "1e+15"}, {oidFloat8, 123456789012345.0, "123456789012345"},
		{oidFloat8, 1e-5, "1e-05"}, {oidFloat8, 0.0001, "0.0001"}, {oidFloat8, math.Copysign(0, -1), "-0"},
		{oidFloat8, math.Inf(1), "Infinity"}, {oidFloat8, math.Inf(-1), "-Infinity"}, {oidFloat8, math.NaN(), "NaN"},
		{oidFloat8, 1.7976931348623157e308, "1.7976931348623157e+308"}, {oidFloat8, 5e-324, "5e-324"},
		{oidFloat4, float32(1234567), "1.234567e+06"}, {oidFloat4, float32(123456), "123456"}, {oidFloat4, float32(0.1), "0.1"},
		{oidFloat4, float32(3.4028235e38), "3.4028235e+38"},
		{oidNumeric, num("0"), "0"}, {oidNumeric, num("1.5"), "1.5"}, {oidNumeric, num("-0.0012"), "-0.0012"},
		{oidNumeric, num("1.50"), "1.50"}, {oidNumeric, num("100000000000000000000"), "100000000000000000000"},
		{oidNumeric, num("12345678.9012345678"), "12345678.9012345678"}, {oidNumeric, num("-10000"), "-10000"},
		{oidNumeric, num("0.00000001"), "0.00000001"}, {oidNumeric, num("9999.9999"), "9999.9999"},
		{oidNumeric, num("NaN"), "NaN"}, {oidNumeric, num("Infinity"), "Infinity"}, {oidNumeric, num("-Infinity"), "-Infinity"},
		{oidUUID, uuid("123e4567-e89b-12d3-a456-426614174000"), "123e4567-e89b-12d3-a456-426614174000"},
		{oidDate, day(2024, 1, 2), "2024-01-02"}, {oidDate, day(1999, 12, 31), "1999-12-31"}, {oidDate, day(0, 1, 1), "0001-01-01 BC"},
		{oidDate, day(12345, 6, 7), "12345-06-07"}, {oidDate, pgtype.Date{InfinityModifier: pgtype.Infinity, Valid: true}, "infinity"},
		{oidDate, pgtype.Date{InfinityModifier: pgtype.NegativeInfinity, Valid: true}, "-infinity"},
		{oidTimestamp, time.Date(2024, 1, 2, 3, 4, 5, 120000000, time.UTC), "2024-01-02 03:04:05.12"},
		{oidTimestamp, time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.UTC), "1999-12-31 23:59:59.999999"},
		{oidTimestamp, time.Date(-43, 3, 15, 12, 0, 0, 0, time.UTC), "0044-03-15 12:00:00 BC"},
		{oidTimestamp, pgtype.Timestamp{InfinityModifier: pgtype.Infinity, Valid: true}, "infinity"},
		{oidTimestamptz, time.Date(2024, 1, 2, 3, 4, 5, 0, time.FixedZone("", 5*3600+1800)), "2024-01-01 21:34:05+00"},
		{oidTimestamptz, time.Date(1970, 1, 1, 0, 0, 0, 1000, time.UTC), "1970-01-01 00:00:00.000001+00"},
		{oidTimestamptz, pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}, "-infinity"},
		{oidText, "O'Brien", "O'Brien"}, {oidVarchar, "é", "é"}, {oidBpchar, "ab  ", "ab  "}, {oidPgName, "leads", "leads"},
	}
}

func encodeBinary(t testing.TB, m *pgtype.Map, c binaryCase) []byte {
	t.Helper()
	b, err := m.Encode(c.oid, pgtype.BinaryFormatCode, c.value, nil)
	if err != nil {
		t.Fatalf("encoding %v as %d: %v", c.value, c.oid, err)
	}
	return b
}

func TestDecodeBinary(t *testing.T) {
	m := pgtype.NewMap()
	for _, c := range binaryCases(t) {
		data := encodeBinary(t, m, c)
		got, err := DecodeBinary(c.oid, data, []byte("x"))
		if err != nil {
			t.Errorf("%d %v: %v", c.oid, c.value, err)
			continue
		}
		if string(got) != "x"+c.want {
			t.Errorf("%d %v: %q, want %q", c.oid, c.value, got[1:], c.want)
		}
	}
}

func TestDecodeBinaryNumericEdges(t *testing.T) {
	numeric := func(weight int16, sign, dscale uint16, digits ...uint16) []byte {
		b := []byte{byte(len(digits) >> 8), byte(len(digits)), byte(uint16(weight) >> 8), byte(weight), byte(sign >> 8), byte(sign), byte(dscale >> 8), byte(dscale)}
		for _, d := range digits {
			b = append(b, byte(d>>8), byte(d))
		}
		return b
	}
	for _, c := range []struct {
		data []byte
		want string
	}{
		// What the server prints for what numeric_recv keeps: digits the
		// scale hides are cut, and a value cut to zero is not negative.
		{numeric(-1, numericNeg, 2, 5), "0.00"},
		{numeric(-1, numericNeg, 4, 5), "-0.0005"},
		{numeric(0, numericPos, 0, 1, 5000), "1"},
		{numeric(1, numericPos, 1, 1, 2, 3000), "10002.3"},
		{numeric(2, numericPos, 0, 7), "700000000"},
		{numeric(0, numericNeg, 0), "0"},
	} {
		got, err := DecodeBinary(oidNumeric, c.data, nil)
		if err != nil || string(got) != c.want {
			t.Errorf("% x: %q %v, want %q", c.data, got, err, c.want)
		}
	}
	for _, bad := range [][]byte{
		nil, {0, 1, 0, 0, 0, 0, 0, 0}, numeric(0, 0x1234, 0, 1), numeric(0, numericPos, 0, 10000), numeric(0, numericPos, 0x4000, 1),
		{0xff, 0xff, 0, 0, 0, 0, 0, 0},
	} {
		if _, err := DecodeBinary(oidNumeric, bad, nil); err == nil {
			t.Errorf("% x: no error", bad)
		}
	}
}

func TestDecodeBinaryErrors(t *testing.T) {
	for _, c := range []struct {
		oid  uint32
		data []byte
	}{
		{oidInt4, []byte{1, 2, 3}}, {oidInt8, nil}, {oidBool, nil}, {oidUUID, make([]byte, 15)}, {oidFloat4, make([]byte, 8)},
		{oidDate, []byte{0x7f, 0xff, 0xff, 0xfe}}, {oidTimestamp, []byte{0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe}},
		{oidJSONB, []byte{1, '{', '}'}}, {oidInterval, make([]byte, 16)}, {0, nil},
	} {
		if _, err := DecodeBinary(c.oid, c.data, nil); err == nil {
			t.Errorf("%d % x: no error", c.oid, c.data)
		}
	}
}

func TestDecodeBinaryDoesNotAllocate(t *testing.T) {
	m := pgtype.NewMap()
	dst := make([]byte, 0, 256)
	for _, c := range binaryCases(t) {
		data := encodeBinary(t, m, c)
		if n := testing.AllocsPerRun(20, func() {
			if _, err := DecodeBinary(c.oid, data, dst[:0]); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("%d %v: %v allocations", c.oid, c.value, n)
		}
	}
}

func FuzzDecodeBinary(f *testing.F) {
	m := pgtype.NewMap()
	for _, c := range binaryCases(f) {
		f.Add(c.oid, encodeBinary(f, m, c))
	}
	f.Fuzz(func(t *testing.T, oid uint32, data []byte) {
		out, err := DecodeBinary(oid, data, nil)
		if err != nil {
			return
		}
		// What it prints for a number or a date is a form the rules read
		// as one.
		switch oid {
		case oidInt2, oidInt4, oidInt8:
			if !typeInteger.valid(out) {
				t.Errorf("%d % x: %q is no integer", oid, data, out)
			}
		case oidNumeric, oidFloat4, oidFloat8:
			if s := string(out); !typeNumber.valid(out) && !strings.Contains(s, "Inf") && s != "NaN" {
				t.Errorf("%d % x: %q is no number", oid, data, out)
			}
		case oidDate:
			if len(out) == 10 && !typeDate.valid(out) { // years 0001 to 9999 AD
				t.Errorf("% x: %q is no date", data, out)
			}
		}
	})
}
