package admin

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// notParsable stands in for a statement pg_query cannot normalize
// (truncated by track_activity_query_size, say): showing it raw could show
// its literal values.
const notParsable = "<not parsable>"

// statementSuffix marks the columns that carry statement text from
// pg_stat_activity.
const statementSuffix = "_statement"

// QueryDatabase runs sql on conn with the simple query protocol and returns
// its last result set, values as the text PostgreSQL sent (nil for NULL).
// Column types are reduced to the few the console declares. A server error
// is wrapped, so errors.As still finds the *pgconn.PgError.
//
// It returns statement text unchanged; the console's commands go through
// queryStats, which does not.
func QueryDatabase(ctx context.Context, conn *pgconn.PgConn, sql string) (Result, error) {
	// Read result by result: pgconn's ReadAll keeps the columns of a
	// result only when it has rows, and an empty table still has a header.
	mrr := conn.Exec(ctx, sql)
	var out Result
	var firstErr error
	for mrr.NextResult() {
		rr := mrr.ResultReader()
		fds := rr.FieldDescriptions()
		var rows [][]any
		for rr.NextRow() {
			vals := make([]any, len(rr.Values()))
			for j, v := range rr.Values() {
				if v != nil {
					vals[j] = string(v)
				}
			}
			rows = append(rows, vals)
		}
		if _, err := rr.Close(); err != nil && firstErr == nil {
			firstErr = err
		}
		if fds != nil {
			out = Result{Columns: make([]Column, len(fds)), Rows: rows}
			for i, fd := range fds {
				out.Columns[i] = Column{Name: fd.Name, Type: columnType(fd.DataTypeOID)}
			}
		}
	}
	if err := mrr.Close(); err != nil && firstErr == nil {
		firstErr = err
	}
	if firstErr != nil {
		return Result{}, fmt.Errorf("statistics query: %w", firstErr)
	}
	return out, nil
}

// columnType maps a PostgreSQL type to the console's: the text PostgreSQL
// sent is valid input for the wider type, so values need no conversion.
func columnType(oid uint32) uint32 {
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID:
		return TypeInt8
	case pgtype.Float4OID, pgtype.Float8OID, pgtype.NumericOID:
		return TypeFloat8
	case pgtype.BoolOID:
		return TypeBool
	case pgtype.TimestamptzOID:
		return TypeTimestamptz
	}
	return TypeText
}

// queryStats is the entry point of SHOW HEALTH, LOCKS, TABLES and INDEXES
// (see dbsql.go): QueryDatabase, then every *_statement column normalized.
func queryStats(ctx context.Context, conn *pgconn.PgConn, sql string) (Result, error) {
	r, err := QueryDatabase(ctx, conn, sql)
	if err != nil {
		return Result{}, err
	}
	return redactStatements(r), nil
}

// LocksResult answers SHOW LOCKS for the database conn is connected to.
func LocksResult(ctx context.Context, conn *pgconn.PgConn) (Result, error) {
	return queryStats(ctx, conn, sqlLocks)
}

// redactStatements replaces the value of every column whose name ends in
// _statement by its pg_query normalized form (literals become $1, $2 …),
// in place. Normalizing is idempotent, so a result may safely pass through
// here more than once (the console may apply it to whatever a Source
// returns).
func redactStatements(r Result) Result {
	var cols []int
	for i, c := range r.Columns {
		if strings.HasSuffix(c.Name, statementSuffix) {
			cols = append(cols, i)
		}
	}
	if len(cols) == 0 {
		return r
	}
	for _, row := range r.Rows {
		for _, i := range cols {
			if i < len(row) && row[i] != nil {
				row[i] = normalizeStatement(row[i])
			}
		}
	}
	return r
}

// normalizeStatement returns the normalized text of a statement, or
// notParsable. Only strings can be statement text; anything else is
// replaced too rather than shown.
func normalizeStatement(v any) string {
	s, ok := v.(string)
	if !ok {
		return notParsable
	}
	switch s {
	case "", "<insufficient privilege>":
		// PostgreSQL's own placeholders: no literal in them to hide.
		return s
	}
	n, err := pg_query.Normalize(s)
	if err != nil {
		return notParsable
	}
	return n
}
