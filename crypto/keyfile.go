package crypto

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead/subtle"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// The keyring file's format, as the package documentation describes it.
const (
	fileFormat  = "pgshield-keyring"
	fileVersion = 1
	// maxFileSize bounds what LoadKeyring reads: thousands of keys fit.
	maxFileSize = 4 << 20
	// adPrefix starts the associated data of everything encrypted with the
	// master key, binding it to this file format and version.
	adPrefix       = "pgshield-keyring v1"
	masterCheckAD  = adPrefix + " master key check"
	createdLayout  = time.RFC3339Nano
	fileMode       = 0o600
	tempFilePrefix = ".tmp-"
)

// Errors of LoadKeyring, for errors.Is.
var (
	// ErrWrongMasterKey: the keyring file does not decrypt with the master
	// key (a wrong passphrase or salt).
	ErrWrongMasterKey = errors.New("crypto: wrong master key")
	// ErrKeyringAltered: the file decrypts with the master key, but its
	// keysets or its key list were changed after it was written.
	ErrKeyringAltered = errors.New("crypto: keyring file altered")
	// ErrBadKeyringFile: the file is not a keyring file this version reads.
	ErrBadKeyringFile = errors.New("crypto: not a valid keyring file")
)

// keyringFile is the JSON of the keyring file.
type keyringFile struct {
	Format         string          `json:"format"`
	Version        int             `json:"version"`
	MasterKeyCheck []byte          `json:"master_key_check"` // standard base64 in JSON
	Keys           []fileKey       `json:"keys"`
	Randomized     json.RawMessage `json:"randomized"`
	Deterministic  json.RawMessage `json:"deterministic"`
}

type fileKey struct {
	ID      uint32 `json:"id"`
	Kind    string `json:"kind"`
	Created string `json:"created"` // RFC 3339, UTC
}

func (f *keyringFile) keyset(kind Kind) *json.RawMessage {
	if kind == Deterministic {
		return &f.Deterministic
	}
	return &f.Randomized
}

// keysetAD is the associated data of the keyset of kind: it binds the
// keyset to its kind and to the key list (ids, kinds, creation times) in
// the file's order.
func keysetAD(kind Kind, meta []keyMeta) []byte {
	b := make([]byte, 0, len(adPrefix)+16+len(meta)*56)
	b = append(b, adPrefix...)
	b = append(b, 0)
	b = append(b, kind.String()...)
	b = append(b, 0)
	for _, m := range meta {
		b = strconv.AppendUint(b, uint64(m.ID), 10)
		b = append(b, ' ')
		b = append(b, m.Kind.String()...)
		b = append(b, ' ')
		b = m.Created.UTC().AppendFormat(b, createdLayout)
		b = append(b, '\n')
	}
	return b
}

// describe names where a KeySource's key comes from, for error messages.
func describe(ks KeySource) string {
	if s, ok := ks.(fmt.Stringer); ok {
		return s.String()
	}
	return "master key"
}

// masterAEAD returns the AEAD of the master key ks supplies.
func masterAEAD(ctx context.Context, ks KeySource) (tink.AEAD, error) {
	key, err := ks.MasterKey(ctx)
	if err != nil {
		return nil, err
	}
	if len(key) != MasterKeySize {
		return nil, fmt.Errorf("crypto: the %s has %d bytes, want %d", describe(ks), len(key), MasterKeySize)
	}
	a, err := subtle.NewAESGCM(key)
	if err != nil {
		return nil, fmt.Errorf("crypto: master key: %w", err)
	}
	return a, nil
}

// LoadKeyring reads the keyring file at path and decrypts it with the
// master key from ks. A file that does not decrypt with that key gives
// ErrWrongMasterKey; one that does but was edited afterwards gives
// ErrKeyringAltered; one that is not a keyring file, ErrBadKeyringFile.
func LoadKeyring(ctx context.Context, path string, ks KeySource) (*Keyring, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	var f keyringFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadKeyringFile, path, err)
	}
	if f.Format != fileFormat {
		return nil, fmt.Errorf("%w: %s: format %q, want %q", ErrBadKeyringFile, path, f.Format, fileFormat)
	}
	if f.Version != fileVersion {
		return nil, fmt.Errorf("%w: %s: version %d, this pgshield reads version %d", ErrBadKeyringFile, path, f.Version, fileVersion)
	}
	meta := make([]keyMeta, 0, len(f.Keys))
	for _, fk := range f.Keys {
		kind, err := ParseKind(fk.Kind)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: key %d: %w", ErrBadKeyringFile, path, fk.ID, err)
		}
		created, err := time.Parse(createdLayout, fk.Created)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: key %d: created: %w", ErrBadKeyringFile, path, fk.ID, err)
		}
		meta = append(meta, keyMeta{ID: fk.ID, Kind: kind, Created: normalizeTime(created)})
	}
	master, err := masterAEAD(ctx, ks)
	if err != nil {
		return nil, fmt.Errorf("crypto: loading %s: %w", path, err)
	}
	if _, err := master.Decrypt(f.MasterKeyCheck, []byte(masterCheckAD)); err != nil {
		return nil, fmt.Errorf("%w: the keyset file %s does not decrypt with the %s: wrong key or salt?",
			ErrWrongMasterKey, path, describe(ks))
	}
	var handles [numKinds]*keyset.Handle
	for _, kind := range allKinds() {
		raw := *f.keyset(kind)
		if len(raw) == 0 || string(raw) == "null" {
			return nil, fmt.Errorf("%w: %s: no %s keyset", ErrBadKeyringFile, path, kind)
		}
		h, err := keyset.ReadWithAssociatedData(keyset.NewJSONReader(bytes.NewReader(raw)), master, keysetAD(kind, meta))
		if err != nil {
			// The master key is right (the check decrypted), so the keyset or
			// the key list bound to it was changed.
			return nil, fmt.Errorf("%w: %s: the %s keyset does not authenticate with the key list beside it: the file was edited or damaged",
				ErrKeyringAltered, path, kind)
		}
		handles[kind.index()] = h
	}
	k, err := build(handles, meta)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadKeyringFile, path, err)
	}
	return k, nil
}

func readFile(path string) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("crypto: keyring file: %w", err)
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("crypto: reading keyring file %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrBadKeyringFile, path, maxFileSize)
	}
	return data, nil
}

// Save writes the keyring to path, encrypted with the master key from ks,
// in the format the package documentation describes. It replaces path
// atomically (a temporary file beside it, then a rename) with mode 0600.
func (k *Keyring) Save(ctx context.Context, path string, ks KeySource) error {
	data, err := k.marshal(ctx, ks)
	if err != nil {
		return fmt.Errorf("crypto: saving %s: %w", path, err)
	}
	return writeFileAtomic(path, data)
}

func (k *Keyring) marshal(ctx context.Context, ks KeySource) ([]byte, error) {
	master, err := masterAEAD(ctx, ks)
	if err != nil {
		return nil, err
	}
	f := keyringFile{Format: fileFormat, Version: fileVersion}
	if f.MasterKeyCheck, err = master.Encrypt(nil, []byte(masterCheckAD)); err != nil {
		return nil, fmt.Errorf("master key check: %w", err)
	}
	for _, m := range k.meta {
		f.Keys = append(f.Keys, fileKey{ID: m.ID, Kind: m.Kind.String(), Created: m.Created.UTC().Format(createdLayout)})
	}
	for _, kind := range allKinds() {
		var buf bytes.Buffer
		if err := k.handles[kind.index()].WriteWithAssociatedData(keyset.NewJSONWriter(&buf), master, keysetAD(kind, k.meta)); err != nil {
			return nil, fmt.Errorf("encrypting the %s keyset: %w", kind, err)
		}
		*f.keyset(kind) = buf.Bytes()
	}
	data, err := json.MarshalIndent(&f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// writeFileAtomic writes data to a new file beside path and renames it
// over path, so a reader sees the old file or the new one, never a part.
func writeFileAtomic(path string, data []byte) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+tempFilePrefix+"*")
	if err != nil {
		return fmt.Errorf("crypto: saving %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(fileMode); err != nil {
		return fmt.Errorf("crypto: saving %s: %w", path, err)
	}
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("crypto: saving %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("crypto: saving %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("crypto: saving %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("crypto: saving %s: %w", path, err)
	}
	// Make the rename durable; a directory that cannot be synced (some
	// file systems) does not undo a save that has happened.
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
