package crypto

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaskKind is the shape a Mask gives a value.
type MaskKind uint8

// The masks of the operations guide.
const (
	// MaskEmail keeps the first and last character of the local part and
	// the domain: test@email.com → t**t@email.com.
	MaskEmail MaskKind = iota + 1
	// MaskPhone keeps the last 4 digits: ***-***-7890.
	MaskPhone
	// MaskSSN keeps the last 4 digits: ***-**-6789.
	MaskSSN
	// MaskCard keeps the last 4 digits: ****-****-****-1111.
	MaskCard
	// MaskKeepLast keeps the last KeepLast characters and stars the rest.
	MaskKeepLast
	// MaskNull shows NULL.
	MaskNull
)

// maxKeepLast bounds keep_last:N, so a typo cannot ask for an absurd N.
const maxKeepLast = 1 << 16

// String returns the name ParseMask reads.
func (k MaskKind) String() string {
	switch k {
	case MaskEmail:
		return "email"
	case MaskPhone:
		return "phone"
	case MaskSSN:
		return "ssn"
	case MaskCard:
		return "card"
	case MaskKeepLast:
		return "keep_last"
	case MaskNull:
		return "null"
	default:
		return fmt.Sprintf("MaskKind(%d)", uint8(k))
	}
}

// Mask replaces a plaintext with its shape on output, for services that
// must not see the value.
type Mask struct {
	Kind     MaskKind
	KeepLast int // MaskKeepLast only: how many trailing characters stay
}

// ParseMask reads a mask as configuration names it: "email", "phone",
// "ssn", "card", "null" or "keep_last:N" (N ≥ 0).
func ParseMask(s string) (Mask, error) {
	switch s {
	case "email":
		return Mask{Kind: MaskEmail}, nil
	case "phone":
		return Mask{Kind: MaskPhone}, nil
	case "ssn":
		return Mask{Kind: MaskSSN}, nil
	case "card":
		return Mask{Kind: MaskCard}, nil
	case "null":
		return Mask{Kind: MaskNull}, nil
	}
	if n, ok := strings.CutPrefix(s, "keep_last:"); ok {
		keep, err := strconv.Atoi(n)
		if err != nil || keep < 0 || keep > maxKeepLast || n != strconv.Itoa(keep) {
			return Mask{}, fmt.Errorf("crypto: mask %q: want keep_last:N with N a whole number from 0 to %d", s, maxKeepLast)
		}
		return Mask{Kind: MaskKeepLast, KeepLast: keep}, nil
	}
	return Mask{}, fmt.Errorf("crypto: unknown mask %q (want email, phone, ssn, card, null or keep_last:N)", s)
}

// String returns the form ParseMask reads.
func (m Mask) String() string {
	if m.Kind == MaskKeepLast {
		return "keep_last:" + strconv.Itoa(m.KeepLast)
	}
	return m.Kind.String()
}

// Apply appends the masked form of plaintext to dst. null is true (and out
// is dst) when the value shows as NULL: for MaskNull and for a Mask that is
// not one of the kinds, so a bad Mask hides rather than shows.
func (m Mask) Apply(plaintext, dst []byte) (out []byte, null bool) {
	switch m.Kind {
	case MaskEmail:
		return maskEmail(plaintext, dst), false
	case MaskPhone:
		return appendLastDigits(append(dst, "***-***-"...), plaintext), false
	case MaskSSN:
		return appendLastDigits(append(dst, "***-**-"...), plaintext), false
	case MaskCard:
		return appendLastDigits(append(dst, "****-****-****-"...), plaintext), false
	case MaskKeepLast:
		return keepLast(plaintext, max(m.KeepLast, 0), dst), false
	default:
		return dst, true
	}
}

// maskEmail keeps the first and last character of the local part (before
// the last '@') and the domain; a local part of one or two characters, or a
// value without '@', is all stars.
func maskEmail(v, dst []byte) []byte {
	at := strings.LastIndexByte(string(v), '@')
	if at < 0 {
		return appendStars(dst, utf8.RuneCount(v))
	}
	local := v[:at]
	n := utf8.RuneCount(local)
	if n <= 2 {
		dst = appendStars(dst, n)
	} else {
		_, first := utf8.DecodeRune(local)
		_, last := utf8.DecodeLastRune(local)
		dst = append(dst, local[:first]...)
		dst = appendStars(dst, n-2)
		dst = append(dst, local[len(local)-last:]...)
	}
	return append(dst, v[at:]...)
}

// appendLastDigits appends the last 4 ASCII digits of v, or all of them
// when v has fewer.
func appendLastDigits(dst, v []byte) []byte {
	start, found := len(v), 0
	for i := len(v) - 1; i >= 0 && found < 4; i-- {
		if '0' <= v[i] && v[i] <= '9' {
			start = i
			found++
		}
	}
	for _, c := range v[start:] {
		if '0' <= c && c <= '9' {
			dst = append(dst, c)
		}
	}
	return dst
}

// keepLast stars every character (rune) of v but the last n.
func keepLast(v []byte, n int, dst []byte) []byte {
	total := utf8.RuneCount(v)
	if n >= total {
		return append(dst, v...)
	}
	dst = appendStars(dst, total-n)
	cut := len(v)
	for range n {
		_, size := utf8.DecodeLastRune(v[:cut])
		cut -= size
	}
	return append(dst, v[cut:]...)
}

func appendStars(dst []byte, n int) []byte {
	for range n {
		dst = append(dst, '*')
	}
	return dst
}
