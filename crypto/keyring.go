package crypto

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/daead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// Prefix starts every stored value; the rest is the standard base64 (with
// padding) of a Tink ciphertext. The "1" is the version of this layout.
const Prefix = "pgs1:"

// Tink's TINK output prefix: a version byte and the 4-byte big-endian key id.
const (
	tinkStartByte  = 0x01
	tinkPrefixSize = 5
)

// The key types each keyset may hold.
const (
	aesGCMTypeURL = "type.googleapis.com/google.crypto.tink.AesGcmKey"
	aesSIVTypeURL = "type.googleapis.com/google.crypto.tink.AesSivKey"
)

// Errors callers map with errors.Is. The messages built around them name
// columns and key ids, never values or key material.
var (
	// ErrNotCiphertext: the value is not in the stored form (no "pgs1:"
	// prefix, bad base64, or too short to hold a Tink ciphertext).
	ErrNotCiphertext = errors.New("crypto: not an encrypted value")
	// ErrAuthentication: the value does not authenticate under the key its
	// id names: a different keyring with a colliding id, another column's
	// value, or a tampered value.
	ErrAuthentication = errors.New("crypto: value does not authenticate (wrong key, wrong column, or tampered)")
	// ErrUnknownKey: the value's key id is not in the keyring, or the key
	// is retired.
	ErrUnknownKey = errors.New("crypto: unknown or retired key")
	// ErrPrimaryKey: the operation is refused for a primary key (a primary
	// key cannot be retired; rotate first).
	ErrPrimaryKey = errors.New("crypto: refused for a primary key")
	// ErrNoColumn: Encrypt or Decrypt was called without a column name,
	// which would leave values unbound to their column.
	ErrNoColumn = errors.New("crypto: no column name")
)

// Kind is the kind of encryption a key does.
type Kind uint8

// The kinds of key. The zero Kind is neither.
const (
	// Randomized is AES-256-GCM: equal plaintexts encrypt differently.
	Randomized Kind = iota + 1
	// Deterministic is AES-SIV: equal plaintexts in one column under one
	// key encrypt equally, so they can be searched by equality.
	Deterministic
)

// String returns "randomized" or "deterministic".
func (k Kind) String() string {
	switch k {
	case Randomized:
		return "randomized"
	case Deterministic:
		return "deterministic"
	default:
		return fmt.Sprintf("Kind(%d)", uint8(k))
	}
}

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, error) {
	switch s {
	case "randomized":
		return Randomized, nil
	case "deterministic":
		return Deterministic, nil
	default:
		return 0, fmt.Errorf("crypto: unknown key kind %q (want randomized or deterministic)", s)
	}
}

func (k Kind) valid() bool { return k == Randomized || k == Deterministic }

// index is k's slot in the per-kind arrays of a Keyring.
func (k Kind) index() int { return int(k) - 1 }

// numKinds is the number of keysets in a Keyring.
const numKinds = 2

// allKinds lists the kinds in index order.
func allKinds() [numKinds]Kind { return [numKinds]Kind{Randomized, Deterministic} }

func (k Kind) template() *tinkpb.KeyTemplate {
	if k == Deterministic {
		return daead.AESSIVKeyTemplate()
	}
	return aead.AES256GCMKeyTemplate()
}

func (k Kind) typeURL() string {
	if k == Deterministic {
		return aesSIVTypeURL
	}
	return aesGCMTypeURL
}

// KeyInfo describes one key of a Keyring, without its material.
type KeyInfo struct {
	ID      uint32    // Tink key id, carried in every ciphertext
	Kind    Kind      // which keyset holds it
	Created time.Time // UTC
	Primary bool      // new values are encrypted with it
	Enabled bool      // false once retired
}

// keyMeta is what the keyring file records of a key beside the keysets.
type keyMeta struct {
	ID      uint32
	Kind    Kind
	Created time.Time
}

// key is one key of a Keyring with the primitive that uses it (nil for a
// retired key).
type key struct {
	info  KeyInfo
	aead  tink.AEAD              // Randomized, enabled
	daead tink.DeterministicAEAD // Deterministic, enabled
}

// Keyring is an immutable snapshot of both keysets: safe for concurrent
// use; Rotate and Retire return a new Keyring and leave this one as it was.
// Make one with NewKeyring or LoadKeyring; the zero Keyring is not usable.
type Keyring struct {
	handles [numKinds]*keyset.Handle
	meta    []keyMeta // every key, oldest first: the file's key list
	keys    []*key    // in meta order
	byID    map[uint32]*key
	primary [numKinds]*key
	// detAll is every enabled deterministic key, primary first.
	detAll []*key
}

// NewKeyring returns a keyring with one fresh key of each kind, both
// primary, created at now.
func NewKeyring(now time.Time) (*Keyring, error) {
	var handles [numKinds]*keyset.Handle
	var meta []keyMeta
	taken := map[uint32]bool{}
	for _, kind := range allKinds() {
		m := keyset.NewManager()
		id, err := addPrimary(m, kind, taken)
		if err != nil {
			return nil, err
		}
		if handles[kind.index()], err = m.Handle(); err != nil {
			return nil, fmt.Errorf("crypto: new %s keyset: %w", kind, err)
		}
		meta = append(meta, keyMeta{ID: id, Kind: kind, Created: normalizeTime(now)})
	}
	return build(handles, meta)
}

// Rotate returns a keyring with a new primary key in each keyset, created
// at now. The former primaries stay enabled, so what they encrypted still
// decrypts.
func (k *Keyring) Rotate(now time.Time) (*Keyring, error) {
	handles := k.handles
	meta := slices.Clone(k.meta)
	taken := make(map[uint32]bool, len(k.byID))
	for id := range k.byID {
		taken[id] = true
	}
	for _, kind := range allKinds() {
		m := keyset.NewManagerFromHandle(k.handles[kind.index()])
		id, err := addPrimary(m, kind, taken)
		if err != nil {
			return nil, err
		}
		if handles[kind.index()], err = m.Handle(); err != nil {
			return nil, fmt.Errorf("crypto: rotating the %s keyset: %w", kind, err)
		}
		meta = append(meta, keyMeta{ID: id, Kind: kind, Created: normalizeTime(now)})
	}
	return build(handles, meta)
}

// Retire returns a keyring in which key id is disabled: values under it no
// longer decrypt (ErrUnknownKey), and it stays in the file, disabled, so
// its id is never reused. Retiring a primary key is refused
// (ErrPrimaryKey), and so is an id not in the keyring (ErrUnknownKey).
// Retiring a retired key changes nothing.
func (k *Keyring) Retire(id uint32) (*Keyring, error) {
	kk := k.byID[id]
	switch {
	case kk == nil:
		return nil, fmt.Errorf("%w: key %d is not in the keyring", ErrUnknownKey, id)
	case kk.info.Primary:
		return nil, fmt.Errorf("%w: key %d is the primary %s key; rotate, re-encrypt, then retire it", ErrPrimaryKey, id, kk.info.Kind)
	case !kk.info.Enabled:
		return k, nil
	}
	handles := k.handles
	i := kk.info.Kind.index()
	m := keyset.NewManagerFromHandle(k.handles[i])
	if err := m.Disable(id); err != nil {
		return nil, fmt.Errorf("crypto: retiring key %d: %w", id, err)
	}
	var err error
	if handles[i], err = m.Handle(); err != nil {
		return nil, fmt.Errorf("crypto: retiring key %d: %w", id, err)
	}
	return build(handles, slices.Clone(k.meta))
}

// addPrimary adds a new key of kind to m and makes it primary. Its id is
// not in taken (ids are unique across both keysets, so an id alone names
// a key), and is added to it.
func addPrimary(m *keyset.Manager, kind Kind, taken map[uint32]bool) (uint32, error) {
	for {
		id, err := m.Add(kind.template())
		if err != nil {
			return 0, fmt.Errorf("crypto: new %s key: %w", kind, err)
		}
		if taken[id] {
			// The other keyset has it; m will not hand it out again.
			if err := m.Delete(id); err != nil {
				return 0, fmt.Errorf("crypto: new %s key: %w", kind, err)
			}
			continue
		}
		taken[id] = true
		if err := m.SetPrimary(id); err != nil {
			return 0, fmt.Errorf("crypto: new %s key: %w", kind, err)
		}
		return id, nil
	}
}

func normalizeTime(t time.Time) time.Time { return t.UTC().Round(0) }

// build checks that the keysets and the key list agree and makes the
// per-key primitives.
func build(handles [numKinds]*keyset.Handle, meta []keyMeta) (*Keyring, error) {
	k := &Keyring{handles: handles, meta: meta, byID: make(map[uint32]*key, len(meta))}
	for _, m := range meta {
		if !m.Kind.valid() {
			return nil, fmt.Errorf("crypto: key %d has no valid kind", m.ID)
		}
		if k.byID[m.ID] != nil {
			return nil, fmt.Errorf("crypto: key id %d is listed twice", m.ID)
		}
		kk := &key{info: KeyInfo{ID: m.ID, Kind: m.Kind, Created: m.Created}}
		k.byID[m.ID] = kk
		k.keys = append(k.keys, kk)
	}
	for _, kind := range allKinds() {
		h := handles[kind.index()]
		if h == nil {
			return nil, fmt.Errorf("crypto: no %s keyset", kind)
		}
		info := h.KeysetInfo()
		seen := 0
		for _, ki := range info.GetKeyInfo() {
			id := ki.GetKeyId()
			kk := k.byID[id]
			switch {
			case kk == nil || kk.info.Kind != kind:
				return nil, fmt.Errorf("crypto: %s key %d is not in the key list", kind, id)
			case ki.GetTypeUrl() != kind.typeURL():
				return nil, fmt.Errorf("crypto: %s key %d is of type %s, want %s", kind, id, ki.GetTypeUrl(), kind.typeURL())
			case ki.GetOutputPrefixType() != tinkpb.OutputPrefixType_TINK:
				return nil, fmt.Errorf("crypto: %s key %d has output prefix %s, want TINK", kind, id, ki.GetOutputPrefixType())
			}
			switch ki.GetStatus() {
			case tinkpb.KeyStatusType_ENABLED:
				kk.info.Enabled = true
			case tinkpb.KeyStatusType_DISABLED:
			default:
				return nil, fmt.Errorf("crypto: %s key %d has status %s", kind, id, ki.GetStatus())
			}
			if id == info.GetPrimaryKeyId() {
				if !kk.info.Enabled {
					return nil, fmt.Errorf("crypto: the primary %s key %d is disabled", kind, id)
				}
				kk.info.Primary = true
				k.primary[kind.index()] = kk
			}
			seen++
		}
		listed := 0
		for _, m := range meta {
			if m.Kind == kind {
				listed++
			}
		}
		if seen != listed {
			return nil, fmt.Errorf("crypto: the key list names %d %s keys, the keyset holds %d", listed, kind, seen)
		}
		if k.primary[kind.index()] == nil {
			return nil, fmt.Errorf("crypto: the %s keyset has no primary key", kind)
		}
	}
	for _, kk := range k.keys {
		if !kk.info.Enabled {
			continue
		}
		single, err := singleKey(handles[kk.info.Kind.index()], kk.info.ID)
		if err != nil {
			return nil, err
		}
		switch kk.info.Kind {
		case Randomized:
			kk.aead, err = aead.New(single)
		case Deterministic:
			kk.daead, err = daead.New(single)
		}
		if err != nil {
			return nil, fmt.Errorf("crypto: %s key %d: %w", kk.info.Kind, kk.info.ID, err)
		}
	}
	det := k.primary[Deterministic.index()]
	k.detAll = append(k.detAll, det)
	for _, kk := range k.keys {
		if kk.info.Kind == Deterministic && kk.info.Enabled && kk != det {
			k.detAll = append(k.detAll, kk)
		}
	}
	return k, nil
}

// singleKey returns a handle holding only key id of h, as its primary: the
// primitive made from it encrypts and decrypts with exactly that key, so
// Decrypt knows which key did it.
func singleKey(h *keyset.Handle, id uint32) (*keyset.Handle, error) {
	m := keyset.NewManagerFromHandle(h)
	if err := m.SetPrimary(id); err != nil {
		return nil, fmt.Errorf("crypto: key %d: %w", id, err)
	}
	for i := 0; i < h.Len(); i++ {
		e, err := h.Entry(i)
		if err != nil {
			return nil, fmt.Errorf("crypto: key %d: %w", id, err)
		}
		if e.KeyID() != id {
			if err := m.Delete(e.KeyID()); err != nil {
				return nil, fmt.Errorf("crypto: key %d: %w", id, err)
			}
		}
	}
	single, err := m.Handle()
	if err != nil {
		return nil, fmt.Errorf("crypto: key %d: %w", id, err)
	}
	return single, nil
}

// Keys returns every key of both kinds, oldest first.
func (k *Keyring) Keys() []KeyInfo {
	out := make([]KeyInfo, len(k.keys))
	for i, kk := range k.keys {
		out[i] = kk.info
	}
	return out
}

// Primary returns the id of the primary key of kind (0 for a kind that is
// neither Randomized nor Deterministic).
func (k *Keyring) Primary(kind Kind) uint32 {
	if !kind.valid() {
		return 0
	}
	return k.primary[kind.index()].info.ID
}

// Kind returns the kind of key id, retired or not, and whether the keyring
// has it.
func (k *Keyring) Kind(id uint32) (Kind, bool) {
	kk := k.byID[id]
	if kk == nil {
		return 0, false
	}
	return kk.info.Kind, true
}

// Encrypt encrypts plaintext for column with the primary randomized key and
// appends the stored form to dst.
func (k *Keyring) Encrypt(column string, plaintext, dst []byte) ([]byte, error) {
	if column == "" {
		return dst, ErrNoColumn
	}
	kk := k.primary[Randomized.index()]
	ct, err := kk.aead.Encrypt(plaintext, []byte(column))
	if err != nil {
		return dst, fmt.Errorf("crypto: encrypting for %s with key %d: %w", column, kk.info.ID, err)
	}
	return appendStored(dst, ct), nil
}

// EncryptDeterministic encrypts plaintext for column with the primary
// deterministic key and appends the stored form to dst. Equal plaintext
// and column give equal stored values while the primary stays the same.
func (k *Keyring) EncryptDeterministic(column string, plaintext, dst []byte) ([]byte, error) {
	if column == "" {
		return dst, ErrNoColumn
	}
	return k.encryptDet(k.primary[Deterministic.index()], column, plaintext, dst)
}

// EncryptDeterministicAll appends to dst the stored form under every
// enabled deterministic key, primary first: what an equality search must
// match while a rotation is under way.
func (k *Keyring) EncryptDeterministicAll(column string, plaintext []byte, dst [][]byte) ([][]byte, error) {
	if column == "" {
		return dst, ErrNoColumn
	}
	n := len(dst)
	for _, kk := range k.detAll {
		v, err := k.encryptDet(kk, column, plaintext, nil)
		if err != nil {
			return dst[:n], err
		}
		dst = append(dst, v)
	}
	return dst, nil
}

func (k *Keyring) encryptDet(kk *key, column string, plaintext, dst []byte) ([]byte, error) {
	ct, err := kk.daead.EncryptDeterministically(plaintext, []byte(column))
	if err != nil {
		return dst, fmt.Errorf("crypto: encrypting for %s with key %d: %w", column, kk.info.ID, err)
	}
	return appendStored(dst, ct), nil
}

func appendStored(dst, ct []byte) []byte {
	dst = append(dst, Prefix...)
	return base64.StdEncoding.AppendEncode(dst, ct)
}

// Decrypt accepts a stored value of either kind (the key id says which
// keyset holds the key), appends the plaintext to dst and says which key
// decrypted it. On error it returns dst as it was (never any part of the
// value) and an error wrapping ErrNoColumn, ErrNotCiphertext, ErrUnknownKey
// or ErrAuthentication.
//
// The stored form must be exactly what Encrypt writes: canonical base64
// with no line breaks, so a value has one spelling and equality on stored
// deterministic values means equality of plaintexts.
//
// Decrypt uses dst's spare capacity as scratch space, so dst must not
// share memory with stored.
func (k *Keyring) Decrypt(column string, stored, dst []byte) (plaintext []byte, keyID uint32, err error) {
	if column == "" {
		return dst, 0, ErrNoColumn
	}
	if !IsCiphertext(stored) {
		return dst, 0, fmt.Errorf("%w: no %s prefix", ErrNotCiphertext, Prefix)
	}
	body := stored[len(Prefix):]
	if bytes.ContainsAny(body, "\r\n") {
		// encoding/base64 skips line breaks; refuse them so a value has a
		// single spelling.
		return dst, 0, fmt.Errorf("%w: line break in the base64", ErrNotCiphertext)
	}
	// Decode into dst's spare capacity: the plaintext, shorter than the
	// ciphertext, later overwrites it there.
	n := len(dst)
	dst = slices.Grow(dst, base64.StdEncoding.DecodedLen(len(body)))
	raw := dst[n:cap(dst)]
	m, err := base64.StdEncoding.Strict().Decode(raw, body)
	if err != nil {
		return dst[:n], 0, fmt.Errorf("%w: bad base64", ErrNotCiphertext)
	}
	raw = raw[:m]
	if len(raw) <= tinkPrefixSize || raw[0] != tinkStartByte {
		return dst[:n], 0, fmt.Errorf("%w: no Tink key id", ErrNotCiphertext)
	}
	id := binary.BigEndian.Uint32(raw[1:tinkPrefixSize])
	kk := k.byID[id]
	switch {
	case kk == nil:
		return dst[:n], 0, fmt.Errorf("%w: key %d is not in the keyring", ErrUnknownKey, id)
	case !kk.info.Enabled:
		return dst[:n], 0, fmt.Errorf("%w: key %d is retired", ErrUnknownKey, id)
	}
	var pt []byte
	if kk.info.Kind == Randomized {
		pt, err = kk.aead.Decrypt(raw, []byte(column))
	} else {
		pt, err = kk.daead.DecryptDeterministically(raw, []byte(column))
	}
	if err != nil {
		return dst[:n], 0, fmt.Errorf("%w: column %s, key %d", ErrAuthentication, column, id)
	}
	// append copies with memmove, so pt may alias raw.
	return append(dst[:n], pt...), id, nil
}

// IsCiphertext reports whether stored has the "pgs1:" prefix of the stored
// form (it does not check the rest).
func IsCiphertext(stored []byte) bool {
	return len(stored) >= len(Prefix) && string(stored[:len(Prefix)]) == Prefix
}

// KeyID returns the key id of a stored value without decrypting it: bytes
// 2 to 5 of the base64 after the prefix (its first 8 characters decode to
// 0x01, the 4 id bytes and one more). ok is false if stored does not start
// like a stored value.
func KeyID(stored []byte) (id uint32, ok bool) {
	const chars = 8 // base64 characters holding the first 6 bytes
	if !IsCiphertext(stored) || len(stored) < len(Prefix)+chars {
		return 0, false
	}
	var head [6]byte
	n, err := base64.StdEncoding.Decode(head[:], stored[len(Prefix):len(Prefix)+chars])
	if err != nil || n != len(head) || head[0] != tinkStartByte {
		return 0, false
	}
	return binary.BigEndian.Uint32(head[1:tinkPrefixSize]), true
}
