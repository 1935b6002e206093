package crypto

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/scrypt"
)

// MasterKeySize is the length in bytes of the master key a KeySource
// returns (an AES-256 key).
const MasterKeySize = 32

// The environment variables EnvKeySourceFrom reads, as the operations guide
// names them.
const (
	EnvKey  = "ENCRYPTION_KEY"  // the passphrase
	EnvSalt = "ENCRYPTION_SALT" // the scrypt salt
)

// scrypt cost parameters of EnvKeySource. Changing them changes every
// derived master key, so they are part of the keyring file's contract.
const (
	scryptN = 1 << 15
	scryptR = 8
	scryptP = 1
)

// ErrNoMasterKey is returned when the passphrase or the salt the master key
// is derived from is not set.
var ErrNoMasterKey = errors.New("crypto: no master key")

// KeySource supplies the master key that encrypts the keyring file.
type KeySource interface {
	// MasterKey returns the 32-byte key that encrypts the keyset file.
	MasterKey(ctx context.Context) ([]byte, error)
}

// EnvKeySource derives the master key with scrypt (N=1<<15, r=8, p=1, 32
// bytes) from ENCRYPTION_KEY (the passphrase) and ENCRYPTION_SALT (the
// salt), the environment variables the operations guide names. Both are
// used as the bytes of the strings given.
//
// Its String and GoString methods never show the passphrase or the salt,
// so printing one by mistake leaks nothing.
type EnvKeySource struct{ Key, Salt string }

// EnvKeySourceFrom reads ENCRYPTION_KEY and ENCRYPTION_SALT with getenv
// (os.Getenv, or a map's lookup in a test). The error for an unset or empty
// variable names it, never the value of the other; it wraps ErrNoMasterKey.
func EnvKeySourceFrom(getenv func(string) string) (EnvKeySource, error) {
	ks := EnvKeySource{Key: getenv(EnvKey), Salt: getenv(EnvSalt)}
	if err := ks.check(); err != nil {
		return EnvKeySource{}, err
	}
	return ks, nil
}

func (ks EnvKeySource) check() error {
	var missing []string
	if ks.Key == "" {
		missing = append(missing, EnvKey)
	}
	if ks.Salt == "" {
		missing = append(missing, EnvSalt)
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("%w: %s is not set", ErrNoMasterKey, missing[0])
	default:
		return fmt.Errorf("%w: %s are not set", ErrNoMasterKey, strings.Join(missing, " and "))
	}
}

// MasterKey derives the master key. It costs scrypt's 32 MiB and some tens
// of milliseconds, so callers derive it once per load or save.
func (ks EnvKeySource) MasterKey(ctx context.Context) ([]byte, error) {
	if err := ks.check(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("crypto: deriving the master key: %w", err)
	}
	key, err := scrypt.Key([]byte(ks.Key), []byte(ks.Salt), scryptN, scryptR, scryptP, MasterKeySize)
	if err != nil {
		return nil, fmt.Errorf("crypto: deriving the master key: %w", err)
	}
	return key, nil
}

// String describes where the key comes from, without the secrets; error
// messages use it.
func (EnvKeySource) String() string {
	return "master key from " + EnvKey + " and " + EnvSalt
}

// GoString keeps %#v from printing the passphrase and the salt.
func (EnvKeySource) GoString() string { return "crypto.EnvKeySource{<redacted>}" }
