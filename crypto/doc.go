// Package crypto is pgshield's column-encryption layer: it encrypts and
// decrypts the values of sensitive columns, holds the keys that do it
// (a keyring of two Tink keysets, rotated and retired without downtime),
// derives the master key that protects the keyring file, and masks
// plaintext for services that may only see its shape.
//
// It sits below proxy, which calls it on Bind parameters and DataRow
// columns, and beside router, poolmgr, policy and metrics, none of which it
// imports. Apart from reading and writing the keyring file it does no I/O.
//
// # Two kinds of encryption
//
// A Keyring holds two Tink keysets, each with exactly one primary key:
//
//   - Randomized: AES-256-GCM (aead.AES256GCMKeyTemplate). Equal plaintexts
//     give different ciphertexts; the default for every sensitive column.
//   - Deterministic: AES-SIV (daead.AESSIVKeyTemplate). Equal plaintexts in
//     the same column under the same key give equal ciphertexts, so an
//     equality search or a UNIQUE index still works on the stored value.
//
// Both use Tink's TINK output prefix, so every Tink ciphertext starts with
// the byte 0x01 and the 4-byte big-endian id of the key that made it. Key
// ids are unique across both keysets, so the id alone says which keyset,
// and which key in it, decrypts a value.
//
// The column's configured name (such as "leads.ssn") is the associated
// data of every encryption: a value copied into another column does not
// decrypt there.
//
// # Stored form
//
// A stored value is the text
//
//	pgs1:<base64 of the Tink ciphertext>
//
// with the standard base64 alphabet and padding (RFC 4648 section 4). As
// "pgs1:" is 5 characters and the first 8 base64 characters decode to the
// first 6 bytes of the ciphertext (0x01, the 4 key-id bytes, one more), the
// key id of a stored value can be read in SQL without a key:
//
//	substring(decode(substr(col, 6, 8), 'base64') from 2 for 4)
//
// which is how a migration finds the rows still under an old key.
//
// # Rotation
//
// Rotate adds a new primary key to each keyset; older keys still decrypt,
// and EncryptDeterministicAll gives the stored form under every enabled
// deterministic key so that equality searches match rows not yet
// re-encrypted. Once no stored value uses a key any more, Retire disables
// it: it stays in the file (so its id is never reused and its history is
// visible) but no longer decrypts.
//
// # Master key
//
// The keyring file is encrypted with a 32-byte master key from a
// KeySource. EnvKeySource derives it with scrypt (N=2^15, r=8, p=1) from
// the passphrase in ENCRYPTION_KEY and the salt in ENCRYPTION_SALT.
//
// # Keyring file format (version 1)
//
// The file is one JSON object, written with mode 0600 and replaced
// atomically (a temporary file beside it, then a rename):
//
//	{
//	  "format": "pgshield-keyring",
//	  "version": 1,
//	  "master_key_check": "<base64>",
//	  "keys": [
//	    {"id": 2915310761, "kind": "randomized", "created": "2025-01-02T03:04:05.123456789Z"},
//	    {"id": 1183425917, "kind": "deterministic", "created": "2025-01-02T03:04:05.123456789Z"}
//	  ],
//	  "randomized": { <Tink EncryptedKeyset, Tink's JSON form> },
//	  "deterministic": { <Tink EncryptedKeyset, Tink's JSON form> }
//	}
//
// Its fields:
//
//   - master_key_check is AES-256-GCM (12-byte nonce, 16-byte tag) under
//     the master key of an empty plaintext with the associated data
//     "pgshield-keyring v1 master key check": it tells a wrong master key
//     (ErrWrongMasterKey) apart from an altered file (ErrKeyringAltered).
//   - keys lists every key of both keysets, oldest first, with its kind and
//     its creation time (RFC 3339, UTC). Whether a key is primary or enabled
//     is recorded in the keysets themselves.
//   - randomized and deterministic are the keysets as Tink's
//     keyset.Handle.WriteWithAssociatedData writes them (keyset.JSONWriter),
//     encrypted with AES-256-GCM under the master key. The associated data
//     of each is "pgshield-keyring v1", a NUL byte, the kind, a NUL byte,
//     and one line "<id> <kind> <created>\n" per entry of keys in file
//     order, so the keysets cannot be swapped and the metadata cannot be
//     edited without the file failing to load. The "keysetInfo" Tink writes
//     beside each encrypted keyset is informative only and never trusted.
//
// The master key and the key material never appear in errors, logs or
// output; neither do plaintext values.
package crypto
