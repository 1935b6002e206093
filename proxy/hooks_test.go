package proxy_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/proxy"
)

// A Query a hook rewrote and that then fails with a serialization
// failure is run again as rewritten, not as the client sent it: what the
// server ran is the rewrite both times.
func TestRetryReplaysWhatWasSent(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "DROP TABLE IF EXISTS hook_retry; CREATE TABLE hook_retry (id int PRIMARY KEY, v text); INSERT INTO hook_retry VALUES (1, 'start'); GRANT ALL ON hook_retry TO PUBLIC"); err != nil {
		t.Fatal(err)
	}
	var rewrites int
	var mu sync.Mutex
	e.srv.SetHooks(&proxy.Hooks{Statement: func(ev proxy.StatementEvent) proxy.Verdict {
		if !bytes.Contains(ev.Text, []byte("'plaintext'")) {
			return proxy.Verdict{}
		}
		mu.Lock()
		rewrites++
		mu.Unlock()
		text := bytes.ReplaceAll(ev.Text, []byte("'plaintext'"), []byte("'ciphertext'"))
		return proxy.Verdict{Rewrite: append(text, 0)}
	}})
	c := e.simple(t, "app")
	if _, err := c.Exec(ctx, "SET default_transaction_isolation = 'repeatable read'"); err != nil {
		t.Fatal(err)
	}
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE hook_retry SET v = 'other' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "UPDATE hook_retry SET v = v || '+' || 'plaintext' WHERE id = 1")
		errc <- err
	}()
	waitBlocked(t, "hook_retry")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("the rewritten statement after a serialization failure: %v (want success by retry)", err)
	}
	if n := testutil.ToFloat64(e.m.Retries.WithLabelValues("api", "app", "40001")); n != 1 {
		t.Fatalf("%v retries, want 1: the test did not provoke one", n)
	}
	var v string
	if err := d.QueryRow(ctx, "SELECT v FROM hook_retry WHERE id = 1").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != "other+ciphertext" {
		t.Errorf("the server ran %q in the end, want other+ciphertext (the rewrite, run again)", v)
	}
	if rewrites != 1 {
		t.Errorf("the hook ran %d times, want once: the retry sends what was sent", rewrites)
	}
}

// A hook's refusal is an error with the hook's SQLSTATE, in both
// protocols, outside and inside a transaction; the transaction is then
// aborted as PostgreSQL would abort it; the metrics count the refusal's
// SQLSTATE class, not that of the statement sent in its place.
func TestHookRefusalCountedUnderItsOwnCode(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	e.srv.SetHooks(&proxy.Hooks{
		Statement: func(ev proxy.StatementEvent) proxy.Verdict {
			if bytes.Contains(ev.Text, []byte("forbidden")) {
				return proxy.Verdict{Refuse: &proxy.Refusal{Code: "23514", Message: "refused by the test hook"}}
			}
			return proxy.Verdict{}
		},
		Bind: func(ev proxy.BindEvent) proxy.Verdict {
			v := ev.Bind.Values()
			for v.Next() {
				if string(v.Value) == "bad" {
					return proxy.Verdict{Refuse: &proxy.Refusal{Code: "23514", Message: "bad parameter"}}
				}
			}
			return proxy.Verdict{}
		},
	})
	checkClass := func(before float64) float64 {
		t.Helper()
		n := testutil.ToFloat64(e.m.QueryErrors.WithLabelValues("api", "app", "23"))
		syntax := testutil.ToFloat64(e.m.QueryErrors.WithLabelValues("api", "app", "42"))
		if n != before+1 || syntax != 0 {
			t.Errorf("database_query_errors_total: class 23 went from %v to %v, class 42 is %v; want one more 23 and no 42", before, n, syntax)
		}
		return n
	}
	var count float64
	for _, simple := range []bool{true, false} {
		c := e.connect(t, "app", "")
		mode := pgx.QueryExecModeExec
		if simple {
			mode = pgx.QueryExecModeSimpleProtocol
		}
		// Outside a transaction: answered without a server.
		if _, err := c.Exec(ctx, "select 'forbidden'", mode); pgCode(err) != "23514" {
			t.Errorf("simple=%v: %v, want 23514", simple, err)
		}
		count = checkClass(count)
		if _, err := c.Exec(ctx, "select 1", mode); err != nil {
			t.Fatalf("after a refusal: %v", err)
		}
		// Inside one: the transaction is aborted, as after any error.
		if _, err := c.Exec(ctx, "begin"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "select 'forbidden'", mode); pgCode(err) != "23514" {
			t.Errorf("simple=%v in a block: %v, want 23514", simple, err)
		}
		count = checkClass(count)
		if _, err := c.Exec(ctx, "select 1", mode); pgCode(err) != "25P02" {
			t.Errorf("after a refusal in a block: %v, want 25P02 (in failed transaction)", err)
		}
		if _, err := c.Exec(ctx, "rollback"); err != nil {
			t.Fatal(err)
		}
	}
	// A parameter refused at Bind.
	c := e.connect(t, "app", "")
	if _, err := c.Exec(ctx, "select $1::text", "bad"); pgCode(err) != "23514" {
		t.Errorf("refused parameter: %v, want 23514", err)
	}
	checkClass(count)
	var s string
	if err := c.QueryRow(ctx, "select $1::text", "good").Scan(&s); err != nil || s != "good" {
		t.Errorf("after a refused parameter: %q %v", s, err)
	}
}

// In session pooling the hooks see every statement and its parameters,
// as in transaction pooling: the proxy tracks statements and portals in
// both modes.
func TestHooksSeeSessionModeStatements(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	var mu sync.Mutex
	var texts, binds []string
	e.srv.SetHooks(&proxy.Hooks{
		Statement: func(ev proxy.StatementEvent) proxy.Verdict {
			mu.Lock()
			defer mu.Unlock()
			if ev.Session.Mode == "session" {
				texts = append(texts, string(ev.Message)+":"+string(ev.Text))
			}
			return proxy.Verdict{}
		},
		Bind: func(ev proxy.BindEvent) proxy.Verdict {
			mu.Lock()
			defer mu.Unlock()
			var vals []string
			v := ev.Bind.Values()
			for v.Next() {
				if ev.Bind.Format(v.Index) == 1 && len(v.Value) == 4 { // pgx sends int4 in binary
					vals = append(vals, fmt.Sprint(int32(binary.BigEndian.Uint32(v.Value))))
					continue
				}
				vals = append(vals, string(v.Value))
			}
			binds = append(binds, string(ev.Text)+" <- "+strings.Join(vals, ","))
			return proxy.Verdict{}
		},
	})
	c := e.connect(t, "sess", "")
	var n int
	if err := c.QueryRow(ctx, "select $1::int + $2::int", 40, 2).Scan(&n); err != nil || n != 42 {
		t.Fatalf("%d %v", n, err)
	}
	if _, err := c.Exec(ctx, "select 7", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "select $1::int + $2::int", 1, 1).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d %v", n, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"P:select $1::int + $2::int", "Q:select 7"}; strings.Join(texts, "|") != strings.Join(want, "|") {
		t.Errorf("statements seen %q, want %q", texts, want)
	}
	if want := []string{"select $1::int + $2::int <- 40,2", "select $1::int + $2::int <- 1,1"}; strings.Join(binds, "|") != strings.Join(want, "|") {
		t.Errorf("binds seen %q, want %q (the prepared statement's text, its parameters)", binds, want)
	}
}

// The response events: a hook that chooses a result set sees its rows and
// may replace them; CommandComplete and Ready follow. A refused CopyData
// fails the COPY with the hook's error and nothing of it is stored.
func TestResponseHooksAndCopyRefusal(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	d := direct(t)
	if _, err := d.Exec(ctx, "DROP TABLE IF EXISTS hook_copy; CREATE TABLE hook_copy (v text); GRANT ALL ON hook_copy TO PUBLIC"); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var tags []string
	var ready int
	e.srv.SetHooks(&proxy.Hooks{
		Described: func(ev proxy.DescribedEvent) proxy.DescribedVerdict {
			return proxy.DescribedVerdict{Rows: bytes.Contains(ev.Body, []byte("secret"))}
		},
		Row: func(ev proxy.RowEvent) ([]byte, *proxy.Refusal) {
			_, cols, ok := wire.DataRow(ev.Body)
			if !ok || !cols.Next() || cols.Null {
				return nil, nil
			}
			// One text column: give it back upper-cased.
			out := []byte{0, 1}
			v := bytes.ToUpper(cols.Value)
			out = append(out, byte(len(v)>>24), byte(len(v)>>16), byte(len(v)>>8), byte(len(v)))
			return append(out, v...), nil
		},
		CommandComplete: func(ev proxy.CompleteEvent) {
			mu.Lock()
			tags = append(tags, string(bytes.TrimSuffix(ev.Tag, []byte{0})))
			mu.Unlock()
		},
		Ready: func(proxy.ReadyEvent) {
			mu.Lock()
			ready++
			mu.Unlock()
		},
		CopyData: func(ev proxy.CopyEvent) proxy.Verdict {
			if bytes.Contains(ev.Data, []byte("nope")) {
				return proxy.Verdict{Refuse: &proxy.Refusal{Code: "22023", Message: "this row may not be copied"}}
			}
			return proxy.Verdict{}
		},
	})
	for _, user := range []string{"app", "sess"} {
		c := e.connect(t, user, "")
		var s, plain string
		if err := c.QueryRow(ctx, "select 'abc' as secret").Scan(&s); err != nil || s != "ABC" {
			t.Errorf("%s: a chosen result set: %q %v, want ABC", user, s, err)
		}
		if err := c.QueryRow(ctx, "select 'abc' as other").Scan(&plain); err != nil || plain != "abc" {
			t.Errorf("%s: another result set: %q %v, want abc untouched", user, plain, err)
		}
		_, err := c.PgConn().CopyFrom(ctx, strings.NewReader("ok\nnope\n"), "COPY hook_copy FROM STDIN")
		if pgCode(err) != "22023" {
			t.Errorf("%s: refused COPY: %v, want 22023", user, err)
		}
		if _, err := c.PgConn().CopyFrom(ctx, strings.NewReader("fine\n"), "COPY hook_copy FROM STDIN"); err != nil {
			t.Errorf("%s: COPY after a refused one: %v", user, err)
		}
	}
	var rows []string
	r, err := d.Query(ctx, "SELECT v FROM hook_copy ORDER BY v")
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var v string
		_ = r.Scan(&v)
		rows = append(rows, v)
	}
	if strings.Join(rows, ",") != "fine,fine" {
		t.Errorf("stored %q, want only the two accepted COPYs", rows)
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(strings.Join(tags, ","), "SELECT 1") || !strings.Contains(strings.Join(tags, ","), "COPY 1") || ready == 0 {
		t.Errorf("CommandComplete tags %q, %d ReadyForQuery events", tags, ready)
	}
	_ = context.Background()
}

// A driver that binds and executes a prepared statement without asking
// for its description still has its rows go through the Row hook: the
// proxy describes the portal itself, and the client sees no extra message.
func TestRowHookWithoutDescribe(t *testing.T) {
	e := startProxy(t, nil)
	e.srv.SetHooks(&proxy.Hooks{
		Described: func(ev proxy.DescribedEvent) proxy.DescribedVerdict {
			return proxy.DescribedVerdict{Rows: bytes.Contains(ev.Body, []byte("secret"))}
		},
		Row: func(ev proxy.RowEvent) ([]byte, *proxy.Refusal) {
			_, cols, _ := wire.DataRow(ev.Body)
			cols.Next()
			v := bytes.ToUpper(cols.Value)
			return append([]byte{0, 1, 0, 0, 0, byte(len(v))}, v...), nil
		},
	})
	for _, user := range []string{"app", "sess"} {
		pc, err := pgconn.Connect(ctxT(t), e.url(user, ""))
		if err != nil {
			t.Fatal(err)
		}
		hc, err := pc.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		fe := pgproto3.NewFrontend(hc.Conn, hc.Conn)
		read := func() (types string, rows []string) {
			for {
				m, err := fe.Receive()
				if err != nil {
					t.Fatal(err)
				}
				switch m := m.(type) {
				case *pgproto3.DataRow:
					rows = append(rows, string(m.Values[0]))
				case *pgproto3.ErrorResponse:
					t.Fatalf("%s: %s", user, m.Message)
				}
				types += fmt.Sprintf("%T ", m)
				if _, ok := m.(*pgproto3.ReadyForQuery); ok {
					return types, rows
				}
			}
		}
		fe.Send(&pgproto3.Parse{Name: "s1", Query: "select 'abc'::text as secret"})
		fe.Send(&pgproto3.Sync{})
		_ = fe.Flush()
		read()
		fe.Send(&pgproto3.Bind{PreparedStatement: "s1"})
		fe.Send(&pgproto3.Execute{})
		fe.Send(&pgproto3.Sync{})
		_ = fe.Flush()
		types, rows := read()
		if len(rows) != 1 || rows[0] != "ABC" {
			t.Errorf("%s: rows %q, want [ABC] through the Row hook", user, rows)
		}
		if want := "*pgproto3.BindComplete *pgproto3.DataRow *pgproto3.CommandComplete *pgproto3.ReadyForQuery "; types != want {
			t.Errorf("%s: the client got %s, want %s", user, types, want)
		}
		hc.Conn.Close()
	}
}

// A FunctionCall goes to the FunctionCall hook; refused, the client gets
// the refusal and a ReadyForQuery, and goes on.
func TestFunctionCallHook(t *testing.T) {
	e := startProxy(t, nil)
	e.srv.SetHooks(&proxy.Hooks{FunctionCall: func(ev proxy.FunctionCallEvent) proxy.Verdict {
		if binary.BigEndian.Uint32(ev.Body) == 2026 { // pg_backend_pid()
			return proxy.Verdict{Refuse: &proxy.Refusal{Code: "42501", Message: "function calls are not allowed"}}
		}
		return proxy.Verdict{}
	}})
	pc, err := pgconn.Connect(ctxT(t), e.url("sess", ""))
	if err != nil {
		t.Fatal(err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()
	fe := pgproto3.NewFrontend(hc.Conn, hc.Conn)
	fe.Send(&pgproto3.FunctionCall{Function: 2026})
	_ = fe.Flush()
	var got []string
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if er, ok := m.(*pgproto3.ErrorResponse); ok {
			got = append(got, er.Code)
		} else {
			got = append(got, fmt.Sprintf("%T", m))
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if strings.Join(got, " ") != "42501 *pgproto3.ReadyForQuery" {
		t.Errorf("a refused FunctionCall answered %q, want the refusal then ReadyForQuery", got)
	}
	fe.Send(&pgproto3.Query{String: "select 1"})
	_ = fe.Flush()
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if er, ok := m.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("after the refusal: %s", er.Message)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
}
