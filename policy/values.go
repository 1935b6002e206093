package policy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
)

// valid reports whether b is a text form of the type. It does not
// allocate.
func (t valueType) valid(b []byte) bool {
	switch t {
	case typeEmail:
		return textIsEmail(b)
	case typePhone:
		return textIsPhone(b)
	case typeURL:
		return textIsURL(b)
	case typeUUID:
		return textIsUUID(b)
	case typeInteger:
		_, ok := textInteger(b)
		return ok
	case typeNumber:
		return textIsNumber(b)
	case typeBoolean:
		_, ok := textBoolean(b)
		return ok
	case typeDate:
		_, ok := textDate(b)
		return ok
	case typeTimestamp:
		_, ok := textTimestamp(b)
		return ok
	}
	return true
}

// The regular expressions the generated SQL checks with (PostgreSQL's ~),
// which the hand-written checks below follow character for character; a
// test holds them to it.
const (
	reEmail     = `^[A-Za-z0-9.!#$%&'*+/=?^_` + "`" + `{|}~-]+@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$`
	rePhone     = `^\+?[1-9][0-9]{1,14}$`
	reURL       = `^[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~%!$&'()*+,;=:@-]+([/?#][!-~]*)?$`
	reUUID      = `^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$`
	reInteger   = `^[+-]?[0-9]+$`
	reNumber    = `^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$`
	reDate      = `^[0-9]{4}-[0-9]{2}-[0-9]{2}( BC)?$`
	reTimestamp = `^[0-9]{4}-[0-9]{2}-[0-9]{2}([ T]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]+)?)?(Z|[+-](0[0-9]|1[0-5])(:[0-5][0-9](:[0-5][0-9])?|[0-5][0-9])?)?)?( BC)?$`
)

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isAlnum(c byte) bool { return isDigit(c) || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') }
func isHex(c byte) bool   { return isDigit(c) || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F') }

func textIsEmail(b []byte) bool {
	at := -1
	for i, c := range b {
		if c == '@' {
			at = i
			break
		}
		if !isAlnum(c) && !strings.ContainsRune(".!#$%&'*+/=?^_`{|}~-", rune(c)) {
			return false
		}
	}
	if at <= 0 {
		return false
	}
	labels := 0
	for rest := b[at+1:]; ; {
		end := 0
		for end < len(rest) && rest[end] != '.' {
			end++
		}
		label := rest[:end]
		if len(label) == 0 || len(label) > 63 || !isAlnum(label[0]) || !isAlnum(label[len(label)-1]) {
			return false
		}
		for _, c := range label {
			if !isAlnum(c) && c != '-' {
				return false
			}
		}
		labels++
		if end == len(rest) {
			return labels >= 2
		}
		rest = rest[end+1:]
	}
}

func textIsPhone(b []byte) bool {
	if len(b) > 0 && b[0] == '+' {
		b = b[1:]
	}
	if len(b) < 2 || len(b) > 15 || b[0] == '0' {
		return false
	}
	for _, c := range b {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

func textIsURL(b []byte) bool {
	i := 0
	if len(b) == 0 || !(('a' <= b[0] && b[0] <= 'z') || ('A' <= b[0] && b[0] <= 'Z')) {
		return false
	}
	for i = 1; i < len(b) && (isAlnum(b[i]) || b[i] == '+' || b[i] == '.' || b[i] == '-'); i++ {
	}
	if len(b)-i < 3 || string(b[i:i+3]) != "://" {
		return false
	}
	i += 3
	start := i
	for i < len(b) && (isAlnum(b[i]) || strings.IndexByte("._~%!$&'()*+,;=:@-", b[i]) >= 0) {
		i++
	}
	if i == start {
		return false
	}
	if i == len(b) {
		return true
	}
	if b[i] != '/' && b[i] != '?' && b[i] != '#' {
		return false
	}
	for _, c := range b[i:] {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

func textIsUUID(b []byte) bool {
	if len(b) != 36 {
		return false
	}
	for i, c := range b {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return false
			}
		} else if !isHex(c) {
			return false
		}
	}
	return true
}

// textInteger parses reInteger within int64 (what PostgreSQL's bigint
// holds).
func textInteger(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && (b[0] == '+' || b[0] == '-') {
		neg = b[0] == '-'
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, false
	}
	var u uint64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		if u > (math.MaxUint64-9)/10 {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
		if u > 1<<63 {
			return 0, false
		}
	}
	if neg {
		return -int64(u), true // -1<<63 wraps to itself, as it should
	}
	if u > math.MaxInt64 {
		return 0, false
	}
	return int64(u), true
}

func textIsNumber(b []byte) bool {
	if len(b) > 0 && (b[0] == '+' || b[0] == '-') {
		b = b[1:]
	}
	i, intDigits, fracDigits := 0, 0, 0
	for i < len(b) && isDigit(b[i]) {
		i++
		intDigits++
	}
	if i < len(b) && b[i] == '.' {
		i++
		for i < len(b) && isDigit(b[i]) {
			i++
			fracDigits++
		}
	}
	if intDigits == 0 && fracDigits == 0 {
		return false
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		expDigits := 0
		for i < len(b) && isDigit(b[i]) {
			i++
			expDigits++
		}
		if expDigits == 0 {
			return false
		}
	}
	return i == len(b)
}

// numberValue is the value of an integer or number for min and max. A
// number beyond float64 is ±Inf, which compares as it should.
func numberValue(t valueType, b []byte) (float64, bool) {
	if t == typeInteger {
		n, ok := textInteger(b)
		return float64(n), ok
	}
	if !textIsNumber(b) {
		return 0, false
	}
	// The checked syntax is one ParseFloat reads the same way; the string
	// shares b's bytes because ParseFloat keeps none of it (its errors
	// copy), which saves an allocation per value.
	f, err := strconv.ParseFloat(unsafe.String(unsafe.SliceData(b), len(b)), 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, false
	}
	return f, true
}

// textBoolean reads PostgreSQL's boolean words, ASCII case-insensitive
// (the SQL compares lower() with the same list).
func textBoolean(b []byte) (bool, bool) {
	var low [5]byte
	if len(b) == 0 || len(b) > len(low) {
		return false, false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		low[i] = c
	}
	switch string(low[:len(b)]) {
	case "t", "true", "y", "yes", "on", "1":
		return true, true
	case "f", "false", "n", "no", "off", "0":
		return false, true
	}
	return false, false
}

// civil is a date and time read from a text form, before it becomes a
// time.Time (which only CEL needs).
type civil struct {
	year, month, day     int // year astronomical: 1 BC is 0
	hour, minute, second int
	nanos                int
	offset               int // seconds east of UTC
}

func digits(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, len(b) > 0
}

// textDate reads reDate with a day that exists, years 0001 to 9999 (AD)
// and 4713 BC to 1 BC (PostgreSQL's earliest year).
func textDate(b []byte) (civil, bool) {
	b, bc := trimBC(b)
	if len(b) != 10 {
		return civil{}, false
	}
	return datePart(b, bc)
}

func trimBC(b []byte) ([]byte, bool) {
	if len(b) > 3 && string(b[len(b)-3:]) == " BC" {
		return b[:len(b)-3], true
	}
	return b, false
}

func datePart(b []byte, bc bool) (civil, bool) {
	if len(b) < 10 || b[4] != '-' || b[7] != '-' {
		return civil{}, false
	}
	y, ok1 := digits(b[0:4])
	m, ok2 := digits(b[5:7])
	d, ok3 := digits(b[8:10])
	if !ok1 || !ok2 || !ok3 || y == 0 || (bc && y > 4713) || m < 1 || m > 12 || d < 1 {
		return civil{}, false
	}
	if bc {
		y = 1 - y
	}
	if d > daysIn(y, m) {
		return civil{}, false
	}
	return civil{year: y, month: m, day: d}, true
}

func daysIn(year, month int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// textTimestamp reads reTimestamp with a day that exists.
func textTimestamp(b []byte) (civil, bool) {
	b, bc := trimBC(b)
	c, ok := datePart(b, bc)
	if !ok {
		return civil{}, false
	}
	b = b[10:]
	if len(b) == 0 {
		return c, true
	}
	if b[0] != ' ' && b[0] != 'T' {
		return civil{}, false
	}
	b = b[1:]
	two := func(lo, hi int) (int, bool) {
		if len(b) < 2 {
			return 0, false
		}
		n, ok := digits(b[:2])
		b = b[2:]
		return n, ok && lo <= n && n <= hi
	}
	var okH, okM bool
	if c.hour, okH = two(0, 23); !okH || len(b) == 0 || b[0] != ':' {
		return civil{}, false
	}
	b = b[1:]
	if c.minute, okM = two(0, 59); !okM {
		return civil{}, false
	}
	if len(b) > 0 && b[0] == ':' {
		b = b[1:]
		var ok bool
		if c.second, ok = two(0, 59); !ok {
			return civil{}, false
		}
		if len(b) > 0 && b[0] == '.' {
			b = b[1:]
			n := 0
			for n < len(b) && isDigit(b[n]) {
				if n < 9 {
					c.nanos = c.nanos*10 + int(b[n]-'0')
				}
				n++
			}
			if n == 0 {
				return civil{}, false
			}
			for i := n; i < 9; i++ {
				c.nanos *= 10
			}
			b = b[n:]
		}
	}
	if len(b) == 0 {
		return c, true
	}
	if b[0] == 'Z' {
		return c, len(b) == 1
	}
	if b[0] != '+' && b[0] != '-' {
		return civil{}, false
	}
	sign := 1
	if b[0] == '-' {
		sign = -1
	}
	b = b[1:]
	zh, ok := two(0, 15)
	if !ok {
		return civil{}, false
	}
	zm, zs := 0, 0
	switch {
	case len(b) == 0:
	case b[0] == ':':
		b = b[1:]
		if zm, ok = two(0, 59); !ok {
			return civil{}, false
		}
		if len(b) > 0 {
			if b[0] != ':' {
				return civil{}, false
			}
			b = b[1:]
			if zs, ok = two(0, 59); !ok {
				return civil{}, false
			}
		}
	default:
		if zm, ok = two(0, 59); !ok {
			return civil{}, false
		}
	}
	c.offset = sign * (zh*3600 + zm*60 + zs)
	return c, len(b) == 0
}

func (c civil) time() time.Time {
	t := time.Date(c.year, time.Month(c.month), c.day, c.hour, c.minute, c.second, c.nanos, time.UTC)
	return t.Add(-time.Duration(c.offset) * time.Second)
}

// celValue is the CEL value of a text form for a column of type t: int,
// double, bool, timestamp (a date is its midnight, a timestamp without a
// zone is UTC), else string. ok is false when the text is not of the type.
func celValue(t valueType, b []byte) (ref.Val, bool) {
	switch t {
	case typeInteger:
		n, ok := textInteger(b)
		return types.Int(n), ok
	case typeNumber:
		f, ok := numberValue(t, b)
		return types.Double(f), ok
	case typeBoolean:
		v, ok := textBoolean(b)
		return types.Bool(v), ok
	case typeDate:
		c, ok := textDate(b)
		return types.Timestamp{Time: c.time()}, ok
	case typeTimestamp:
		c, ok := textTimestamp(b)
		return types.Timestamp{Time: c.time()}, ok
	}
	return types.String(b), true
}

// Type OIDs DecodeBinary reads beyond those the analysis names.
const oidPgName = 19

// errBinaryType: DecodeBinary does not know the type; the caller treats
// the value as unknown.
var errBinaryType = errors.New("policy: no text form for this binary type")

// PostgreSQL's range of dates and timestamps, counted from 2000-01-01
// (its epoch): a value outside it is refused by the server's own receive
// function, so it is no text form.
const (
	pgEpochUnix      = 946684800            // 2000-01-01 in Unix seconds
	minDateDays      = -2451545             // 4714-11-24 BC, Julian day 0
	endDateDays      = 2147483494 - 2451545 // 5874898-01-01
	minTimestampUsec = -211813488000000000  // 4714-11-24 00:00 BC
	endTimestampUsec = 9223371331200000000  // 294277-01-01 00:00
)

// DecodeBinary appends the PostgreSQL text form of a binary-format value
// of type typeOID to dst: what the server would print with DateStyle ISO
// (timestamptz in UTC, +00), extra_float_digits 1. It knows bool, int2,
// int4, int8, float4, float8, numeric, uuid, date, timestamp, timestamptz
// and the text types (text, varchar, bpchar, name); for any other type, or
// malformed data, it returns an error and the caller treats the value as
// unknown. Errors never quote the data.
func DecodeBinary(typeOID uint32, data []byte, dst []byte) ([]byte, error) {
	wantLen := func(n int) error {
		if len(data) != n {
			return fmt.Errorf("policy: binary value of type %d has %d bytes, want %d", typeOID, len(data), n)
		}
		return nil
	}
	switch typeOID {
	case oidText, oidVarchar, oidBpchar, oidPgName:
		return append(dst, data...), nil
	case oidBool:
		if err := wantLen(1); err != nil {
			return dst, err
		}
		if data[0] != 0 {
			return append(dst, 't'), nil
		}
		return append(dst, 'f'), nil
	case oidInt2:
		if err := wantLen(2); err != nil {
			return dst, err
		}
		return strconv.AppendInt(dst, int64(int16(binary.BigEndian.Uint16(data))), 10), nil
	case oidInt4:
		if err := wantLen(4); err != nil {
			return dst, err
		}
		return strconv.AppendInt(dst, int64(int32(binary.BigEndian.Uint32(data))), 10), nil
	case oidInt8:
		if err := wantLen(8); err != nil {
			return dst, err
		}
		return strconv.AppendInt(dst, int64(binary.BigEndian.Uint64(data)), 10), nil
	case oidFloat4:
		if err := wantLen(4); err != nil {
			return dst, err
		}
		return appendFloatText(dst, float64(math.Float32frombits(binary.BigEndian.Uint32(data))), 32), nil
	case oidFloat8:
		if err := wantLen(8); err != nil {
			return dst, err
		}
		return appendFloatText(dst, math.Float64frombits(binary.BigEndian.Uint64(data)), 64), nil
	case oidNumeric:
		return appendNumericText(dst, data)
	case oidUUID:
		if err := wantLen(16); err != nil {
			return dst, err
		}
		const hex = "0123456789abcdef"
		for i, c := range data {
			if i == 4 || i == 6 || i == 8 || i == 10 {
				dst = append(dst, '-')
			}
			dst = append(dst, hex[c>>4], hex[c&15])
		}
		return dst, nil
	case oidDate:
		if err := wantLen(4); err != nil {
			return dst, err
		}
		days := int32(binary.BigEndian.Uint32(data))
		switch {
		case days == math.MaxInt32:
			return append(dst, "infinity"...), nil
		case days == math.MinInt32:
			return append(dst, "-infinity"...), nil
		case int64(days) < minDateDays || int64(days) >= endDateDays:
			return dst, fmt.Errorf("policy: binary date out of PostgreSQL's range")
		}
		t := time.Unix(int64(days)*86400+pgEpochUnix, 0).UTC()
		return appendDateText(dst, t, true), nil
	case oidTimestamp, oidTimestamptz:
		if err := wantLen(8); err != nil {
			return dst, err
		}
		us := int64(binary.BigEndian.Uint64(data))
		switch {
		case us == math.MaxInt64:
			return append(dst, "infinity"...), nil
		case us == math.MinInt64:
			return append(dst, "-infinity"...), nil
		case us < minTimestampUsec || us >= endTimestampUsec:
			return dst, fmt.Errorf("policy: binary timestamp out of PostgreSQL's range")
		}
		sec, frac := us/1e6, us%1e6
		if frac < 0 {
			sec, frac = sec-1, frac+1e6
		}
		t := time.Unix(sec+pgEpochUnix, 0).UTC()
		dst = appendDateText(dst, t, false)
		dst = append(dst, ' ')
		dst = append2(dst, t.Hour())
		dst = append(dst, ':')
		dst = append2(dst, t.Minute())
		dst = append(dst, ':')
		dst = append2(dst, t.Second())
		if frac != 0 {
			var f [7]byte
			f[0] = '.'
			for i := 6; i >= 1; i-- {
				f[i] = byte('0' + frac%10)
				frac /= 10
			}
			n := 7
			for f[n-1] == '0' {
				n--
			}
			dst = append(dst, f[:n]...)
		}
		if typeOID == oidTimestamptz {
			dst = append(dst, "+00"...)
		}
		if t.Year() <= 0 {
			dst = append(dst, " BC"...)
		}
		return dst, nil
	}
	return dst, fmt.Errorf("%w (type %d)", errBinaryType, typeOID)
}

func append2(dst []byte, n int) []byte { return append(dst, byte('0'+n/10), byte('0'+n%10)) }

// appendDateText prints YYYY-MM-DD (at least four year digits, as
// PostgreSQL), with " BC" for years before 1 when bc (a timestamp puts it
// after the time).
func appendDateText(dst []byte, t time.Time, bc bool) []byte {
	y := t.Year()
	if y <= 0 {
		y = 1 - y
	}
	for p := 1000; p > 1 && y < p; p /= 10 {
		dst = append(dst, '0')
	}
	dst = strconv.AppendInt(dst, int64(y), 10)
	dst = append(dst, '-')
	dst = append2(dst, int(t.Month()))
	dst = append(dst, '-')
	dst = append2(dst, t.Day())
	if bc && t.Year() <= 0 {
		dst = append(dst, " BC"...)
	}
	return dst
}

// appendFloatText prints a float as PostgreSQL 12 and later do with
// extra_float_digits 1 (the default): the shortest digits that read back
// exactly, in exponent form when the decimal exponent is below -4 or at
// least 15 (float8) or 6 (float4).
func appendFloatText(dst []byte, f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(dst, "NaN"...)
	case math.IsInf(f, 1):
		return append(dst, "Infinity"...)
	case math.IsInf(f, -1):
		return append(dst, "-Infinity"...)
	}
	var buf [32]byte
	e := strconv.AppendFloat(buf[:0], f, 'e', -1, bits)
	exp := 0
	if i := bytes.LastIndexByte(e, 'e'); i >= 0 {
		n, _ := digits(e[i+2:]) // after the exponent's sign, which AppendFloat always writes
		if exp = n; e[i+1] == '-' {
			exp = -n
		}
	}
	limit := 15
	if bits == 32 {
		limit = 6
	}
	if exp < -4 || exp >= limit {
		return append(dst, e...)
	}
	return strconv.AppendFloat(dst, f, 'f', -1, bits)
}

// The sign word of a binary numeric.
const (
	numericPos  = 0x0000
	numericNeg  = 0x4000
	numericNaN  = 0xC000
	numericPInf = 0xD000
	numericNInf = 0xF000
)

// appendNumericText prints a binary numeric (ndigits, weight, sign, dscale,
// then base-10000 digits) as PostgreSQL's numeric_out: the integer part
// without leading zeros, then exactly dscale fraction digits.
func appendNumericText(dst []byte, data []byte) ([]byte, error) {
	if len(data) < 8 {
		return dst, errors.New("policy: binary numeric shorter than its header")
	}
	ndigits := int(int16(binary.BigEndian.Uint16(data[0:])))
	weight := int(int16(binary.BigEndian.Uint16(data[2:])))
	sign := binary.BigEndian.Uint16(data[4:])
	dscale := int(binary.BigEndian.Uint16(data[6:]))
	if ndigits < 0 || len(data) != 8+2*ndigits {
		return dst, errors.New("policy: binary numeric of the wrong length")
	}
	switch sign {
	case numericNaN:
		return append(dst, "NaN"...), nil
	case numericPInf:
		return append(dst, "Infinity"...), nil
	case numericNInf:
		return append(dst, "-Infinity"...), nil
	case numericPos, numericNeg:
	default:
		return dst, errors.New("policy: binary numeric with an invalid sign")
	}
	if dscale > 0x3FFF {
		return dst, errors.New("policy: binary numeric with an invalid scale")
	}
	digit := func(i int) int {
		if i < 0 || i >= ndigits {
			return 0
		}
		return int(binary.BigEndian.Uint16(data[8+2*i:]))
	}
	nonzero := false
	for i := range ndigits {
		d := digit(i)
		if d > 9999 {
			return dst, errors.New("policy: binary numeric with an invalid digit")
		}
		// The server truncates what dscale hides (numeric_recv), and a
		// value truncated to zero loses its minus sign.
		if visible := dscale - (i-weight-1)*4; d != 0 && visible > 0 {
			for ; visible < 4; visible++ {
				d /= 10
			}
			nonzero = nonzero || d != 0
		}
	}
	if sign == numericNeg && nonzero {
		dst = append(dst, '-')
	}
	if weight < 0 {
		dst = append(dst, '0')
	} else {
		for i := 0; i <= weight; i++ {
			d := digit(i)
			if i == 0 {
				dst = strconv.AppendInt(dst, int64(d), 10)
				continue
			}
			dst = append(dst, byte('0'+d/1000), byte('0'+d/100%10), byte('0'+d/10%10), byte('0'+d%10))
		}
	}
	if dscale > 0 {
		dst = append(dst, '.')
		for i, n := weight+1, 0; n < dscale; i++ {
			d := digit(i)
			for _, c := range [4]byte{byte('0' + d/1000), byte('0' + d/100%10), byte('0' + d/10%10), byte('0' + d%10)} {
				if n < dscale {
					dst = append(dst, c)
					n++
				}
			}
		}
	}
	return dst, nil
}
