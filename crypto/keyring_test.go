package crypto

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// fixedKey is a KeySource with a key given outright, so tests pay scrypt's
// cost only where they test EnvKeySource.
type fixedKey []byte

func (k fixedKey) MasterKey(context.Context) ([]byte, error) { return bytes.Clone(k), nil }

var (
	t0 = time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	t1 = t0.Add(30 * 24 * time.Hour)
	t2 = t1.Add(30 * 24 * time.Hour)
)

func newKeyring(t testing.TB) *Keyring {
	t.Helper()
	k, err := NewKeyring(t0)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustEncrypt(t testing.TB, k *Keyring, kind Kind, column, plaintext string) []byte {
	t.Helper()
	var (
		v   []byte
		err error
	)
	if kind == Deterministic {
		v, err = k.EncryptDeterministic(column, []byte(plaintext), nil)
	} else {
		v, err = k.Encrypt(column, []byte(plaintext), nil)
	}
	if err != nil {
		t.Fatalf("encrypt %s: %v", kind, err)
	}
	return v
}

func mustDecrypt(t testing.TB, k *Keyring, column string, stored []byte) (string, uint32) {
	t.Helper()
	pt, id, err := k.Decrypt(column, stored, nil)
	if err != nil {
		t.Fatalf("decrypt %s: %v", column, err)
	}
	return string(pt), id
}

func TestNewKeyring(t *testing.T) {
	k := newKeyring(t)
	keys := k.Keys()
	if len(keys) != 2 {
		t.Fatalf("keys: %+v", keys)
	}
	for i, want := range []Kind{Randomized, Deterministic} {
		ki := keys[i]
		if ki.Kind != want || !ki.Primary || !ki.Enabled || !ki.Created.Equal(t0) || ki.Created.Location() != time.UTC {
			t.Errorf("key %d: %+v", i, ki)
		}
		if k.Primary(want) != ki.ID {
			t.Errorf("Primary(%s) = %d, want %d", want, k.Primary(want), ki.ID)
		}
		if kind, ok := k.Kind(ki.ID); !ok || kind != want {
			t.Errorf("Kind(%d) = %v, %v", ki.ID, kind, ok)
		}
	}
	if keys[0].ID == keys[1].ID {
		t.Errorf("both keys have id %d", keys[0].ID)
	}
	other := keys[0].ID + 1
	for other == keys[0].ID || other == keys[1].ID {
		other++
	}
	if _, ok := k.Kind(other); ok {
		t.Errorf("Kind knows id %d, which is not in the keyring", other)
	}
	if k.Primary(0) != 0 {
		t.Error("Primary of an invalid kind is not 0")
	}
	if Randomized.String() != "randomized" || Deterministic.String() != "deterministic" {
		t.Errorf("Kind strings: %s, %s", Randomized, Deterministic)
	}
	for _, kind := range []Kind{Randomized, Deterministic} {
		if got, err := ParseKind(kind.String()); err != nil || got != kind {
			t.Errorf("ParseKind(%q) = %v, %v", kind.String(), got, err)
		}
	}
	if _, err := ParseKind("aes"); err == nil {
		t.Error("ParseKind accepted aes")
	}
}

func TestRoundTrip(t *testing.T) {
	k := newKeyring(t)
	values := []string{"", "123-45-6789", "test@email.com", "naïve ☃", string([]byte{0, 1, 2, 0xff}), strings.Repeat("x", 100000)}
	for _, kind := range []Kind{Randomized, Deterministic} {
		for _, v := range values {
			stored := mustEncrypt(t, k, kind, "leads.ssn", v)
			if !IsCiphertext(stored) || !bytes.HasPrefix(stored, []byte("pgs1:")) {
				t.Fatalf("%s: stored form %.20q", kind, stored)
			}
			if v != "" && bytes.Contains(stored, []byte(v)) {
				t.Errorf("%s: stored value contains the plaintext", kind)
			}
			if _, err := base64.StdEncoding.Strict().DecodeString(string(stored[5:])); err != nil {
				t.Errorf("%s: not standard base64: %v", kind, err)
			}
			got, id := mustDecrypt(t, k, "leads.ssn", stored)
			if got != v {
				t.Errorf("%s: round trip of %d bytes gave %d bytes", kind, len(v), len(got))
			}
			if id != k.Primary(kind) {
				t.Errorf("%s: decrypted by key %d, want the primary %d", kind, id, k.Primary(kind))
			}
		}
	}
}

// Encrypt and Decrypt append to dst and leave what it held.
func TestAppendsToDst(t *testing.T) {
	k := newKeyring(t)
	head := []byte("head|")
	dst := make([]byte, len(head), 256)
	copy(dst, head)
	stored, err := k.Encrypt("leads.ssn", []byte("123-45-6789"), dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(stored, head) || !IsCiphertext(stored[len(head):]) {
		t.Fatalf("Encrypt did not append: %q", stored)
	}
	stored = stored[len(head):]
	out := make([]byte, len(head), 256)
	copy(out, head)
	pt, _, err := k.Decrypt("leads.ssn", stored, out)
	if err != nil || string(pt) != "head|123-45-6789" {
		t.Fatalf("Decrypt: %q, %v", pt, err)
	}
	if &pt[0] != &out[0] {
		t.Error("Decrypt did not reuse dst's capacity")
	}
	// Decrypting into a slice too small grows it and still keeps its head.
	pt, _, err = k.Decrypt("leads.ssn", stored, []byte("x"))
	if err != nil || string(pt) != "x123-45-6789" {
		t.Fatalf("Decrypt into a short dst: %q, %v", pt, err)
	}
}

func TestDeterministic(t *testing.T) {
	k := newKeyring(t)
	a := mustEncrypt(t, k, Deterministic, "leads.email", "test@email.com")
	b := mustEncrypt(t, k, Deterministic, "leads.email", "test@email.com")
	if !bytes.Equal(a, b) {
		t.Error("equal plaintext and column gave different deterministic values")
	}
	if c := mustEncrypt(t, k, Deterministic, "agents.email", "test@email.com"); bytes.Equal(a, c) {
		t.Error("another column gave the same deterministic value")
	}
	if d := mustEncrypt(t, k, Deterministic, "leads.email", "test2@email.com"); bytes.Equal(a, d) {
		t.Error("another plaintext gave the same deterministic value")
	}
	if r := mustEncrypt(t, k, Randomized, "leads.email", "test@email.com"); bytes.Equal(a, r) {
		t.Error("randomized and deterministic values are equal")
	}
}

func TestRandomizedDiffers(t *testing.T) {
	k := newKeyring(t)
	seen := map[string]bool{}
	for range 20 {
		v := string(mustEncrypt(t, k, Randomized, "leads.ssn", "123-45-6789"))
		if seen[v] {
			t.Fatal("randomized encryption repeated a value")
		}
		seen[v] = true
	}
}

func TestWrongColumn(t *testing.T) {
	k := newKeyring(t)
	for _, kind := range []Kind{Randomized, Deterministic} {
		stored := mustEncrypt(t, k, kind, "leads.ssn", "123-45-6789")
		pt, id, err := k.Decrypt("leads.credit_card", stored, []byte("keep"))
		if !errors.Is(err, ErrAuthentication) {
			t.Errorf("%s: another column: %v", kind, err)
		}
		if string(pt) != "keep" || id != 0 {
			t.Errorf("%s: failed Decrypt returned %q, %d", kind, pt, id)
		}
		if err != nil && strings.Contains(err.Error(), "123-45-6789") {
			t.Errorf("%s: the error shows the plaintext: %v", kind, err)
		}
	}
}

func TestTampered(t *testing.T) {
	k := newKeyring(t)
	for _, kind := range []Kind{Randomized, Deterministic} {
		stored := mustEncrypt(t, k, kind, "leads.ssn", "123-45-6789")
		raw, err := base64.StdEncoding.DecodeString(string(stored[len(Prefix):]))
		if err != nil {
			t.Fatal(err)
		}
		for i := range raw {
			bad := bytes.Clone(raw)
			bad[i] ^= 0x20
			v := []byte(Prefix + base64.StdEncoding.EncodeToString(bad))
			pt, _, err := k.Decrypt("leads.ssn", v, nil)
			if len(pt) != 0 {
				t.Fatalf("%s: byte %d flipped: Decrypt returned %d bytes", kind, i, len(pt))
			}
			var want error
			switch {
			case i == 0:
				want = ErrNotCiphertext
			case i < tinkPrefixSize:
				want = ErrUnknownKey // another key id
			default:
				want = ErrAuthentication
			}
			if !errors.Is(err, want) {
				t.Fatalf("%s: byte %d flipped: %v, want %v", kind, i, err, want)
			}
		}
		// Truncated and extended values fail too.
		for _, v := range [][]byte{
			[]byte(Prefix + base64.StdEncoding.EncodeToString(raw[:len(raw)-1])),
			[]byte(Prefix + base64.StdEncoding.EncodeToString(append(bytes.Clone(raw), 0))),
		} {
			if _, _, err := k.Decrypt("leads.ssn", v, nil); !errors.Is(err, ErrAuthentication) {
				t.Errorf("%s: truncated or extended: %v", kind, err)
			}
		}
	}
}

func TestNotCiphertext(t *testing.T) {
	k := newKeyring(t)
	valid := mustEncrypt(t, k, Randomized, "leads.ssn", "123-45-6789")
	body := string(valid[len(Prefix):])
	for name, v := range map[string]string{
		"empty":         "",
		"plain":         "123-45-6789",
		"prefix only":   "pgs1:",
		"other version": "pgs2:" + body,
		"upper case":    "PGS1:" + body,
		"bad base64":    "pgs1:!!!!" + body,
		"unpadded":      "pgs1:" + strings.TrimRight(base64.StdEncoding.EncodeToString([]byte{1, 2, 3, 4, 5, 6, 7}), "="),
		"line break":    "pgs1:" + body[:8] + "\n" + body[8:],
		"CR":            "pgs1:" + body[:8] + "\r" + body[8:],
		"no key id":     "pgs1:" + base64.StdEncoding.EncodeToString([]byte{1, 0, 0}),
		"not Tink":      "pgs1:" + base64.StdEncoding.EncodeToString(append([]byte{0}, make([]byte, 40)...)),
	} {
		pt, _, err := k.Decrypt("leads.ssn", []byte(v), []byte("keep"))
		if !errors.Is(err, ErrNotCiphertext) {
			t.Errorf("%s: %v", name, err)
		}
		if string(pt) != "keep" {
			t.Errorf("%s: failed Decrypt returned %q", name, pt)
		}
	}
	if IsCiphertext([]byte("pgs1")) || !IsCiphertext([]byte("pgs1:")) {
		t.Error("IsCiphertext")
	}
	// A canonical value with non-zero padding bits is another spelling of
	// the same bytes: refused, so a value has one stored form.
	// (11 bytes of plaintext make a 44-byte ciphertext: one '=' of padding.)
	i := strings.IndexByte(body, '=') - 1
	if i < 0 {
		t.Fatalf("no padding in %q", body)
	}
	alt := []byte(body)
	alt[i] ^= 1
	if _, _, err := k.Decrypt("leads.ssn", append([]byte(Prefix), alt...), nil); !errors.Is(err, ErrNotCiphertext) {
		t.Errorf("a non-canonical base64 spelling: %v", err)
	}
}

func TestNoColumn(t *testing.T) {
	k := newKeyring(t)
	if _, err := k.Encrypt("", []byte("x"), nil); !errors.Is(err, ErrNoColumn) {
		t.Errorf("Encrypt: %v", err)
	}
	if _, err := k.EncryptDeterministic("", []byte("x"), nil); !errors.Is(err, ErrNoColumn) {
		t.Errorf("EncryptDeterministic: %v", err)
	}
	if _, err := k.EncryptDeterministicAll("", []byte("x"), nil); !errors.Is(err, ErrNoColumn) {
		t.Errorf("EncryptDeterministicAll: %v", err)
	}
	if _, _, err := k.Decrypt("", mustEncrypt(t, k, Randomized, "c", "x"), nil); !errors.Is(err, ErrNoColumn) {
		t.Errorf("Decrypt: %v", err)
	}
}

// The key id sits where the package documentation's SQL reads it:
// substring(decode(substr(col, 6, 8), 'base64') from 2 for 4).
func TestKeyIDLayout(t *testing.T) {
	k := newKeyring(t)
	for _, kind := range []Kind{Randomized, Deterministic} {
		stored := mustEncrypt(t, k, kind, "leads.ssn", "123-45-6789")
		// substr(col, 6, 8): 1-based, so characters 6 to 13.
		head, err := base64.StdEncoding.DecodeString(string(stored[5:13]))
		if err != nil || len(head) != 6 {
			t.Fatalf("%s: decode(substr(col, 6, 8)): %x, %v", kind, head, err)
		}
		if head[0] != 0x01 {
			t.Errorf("%s: first byte %#x, want the TINK prefix 0x01", kind, head[0])
		}
		// substring(... from 2 for 4): bytes 2 to 5, 1-based.
		sqlID := binary.BigEndian.Uint32(head[1:5])
		id, ok := KeyID(stored)
		if !ok || id != sqlID || id != k.Primary(kind) {
			t.Errorf("%s: KeyID = %d, %v; SQL layout gives %d; primary %d", kind, id, ok, sqlID, k.Primary(kind))
		}
	}
	for _, v := range []string{"", "pgs1:", "pgs1:AQAA", "pgs1:AAAAAAAA", "pgs1:AQAAAA==", "xyz1:AQAAAAAA"} {
		if id, ok := KeyID([]byte(v)); ok {
			t.Errorf("KeyID(%q) = %d, true", v, id)
		}
	}
	if id, ok := KeyID([]byte("pgs1:AQAAAAEA")); !ok || id != 1 {
		t.Errorf("KeyID of key 1 = %d, %v", id, ok)
	}
}

func TestRotate(t *testing.T) {
	k1 := newKeyring(t)
	oldR := mustEncrypt(t, k1, Randomized, "leads.ssn", "123-45-6789")
	oldD := mustEncrypt(t, k1, Deterministic, "leads.email", "test@email.com")
	k2, err := k1.Rotate(t1)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []Kind{Randomized, Deterministic} {
		if k2.Primary(kind) == k1.Primary(kind) {
			t.Fatalf("%s: Rotate kept the primary", kind)
		}
		if id, _ := KeyID(mustEncrypt(t, k1, kind, "c", "x")); id != k1.Primary(kind) {
			t.Errorf("%s: the old snapshot changed: it encrypts with %d", kind, id)
		}
		if id, _ := KeyID(mustEncrypt(t, k2, kind, "c", "x")); id != k2.Primary(kind) {
			t.Errorf("%s: after Rotate a new value carries key %d, want %d", kind, id, k2.Primary(kind))
		}
	}
	if pt, id := mustDecrypt(t, k2, "leads.ssn", oldR); pt != "123-45-6789" || id != k1.Primary(Randomized) {
		t.Errorf("old randomized value: %q by key %d", pt, id)
	}
	if pt, id := mustDecrypt(t, k2, "leads.email", oldD); pt != "test@email.com" || id != k1.Primary(Deterministic) {
		t.Errorf("old deterministic value: %q by key %d", pt, id)
	}
	if newD := mustEncrypt(t, k2, Deterministic, "leads.email", "test@email.com"); bytes.Equal(newD, oldD) {
		t.Error("the new deterministic key gives the old key's value")
	}
	keys := k2.Keys()
	if len(keys) != 4 {
		t.Fatalf("keys after Rotate: %+v", keys)
	}
	ids := map[uint32]bool{}
	for i, ki := range keys {
		ids[ki.ID] = true
		wantPrimary := i >= 2
		wantCreated := t0
		if i >= 2 {
			wantCreated = t1
		}
		if ki.Primary != wantPrimary || !ki.Enabled || !ki.Created.Equal(wantCreated) {
			t.Errorf("key %d after Rotate: %+v", i, ki)
		}
	}
	if len(ids) != 4 {
		t.Errorf("key ids repeat: %+v", keys)
	}
	if len(k1.Keys()) != 2 {
		t.Error("Rotate changed the old snapshot's keys")
	}
}

func TestRetire(t *testing.T) {
	k1 := newKeyring(t)
	oldR := mustEncrypt(t, k1, Randomized, "leads.ssn", "123-45-6789")
	oldD := mustEncrypt(t, k1, Deterministic, "leads.email", "test@email.com")
	if _, err := k1.Retire(k1.Primary(Randomized)); !errors.Is(err, ErrPrimaryKey) {
		t.Errorf("retiring the primary: %v", err)
	}
	k2, err := k1.Rotate(t1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k2.Retire(k2.Primary(Deterministic)); !errors.Is(err, ErrPrimaryKey) {
		t.Errorf("retiring the primary: %v", err)
	}
	unknown := k2.Primary(Randomized) + 1
	for _, ki := range k2.Keys() {
		if ki.ID == unknown {
			unknown += 7
		}
	}
	if _, err := k2.Retire(unknown); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("retiring an unknown id: %v", err)
	}
	k3, err := k2.Retire(k1.Primary(Randomized))
	if err != nil {
		t.Fatal(err)
	}
	k3, err = k3.Retire(k1.Primary(Deterministic))
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string][]byte{"randomized": oldR, "deterministic": oldD} {
		column := "leads.ssn"
		if name == "deterministic" {
			column = "leads.email"
		}
		if pt, _, err := k3.Decrypt(column, v, nil); !errors.Is(err, ErrUnknownKey) || len(pt) != 0 {
			t.Errorf("%s value under a retired key: %q, %v", name, pt, err)
		}
		if _, id := mustDecrypt(t, k2, column, v); id == 0 {
			t.Errorf("Retire changed the old snapshot")
		}
	}
	// A retired key stays listed, disabled, with its kind.
	for _, ki := range k3.Keys() {
		old := ki.ID == k1.Primary(Randomized) || ki.ID == k1.Primary(Deterministic)
		if ki.Enabled == old {
			t.Errorf("key %+v: enabled %v", ki, ki.Enabled)
		}
		if kind, ok := k3.Kind(ki.ID); !ok || kind != ki.Kind {
			t.Errorf("Kind(%d) = %v, %v", ki.ID, kind, ok)
		}
	}
	// Retiring it again changes nothing; new values still encrypt.
	if k4, err := k3.Retire(k1.Primary(Randomized)); err != nil || len(k4.Keys()) != 4 {
		t.Errorf("retiring twice: %v", err)
	}
	if pt, _ := mustDecrypt(t, k3, "leads.ssn", mustEncrypt(t, k3, Randomized, "leads.ssn", "y")); pt != "y" {
		t.Error("round trip after Retire")
	}
}

func TestEncryptDeterministicAll(t *testing.T) {
	k1 := newKeyring(t)
	k2, err := k1.Rotate(t1)
	if err != nil {
		t.Fatal(err)
	}
	k3, err := k2.Rotate(t2)
	if err != nil {
		t.Fatal(err)
	}
	head := [][]byte{[]byte("kept")}
	all, err := k3.EncryptDeterministicAll("leads.email", []byte("test@email.com"), head)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 4 || string(all[0]) != "kept" {
		t.Fatalf("EncryptDeterministicAll gave %d values", len(all))
	}
	all = all[1:]
	if primary := mustEncrypt(t, k3, Deterministic, "leads.email", "test@email.com"); !bytes.Equal(all[0], primary) {
		t.Error("the first value is not the primary key's")
	}
	// Each decrypts, by the key its id names.
	for i, v := range all {
		id, _ := KeyID(v)
		pt, did := mustDecrypt(t, k3, "leads.email", v)
		if pt != "test@email.com" || did != id {
			t.Errorf("value %d: %q by key %d (id %d)", i, pt, did, id)
		}
	}
	ids := map[uint32]bool{}
	for _, v := range all {
		id, _ := KeyID(v)
		ids[id] = true
	}
	for _, k := range []*Keyring{k1, k2, k3} {
		if !ids[k.Primary(Deterministic)] {
			t.Errorf("no value under deterministic key %d", k.Primary(Deterministic))
		}
		if v := mustEncrypt(t, k, Deterministic, "leads.email", "test@email.com"); !containsValue(all, v) {
			t.Errorf("the value of key %d is not among them", k.Primary(Deterministic))
		}
	}
	// Retired keys drop out.
	k4, err := k3.Retire(k1.Primary(Deterministic))
	if err != nil {
		t.Fatal(err)
	}
	all, err = k4.EncryptDeterministicAll("leads.email", []byte("test@email.com"), nil)
	if err != nil || len(all) != 2 {
		t.Fatalf("after Retire: %d values, %v", len(all), err)
	}
	if id, _ := KeyID(all[0]); id != k4.Primary(Deterministic) {
		t.Error("the primary's value is not first")
	}
}

func containsValue(vs [][]byte, v []byte) bool {
	for _, x := range vs {
		if bytes.Equal(x, v) {
			return true
		}
	}
	return false
}

// A Keyring is used by every client goroutine at once (run with -race).
func TestConcurrentUse(t *testing.T) {
	k := newKeyring(t)
	shared := mustEncrypt(t, k, Randomized, "leads.ssn", "123-45-6789")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			var dst []byte
			for range 200 {
				pt, _, err := k.Decrypt("leads.ssn", shared, dst[:0])
				if err != nil || string(pt) != "123-45-6789" {
					errs <- errors.New("concurrent decrypt failed")
					return
				}
				dst = pt
				v, err := k.EncryptDeterministic("leads.email", []byte("a@b.c"), nil)
				if err != nil {
					errs <- err
					return
				}
				if _, _, err := k.Decrypt("leads.email", v, nil); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
