package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/crypto"
)

// rawKey is a master key given outright, so that only the test of the
// environment variables pays for scrypt.
type rawKey []byte

func (k rawKey) MasterKey(context.Context) ([]byte, error) { return bytes.Clone(k), nil }

func testKeysEnv(out *bytes.Buffer, ks crypto.KeySource, now time.Time) keysEnv {
	return keysEnv{
		stdout:    out,
		keySource: func() (crypto.KeySource, error) { return ks, nil },
		now:       func() time.Time { return now },
	}
}

// keys init and keys show with the master key from ENCRYPTION_KEY and
// ENCRYPTION_SALT, as an operator runs them.
func TestKeysInitShowFromEnvironment(t *testing.T) {
	vars := map[string]string{"ENCRYPTION_KEY": "an operator passphrase", "ENCRYPTION_SALT": "an operator salt"}
	for name, v := range vars {
		t.Setenv(name, v)
	}
	var out bytes.Buffer
	env := keysEnv{
		stdout:    &out,
		keySource: envKeySource,
		now:       func() time.Time { return time.Date(2025, 6, 1, 12, 30, 0, 0, time.FixedZone("CEST", 2*3600)) },
	}
	path := filepath.Join(t.TempDir(), "keys.json")
	if err := runKeys([]string{"init", "--file", path}, env); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "created keyring "+path) {
		t.Errorf("init said: %s", out.String())
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file: %v, %v", st, err)
	}
	out.Reset()
	if err := runKeys([]string{"show", "--file", path}, env); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("show printed:\n%s", out.String())
	}
	if f := strings.Fields(lines[0]); strings.Join(f, " ") != "KEY ID KIND CREATED PRIMARY ENABLED" {
		t.Errorf("header: %q", lines[0])
	}
	for i, kind := range []string{"randomized", "deterministic"} {
		f := strings.Fields(lines[i+1])
		if len(f) != 5 || f[1] != kind || f[2] != "2025-06-01T10:30:00Z" || f[3] != "yes" || f[4] != "yes" {
			t.Errorf("row %d: %q", i, lines[i+1])
		}
		if _, err := strconv.ParseUint(f[0], 10, 32); err != nil {
			t.Errorf("row %d: key id %q", i, f[0])
		}
	}
	for _, secret := range vars {
		if strings.Contains(out.String(), secret) {
			t.Error("show printed a secret")
		}
	}
}

func TestKeysNeedTheEnvironment(t *testing.T) {
	t.Setenv("ENCRYPTION_KEY", "a passphrase set alone")
	t.Setenv("ENCRYPTION_SALT", "")
	var out bytes.Buffer
	env := keysEnv{stdout: &out, keySource: envKeySource, now: time.Now}
	path := filepath.Join(t.TempDir(), "keys.json")
	err := runKeys([]string{"init", "--file", path}, env)
	if !errors.Is(err, crypto.ErrNoMasterKey) || !strings.Contains(err.Error(), "ENCRYPTION_SALT") ||
		strings.Contains(err.Error(), "a passphrase set alone") {
		t.Errorf("init without ENCRYPTION_SALT: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("init without a master key left a file: %v", err)
	}
}

func TestKeysInitRefusesToOverwrite(t *testing.T) {
	var out bytes.Buffer
	ks := rawKey(bytes.Repeat([]byte{7}, 32))
	env := testKeysEnv(&out, ks, time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	path := filepath.Join(t.TempDir(), "keys.json")
	if err := runKeys([]string{"init", "--file", path}, env); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	err = runKeys([]string{"init", "--file", path}, env)
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("second init: %v", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("a refused init changed the file")
	}
	first, err := crypto.LoadKeyring(context.Background(), path, ks)
	if err != nil {
		t.Fatal(err)
	}
	if err := runKeys([]string{"init", "--force", "--file", path}, env); err != nil {
		t.Fatalf("init --force: %v", err)
	}
	second, err := crypto.LoadKeyring(context.Background(), path, ks)
	if err != nil {
		t.Fatal(err)
	}
	if first.Primary(crypto.Randomized) == second.Primary(crypto.Randomized) {
		t.Error("init --force kept the old keys")
	}
}

func TestKeysRotateAndRetire(t *testing.T) {
	var out bytes.Buffer
	ks := rawKey(bytes.Repeat([]byte{9}, 32))
	path := filepath.Join(t.TempDir(), "keys.json")
	if err := runKeys([]string{"init", "--file", path}, testKeysEnv(&out, ks, time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))); err != nil {
		t.Fatal(err)
	}
	k1, err := crypto.LoadKeyring(context.Background(), path, ks)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := k1.Encrypt("leads.ssn", []byte("123-45-6789"), nil)
	if err != nil {
		t.Fatal(err)
	}
	env := testKeysEnv(&out, ks, time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC))
	if err := runKeys([]string{"rotate", "--file", path}, env); err != nil {
		t.Fatal(err)
	}
	k2, err := crypto.LoadKeyring(context.Background(), path, ks)
	if err != nil {
		t.Fatal(err)
	}
	if len(k2.Keys()) != 4 || k2.Primary(crypto.Randomized) == k1.Primary(crypto.Randomized) {
		t.Fatalf("after rotate: %+v", k2.Keys())
	}
	if pt, _, err := k2.Decrypt("leads.ssn", stored, nil); err != nil || string(pt) != "123-45-6789" {
		t.Errorf("a value from before the rotation: %v", err)
	}
	if !strings.Contains(out.String(), "2025-02-01T00:00:00Z") {
		t.Errorf("rotate did not list the new keys:\n%s", out.String())
	}

	primary := strconv.FormatUint(uint64(k2.Primary(crypto.Randomized)), 10)
	if err := runKeys([]string{"retire", "--id", primary, "--file", path}, env); !errors.Is(err, crypto.ErrPrimaryKey) {
		t.Errorf("retiring the primary: %v", err)
	}
	old := strconv.FormatUint(uint64(k1.Primary(crypto.Randomized)), 10)
	out.Reset()
	if err := runKeys([]string{"retire", "--id", old, "--file", path}, env); err != nil {
		t.Fatal(err)
	}
	var row string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, old+" ") {
			row = line
		}
	}
	if f := strings.Fields(row); len(f) != 5 || f[3] != "no" || f[4] != "no" {
		t.Errorf("the retired key's row: %q\n%s", row, out.String())
	}
	k3, err := crypto.LoadKeyring(context.Background(), path, ks)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := k3.Decrypt("leads.ssn", stored, nil); !errors.Is(err, crypto.ErrUnknownKey) {
		t.Errorf("a value under the retired key: %v", err)
	}
}

func TestKeysUsageErrors(t *testing.T) {
	var out bytes.Buffer
	env := testKeysEnv(&out, rawKey(make([]byte, 32)), time.Now())
	for _, args := range [][]string{
		nil,
		{"destroy"},
		{"init"},
		{"show", "--file", ""},
		{"retire", "--file", "k.json"},
		{"retire", "--file", "k.json", "--id", "4294967296"},
		{"show", "--file", "k.json", "extra"},
		{"init", "--file", "k.json", "--bogus"},
	} {
		var code exitCode
		if err := runKeys(args, env); !errors.As(err, &code) || code != 2 {
			t.Errorf("keys %q: %v, want exit status 2", args, err)
		}
	}
	if err := runKeys([]string{"show", "--file", filepath.Join(t.TempDir(), "missing.json")}, env); err == nil {
		t.Error("show of a missing file succeeded")
	}
	out.Reset()
	if err := runKeys([]string{"help"}, env); err != nil || !strings.Contains(out.String(), "ENCRYPTION_SALT") {
		t.Errorf("keys help: %v\n%s", err, out.String())
	}
}
