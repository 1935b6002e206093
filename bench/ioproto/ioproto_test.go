package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// Frame scanner.

// msg builds a frame with a string body.
func msg(typ byte, body string) []byte { return frame(typ, []byte(body)) }

// expectedAt is what the scanner must report after the first k bytes of
// stream: whether they end with a complete ReadyForQuery, and its status.
func expectedAt(stream []byte, k int) (status byte, ready bool) {
	for off := 0; off < k; {
		n := int(binary.BigEndian.Uint32(stream[off+1:]))
		end := off + 1 + n
		if end == k && stream[off] == 'Z' {
			return stream[off+5], true
		}
		off = end
	}
	return 0, false
}

func TestFrameScannerSplits(t *testing.T) {
	streams := map[string][]byte{
		"select": bytes.Join([][]byte{
			msg('T', "row description"), msg('D', "data row"), msg('C', "SELECT 1"), msg('Z', "I"),
		}, nil),
		"idle Z not last": bytes.Join([][]byte{
			msg('C', "SET"), msg('Z', "I"), msg('N', "a notice after it"),
		}, nil),
		"transaction": bytes.Join([][]byte{
			msg('C', "BEGIN"), msg('Z', "T"), msg('E', "boom"), msg('Z', "E"), msg('C', "ROLLBACK"), msg('Z', "I"),
		}, nil),
		"empty bodies": bytes.Join([][]byte{
			msg('1', ""), msg('2', ""), msg('n', ""), msg('Z', "I"), msg('1', ""), msg('Z', "I"),
		}, nil),
		"big row": bytes.Join([][]byte{
			msg('D', strings.Repeat("x", 100_000)), msg('Z', "I"),
		}, nil),
	}
	for name, stream := range streams {
		t.Run(name, func(t *testing.T) {
			check := func(how string, chunks []int) {
				t.Helper()
				var s frameScanner
				off := 0
				for _, c := range chunks {
					n, err := s.scan(stream[off:off+c], 0)
					if err != nil || n != c {
						t.Fatalf("%s: scan(%d bytes at %d) = %d, %v", how, c, off, n, err)
					}
					off += c
					wantSt, wantOK := expectedAt(stream, off)
					st, ok := s.ready()
					if ok != wantOK || st != wantSt {
						t.Fatalf("%s: after %d bytes ready() = %q, %v; want %q, %v", how, off, st, ok, wantSt, wantOK)
					}
					if idle := s.idle(); idle != (wantOK && wantSt == 'I') {
						t.Fatalf("%s: after %d bytes idle() = %v", how, off, idle)
					}
				}
			}
			check("one read", []int{len(stream)})
			for k := 1; k < len(stream) && k < 400; k++ {
				check(fmt.Sprintf("split at %d", k), []int{k, len(stream) - k})
			}
			if len(stream) < 1000 {
				ones := make([]int, len(stream))
				for i := range ones {
					ones[i] = 1
				}
				check("byte by byte", ones)
			}
			for _, size := range []int{3, 7, 4096} {
				var chunks []int
				for left := len(stream); left > 0; left -= min(size, left) {
					chunks = append(chunks, min(size, left))
				}
				check(fmt.Sprintf("chunks of %d", size), chunks)
			}
		})
	}
}

func TestFrameScannerCases(t *testing.T) {
	var s frameScanner
	if s.idle() {
		t.Fatal("idle at the start of a stream")
	}
	// Idle ReadyForQuery then the start of another frame: not idle.
	p := append(msg('Z', "I"), 'N', 0, 0)
	if _, err := s.scan(p, 0); err != nil || s.idle() {
		t.Fatalf("Z I then a partial header: idle %v, err %v", s.idle(), err)
	}
	if _, err := s.scan([]byte{0, 5, 'x'}, 0); err != nil || s.idle() {
		t.Fatalf("then the notice: idle %v, err %v", s.idle(), err)
	}
	if _, ok := s.ready(); ok {
		t.Fatal("ready after a notice")
	}
	// 'T' and 'E' statuses are ReadyForQuery but not idle.
	for _, st := range []byte{'T', 'E'} {
		if _, err := s.scan(msg('Z', string(st)), 0); err != nil {
			t.Fatal(err)
		}
		if got, ok := s.ready(); !ok || got != st || s.idle() {
			t.Fatalf("Z %c: ready() = %q, %v, idle %v", st, got, ok, s.idle())
		}
	}
	// The status byte in the next read.
	s = frameScanner{}
	z := msg('Z', "I")
	s.scan(z[:5], 0)
	if _, ok := s.ready(); ok {
		t.Fatal("ready before the status byte")
	}
	s.scan(z[5:], 0)
	if !s.idle() {
		t.Fatal("not idle after the status byte came")
	}
	// Terminate: scanning stops before it, only at a frame start.
	client := bytes.Join([][]byte{msg('Q', "select 'X'"), msg('P', "XXXX"), msg('S', ""), msg('X', "")}, nil)
	want := len(client) - 5
	for k := 1; k < len(client); k++ {
		var c frameScanner
		n1, err1 := c.scan(client[:k], 'X')
		n2, err2 := c.scan(client[k:], 'X')
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if k <= want && (n1 != k || n2 != want-k) || k > want && n1 != want {
			t.Fatalf("split at %d: stopped at %d, %d; want the Terminate at %d", k, n1, n2, want)
		}
		if k <= want {
			if typ, ok := c.boundary(); !ok || typ != 'S' {
				t.Fatalf("split at %d: boundary() = %q, %v before the Terminate", k, typ, ok)
			}
		}
	}
	// A length below 4 is not the protocol.
	s = frameScanner{}
	if _, err := s.scan([]byte{'Q', 0, 0, 0, 3}, 0); !errors.Is(err, errFrameLength) {
		t.Fatalf("length 3: err %v", err)
	}
}

// Server handshake against a fake server: cleartext and md5 passwords, an
// unsupported method.
func TestHandshakeAuth(t *testing.T) {
	run := func(t *testing.T, server func(c net.Conn) error) ([]byte, error) {
		a, b := net.Pipe()
		defer a.Close()
		errc := make(chan error, 1)
		go func() {
			defer b.Close()
			if _, _, err := readStartupFrom(b); err != nil {
				errc <- err
				return
			}
			errc <- server(b)
		}()
		params, err := handshake(a, "bench", "bench", "secret")
		if serr := <-errc; serr != nil {
			t.Fatalf("fake server: %v", serr)
		}
		return params, err
	}
	ok := append(append(msg('R', "\x00\x00\x00\x00"), msg('S', "server_version\x0015.0\x00")...), msg('Z', "I")...)
	expectPassword := func(c net.Conn, want string) error {
		typ, body, err := readFrame(c)
		if err != nil {
			return err
		}
		if typ != 'p' || string(body) != want+"\x00" {
			return fmt.Errorf("password message %q %q, want %q", typ, body, want)
		}
		_, err = c.Write(ok)
		return err
	}
	t.Run("cleartext", func(t *testing.T) {
		params, err := run(t, func(c net.Conn) error {
			if _, err := c.Write(msg('R', "\x00\x00\x00\x03")); err != nil {
				return err
			}
			return expectPassword(c, "secret")
		})
		if err != nil || !bytes.Equal(params, msg('S', "server_version\x0015.0\x00")) {
			t.Fatalf("params %q, err %v", params, err)
		}
	})
	t.Run("md5", func(t *testing.T) {
		// "md5" + md5(hex(md5("secret" + "bench")) + "abcd"), computed with
		// md5sum: printf secretbench | md5sum, then printf <hex>abcd | md5sum.
		const want = "md51665716d31d3f6fa86ee64ded0f48b82"
		_, err := run(t, func(c net.Conn) error {
			if _, err := c.Write(msg('R', "\x00\x00\x00\x05abcd")); err != nil {
				return err
			}
			return expectPassword(c, want)
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unsupported", func(t *testing.T) {
		_, err := run(t, func(c net.Conn) error {
			_, err := c.Write(msg('R', "\x00\x00\x00\x07")) // GSS
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "authentication method 7") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("SASL without SCRAM-SHA-256", func(t *testing.T) {
		_, err := run(t, func(c net.Conn) error {
			_, err := c.Write(msg('R', "\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00\x00"))
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "none supported") {
			t.Fatalf("err %v", err)
		}
	})
}

// readStartupFrom reads a startup packet (no type byte).
func readStartupFrom(r io.Reader) (int, []byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	body := make([]byte, n-4)
	_, err := io.ReadFull(r, body)
	return n, body, err
}

// End to end, against PostgreSQL.

func TestEndToEnd(t *testing.T) {
	if _, err := pgcluster.BinDir(); err != nil {
		t.Skip("no PostgreSQL binaries:", err)
	}
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	ctx := context.Background()
	if err := pg.CreateRole(ctx, "bench", "bench", true); err != nil {
		t.Fatal(err)
	}
	if err := pg.CreateDatabase(ctx, "bench", "bench"); err != nil {
		t.Fatal(err)
	}
	for _, model := range []string{"goroutine", "epoll"} {
		t.Run(model, func(t *testing.T) {
			cfg := config{model: model, listen: "127.0.0.1:0", server: pg.Addr(),
				user: "bench", database: "bench", password: "bench", servers: 2}
			addr, stop := startProto(t, cfg)
			testRaw(t, addr)
			testWorkload(t, addr)
			stop()
		})
	}
}

// startProto runs the pooler in-process; stop shuts it down and checks
// that it exits cleanly.
func startProto(t *testing.T, cfg config) (addr string, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, func(a string) { addrc <- a }) }()
	select {
	case addr = <-addrc:
	case err := <-done:
		cancel()
		t.Fatalf("run: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("the pooler did not start")
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run returned %v at shutdown", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("the pooler did not stop within 10s")
			}
		})
	}
	t.Cleanup(stop)
	return addr, stop
}

// testRaw speaks the protocol by hand: GSSENCRequest, SSLRequest, a simple
// query, Terminate, CancelRequest.
func testRaw(t *testing.T, addr string) {
	c, err := rawStartup(addr, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rawQuery(c, "select 1", 0); err != nil {
		t.Fatal(err)
	}
	c.Write(msg('X', ""))
	c.Close()

	// Cancel: the connection is just closed.
	cc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cc.Write(append(be32(16), append(be32(codeCancel), make([]byte, 8)...)...))
	cc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := cc.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after a CancelRequest: read %d, %v; want EOF", n, err)
	}
}

// rawStartup connects and logs in, optionally asking for GSS and SSL
// encryption first (refused).
func rawStartup(addr string, ask bool) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	fail := func(format string, a ...any) (net.Conn, error) {
		c.Close()
		return nil, fmt.Errorf(format, a...)
	}
	one := make([]byte, 1)
	if ask {
		for _, code := range []uint32{codeGSSENC, codeSSL} {
			c.Write(append(be32(8), be32(code)...))
			if _, err := io.ReadFull(c, one); err != nil || one[0] != 'N' {
				return fail("answer to request %d: %q, %v", code, one, err)
			}
		}
	}
	body := append(be32(protocol30), "user\x00bench\x00database\x00bench\x00application_name\x00raw\x00\x00"...)
	c.Write(append(be32(uint32(4+len(body))), body...))
	var sc frameScanner
	buf := make([]byte, 4096)
	var got []byte
	for !sc.idle() {
		n, err := c.Read(buf)
		if err != nil {
			return fail("reading the greeting: %v", err)
		}
		sc.scan(buf[:n], 0)
		got = append(got, buf[:n]...)
	}
	if !bytes.HasPrefix(got, msg('R', "\x00\x00\x00\x00")) || !bytes.Contains(got, []byte("server_version\x00")) {
		return fail("greeting %q", got)
	}
	return c, nil
}

// rawQuery sends a simple Query, pauses (to let the pooler's output back
// up) and reads the answer up to the idle ReadyForQuery; it returns the
// answer's size.
func rawQuery(c net.Conn, sql string, pause time.Duration) (int, error) {
	if _, err := c.Write(msg('Q', sql+"\x00")); err != nil {
		return 0, err
	}
	time.Sleep(pause)
	var sc frameScanner
	buf := make([]byte, 64<<10)
	total := 0
	var head []byte
	for !sc.idle() {
		n, err := c.Read(buf)
		if err != nil {
			return total, fmt.Errorf("%s: reading the answer: %w", sql, err)
		}
		if _, err := sc.scan(buf[:n], 0); err != nil {
			return total, err
		}
		if len(head) < 64 {
			head = append(head, buf[:min(n, 64)]...)
		}
		total += n
	}
	if head[0] != 'T' {
		return total, fmt.Errorf("%s: answer starts %q", sql, head)
	}
	return total, nil
}

// testWorkload runs 30 pgx clients through the pooler and its 2 server
// connections, checking every answer.
func testWorkload(t *testing.T, addr string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	connect := func(sslmode string) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig("postgres://bench@" + addr + "/bench?sslmode=" + sslmode)
		if err != nil {
			return nil, err
		}
		cfg.DefaultQueryExecMode = pgx.QueryExecModeExec // unnamed statements: one round trip
		return pgx.ConnectConfig(ctx, cfg)
	}
	const clients, queries, simple = 30, 200, 20
	errc := make(chan error, clients+1)
	var wg sync.WaitGroup
	// A slow reader of a large result beside them.
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := rawStartup(addr, false)
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		if n, err := rawQuery(c, "select repeat('x', 8000000)", 300*time.Millisecond); err != nil || n < 8000000 {
			errc <- fmt.Errorf("slow reader: large result of %d bytes, %v", n, err)
			return
		}
		if _, err := rawQuery(c, "select 2", 0); err != nil {
			errc <- fmt.Errorf("slow reader: %w", err)
		}
	}()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sslmode := "disable"
			if i%3 == 0 {
				sslmode = "prefer" // an SSLRequest refused first
			}
			conn, err := connect(sslmode)
			if err != nil {
				errc <- fmt.Errorf("client %d: connect: %w", i, err)
				return
			}
			defer conn.Close(ctx)
			if err := clientWork(ctx, conn, i, queries, simple); err != nil {
				errc <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	// A client that goes away in a transaction: its server is closed and
	// replaced, so that two transactions can again run side by side.
	conn, err := connect("disable")
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx) // Terminate mid-transaction
	tctx, tcancel := context.WithTimeout(ctx, 20*time.Second)
	defer tcancel()
	var txs []pgx.Tx
	for range 2 {
		c, err := connect("disable")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		tx, err := c.Begin(tctx)
		if err != nil {
			t.Fatalf("two transactions at once after a server was replaced: %v", err)
		}
		txs = append(txs, tx)
	}
	for _, tx := range txs {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// clientWork is one client's queries.
func clientWork(ctx context.Context, conn *pgx.Conn, id, queries, simple int) error {
	for j := range queries {
		want := id*10000 + j
		var got int
		if err := conn.QueryRow(ctx, "select $1::int", want).Scan(&got); err != nil {
			return fmt.Errorf("extended query %d: %w", j, err)
		}
		if got != want {
			return fmt.Errorf("extended query %d: got %d, want %d", j, got, want)
		}
	}
	for j := range simple {
		want := -(id*10000 + j)
		var got int
		if err := conn.QueryRow(ctx, "select $1::int", pgx.QueryExecModeSimpleProtocol, want).Scan(&got); err != nil {
			return fmt.Errorf("simple query %d: %w", j, err)
		}
		if got != want {
			return fmt.Errorf("simple query %d: got %d, want %d", j, got, want)
		}
	}
	// A transaction keeps its server.
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	var pid1, pid2 int
	if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid1); err != nil {
		return err
	}
	time.Sleep(time.Millisecond)
	if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid2); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	if pid1 != pid2 {
		return fmt.Errorf("one transaction on two servers: pids %d and %d", pid1, pid2)
	}
	// Errors, in and out of a transaction.
	var pgErr *pgconn.PgError
	if _, err := conn.Exec(ctx, "select 1/0"); !errors.As(err, &pgErr) || pgErr.Code != "22012" {
		return fmt.Errorf("division by zero: %v", err)
	}
	if tx, err = conn.Begin(ctx); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "select 1/0", pgx.QueryExecModeSimpleProtocol); !errors.As(err, &pgErr) || pgErr.Code != "22012" {
		return fmt.Errorf("division by zero in a transaction: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		return err
	}
	// Large messages both ways, spanning reads.
	big := strings.Repeat("y", 200_000+id)
	var n int
	if err := conn.QueryRow(ctx, "select length($1::text)", big).Scan(&n); err != nil || n != len(big) {
		return fmt.Errorf("large parameter: %d, %v", n, err)
	}
	var s string
	if err := conn.QueryRow(ctx, "select repeat('z', $1::int)", 300_000+id).Scan(&s); err != nil || len(s) != 300_000+id {
		return fmt.Errorf("large result: %d bytes, %v", len(s), err)
	}
	return nil
}
