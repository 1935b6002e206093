package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/crypto"
)

// With encrypted columns and no usable keyring, serve does not start,
// and says why: a wrong master key, none in the environment, no keyring
// file.
func TestServeRefusesWithoutItsKeyring(t *testing.T) {
	dir := t.TempDir()
	keys, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.Save(context.Background(), filepath.Join(dir, "keys.json"), crypto.EnvKeySource{Key: "the right key", Salt: "salt-of-the-test"}); err != nil {
		t.Fatal(err)
	}
	cfg := `listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
metrics_listen: 127.0.0.1:0
users: [{name: app, password: app, service: api}]
databases:
  app: {primary: 127.0.0.1:1, user: app, password: app, server_tls: {mode: disable}}
services:
  api: {max_connections: 2, min_connections: 0}
encryption:
  keyset_file: %s
  columns: {app: {leads: {ssn: {}}}}
`
	for _, tc := range []struct {
		name, keyset, key, salt string
		want                    string
	}{
		{"wrong key", "keys.json", "a wrong key", "salt-of-the-test", "does not decrypt with the master key"},
		{"wrong salt", "keys.json", "the right key", "another salt", "does not decrypt with the master key"},
		{"no key", "keys.json", "", "salt-of-the-test", "ENCRYPTION_KEY"},
		{"no keyring", "missing.json", "the right key", "salt-of-the-test", "pgshield keys init"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "pgshield.yaml")
			if err := os.WriteFile(path, []byte(strings.Replace(cfg, "%s", tc.keyset, 1)), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Setenv(crypto.EnvKey, tc.key)
			t.Setenv(crypto.EnvSalt, tc.salt)
			f, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			started := false
			err = serve(ctx, f, func() (*config.File, error) { return config.Load(path) }, zap.NewNop(), zap.NewAtomicLevel(),
				func(string) { started = true; cancel() })
			if err == nil || started || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve: %v (started %v), want a refusal saying %q", err, started, tc.want)
			}
			if strings.Contains(err.Error(), tc.key) && tc.key != "" || strings.Contains(err.Error(), "salt-of-the-test") {
				t.Errorf("the error shows the master key's material: %v", err)
			}
		})
	}
}
