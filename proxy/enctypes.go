package proxy

import (
	"encoding/binary"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/pgshield/pgshield/policy"
)

// The plaintext types of encrypted columns. The column itself is text
// (it holds the stored form); clients see the plaintext type: the
// RowDescription and ParameterDescription carry its OID, a value written
// is checked against it before it is encrypted, and a value read in
// binary format is encoded in it.

type plainType uint8

const (
	plainText plainType = iota
	plainDate
	plainInteger
	plainNumeric
	plainTimestamptz
)

// Type OIDs of pg_type.
const (
	oidTextType        = 25
	oidVarcharType     = 1043
	oidDateType        = 1082
	oidInt4Type        = 23
	oidNumericType     = 1700
	oidTimestamptzType = 1184
)

// plainTypeNames are the names a plaintext type is configured by, by
// plainType.
func plainTypeNames() []string {
	return []string{plainText: "text", plainDate: "date", plainInteger: "integer", plainNumeric: "numeric", plainTimestamptz: "timestamptz"}
}

// PlainTypes lists the plaintext types an encrypted column may declare.
func PlainTypes() []string { return plainTypeNames() }

func plainTypeOf(name string) (plainType, bool) {
	if name == "" {
		return plainText, true
	}
	for i, n := range plainTypeNames() {
		if strings.EqualFold(n, name) {
			return plainType(i), true
		}
	}
	return plainText, false
}

func (t plainType) String() string { return plainTypeNames()[t] }

func (t plainType) oid() uint32 {
	switch t {
	case plainDate:
		return oidDateType
	case plainInteger:
		return oidInt4Type
	case plainNumeric:
		return oidNumericType
	case plainTimestamptz:
		return oidTimestamptzType
	}
	return oidTextType
}

// typlen is the type's pg_type.typlen, for RowDescription.
func (t plainType) typlen() int16 {
	switch t {
	case plainDate, plainInteger:
		return 4
	case plainTimestamptz:
		return 8
	}
	return -1
}

// Layouts a timestamptz plaintext is read with (ISO 8601, as PostgreSQL
// writes it and as drivers send it in text).
func timestampLayouts() []string {
	return []string{
		"2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07", "2006-01-02T15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999", "2006-01-02",
	}
}

// check refuses a plaintext that is not a value of the column's type,
// without the value in the message.
func (t plainType) check(c *colSpec, text []byte) *policy.Violation {
	if t == plainText || t.valid(string(text)) {
		return nil
	}
	code := "22P02"
	if t == plainDate || t == plainTimestamptz {
		code = "22007"
	}
	return &policy.Violation{Code: code, Kind: "encryption", Table: c.table, Column: c.column,
		Message: fmt.Sprintf("invalid input for %s.%s: not a %s", c.table, c.column, t),
		Hint:    t.hint()}
}

func (t plainType) hint() string {
	switch t {
	case plainDate:
		return "write a date as YYYY-MM-DD"
	case plainTimestamptz:
		return "write a timestamp as YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM]"
	case plainInteger:
		return "write a whole number from -2147483648 to 2147483647"
	case plainNumeric:
		return "write a decimal number, such as 12.50"
	}
	return ""
}

func (t plainType) valid(s string) bool {
	switch t {
	case plainDate:
		_, err := time.Parse("2006-01-02", s)
		return err == nil
	case plainInteger:
		_, err := strconv.ParseInt(strings.TrimSpace(s), 10, 32)
		return err == nil
	case plainNumeric:
		_, ok := new(big.Float).SetString(strings.TrimSpace(s))
		return ok && !strings.ContainsAny(s, "xXpP_")
	case plainTimestamptz:
		_, ok := parseTimestamp(s)
		return ok
	}
	return true
}

func parseTimestamp(s string) (time.Time, bool) {
	s = strings.TrimSpace(s)
	for _, l := range timestampLayouts() {
		if ts, err := time.Parse(l, s); err == nil {
			return ts, true
		}
	}
	return time.Time{}, false
}

// PostgreSQL's epoch for dates and timestamps.
const pgEpochUnix = 946684800 // 2000-01-01 00:00:00 UTC

// appendBinary appends the binary format of the plaintext text, in the
// type's binary format (what a client that asked for binary results
// reads).
func (t plainType) appendBinary(dst, text []byte) ([]byte, error) {
	s := string(text)
	switch t {
	case plainText:
		return append(dst, text...), nil
	case plainDate:
		d, err := time.Parse("2006-01-02", s)
		if err != nil {
			return dst, err
		}
		days := int32((d.Unix() - pgEpochUnix) / 86400)
		return binary.BigEndian.AppendUint32(dst, uint32(days)), nil
	case plainInteger:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 32)
		if err != nil {
			return dst, err
		}
		return binary.BigEndian.AppendUint32(dst, uint32(int32(n))), nil
	case plainTimestamptz:
		ts, ok := parseTimestamp(s)
		if !ok {
			return dst, fmt.Errorf("not a timestamp")
		}
		us := ts.UnixMicro() - pgEpochUnix*1_000_000
		return binary.BigEndian.AppendUint64(dst, uint64(us)), nil
	case plainNumeric:
		return appendNumeric(dst, strings.TrimSpace(s))
	}
	return dst, fmt.Errorf("no binary form")
}

// appendNumeric appends numeric's binary format of a decimal text: digit
// count, weight, sign, display scale, then base-10000 digits.
func appendNumeric(dst []byte, s string) ([]byte, error) {
	neg := false
	switch {
	case strings.HasPrefix(s, "-"):
		neg, s = true, s[1:]
	case strings.HasPrefix(s, "+"):
		s = s[1:]
	}
	if strings.EqualFold(s, "nan") {
		return append(dst, 0, 0, 0, 0, 0xC0, 0, 0, 0), nil
	}
	exp := 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(s[i+1:])
		if err != nil {
			return dst, err
		}
		exp, s = e, s[:i]
	}
	intPart, frac, _ := strings.Cut(s, ".")
	if intPart == "" && frac == "" || strings.Trim(intPart+frac, "0123456789") != "" {
		return dst, fmt.Errorf("not a number")
	}
	digits := intPart + frac
	point := len(intPart) + exp // decimal digits before the point
	scale := max(len(frac)-exp, 0)
	// Pad to whole groups of 4 around the point.
	lead := (4 - point%4) % 4
	if point < 0 {
		lead = (4 - (point%4+4)%4) % 4
	}
	digits = strings.Repeat("0", lead) + digits
	point += lead
	if tail := (len(digits) - point) % 4; tail != 0 || len(digits) < point {
		if len(digits) < point {
			digits += strings.Repeat("0", point-len(digits))
		} else {
			digits += strings.Repeat("0", 4-tail)
		}
	}
	var groups []uint16
	for i := 0; i+4 <= len(digits); i += 4 {
		g, _ := strconv.Atoi(digits[i : i+4])
		groups = append(groups, uint16(g))
	}
	weight := point/4 - 1
	for len(groups) > 0 && groups[0] == 0 {
		groups = groups[1:]
		weight--
	}
	for len(groups) > 0 && groups[len(groups)-1] == 0 {
		groups = groups[:len(groups)-1]
	}
	if len(groups) == 0 {
		weight, neg = 0, false
	}
	sign := uint16(0)
	if neg {
		sign = 0x4000
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(groups)))
	dst = binary.BigEndian.AppendUint16(dst, uint16(int16(weight)))
	dst = binary.BigEndian.AppendUint16(dst, sign)
	dst = binary.BigEndian.AppendUint16(dst, uint16(scale))
	for _, g := range groups {
		dst = binary.BigEndian.AppendUint16(dst, g)
	}
	return dst, nil
}
