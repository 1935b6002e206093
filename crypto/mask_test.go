package crypto

import "testing"

func TestParseMask(t *testing.T) {
	for in, want := range map[string]Mask{
		"email":        {Kind: MaskEmail},
		"phone":        {Kind: MaskPhone},
		"ssn":          {Kind: MaskSSN},
		"card":         {Kind: MaskCard},
		"null":         {Kind: MaskNull},
		"keep_last:4":  {Kind: MaskKeepLast, KeepLast: 4},
		"keep_last:0":  {Kind: MaskKeepLast, KeepLast: 0},
		"keep_last:12": {Kind: MaskKeepLast, KeepLast: 12},
	} {
		got, err := ParseMask(in)
		if err != nil || got != want {
			t.Errorf("ParseMask(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), in)
		}
	}
	for _, in := range []string{"", "Email", "keep_last", "keep_last:", "keep_last:-1", "keep_last:x", "keep_last:+4", "keep_last:04", "keep_last:99999999999", "hash"} {
		if m, err := ParseMask(in); err == nil {
			t.Errorf("ParseMask(%q) = %+v, want an error", in, m)
		}
	}
}

func TestMaskApply(t *testing.T) {
	email := Mask{Kind: MaskEmail}
	phone := Mask{Kind: MaskPhone}
	ssn := Mask{Kind: MaskSSN}
	card := Mask{Kind: MaskCard}
	keep4 := Mask{Kind: MaskKeepLast, KeepLast: 4}
	for _, c := range []struct {
		mask Mask
		in   string
		want string
	}{
		// The operations guide's shapes.
		{email, "test@email.com", "t**t@email.com"},
		{phone, "+1-555-123-7890", "***-***-7890"},
		{ssn, "123-45-6789", "***-**-6789"},
		{card, "4111111111111111", "****-****-****-1111"},
		{card, "4111 1111 1111 1111", "****-****-****-1111"},
		{card, "4111-1111-1111-1111", "****-****-****-1111"},

		{email, "john.smith@example.org", "j********h@example.org"},
		{email, "abc@x.io", "a*c@x.io"},
		{email, "ab@x.io", "**@x.io"},
		{email, "a@x.io", "*@x.io"},
		{email, "@x.io", "@x.io"},
		{email, "not-an-email", "************"},
		{email, "", ""},
		{email, "\"a@b\"@example.com", "\"***\"@example.com"},
		{email, "jöhnnÿ@example.com", "j****ÿ@example.com"},
		{email, "日本語メール@example.jp", "日****ル@example.jp"},

		{phone, "5551237890", "***-***-7890"},
		{phone, "(555) 123-7890 ext", "***-***-7890"},
		{phone, "789", "***-***-789"},
		{phone, "", "***-***-"},
		{phone, "+44 20 7946 0958", "***-***-0958"},

		{ssn, "123456789", "***-**-6789"},
		{ssn, "12", "***-**-12"},

		{card, "378282246310005", "****-****-****-0005"},
		{card, "1", "****-****-****-1"},

		{keep4, "ACC-000123456", "*********3456"},
		{keep4, "1234", "1234"},
		{keep4, "12", "12"},
		{keep4, "", ""},
		{keep4, "ñandú-çà-ü", "******çà-ü"},
		{Mask{Kind: MaskKeepLast}, "secret", "******"},
	} {
		got, null := c.mask.Apply([]byte(c.in), nil)
		if null || string(got) != c.want {
			t.Errorf("%s of %q = %q (null %v), want %q", c.mask, c.in, got, null, c.want)
		}
	}
}

func TestMaskNullAndDst(t *testing.T) {
	out, null := Mask{Kind: MaskNull}.Apply([]byte("123-45-6789"), []byte("head"))
	if !null || string(out) != "head" {
		t.Errorf("null mask: %q, %v", out, null)
	}
	// A Mask that is none of the kinds hides the value rather than show it.
	if out, null := (Mask{}).Apply([]byte("123-45-6789"), nil); !null || len(out) != 0 {
		t.Errorf("zero Mask: %q, %v", out, null)
	}
	out, null = Mask{Kind: MaskSSN}.Apply([]byte("123-45-6789"), []byte("head:"))
	if null || string(out) != "head:***-**-6789" {
		t.Errorf("Apply does not append to dst: %q", out)
	}
}
