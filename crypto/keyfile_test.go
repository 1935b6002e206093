package crypto

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var testMaster = fixedKey(bytes.Repeat([]byte{0x5a}, MasterKeySize))

// rotatedKeyring returns a keyring with every state a key can be in:
// retired (the first randomized key), enabled (the first deterministic
// key), and primary; and the keyring before its rotation.
func rotatedKeyring(t *testing.T) (k, before *Keyring) {
	t.Helper()
	before = newKeyring(t)
	k, err := before.Rotate(t1)
	if err != nil {
		t.Fatal(err)
	}
	k, err = k.Retire(before.Primary(Randomized))
	if err != nil {
		t.Fatal(err)
	}
	return k, before
}

func TestSaveLoad(t *testing.T) {
	ctx := context.Background()
	k, before := rotatedKeyring(t)
	valueR := mustEncrypt(t, k, Randomized, "leads.ssn", "123-45-6789")
	valueD := mustEncrypt(t, k, Deterministic, "leads.email", "test@email.com")
	oldR := mustEncrypt(t, before, Randomized, "leads.ssn", "x")
	oldD := mustEncrypt(t, before, Deterministic, "leads.email", "x")
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	if err := k.Save(ctx, path, testMaster); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	got, err := LoadKeyring(ctx, path, testMaster)
	if err != nil {
		t.Fatal(err)
	}
	want, have := k.Keys(), got.Keys()
	if len(want) != len(have) {
		t.Fatalf("loaded %d keys, saved %d", len(have), len(want))
	}
	for i := range want {
		w, h := want[i], have[i]
		if w.ID != h.ID || w.Kind != h.Kind || !w.Created.Equal(h.Created) || w.Primary != h.Primary || w.Enabled != h.Enabled {
			t.Errorf("key %d: saved %+v, loaded %+v", i, w, h)
		}
	}
	for _, kind := range []Kind{Randomized, Deterministic} {
		if got.Primary(kind) != k.Primary(kind) {
			t.Errorf("%s primary: %d, want %d", kind, got.Primary(kind), k.Primary(kind))
		}
	}
	if pt, _ := mustDecrypt(t, got, "leads.ssn", valueR); pt != "123-45-6789" {
		t.Error("randomized value after Load")
	}
	if pt, _ := mustDecrypt(t, got, "leads.email", valueD); pt != "test@email.com" {
		t.Error("deterministic value after Load")
	}
	if pt, _ := mustDecrypt(t, got, "leads.email", oldD); pt != "x" {
		t.Error("value under the older deterministic key after Load")
	}
	if again := mustEncrypt(t, got, Deterministic, "leads.email", "test@email.com"); !bytes.Equal(again, valueD) {
		t.Error("the loaded deterministic key encrypts differently")
	}
	if _, _, err := got.Decrypt("leads.ssn", oldR, nil); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("the retired key decrypts after Load: %v", err)
	}

	// The file is the documented JSON, without secrets in the clear.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]json.RawMessage
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"format", "version", "master_key_check", "keys", "randomized", "deterministic"} {
		if _, ok := f[field]; !ok {
			t.Errorf("no %q in the file", field)
		}
	}
	if string(f["format"]) != `"pgshield-keyring"` || string(f["version"]) != "1" {
		t.Errorf("format %s version %s", f["format"], f["version"])
	}
	if bytes.Contains(data, []byte("123-45-6789")) || bytes.Contains(data, testMaster) {
		t.Error("the file holds a secret in the clear")
	}

	// Saving again replaces the file atomically, leaves no temporary file,
	// and makes it 0600 whatever it was.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	k2, err := got.Rotate(t2)
	if err != nil {
		t.Fatal(err)
	}
	if err := k2.Save(ctx, path, testMaster); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "keys.json" {
		t.Errorf("directory after saving twice: %v", entries)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("mode after saving over a 0644 file: %v, %v", st.Mode().Perm(), err)
	}
	if got, err := LoadKeyring(ctx, path, testMaster); err != nil || len(got.Keys()) != 6 {
		t.Errorf("after the second save: %v", err)
	}
}

func TestLoadWrongMasterKey(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys.json")
	// Saved under a raw key, loaded with a passphrase: one scrypt run.
	if err := newKeyring(t).Save(ctx, path, testMaster); err != nil {
		t.Fatal(err)
	}
	wrong := EnvKeySource{Key: "correct horse battery stapler", Salt: "pgshield-salt-1"}
	_, err := LoadKeyring(ctx, path, wrong)
	if !errors.Is(err, ErrWrongMasterKey) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{path, "ENCRYPTION_KEY", "ENCRYPTION_SALT", "wrong key or salt"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not say %q: %s", want, msg)
		}
	}
	for _, secret := range []string{wrong.Key, wrong.Salt} {
		if strings.Contains(msg, secret) {
			t.Errorf("the error shows a secret: %s", msg)
		}
	}
	// A raw key of the right length but other bytes, likewise.
	if _, err := LoadKeyring(ctx, path, fixedKey(bytes.Repeat([]byte{0x5b}, MasterKeySize))); !errors.Is(err, ErrWrongMasterKey) {
		t.Errorf("wrong raw key: %v", err)
	}
	// A key of the wrong length is refused before use.
	if _, err := LoadKeyring(ctx, path, fixedKey(make([]byte, 16))); err == nil || errors.Is(err, ErrWrongMasterKey) {
		t.Errorf("16-byte key: %v", err)
	}
}

// editFile rewrites the keyring file at path through edit, on its JSON.
func editFile(t *testing.T, path string, edit func(f *keyringFile)) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f keyringFile
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	edit(&f)
	if data, err = json.Marshal(&f); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoadDetectsEdits(t *testing.T) {
	ctx := context.Background()
	k, _ := rotatedKeyring(t)
	dir := t.TempDir()
	orig := filepath.Join(dir, "orig.json")
	if err := k.Save(ctx, orig, testMaster); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		edit func(f *keyringFile)
		want error
	}{
		"created time": {func(f *keyringFile) { f.Keys[1].Created = "2020-01-01T00:00:00Z" }, ErrKeyringAltered},
		"created time by a nanosecond": {func(f *keyringFile) {
			f.Keys[3].Created = strings.Replace(f.Keys[3].Created, "006Z", "007Z", 1)
		}, ErrKeyringAltered},
		"key order":     {func(f *keyringFile) { f.Keys[0], f.Keys[2] = f.Keys[2], f.Keys[0] }, ErrKeyringAltered},
		"key dropped":   {func(f *keyringFile) { f.Keys = f.Keys[1:] }, ErrKeyringAltered},
		"key id":        {func(f *keyringFile) { f.Keys[0].ID++ }, ErrKeyringAltered},
		"kind":          {func(f *keyringFile) { f.Keys[0].Kind, f.Keys[1].Kind = f.Keys[1].Kind, f.Keys[0].Kind }, ErrKeyringAltered},
		"swapped sets":  {func(f *keyringFile) { f.Randomized, f.Deterministic = f.Deterministic, f.Randomized }, ErrKeyringAltered},
		"keyset copied": {func(f *keyringFile) { f.Deterministic = f.Randomized }, ErrKeyringAltered},
		"bad kind":      {func(f *keyringFile) { f.Keys[0].Kind = "aes" }, ErrBadKeyringFile},
		"bad time":      {func(f *keyringFile) { f.Keys[0].Created = "yesterday" }, ErrBadKeyringFile},
		"version":       {func(f *keyringFile) { f.Version = 2 }, ErrBadKeyringFile},
		"format":        {func(f *keyringFile) { f.Format = "something" }, ErrBadKeyringFile},
		"no keyset":     {func(f *keyringFile) { f.Randomized = nil }, ErrBadKeyringFile},
		"check removed": {func(f *keyringFile) { f.MasterKeyCheck = nil }, ErrWrongMasterKey},
	} {
		path := filepath.Join(dir, "edited.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		editFile(t, path, c.edit)
		if _, err := LoadKeyring(ctx, path, testMaster); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	// The unedited file, through the same JSON round trip, still loads:
	// what failed above was the edit.
	path := filepath.Join(dir, "same.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	editFile(t, path, func(*keyringFile) {})
	if _, err := LoadKeyring(ctx, path, testMaster); err != nil {
		t.Errorf("unedited: %v", err)
	}
}

func TestLoadBadFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := LoadKeyring(ctx, filepath.Join(dir, "missing.json"), testMaster); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	for name, content := range map[string]string{
		"empty":    "",
		"not JSON": "pgs1:",
		"array":    "[]",
		"object":   "{}",
	} {
		path := filepath.Join(dir, "bad.json")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadKeyring(ctx, path, testMaster); !errors.Is(err, ErrBadKeyringFile) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := newKeyring(t).Save(ctx, filepath.Join(dir, "no-such-dir", "k.json"), testMaster); err == nil {
		t.Error("Save into a missing directory succeeded")
	}
}

// A cancelled context stops EnvKeySource before scrypt, and so Load and Save.
func TestCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ks := EnvKeySource{Key: "k", Salt: "s"}
	path := filepath.Join(t.TempDir(), "k.json")
	if err := newKeyring(t).Save(ctx, path, ks); !errors.Is(err, context.Canceled) {
		t.Errorf("Save: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed Save left a file: %v", err)
	}
}
