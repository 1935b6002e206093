package admin

// Column types the console declares in RowDescription, so psql aligns
// numbers to the right and drivers decode them (text format, PostgreSQL's
// own OIDs).
const (
	TypeText        uint32 = 25
	TypeInt8        uint32 = 20
	TypeFloat8      uint32 = 701
	TypeBool        uint32 = 16
	TypeTimestamptz uint32 = 1184
)

// Column is one column of a result set.
type Column struct {
	Name string
	Type uint32
}

// Result is what one console command answers: a result set (Columns set)
// and the command tag of its CommandComplete.
//
// Values in Rows are rendered in PostgreSQL's text format by the console:
// nil is NULL; string; bool; signed and unsigned integers; float64;
// time.Time (timestamptz); time.Duration (milliseconds, as float8).
type Result struct {
	Columns []Column
	Rows    [][]any
	Tag     string // "SHOW", "PAUSE", "SET" …; defaults to the command's first word
}

// Cols builds columns from name/type pairs: Cols("service", TypeText, "max", TypeInt8).
func Cols(pairs ...any) []Column {
	out := make([]Column, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, Column{Name: pairs[i].(string), Type: pairs[i+1].(uint32)})
	}
	return out
}
