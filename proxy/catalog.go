package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/policy"
)

// The catalog cache: the columns of every table of a database, in order
// and with their types, for the policy's statement analysis (an INSERT
// without a column list, COPY, the type of a binary parameter). It is read
// from the database's primary on a connection of its own, the first time
// a governed statement needs it, and again after DDL that passed through
// pgshield and on RELOAD.

// connector opens a connection of its own to a database's primary
// (poolmgr.Manager.Connect).
type connector interface {
	Connect(ctx context.Context, database, addr string) (*pgconn.PgConn, error)
}

// catalogs holds the catalog of each database.
type catalogs struct {
	conn connector
	log  *zap.Logger

	mu  sync.Mutex
	dbs map[string]*tableCatalog
}

// tableCatalog is one database's tables: by "schema.table", and by bare
// name for the first schema of the default search path (public) or a name
// only one schema has.
type tableCatalog struct {
	byName map[string][]policy.Column
	// byOID names each table's columns by attribute number, for the
	// columns of a RowDescription.
	byOID map[uint32]*relColumns
	err   error     // why it could not be read; retried after catalogRetry
	at    time.Time // when it was read
}

// catalogRetry is how soon a catalog that could not be read is tried again.
const catalogRetry = 5 * time.Second

func newCatalogs(conn connector, log *zap.Logger) *catalogs {
	return &catalogs{conn: conn, log: log, dbs: make(map[string]*tableCatalog)}
}

// of returns database's catalog, reading it if it is not cached. A
// catalog that cannot be read knows no table (the analysis then leaves
// what it needed unknown) and is tried again later.
func (c *catalogs) of(ctx context.Context, database string) policy.Catalog {
	return c.get(ctx, database)
}

// get is of's catalog itself.
func (c *catalogs) get(ctx context.Context, database string) *tableCatalog {
	c.mu.Lock()
	tc := c.dbs[database]
	c.mu.Unlock()
	if tc != nil && (tc.err == nil || time.Since(tc.at) < catalogRetry) {
		return tc
	}
	tc = c.read(ctx, database)
	c.mu.Lock()
	c.dbs[database] = tc
	c.mu.Unlock()
	return tc
}

// invalidate forgets database's catalog ("" every database), after DDL or
// on RELOAD.
func (c *catalogs) invalidate(database string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if database == "" {
		clear(c.dbs)
		return
	}
	delete(c.dbs, database)
}

// relColumns is one table's name and its columns by attribute number.
type relColumns struct {
	schema, table string
	byNum         map[int16]string
}

// column names the column of a RowDescription field: its table's OID and
// its attribute number (ok false for a computed column or an unknown
// table).
func (tc *tableCatalog) column(oid uint32, attnum int16) (schema, table, column string, ok bool) {
	if oid == 0 || attnum <= 0 {
		return "", "", "", false
	}
	r := tc.byOID[oid]
	if r == nil {
		return "", "", "", false
	}
	column, ok = r.byNum[attnum]
	return r.schema, r.table, column, ok
}

const sqlCatalog = `SELECT n.nspname, c.relname, a.attname, a.atttypid, c.oid, a.attnum
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY n.nspname, c.relname, a.attnum`

func (c *catalogs) read(ctx context.Context, database string) *tableCatalog {
	tc := &tableCatalog{byName: make(map[string][]policy.Column), byOID: make(map[uint32]*relColumns), at: time.Now()}
	if c.conn == nil {
		tc.err = fmt.Errorf("no connections to read the catalog with")
		return tc
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pc, err := c.conn.Connect(ctx, database, "")
	if err != nil {
		tc.err = err
		c.log.Warn("reading the catalog for the policy", zap.String("database", database), zap.Error(err))
		return tc
	}
	defer pc.Close(context.Background())
	rr := pc.ExecParams(ctx, sqlCatalog, nil, nil, nil, []int16{0, 0, 0, 1, 1, 1})
	schemas := map[string][]string{} // bare name → schemas that have it
	for rr.NextRow() {
		v := rr.Values()
		if len(v) != 6 || len(v[3]) != 4 || len(v[4]) != 4 || len(v[5]) != 2 {
			continue
		}
		schema, table := string(v[0]), string(v[1])
		oid := binary.BigEndian.Uint32(v[4])
		r := tc.byOID[oid]
		if r == nil {
			r = &relColumns{schema: schema, table: table, byNum: map[int16]string{}}
			tc.byOID[oid] = r
		}
		r.byNum[int16(binary.BigEndian.Uint16(v[5]))] = string(v[2])
		key := schema + "." + table
		cols := tc.byName[key]
		if cols == nil {
			schemas[table] = append(schemas[table], schema)
		}
		tc.byName[key] = append(cols, policy.Column{Name: string(v[2]), TypeOID: binary.BigEndian.Uint32(v[3])})
	}
	if _, err := rr.Close(); err != nil {
		tc.err = err
		c.log.Warn("reading the catalog for the policy", zap.String("database", database), zap.Error(err))
		return tc
	}
	for table, in := range schemas {
		switch {
		case slices.Contains(in, "public"):
			tc.byName[table] = tc.byName["public."+table]
		case len(in) == 1:
			tc.byName[table] = tc.byName[in[0]+"."+table]
		}
	}
	return tc
}

// Columns implements policy.Catalog.
func (tc *tableCatalog) Columns(schema, table string) ([]policy.Column, bool) {
	key := table
	if schema != "" {
		key = schema + "." + table
	}
	cols, ok := tc.byName[key]
	if !ok && schema == "" {
		cols, ok = tc.byName[strings.ToLower(table)]
	}
	return cols, ok
}
