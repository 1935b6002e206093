package proxy_test

import (
	"strings"
	"testing"
)

// TestLargeQueryAndError: a query far larger than the client read buffer,
// and an error message far larger than the server read buffer, pass whole
// in transaction mode (both are read to be classified or counted, then
// forwarded), and the session goes on.
func TestLargeQueryAndError(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	for _, mode := range []string{"simple_protocol", "cache_statement"} {
		c := e.connect(t, "app", "default_query_exec_mode="+mode)
		big := strings.Repeat("x", 100000)
		var n int
		if err := c.QueryRow(ctx, "SELECT length('"+big+"')").Scan(&n); err != nil || n != 100000 {
			t.Fatalf("%s: %d %v", mode, n, err)
		}
		_, err := c.Exec(ctx, "SELECT '"+big+"'::int")
		if pgCode(err) != "22P02" {
			t.Fatalf("%s: big error: %v", mode, err)
		}
		if err := c.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
			t.Fatalf("%s after: %v", mode, err)
		}
	}
}
