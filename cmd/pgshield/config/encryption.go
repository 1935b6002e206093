package config

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgshield/pgshield/admin"
	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/proxy"
)

// Encryption is the encryption section: the keyring, the encrypted
// columns, and how REENCRYPT works (docs/encryption.md).
type Encryption struct {
	// KeysetFile is the keyring (pgshield keys init), relative to the
	// configuration's directory; it is encrypted with the master key
	// derived from ENCRYPTION_KEY and ENCRYPTION_SALT.
	KeysetFile string `yaml:"keyset_file"`
	// KeepKeys is how many of the newest keys of each kind ROTATE KEY
	// keeps; older ones no row uses any more are retired by it.
	KeepKeys int `yaml:"keep_keys"`
	// Reencrypt paces the REENCRYPT job.
	Reencrypt Reencrypt `yaml:"reencrypt"`
	// Columns are the encrypted columns: database → table → column.
	Columns map[string]map[string]map[string]proxy.EncryptedColumn `yaml:"columns"`
}

// Reencrypt paces the REENCRYPT job.
type Reencrypt struct {
	BatchRows int           `yaml:"batch_rows"` // rows rewritten per transaction
	Pause     time.Duration `yaml:"pause"`      // between batches
}

func (e Encryption) withDefaults() Encryption {
	if e.KeepKeys == 0 {
		e.KeepKeys = admin.DefaultKeepKeys
	}
	if e.Reencrypt.BatchRows == 0 {
		e.Reencrypt.BatchRows = admin.DefaultReencryptBatch
	}
	if e.Reencrypt.Pause == 0 {
		e.Reencrypt.Pause = admin.DefaultReencryptPause
	}
	return e
}

// Enabled reports whether any column is encrypted.
func (e Encryption) Enabled() bool {
	for _, tables := range e.Columns {
		for _, cols := range tables {
			if len(cols) > 0 {
				return true
			}
		}
	}
	return false
}

func (e Encryption) validate() error {
	var errs []error
	if e.Enabled() && e.KeysetFile == "" {
		errs = append(errs, errors.New("encryption.keyset_file: required when encryption.columns names a column (create one with pgshield keys init)"))
	}
	if e.KeepKeys < 1 {
		errs = append(errs, fmt.Errorf("encryption.keep_keys: must be at least 1, not %d", e.KeepKeys))
	}
	if e.Reencrypt.BatchRows < 1 {
		errs = append(errs, fmt.Errorf("encryption.reencrypt.batch_rows: must be at least 1, not %d", e.Reencrypt.BatchRows))
	}
	for _, db := range slices.Sorted(maps.Keys(e.Columns)) {
		for _, table := range slices.Sorted(maps.Keys(e.Columns[db])) {
			for _, col := range slices.Sorted(maps.Keys(e.Columns[db][table])) {
				c := e.Columns[db][table][col]
				if !validPlainType(c.Type) {
					errs = append(errs, fmt.Errorf("encryption.columns.%s.%s.%s.type %q: want one of %v", db, table, col, c.Type, proxy.PlainTypes()))
				}
				if c.Deterministic && c.Type != "" && c.Type != "text" {
					errs = append(errs, fmt.Errorf("encryption.columns.%s.%s.%s: a deterministic column's plaintext is text (equal values must be written alike)", db, table, col))
				}
			}
		}
	}
	return errors.Join(errs...)
}

func validPlainType(t string) bool {
	if t == "" {
		return true
	}
	for _, n := range proxy.PlainTypes() {
		if n == t {
			return true
		}
	}
	return false
}

func validateMasking(m map[string]map[string]map[string]map[string]string, services []string) error {
	if len(m) == 0 {
		return nil
	}
	var errs []error
	for _, svc := range slices.Sorted(maps.Keys(m)) {
		known := false
		for _, s := range services {
			known = known || s == svc
		}
		if !known {
			errs = append(errs, fmt.Errorf("masking.%s: no such service (services: %v)", svc, services))
		}
		for _, db := range slices.Sorted(maps.Keys(m[svc])) {
			for _, table := range slices.Sorted(maps.Keys(m[svc][db])) {
				for _, col := range slices.Sorted(maps.Keys(m[svc][db][table])) {
					if _, err := crypto.ParseMask(m[svc][db][table][col]); err != nil {
						errs = append(errs, fmt.Errorf("masking.%s.%s.%s.%s: %w", svc, db, table, col, err))
					}
				}
			}
		}
	}
	return errors.Join(errs...)
}

// KeysetPath is the keyring file the configuration names (relative to
// its file's directory); "" without one.
func (f *File) KeysetPath() string {
	if f.Encryption.KeysetFile == "" {
		return ""
	}
	if filepath.IsAbs(f.Encryption.KeysetFile) {
		return f.Encryption.KeysetFile
	}
	if f.Path == "" {
		return f.Encryption.KeysetFile
	}
	return filepath.Join(filepath.Dir(f.Path), f.Encryption.KeysetFile)
}

// LoadEncryption loads the keyring of the configuration and
// returns the encryption and masking to put in force: nil when nothing is
// encrypted or masked. With encrypted columns, a keyring that cannot be
// loaded (no file, no master key in the environment, a wrong one) is an
// error: pgshield does not serve encrypted columns it cannot decrypt.
func (f *File) LoadEncryption(ctx context.Context, getenv func(string) string) (*proxy.Encryption, error) {
	if !f.Encryption.Enabled() && len(f.Masking) == 0 {
		return nil, nil
	}
	var keys *crypto.Keyring
	if f.Encryption.Enabled() {
		var err error
		if keys, err = f.LoadKeyring(ctx, getenv); err != nil {
			return nil, err
		}
	}
	return f.ProxyEncryption(keys)
}

// ParseEncryption reads the encryption and masking sections of a
// configuration (the example application's, in tests) into a File that
// holds only them.
func ParseEncryption(data []byte) (*File, error) {
	var f File
	if err := yaml.Unmarshal(data, &struct {
		Encryption *Encryption                                         `yaml:"encryption"`
		Masking    *map[string]map[string]map[string]map[string]string `yaml:"masking"`
	}{&f.Encryption, &f.Masking}); err != nil {
		return nil, err
	}
	f.Encryption = f.Encryption.withDefaults()
	return &f, f.Encryption.validate()
}

// ProxyEncryption is the encryption and masking of the configuration,
// with keys, as the proxy takes it.
func (f *File) ProxyEncryption(keys *crypto.Keyring) (*proxy.Encryption, error) {
	e := &proxy.Encryption{Keys: keys, Columns: f.Encryption.Columns, Masks: map[string]map[string]map[string]map[string]crypto.Mask{}}
	for svc, dbs := range f.Masking {
		e.Masks[svc] = map[string]map[string]map[string]crypto.Mask{}
		for db, tables := range dbs {
			e.Masks[svc][db] = map[string]map[string]crypto.Mask{}
			for table, cols := range tables {
				e.Masks[svc][db][table] = map[string]crypto.Mask{}
				for col, m := range cols {
					mask, err := crypto.ParseMask(m)
					if err != nil {
						return nil, fmt.Errorf("masking.%s.%s.%s.%s: %w", svc, db, table, col, err)
					}
					e.Masks[svc][db][table][col] = mask
				}
			}
		}
	}
	return e, nil
}

// LoadKeyring loads the keyring file the configuration names, with the
// master key from the environment.
func (f *File) LoadKeyring(ctx context.Context, getenv func(string) string) (*crypto.Keyring, error) {
	kp := f.KeysetPath()
	if kp == "" {
		return nil, errors.New("encryption.keyset_file: not set")
	}
	if _, err := os.Stat(kp); err != nil {
		return nil, fmt.Errorf("encryption.keyset_file: %w (create it with pgshield keys init --file %s)", err, f.Encryption.KeysetFile)
	}
	ks, err := crypto.EnvKeySourceFrom(getenv)
	if err != nil {
		return nil, fmt.Errorf("encryption: %w", err)
	}
	keys, err := crypto.LoadKeyring(ctx, kp, ks)
	if err != nil {
		return nil, fmt.Errorf("encryption: %w", err)
	}
	return keys, nil
}

// Encrypted reports which columns of database are stored encrypted, for
// the policy's generated SQL (policy.SQLFor).
func (f *File) Encrypted(database string) func(table, column string) bool {
	cols := f.Encryption.Columns[database]
	return func(table, column string) bool {
		_, ok := cols[table][column]
		return ok
	}
}
