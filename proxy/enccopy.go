package proxy

import (
	"context"
	"encoding/binary"
	"strconv"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgshield/pgshield/policy"
)

// COPY … FROM STDIN into a table with encrypted columns: the rows are
// read as they stream (policy.CopyReader) and written again in the same
// format with the encrypted columns' fields replaced by their ciphertext,
// so each CopyData the server gets carries the rows the client's data
// completed. Nothing of a row reaches the server in plaintext.

// encCopy is the COPY part of a plan.
type encCopy struct {
	cols  []copyCol
	st    policy.Statement
	w     policy.Write
	ready bool // st and w were found
}

// copyCol is one encrypted column of a COPY, by its place in the rows.
type copyCol struct {
	index int
	col   *colSpec
}

// copyTable is the table the i-th statement of tree copies into.
func copyTable(tree *pg.ParseResult, i int) string {
	if i >= len(tree.GetStmts()) {
		return ""
	}
	return tree.GetStmts()[i].GetStmt().GetCopyStmt().GetRelation().GetRelname()
}

// copyStatement fills in the COPY's statement and write, for its reader.
func (es *encState) copyStatement(c *encCopy, tree *pg.ParseResult, si SessionInfo) {
	stmts, err := policy.Analyze(tree, es.srv.catalogs.of(context.Background(), si.Database))
	if err != nil {
		return
	}
	for _, st := range stmts {
		for _, w := range st.Writes {
			if w.Kind == policy.WriteCopy {
				c.st, c.w, c.ready = st, w, true
				return
			}
		}
	}
}

// copyRun is the state of one COPY being rewritten.
type encCopyRun struct {
	r       *policy.CopyReader
	c       *encCopy
	opts    policy.CopyOptions
	binary  bool
	started bool // the header (binary's, or the header line) was written
	out     []byte
	es      *encState
	si      SessionInfo
}

// copyData is the encryption's CopyData hook.
func (es *encState) copyData(ev CopyEvent) Verdict {
	run, _ := (*ev.State).(*encCopyRun)
	if run == nil {
		pl := keptEnc(ev.Kept)
		if pl == nil || pl.copy == nil || len(pl.copy.cols) == 0 {
			*ev.State = false
			return Verdict{}
		}
		if !pl.copy.ready {
			c := pl.copy.cols[0].col
			return es.refuse(ev.Session, &policy.Violation{Code: "0A000", Kind: "encryption", Table: c.table, Column: c.column,
				Message: "COPY into " + c.table + " writes the encrypted column " + c.column + ", and pgshield cannot read this COPY's rows"})
		}
		r, err := policy.NewCopyReader(pl.copy.st, pl.copy.w)
		if err != nil {
			c := pl.copy.cols[0].col
			return es.refuse(ev.Session, &policy.Violation{Code: "0A000", Kind: "encryption", Table: c.table, Column: c.column,
				Message: "COPY into " + c.table + " writes the encrypted column " + c.column + ", and pgshield cannot read this COPY's rows"})
		}
		run = &encCopyRun{r: r, c: pl.copy, opts: pl.copy.st.CopyOptions, binary: r.Binary(), es: es, si: ev.Session}
		*ev.State = run
	}
	run.out = run.out[:0]
	if !run.started {
		run.header()
	}
	var v *policy.Violation
	if ev.Done {
		v = run.r.Finish(run.row)
		if v == nil && run.binary {
			run.out = binary.BigEndian.AppendUint16(run.out, 0xFFFF)
		}
	} else {
		v = run.r.Feed(ev.Data, run.row)
	}
	if v != nil {
		return es.refuse(ev.Session, v)
	}
	if ev.Done && len(run.out) == 0 {
		return Verdict{}
	}
	return Verdict{Rewrite: append([]byte(nil), run.out...)}
}

// header writes what comes before the rows: binary's signature, or the
// header line of a COPY that has one.
func (run *encCopyRun) header() {
	run.started = true
	if run.binary {
		run.out = append(run.out, "PGCOPY\n\xff\r\n\x00"...)
		run.out = append(run.out, 0, 0, 0, 0, 0, 0, 0, 0) // flags, header extension length
		return
	}
	if !run.opts.Header {
		return
	}
	for i, name := range run.c.w.Columns {
		if i > 0 {
			run.out = append(run.out, run.opts.Delimiter)
		}
		run.field([]byte(name))
	}
	run.out = append(run.out, '\n')
}

// row writes one row again, its encrypted fields encrypted.
func (run *encCopyRun) row(rowNum, line int, vals []policy.Value) *policy.Violation {
	keys := run.es.keys.Load()
	if run.binary {
		run.out = binary.BigEndian.AppendUint16(run.out, uint16(len(vals)))
	}
	for i, v := range vals {
		var enc *colSpec
		for _, cc := range run.c.cols {
			if cc.index == i {
				enc = cc.col
			}
		}
		if !run.binary && i > 0 {
			run.out = append(run.out, run.opts.Delimiter)
		}
		switch v.Kind {
		case policy.ValueNull:
			if run.binary {
				run.out = binary.BigEndian.AppendUint32(run.out, 0xFFFFFFFF)
			} else {
				run.out = append(run.out, run.opts.Null...)
			}
			continue
		case policy.ValueText:
		default:
			c := run.c.cols[0].col
			if enc != nil {
				c = enc
			}
			return &policy.Violation{Code: "0A000", Kind: "encryption", Table: c.table, Column: c.column,
				Message: "COPY " + c.table + ", row " + strconv.Itoa(rowNum) + ": a DEFAULT field cannot be written again by pgshield"}
		}
		val := v.Text
		if enc != nil {
			if bad := enc.typ.check(enc, val); bad != nil {
				bad.Message = "COPY " + enc.table + ", row " + strconv.Itoa(rowNum) + ": " + bad.Message
				return bad
			}
			ct, err := encryptValue(keys, enc, val, nil)
			if err != nil {
				return &policy.Violation{Code: "XX000", Kind: "encryption", Table: enc.table, Column: enc.column,
					Message: "pgshield could not encrypt the value for " + enc.table + "." + enc.column}
			}
			val = ct
		}
		if run.binary {
			run.out = binary.BigEndian.AppendUint32(run.out, uint32(len(val)))
			run.out = append(run.out, val...)
			continue
		}
		run.field(val)
	}
	if !run.binary {
		run.out = append(run.out, '\n')
	}
	return nil
}

// field writes one non-NULL text or CSV field.
func (run *encCopyRun) field(val []byte) {
	o := &run.opts
	if o.Quote != 0 { // csv: always quoted, so no value reads as NULL
		run.out = append(run.out, o.Quote)
		for _, c := range val {
			if c == o.Quote || c == o.Escape {
				run.out = append(run.out, o.Escape)
			}
			run.out = append(run.out, c)
		}
		run.out = append(run.out, o.Quote)
		return
	}
	for _, c := range val {
		switch c {
		case '\\':
			run.out = append(run.out, '\\', '\\')
		case '\n':
			run.out = append(run.out, '\\', 'n')
		case '\r':
			run.out = append(run.out, '\\', 'r')
		case o.Delimiter:
			run.out = append(run.out, '\\', c)
		default:
			run.out = append(run.out, c)
		}
	}
}
