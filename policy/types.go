package policy

// The types shared by the parts of the policy package: the statement
// analysis (analyze.go) finds the writes of a statement and where each
// value comes from; the rules (rules.go) judge the values; the COPY
// readers (copy.go) turn streamed rows into values; the firewall
// (firewall.go) judges statements as a whole. None of them does I/O: the
// proxy gives them the parse tree, the catalog and the bytes.

// Column is one column of a table, as the catalog knows it.
type Column struct {
	Name string
	// TypeOID is the column's type (pg_attribute.atttypid), which says how
	// a binary-format parameter or COPY field for it is decoded.
	TypeOID uint32
}

// Catalog tells the analysis what it cannot read from a statement: the
// columns of a table, in their order (for an INSERT without a column list
// and for COPY without one). The proxy implements it with a cache read
// through a server connection.
type Catalog interface {
	// Columns returns the columns of schema.table in attnum order; ok is
	// false when the table is not known. schema is "" when the statement
	// does not name one (the search path's first table of that name).
	Columns(schema, table string) (cols []Column, ok bool)
}

// WriteKind is what a statement does to a table.
type WriteKind uint8

const (
	WriteInsert WriteKind = iota + 1 // INSERT … VALUES (with ON CONFLICT DO NOTHING)
	WriteUpdate                      // UPDATE … SET
	WriteUpsert                      // INSERT … ON CONFLICT DO UPDATE SET: Rows and Set
	WriteCopy                        // COPY … FROM STDIN: the rows come from the stream
)

// SourceKind says where a written value comes from.
type SourceKind uint8

const (
	SourceLiteral SourceKind = iota + 1 // a constant in the statement (Literal)
	SourceParam                         // a Bind parameter (Param, from 1)
	SourceNull                          // NULL
	SourceDefault                       // DEFAULT, or a column the INSERT leaves out
	SourceUnknown                       // an expression the proxy cannot evaluate: now(), col + 1, a subquery
)

// Source is where one written value comes from.
type Source struct {
	Kind    SourceKind
	Literal []byte // SourceLiteral: the constant's text, as PostgreSQL would read it ('O''Brien' → O'Brien)
	Param   int    // SourceParam: the parameter number ($1 → 1)
	// TypeOID, when the statement casts the value ($1::int, '5'::int),
	// is the cast's type; else 0 (the column's type applies).
	TypeOID uint32
	// Pos is where the literal's token (its first byte: the quote of a
	// string, the sign of a negative number) or the parameter's $ is in
	// the statement text, as a 1-based byte offset; 0 when the value is
	// not the text of one token (+5, -(5)) or the source is neither.
	Pos int
}

// Assign is one `column = value` of an UPDATE or ON CONFLICT DO UPDATE.
type Assign struct {
	Column string
	Value  Source
	// TypeOID is the column's type (0 when the catalog does not know the
	// table or the column), which says how a binary-format parameter
	// assigned to it is decoded when the statement does not cast it.
	TypeOID uint32
}

// Write is one statement's write to one table, as the analysis found it.
type Write struct {
	Kind   WriteKind
	Schema string // "" when the statement names none
	Table  string
	// Columns are the INSERT's (or COPY's) target columns, in order: the
	// column list, or the catalog's columns when the statement has none.
	Columns []string
	// ColumnTypes are the columns' type OIDs, aligned with Columns (0
	// when the catalog does not know the table).
	ColumnTypes []uint32
	// Rows are the VALUES rows of an INSERT, each aligned with Columns.
	Rows [][]Source
	// Set are the assignments of an UPDATE or of ON CONFLICT DO UPDATE.
	Set []Assign
	// FromQuery: the rows come from a query (INSERT … SELECT), so their
	// values are unknown.
	FromQuery bool
	// Where: the UPDATE has a WHERE clause (the firewall's
	// update-without-where rule).
	Where bool
}

// Statement is what the analysis found in one statement of a Query or
// Parse.
type Statement struct {
	// Kind is the statement's tag in upper case (INSERT, UPDATE, DELETE,
	// DROP TABLE, GRANT, COPY, SELECT …), for the firewall.
	Kind string
	// Writes are the tables the statement writes with values the rules can
	// judge (INSERT, UPDATE, upsert, COPY FROM STDIN); a writing CTE adds
	// its own.
	Writes []Write
	// Functions are the functions the statement calls, lower case and
	// without schema (pg_read_file, lo_import, dblink …).
	Functions []string
	// DeleteWithoutWhere / UpdateWithoutWhere: a DELETE or UPDATE with no
	// WHERE clause (every row).
	DeleteWithoutWhere, UpdateWithoutWhere bool
	// CopyProgram: COPY … TO/FROM PROGRAM.
	CopyProgram bool
	// CopyFormat is COPY FROM STDIN's format: text, csv or binary (with
	// CopyOptions: the delimiter, quote, escape, null string and header of
	// text and CSV).
	CopyFormat  string
	CopyOptions CopyOptions
}

// CopyOptions are the options of a text or CSV COPY that change how its
// rows are read.
type CopyOptions struct {
	Delimiter byte   // default tab (text) or comma (csv)
	Quote     byte   // csv, default '"'
	Escape    byte   // csv, default the quote
	Null      string // default `\N` (text) or "" (csv)
	Header    bool   // csv (and text, PostgreSQL 15+): the first line is a header
	// Default (PostgreSQL 16+), when HasDefault: a field that reads as
	// this string stands for the column's default.
	Default    string
	HasDefault bool
	// ForceNull / ForceNotNull (csv) are the columns of FORCE_NULL (a
	// quoted field equal to the null string is NULL too) and
	// FORCE_NOT_NULL (a field is never NULL); "*" stands for every column.
	ForceNull, ForceNotNull []string
}

// Violation is a broken rule or a firewall refusal: what the client is
// told. Message never holds the refused value, which may be personal data.
type Violation struct {
	Code       string // 23514 check_violation, 23502 not_null_violation, 42501 insufficient_privilege
	Message    string
	Detail     string
	Hint       string
	Table      string // the ErrorResponse fields drivers map errors with
	Column     string
	Constraint string // the rule's name, as the generated SQL names its constraint
	// Kind says which kind of rule refused, for
	// pgshield_policy_rejections_total: type, required, length, range,
	// pattern, enum, cel, row, transition, firewall.
	Kind string
}

func (v *Violation) Error() string { return v.Code + ": " + v.Message }
