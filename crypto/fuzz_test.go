package crypto

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecrypt feeds arbitrary stored bytes and column names to Decrypt
// under the golden keyring. Decrypt must not panic, must not touch its
// input, must leave dst as it was on error, and must return plaintext only
// for a value the keyring really encrypted for that column: the golden
// values and deterministic values made here (the same in every fuzz worker,
// which is why no randomized value is made here). Any other success would
// be a forgery, or a second spelling of a stored value.
func FuzzDecrypt(f *testing.F) {
	k, values := loadGolden(f)
	known := map[string]string{} // column NUL stored → plaintext
	for _, v := range values {
		if !v.Retired {
			known[v.Column+"\x00"+v.Stored] = v.Plaintext
		}
		f.Add(v.Column, []byte(v.Stored))
	}
	for _, plaintext := range []string{"", "a", "test@email.com", "\x00\xff"} {
		all, err := k.EncryptDeterministicAll("leads.email", []byte(plaintext), nil)
		if err != nil {
			f.Fatal(err)
		}
		for _, v := range all {
			known["leads.email\x00"+string(v)] = plaintext
			f.Add("leads.email", v)
		}
	}
	f.Fuzz(func(t *testing.T, column string, stored []byte) {
		in := bytes.Clone(stored)
		dst := make([]byte, 4, 8)
		copy(dst, "dst:")
		pt, id, err := k.Decrypt(column, stored, dst)
		if !bytes.Equal(stored, in) {
			t.Fatal("Decrypt changed its input")
		}
		if err != nil {
			if !errors.Is(err, ErrNotCiphertext) && !errors.Is(err, ErrAuthentication) &&
				!errors.Is(err, ErrUnknownKey) && !errors.Is(err, ErrNoColumn) {
				t.Fatalf("an error of no documented kind: %v", err)
			}
			if string(pt) != "dst:" || id != 0 {
				t.Fatalf("failed Decrypt returned %q, key %d", pt, id)
			}
			return
		}
		want, ok := known[column+"\x00"+string(stored)]
		if !ok {
			t.Fatalf("decrypted a value it never encrypted for %q: %q", column, stored)
		}
		if string(pt) != "dst:"+want {
			t.Fatalf("plaintext %q, want %q", pt, "dst:"+want)
		}
		if kid, ok := KeyID(stored); !ok || kid != id {
			t.Fatalf("Decrypt says key %d, KeyID says %d, %v", id, kid, ok)
		}
	})
}
