package policy

// ValueKind says what a written value is, once known.
type ValueKind uint8

// Value kinds.
const (
	ValueText    ValueKind = iota + 1 // Text holds the value (text form; binary COPY fields: raw)
	ValueNull                         // SQL NULL
	ValueDefault                      // the column's default
	ValueUnknown                      // not known to the proxy
)

// Value is one written value.
type Value struct {
	Kind ValueKind
	Text []byte
}
