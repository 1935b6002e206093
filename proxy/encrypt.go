package proxy

import (
	"sync"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/pgshield/pgshield/crypto"
)

// Column encryption and masking, through the Hooks. Values written into
// an encrypted column leave pgshield encrypted (a Query's literals are
// replaced in its text, a Bind's parameters in the Bind, a COPY's fields
// in its data), equality searches on a deterministic column are rewritten
// to compare ciphertexts, and the columns of a result set that come from
// an encrypted column (by RowDescription: table OID and attribute number)
// are decrypted, then masked for the services that see masks. Everything
// else a statement could do with an encrypted column is refused (0A000):
// the database would compute on ciphertext. A statement that names no
// table with an encrypted or masked column costs a lookup per table.

// EncryptedColumn is how one column is stored.
type EncryptedColumn struct {
	// Deterministic: equal plaintexts give equal ciphertexts, so the
	// column can be searched by equality (and be unique); else
	// randomized.
	Deterministic bool `yaml:"deterministic"`
	// Type is the plaintext's type: text (the default), date, integer,
	// numeric or timestamptz. Clients see the column as of that type.
	Type string `yaml:"type"`
	// Name is the associated data every ciphertext of the column is bound
	// to; table.column when empty. Columns that share a name (an archive
	// table's) can hold each other's values.
	Name string `yaml:"name"`
}

// Encryption is the column encryption and masking in force.
type Encryption struct {
	Keys *crypto.Keyring
	// Columns are the encrypted columns: database → table → column.
	Columns map[string]map[string]map[string]EncryptedColumn
	// Masks are what a service sees instead of a column's value: service
	// → database → table → column.
	Masks map[string]map[string]map[string]map[string]crypto.Mask
}

// decryptCounter counts ciphertexts that did not decrypt
// (pgshield_decrypt_failures_total).
type decryptCounter interface {
	DecryptFailed(database, table, column string)
}

// encState is the encryption in force and what it caches.
type encState struct {
	enc      *Encryption
	keys     atomic.Pointer[crypto.Keyring]
	srv      *Server
	failures decryptCounter
	cols     map[string]map[string]map[string]*colSpec // database → table → column
	masked   map[string]map[string]map[string]map[string]*colSpec
	mu       sync.Mutex
	plans    map[string]*lru.Cache[string, *encPlan] // by database, by text
}

// colSpec is one encrypted or masked column, resolved.
type colSpec struct {
	table, column string
	enc           bool
	det           bool
	ad            string // associated data
	typ           plainType
	mask          *crypto.Mask
}

// SetEncryption puts e in force for every session at its next statement
// (nil: none); failures, when set, counts ciphertexts that do not
// decrypt.
func (s *Server) SetEncryption(e *Encryption, failures decryptCounter) {
	if e == nil {
		s.enc.Store(nil)
		s.installHooks()
		return
	}
	es := &encState{enc: e, srv: s, failures: failures, plans: make(map[string]*lru.Cache[string, *encPlan]),
		cols: map[string]map[string]map[string]*colSpec{}, masked: map[string]map[string]map[string]map[string]*colSpec{}}
	es.keys.Store(e.Keys)
	for db, tables := range e.Columns {
		es.cols[db] = map[string]map[string]*colSpec{}
		for table, cols := range tables {
			es.cols[db][table] = map[string]*colSpec{}
			for col, c := range cols {
				ad := c.Name
				if ad == "" {
					ad = table + "." + col
				}
				typ, _ := plainTypeOf(c.Type)
				es.cols[db][table][col] = &colSpec{table: table, column: col, enc: true, det: c.Deterministic, ad: ad, typ: typ}
			}
		}
	}
	for svc, dbs := range e.Masks {
		es.masked[svc] = map[string]map[string]map[string]*colSpec{}
		for db, tables := range dbs {
			es.masked[svc][db] = map[string]map[string]*colSpec{}
			for table, cols := range tables {
				es.masked[svc][db][table] = map[string]*colSpec{}
				for col, m := range cols {
					spec := colSpec{table: table, column: col, typ: plainText}
					if enc := es.cols[db][table][col]; enc != nil {
						spec = *enc
					}
					mask := m
					spec.mask = &mask
					es.masked[svc][db][table][col] = &spec
				}
			}
		}
	}
	s.enc.Store(es)
	s.installHooks()
}

// SetKeyring puts a new keyring in force (after a rotation), keeping the
// columns. It does nothing without encryption.
func (s *Server) SetKeyring(k *crypto.Keyring) {
	if es := s.enc.Load(); es != nil {
		es.keys.Store(k) // plans hold no key: each rewrite reads the keyring in force
	}
}

// Keyring is the keyring in force, nil without encryption.
func (s *Server) Keyring() *crypto.Keyring {
	if es := s.enc.Load(); es != nil {
		return es.keys.Load()
	}
	return nil
}

// EncryptedColumns are the encrypted columns in force (nil without
// encryption), for the console's key commands.
func (s *Server) EncryptedColumns() map[string]map[string]map[string]EncryptedColumn {
	if es := s.enc.Load(); es != nil {
		return es.enc.Columns
	}
	return nil
}

// kept is what the hooks keep on a statement when both the policy and
// encryption are in force.
type kept struct {
	pol *stmtPlan
	enc *encPlan
}

func keptPolicy(k any) *stmtPlan {
	switch v := k.(type) {
	case *stmtPlan:
		return v
	case *kept:
		return v.pol
	}
	return nil
}

func keptEnc(k any) *encPlan {
	switch v := k.(type) {
	case *encPlan:
		return v
	case *kept:
		return v.enc
	}
	return nil
}

// installHooks installs the hooks of what is in force: the policy, the
// encryption, both (the policy judges the plaintext first), or none.
func (s *Server) installHooks() {
	ps, es := s.policy.Load(), s.enc.Load()
	switch {
	case ps == nil && es == nil:
		s.SetHooks(nil)
	case es == nil:
		s.SetHooks(&Hooks{Statement: ps.statement, Bind: ps.bind, CopyData: ps.copyData, CommandComplete: ps.commandComplete})
	case ps == nil:
		s.SetHooks(&Hooks{Statement: es.statement, Bind: es.bind, CopyData: es.copyData, Described: es.described,
			Row: es.row, ParamsDescribed: es.paramsDescribed, CommandComplete: es.commandComplete})
	default:
		s.SetHooks(&Hooks{
			Statement: func(ev StatementEvent) Verdict {
				pv := ps.statement(ev)
				if pv.Refuse != nil {
					return pv
				}
				ev2 := es.statement(ev)
				if ev2.Refuse != nil {
					return ev2
				}
				pol, _ := pv.Keep.(*stmtPlan)
				enc, _ := ev2.Keep.(*encPlan)
				switch {
				case enc == nil:
					ev2.Keep = pv.Keep // a statement encryption has nothing to do with costs nothing more
				case pol != nil:
					ev2.Keep = &kept{pol: pol, enc: enc}
				}
				return ev2
			},
			Bind: func(ev BindEvent) Verdict {
				if v := ps.bind(ev); v.Refuse != nil {
					return v
				}
				return es.bind(ev)
			},
			CopyData: func(ev CopyEvent) Verdict {
				// Each keeps its own state for the COPY.
				st, _ := (*ev.State).(*copyStates)
				if st == nil {
					st = &copyStates{}
					*ev.State = st
				}
				pev := ev
				pev.State = &st.pol
				if v := ps.copyData(pev); v.Refuse != nil {
					return v
				}
				eev := ev
				eev.State = &st.enc
				return es.copyData(eev)
			},
			Described:       es.described,
			Row:             es.row,
			ParamsDescribed: es.paramsDescribed,
			CommandComplete: func(ev CompleteEvent) {
				ps.commandComplete(ev)
				es.commandComplete(ev)
			},
		})
	}
}

// copyStates are the policy's and the encryption's states of one COPY.
type copyStates struct{ pol, enc any }
