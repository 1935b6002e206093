package admin

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/proxy"
)

// timeLayout is how timestamptz values are shown: PostgreSQL's ISO output
// in UTC, to the millisecond.
const timeLayout = "2006-01-02 15:04:05.000-07"

// resultMessages turns a command's result into the messages that answer
// it: notices, RowDescription and DataRows when it has columns, and
// CommandComplete.
func resultMessages(res *Result, notices []string, tag string) []pgproto3.BackendMessage {
	msgs := make([]pgproto3.BackendMessage, 0, len(notices)+len(res.Rows)+2)
	for _, n := range notices {
		msgs = append(msgs, &pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: n})
	}
	if res.Columns != nil {
		msgs = append(msgs, rowDescription(res.Columns))
		for _, row := range res.Rows {
			msgs = append(msgs, dataRow(row, len(res.Columns)))
		}
	}
	if res.Tag != "" {
		tag = res.Tag
	}
	return append(msgs, &pgproto3.CommandComplete{CommandTag: []byte(tag)})
}

func rowDescription(cols []Column) *pgproto3.RowDescription {
	fields := make([]pgproto3.FieldDescription, len(cols))
	for i, c := range cols {
		fields[i] = pgproto3.FieldDescription{
			Name: []byte(c.Name), DataTypeOID: c.Type, DataTypeSize: typeSize(c.Type),
			TypeModifier: -1, Format: 0,
		}
	}
	return &pgproto3.RowDescription{Fields: fields}
}

// typeSize is pg_type.typlen of the column types the console declares.
func typeSize(oid uint32) int16 {
	switch oid {
	case TypeInt8, TypeFloat8, TypeTimestamptz:
		return 8
	case TypeBool:
		return 1
	}
	return -1
}

// dataRow renders one row; a row shorter than the columns is padded with
// NULLs and a longer one cut, so a client never sees a malformed result.
func dataRow(row []any, ncols int) *pgproto3.DataRow {
	vals := make([][]byte, ncols)
	for i := 0; i < ncols && i < len(row); i++ {
		vals[i] = renderValue(row[i])
	}
	return &pgproto3.DataRow{Values: vals}
}

// renderValue is v in PostgreSQL's text format; nil is NULL.
func renderValue(v any) []byte {
	switch v := v.(type) {
	case nil:
		return nil
	case string:
		return []byte(v)
	case []byte:
		if v == nil {
			return nil
		}
		return v
	case bool:
		if v {
			return []byte("t")
		}
		return []byte("f")
	case int:
		return strconv.AppendInt(nil, int64(v), 10)
	case int8:
		return strconv.AppendInt(nil, int64(v), 10)
	case int16:
		return strconv.AppendInt(nil, int64(v), 10)
	case int32:
		return strconv.AppendInt(nil, int64(v), 10)
	case int64:
		return strconv.AppendInt(nil, v, 10)
	case uint:
		return strconv.AppendUint(nil, uint64(v), 10)
	case uint8:
		return strconv.AppendUint(nil, uint64(v), 10)
	case uint16:
		return strconv.AppendUint(nil, uint64(v), 10)
	case uint32:
		return strconv.AppendUint(nil, uint64(v), 10)
	case uint64:
		return strconv.AppendUint(nil, v, 10)
	case float32:
		return renderFloat(float64(v), 32)
	case float64:
		return renderFloat(v, 64)
	case time.Duration:
		return []byte(strconv.FormatFloat(durationMs(v), 'f', 3, 64))
	case time.Time:
		if v.IsZero() {
			return nil
		}
		return []byte(v.UTC().Format(timeLayout))
	case *time.Time:
		if v == nil {
			return nil
		}
		return renderValue(*v)
	case []string:
		return []byte(strings.Join(v, ","))
	case fmt.Stringer:
		return []byte(v.String())
	}
	return []byte(fmt.Sprint(v))
}

func renderFloat(f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return []byte("NaN")
	case math.IsInf(f, 1):
		return []byte("Infinity")
	case math.IsInf(f, -1):
		return []byte("-Infinity")
	}
	return strconv.AppendFloat(nil, f, 'g', -1, bits)
}

// durationMs is d in milliseconds.
func durationMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// seconds is d in seconds rounded to the millisecond, for the *_s columns.
func seconds(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }

// nullIf is nil when v is its type's zero value: a column that does not
// apply shows NULL rather than "" or 0.
func nullIf[T comparable](v T) any {
	var zero T
	if v == zero {
		return nil
	}
	return v
}

// response is e as an ErrorResponse, built as the proxy builds its own.
func (e *Error) response() *pgproto3.ErrorResponse {
	return proxy.ErrorResponse("ERROR", e.Code, e.Message, e.Detail, e.Hint)
}
