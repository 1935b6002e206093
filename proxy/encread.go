package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/internal/wire"
)

// The read side of column encryption: the columns of a result set are
// mapped to table columns by their RowDescription (table OID and
// attribute number, through the catalog), and those of an encrypted or
// masked column are decrypted, then masked, in each DataRow. The client
// is told the plaintext's type. Result sets with no such column are
// forwarded as bytes.

// rowPlan is what to do with the columns of one result set.
type rowPlan struct {
	acts []fieldAct // by column index, ascending
	db   string
	// Buffers reused from row to row of the result set (the Row hook's
	// answer is copied into its frame before the next row is read).
	out, plain, masked []byte
	// unknown: the catalog could not be read, so the result's columns
	// cannot be told apart; its rows are refused.
	unknown bool
}

// fieldAct is one column to decrypt or mask.
type fieldAct struct {
	idx    int
	col    *colSpec
	binary bool // the client reads it in binary format
}

// rowDescField is one field of a RowDescription, in place.
type rowDescField struct {
	at               int // offset of the table OID in the body
	tableOID         uint32
	attnum           int16
	format           int16
	typeOID, typmod  uint32
	typlen           int16
	nameStart, after int
}

// parseRowDesc splits a RowDescription body into its fields.
func parseRowDesc(body []byte, dst []rowDescField) ([]rowDescField, bool) {
	if len(body) < 2 {
		return dst, false
	}
	n := int(binary.BigEndian.Uint16(body))
	i := 2
	for k := 0; k < n; k++ {
		start := i
		for i < len(body) && body[i] != 0 {
			i++
		}
		i++ // the name's NUL
		if i+18 > len(body) {
			return dst, false
		}
		f := rowDescField{at: i, nameStart: start}
		f.tableOID = binary.BigEndian.Uint32(body[i:])
		f.attnum = int16(binary.BigEndian.Uint16(body[i+4:]))
		f.typeOID = binary.BigEndian.Uint32(body[i+6:])
		f.typlen = int16(binary.BigEndian.Uint16(body[i+10:]))
		f.typmod = binary.BigEndian.Uint32(body[i+12:])
		f.format = int16(binary.BigEndian.Uint16(body[i+16:]))
		i += 18
		f.after = i
		dst = append(dst, f)
	}
	return dst, i == len(body)
}

// spec is the encrypted or masked column a session sees at
// table.column of database db, or nil.
func (es *encState) spec(si SessionInfo, table, column string) *colSpec {
	if m := es.masked[si.Service][si.Database][table][column]; m != nil {
		return m
	}
	return es.cols[si.Database][table][column]
}

// described is the encryption's Described hook.
func (es *encState) described(ev DescribedEvent) DescribedVerdict {
	if keptEnc(ev.Kept) == nil && ev.Class != nil && !es.touches(ev.Session, ev.Class) {
		return DescribedVerdict{}
	}
	fields, ok := parseRowDesc(ev.Body, nil)
	if !ok {
		return DescribedVerdict{}
	}
	cat := es.srv.catalogs.get(context.Background(), ev.Session.Database)
	if cat.err != nil {
		// Which columns are encrypted cannot be told: fail closed.
		return DescribedVerdict{Rows: true, State: &rowPlan{db: ev.Session.Database, unknown: true}}
	}
	for _, f := range fields {
		if f.tableOID != 0 && cat.byOID[f.tableOID] == nil && time.Since(cat.at) > catalogRetry {
			// A table the catalog does not know (created since it was
			// read, not through pgshield): read it again, once.
			es.srv.catalogs.invalidate(ev.Session.Database)
			cat = es.srv.catalogs.get(context.Background(), ev.Session.Database)
			break
		}
	}
	var rp *rowPlan
	var out []byte
	for i, f := range fields {
		_, table, column, found := cat.column(f.tableOID, f.attnum)
		if !found {
			continue
		}
		c := es.spec(ev.Session, table, column)
		if c == nil {
			continue
		}
		if rp == nil {
			rp = &rowPlan{db: ev.Session.Database}
			out = append([]byte(nil), ev.Body...)
		}
		rp.acts = append(rp.acts, fieldAct{idx: i, col: c, binary: f.format == 1})
		typ := c.typ
		if c.mask != nil {
			typ = plainText // a mask is text, whatever the plaintext
		}
		binary.BigEndian.PutUint32(out[f.at+6:], typ.oid())
		binary.BigEndian.PutUint16(out[f.at+10:], uint16(typ.typlen()))
		binary.BigEndian.PutUint32(out[f.at+12:], 0xFFFFFFFF)
	}
	if rp == nil {
		return DescribedVerdict{}
	}
	return DescribedVerdict{Rows: true, State: rp, Body: out}
}

// row is the encryption's Row hook: the acted columns decrypted, masked,
// and encoded as the client reads them.
func (es *encState) row(ev RowEvent) ([]byte, *Refusal) {
	rp, _ := ev.State.(*rowPlan)
	if rp == nil {
		return nil, nil
	}
	if rp.unknown {
		return nil, &Refusal{Code: "XX000", Message: "pgshield cannot tell which columns of this result are encrypted: the catalog of database " +
			rp.db + " could not be read", Hint: "the statement can be run again once the primary answers"}
	}
	n, cols, ok := wire.DataRow(ev.Body)
	if !ok {
		return nil, nil
	}
	keys := es.keys.Load()
	out := binary.BigEndian.AppendUint16(rp.out[:0], uint16(n))
	defer func() { rp.out = out[:0] }()
	plainBuf, maskBuf := rp.plain, rp.masked
	defer func() { rp.plain, rp.masked = plainBuf[:0], maskBuf[:0] }()
	a := 0
	for cols.Next() {
		if a >= len(rp.acts) || rp.acts[a].idx != cols.Index {
			if cols.Null {
				out = binary.BigEndian.AppendUint32(out, 0xFFFFFFFF)
				continue
			}
			out = binary.BigEndian.AppendUint32(out, uint32(len(cols.Value)))
			out = append(out, cols.Value...)
			continue
		}
		act := rp.acts[a]
		a++
		if cols.Null {
			out = binary.BigEndian.AppendUint32(out, 0xFFFFFFFF)
			continue
		}
		plain := cols.Value
		if act.col.enc {
			p, keyID, err := keys.Decrypt(act.col.ad, cols.Value, plainBuf[:0])
			if err != nil {
				return nil, es.decryptFailed(ev.Session, act.col, keyID, err)
			}
			plainBuf, plain = p, p
		}
		if act.col.mask != nil {
			m, null := act.col.mask.Apply(plain, maskBuf[:0])
			if null {
				out = binary.BigEndian.AppendUint32(out, 0xFFFFFFFF)
				continue
			}
			maskBuf = m
			out = binary.BigEndian.AppendUint32(out, uint32(len(m)))
			out = append(out, m...)
			continue
		}
		lenAt := len(out)
		out = append(out, 0, 0, 0, 0)
		if act.binary {
			var err error
			if out, err = act.col.typ.appendBinary(out, plain); err != nil {
				es.srv.log.Warn("a decrypted value is not of its column's type", zap.String("database", rp.db),
					zap.String("table", act.col.table), zap.String("column", act.col.column), zap.Stringer("type", act.col.typ))
				return nil, &Refusal{Code: "XX001", Table: act.col.table, Column: act.col.column,
					Message: "a value of " + act.col.table + "." + act.col.column + " is not a valid " + act.col.typ.String() + " after decryption"}
			}
		} else {
			out = append(out, plain...)
		}
		binary.BigEndian.PutUint32(out[lenAt:], uint32(len(out)-lenAt-4))
	}
	return out, nil
}

// decryptFailed is the refusal of a value that does not decrypt, counted
// and logged without the value.
func (es *encState) decryptFailed(si SessionInfo, c *colSpec, keyID uint32, err error) *Refusal {
	if es.failures != nil {
		es.failures.DecryptFailed(si.Database, c.table, c.column)
	}
	why := "it does not authenticate (another key, another column, or changed)"
	switch {
	case errors.Is(err, crypto.ErrNotCiphertext):
		why = "it is not a pgshield ciphertext (a plaintext value left in an encrypted column?)"
	case errors.Is(err, crypto.ErrUnknownKey):
		why = "its key is not in the keyring (retired, or from another keyring)"
	}
	es.srv.log.Warn("a value did not decrypt", zap.String("service", si.Service), zap.String("database", si.Database),
		zap.String("table", c.table), zap.String("column", c.column), zap.Uint32("key_id", keyID), zap.String("why", why))
	return &Refusal{Code: "XX001", Table: c.table, Column: c.column,
		Message: "a value of " + c.table + "." + c.column + " does not decrypt: " + why,
		Hint:    "REENCRYPT " + c.table + " on the admin console encrypts plaintext left in the column; SHOW KEYS lists the keys"}
}
