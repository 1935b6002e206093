package crypto

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// The golden keyring (testdata/keyring-v1.json) and the values stored under
// it (testdata/golden-v1.json) were written by an earlier build and must
// keep loading and decrypting: stored data outlives any one version of
// pgshield. They are test data only, under a test master key.
//
// PGSHIELD_WRITE_CRYPTO_TESTDATA=1 go test ./crypto -run TestWriteTestdata
// writes them anew, with the fuzz seed corpus; do that only on a change of
// the file format version, keeping the old files for the old version.
const (
	goldenKeyring = "testdata/keyring-v1.json"
	goldenValues  = "testdata/golden-v1.json"
	fuzzCorpus    = "testdata/fuzz/FuzzDecrypt"
)

// goldenMaster is the test master key of the golden keyring.
var goldenMaster = fixedKey("pgshield-test-master-key-32bytes")

type goldenValue struct {
	Column    string `json:"column"`
	Plaintext string `json:"plaintext"`
	Stored    string `json:"stored"`
	KeyID     uint32 `json:"key_id"`
	Kind      string `json:"kind"`
	Retired   bool   `json:"retired,omitempty"`
}

// goldenTimes are the creation times of the golden keyring's two rounds.
var goldenTimes = [2]time.Time{
	time.Date(2025, 1, 1, 2, 0, 0, 0, time.UTC),
	time.Date(2025, 4, 1, 2, 0, 0, 123456789, time.UTC),
}

func TestWriteTestdata(t *testing.T) {
	if os.Getenv("PGSHIELD_WRITE_CRYPTO_TESTDATA") != "1" {
		t.Skip("set PGSHIELD_WRITE_CRYPTO_TESTDATA=1 to write the golden files")
	}
	k0, err := NewKeyring(goldenTimes[0])
	if err != nil {
		t.Fatal(err)
	}
	var values []goldenValue
	add := func(k *Keyring, kind Kind, column, plaintext string) {
		v := mustEncrypt(t, k, kind, column, plaintext)
		id, _ := KeyID(v)
		values = append(values, goldenValue{Column: column, Plaintext: plaintext, Stored: string(v), KeyID: id, Kind: kind.String()})
	}
	add(k0, Randomized, "leads.ssn", "123-45-6789")
	add(k0, Deterministic, "leads.email", "test@email.com")
	k1, err := k0.Rotate(goldenTimes[1])
	if err != nil {
		t.Fatal(err)
	}
	add(k1, Randomized, "leads.ssn", "123-45-6789")
	add(k1, Randomized, "leads.credit_card", "4111111111111111")
	add(k1, Randomized, "leads.date_of_birth", "1980-02-29")
	add(k1, Randomized, "carriers.api_key", "")
	add(k1, Deterministic, "leads.email", "test@email.com")
	add(k1, Deterministic, "agents.license_number", "LIC-ÄÖÜ-42")
	retired := k0.Primary(Randomized)
	k2, err := k1.Retire(retired)
	if err != nil {
		t.Fatal(err)
	}
	for i := range values {
		values[i].Retired = values[i].KeyID == retired
	}
	if err := k2.Save(context.Background(), goldenKeyring, goldenMaster); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(goldenKeyring, 0o644); err != nil { // a test file, readable by all
		t.Fatal(err)
	}
	data, err := json.MarshalIndent(values, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenValues, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}

	// The seed corpus: every golden value, and near misses of the stored
	// form.
	valid := values[2].Stored
	raw, _ := base64.StdEncoding.DecodeString(valid[len(Prefix):])
	seeds := map[string][2]string{}
	for i, v := range values {
		seeds[fmt.Sprintf("golden-%d", i)] = [2]string{v.Column, v.Stored}
	}
	flipped := bytes.Clone(raw)
	flipped[len(flipped)-1] ^= 1
	seeds["tag-flipped"] = [2]string{"leads.ssn", Prefix + base64.StdEncoding.EncodeToString(flipped)}
	seeds["other-column"] = [2]string{"leads.credit_card", valid}
	seeds["no-column"] = [2]string{"", valid}
	seeds["line-break"] = [2]string{"leads.ssn", valid[:20] + "\n" + valid[20:]}
	seeds["truncated"] = [2]string{"leads.ssn", valid[:len(valid)-4]}
	seeds["prefix-only"] = [2]string{"leads.ssn", Prefix}
	seeds["header-only"] = [2]string{"leads.ssn", Prefix + base64.StdEncoding.EncodeToString(raw[:tinkPrefixSize])}
	seeds["plaintext"] = [2]string{"leads.ssn", "123-45-6789"}
	seeds["empty"] = [2]string{"leads.ssn", ""}
	if err := os.MkdirAll(fuzzCorpus, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, s := range seeds {
		body := "go test fuzz v1\nstring(" + strconv.Quote(s[0]) + ")\n[]byte(" + strconv.Quote(s[1]) + ")\n"
		if err := os.WriteFile(filepath.Join(fuzzCorpus, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func loadGolden(t testing.TB) (*Keyring, []goldenValue) {
	t.Helper()
	k, err := LoadKeyring(context.Background(), goldenKeyring, goldenMaster)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(goldenValues)
	if err != nil {
		t.Fatal(err)
	}
	var values []goldenValue
	if err := json.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	if len(values) == 0 {
		t.Fatal("no golden values")
	}
	return k, values
}

func TestGolden(t *testing.T) {
	k, values := loadGolden(t)
	keys := k.Keys()
	if len(keys) != 4 {
		t.Fatalf("golden keyring: %+v", keys)
	}
	for i, ki := range keys {
		wantKind := []Kind{Randomized, Deterministic}[i%2]
		if ki.Kind != wantKind || !ki.Created.Equal(goldenTimes[i/2]) || ki.Primary != (i >= 2) || ki.Enabled != (i != 0) {
			t.Errorf("golden key %d: %+v", i, ki)
		}
	}
	for _, v := range values {
		if id, ok := KeyID([]byte(v.Stored)); !ok || id != v.KeyID {
			t.Errorf("%s: KeyID %d, %v; want %d", v.Column, id, ok, v.KeyID)
		}
		pt, id, err := k.Decrypt(v.Column, []byte(v.Stored), nil)
		if v.Retired {
			if !errors.Is(err, ErrUnknownKey) {
				t.Errorf("%s under retired key %d: %v", v.Column, v.KeyID, err)
			}
			continue
		}
		if err != nil || string(pt) != v.Plaintext || id != v.KeyID {
			t.Errorf("%s under key %d: %q by %d, %v", v.Column, v.KeyID, pt, id, err)
		}
		if v.Kind == "deterministic" {
			all, err := k.EncryptDeterministicAll(v.Column, []byte(v.Plaintext), nil)
			if err != nil || !containsValue(all, []byte(v.Stored)) {
				t.Errorf("%s: the golden deterministic value is not among the current ones: %v", v.Column, err)
			}
		}
	}
}
