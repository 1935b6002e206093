package proxy

import (
	"testing"

	"github.com/pgshield/pgshield/router"
)

// The literal tokens of a text, their classes and the values read from
// them.
func TestLiteralTokens(t *testing.T) {
	text := []byte(`INSERT INTO t VALUES ('it''s', 42, -7, 3.5, E'x', 007, 0x1F, $$d$$, B'01', '', - 0)`)
	_, lits, ok := router.Shape(nil, nil, text)
	if !ok {
		t.Fatal("the text did not scan")
	}
	want := []struct {
		tok   string
		class litClass
	}{
		{`'it''s'`, litString}, {"42", litInteger}, {"7", litInteger}, {"3.5", litDecimal}, {"E'x'", litEscape},
		{"007", litOther}, {"0x1F", litOther}, {"$$d$$", litDollar}, {"B'01'", litBits}, {"''", litString}, {"0", litInteger},
	}
	if len(lits) != len(want) {
		t.Fatalf("%d literals, want %d: %v", len(lits), len(want), lits)
	}
	for i, w := range want {
		if got := string(text[lits[i].Start:lits[i].End]); got != w.tok {
			t.Errorf("literal %d is %q, want %q", i, got, w.tok)
		}
		if got := classOf(text, lits[i]); got != w.class {
			t.Errorf("literal %q: class %d, want %d", w.tok, got, w.class)
		}
	}
	for _, tc := range []struct {
		pos  int // 1-based position of the token (or its sign)
		want string
		ok   bool
	}{
		{pos: 23, want: "it's", ok: true},
		{pos: 32, want: "42", ok: true},
		{pos: 36, want: "-7", ok: true},
		{pos: 24, ok: false}, // inside a token
		{pos: 1, ok: false},
	} {
		ref, found := tokenAt(text, lits, tc.pos)
		if found != tc.ok {
			t.Errorf("tokenAt(%d) found %v, want %v", tc.pos, found, tc.ok)
			continue
		}
		if !found {
			continue
		}
		got, _ := literalText(text, lits[ref.ord], ref.neg, nil)
		if string(got) != tc.want {
			t.Errorf("tokenAt(%d) reads %q, want %q", tc.pos, got, tc.want)
		}
	}
	last := lits[len(lits)-1]
	if !zeros(text, last) {
		t.Error("0 is not all zeros")
	}
}
