package crypto

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func env(vars map[string]string) func(string) string {
	return func(name string) string { return vars[name] }
}

func TestEnvKeySourceFrom(t *testing.T) {
	for name, c := range map[string]struct {
		vars    map[string]string
		missing []string
	}{
		"both":    {map[string]string{EnvKey: "pass", EnvSalt: "salt"}, nil},
		"no key":  {map[string]string{EnvSalt: "the-salt-value"}, []string{"ENCRYPTION_KEY"}},
		"no salt": {map[string]string{EnvKey: "the-passphrase"}, []string{"ENCRYPTION_SALT"}},
		"neither": {map[string]string{}, []string{"ENCRYPTION_KEY", "ENCRYPTION_SALT"}},
		"empty":   {map[string]string{EnvKey: "", EnvSalt: "the-salt-value"}, []string{"ENCRYPTION_KEY"}},
	} {
		ks, err := EnvKeySourceFrom(env(c.vars))
		if c.missing == nil {
			if err != nil || ks.Key != "pass" || ks.Salt != "salt" {
				t.Errorf("%s: %+v, %v", name, ks, err)
			}
			continue
		}
		if !errors.Is(err, ErrNoMasterKey) {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for _, v := range c.missing {
			if !strings.Contains(err.Error(), v) {
				t.Errorf("%s: the error does not name %s: %v", name, v, err)
			}
		}
		for _, v := range c.vars {
			if v != "" && strings.Contains(err.Error(), v) {
				t.Errorf("%s: the error shows a value: %v", name, err)
			}
		}
	}
	// MasterKey of an incomplete source fails the same way, without scrypt.
	if _, err := (EnvKeySource{Key: "k"}).MasterKey(context.Background()); !errors.Is(err, ErrNoMasterKey) {
		t.Errorf("MasterKey without a salt: %v", err)
	}
}

// The derivation is scrypt with N=2^15, r=8, p=1 and a 32-byte key: a
// known answer (computed independently with OpenSSL's scrypt) pins the
// parameters, which every existing keyring file depends on.
func TestEnvKeySourceKnownAnswer(t *testing.T) {
	ks := EnvKeySource{Key: "correct horse battery staple", Salt: "pgshield-salt-1"}
	key, err := ks.MasterKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	const want = "31abe7b4a91c4ead39f68dc91383b5069e25c40f34f561d16597d221b8c0eb3b"
	if hex.EncodeToString(key) != want {
		t.Errorf("derived key %x, want %s", key, want)
	}
}

// Printing an EnvKeySource, however it is formatted, shows no secret.
func TestEnvKeySourceRedacted(t *testing.T) {
	ks := EnvKeySource{Key: "the-passphrase", Salt: "the-salt-value"}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, ks)
		if strings.Contains(out, ks.Key) || strings.Contains(out, ks.Salt) {
			t.Errorf("%s shows a secret: %s", verb, out)
		}
	}
	if !strings.Contains(ks.String(), "ENCRYPTION_KEY") {
		t.Errorf("String() = %q", ks.String())
	}
}
