package proxy_test

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// rawConn dials the proxy without a driver.
func rawConn(t *testing.T, e *env) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return nc
}

// readAllMessages reads backend messages until the proxy closes.
func readAllMessages(t *testing.T, nc net.Conn) []pgproto3.BackendMessage {
	t.Helper()
	fe := pgproto3.NewFrontend(bufio.NewReader(nc), io.Discard)
	var out []pgproto3.BackendMessage
	for {
		m, err := fe.Receive()
		if err != nil {
			return out
		}
		switch m := m.(type) {
		case *pgproto3.ErrorResponse:
			cp := *m
			out = append(out, &cp)
		case *pgproto3.ReadyForQuery:
			cp := *m
			out = append(out, &cp)
		default:
			out = append(out, m)
		}
	}
}

// expectFatal checks the proxy answered with one FATAL of code and closed.
func expectFatal(t *testing.T, msgs []pgproto3.BackendMessage, code string) {
	t.Helper()
	for _, m := range msgs {
		if er, ok := m.(*pgproto3.ErrorResponse); ok {
			if er.Severity != "FATAL" || er.Code != code {
				t.Fatalf("want FATAL %s, got %s %s: %s", code, er.Severity, er.Code, er.Message)
			}
			return
		}
	}
	t.Fatalf("want FATAL %s, got %d messages and no error", code, len(msgs))
}

// loginRaw logs in as app over a raw connection; the proxy under test must
// use trust authentication.
func loginRaw(t *testing.T, e *env) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	nc := rawConn(t, e)
	fe := pgproto3.NewFrontend(bufio.NewReader(nc), nc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "app"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		switch m := m.(type) {
		case *pgproto3.ReadyForQuery:
			return nc, fe
		case *pgproto3.ErrorResponse:
			t.Fatalf("login refused: %s %s", m.Code, m.Message)
		}
	}
}

func TestBadInput(t *testing.T) {
	e := startProxy(t, func(p *proxyConfig, _ *poolConfig) {
		p.AuthType = "trust"
		p.MaxMessageSize = 64 << 10
	})
	ctx := ctxT(t)
	// A healthy client that must be unaffected by everything below.
	good := e.connect(t, "sess", "")

	t.Run("absurd startup length", func(t *testing.T) {
		nc := rawConn(t, e)
		_, _ = nc.Write([]byte{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0})
		expectFatal(t, readAllMessages(t, nc), "08P01")
	})
	t.Run("tiny startup length", func(t *testing.T) {
		nc := rawConn(t, e)
		_, _ = nc.Write([]byte{0, 0, 0, 2})
		expectFatal(t, readAllMessages(t, nc), "08P01")
	})
	t.Run("malformed startup packet", func(t *testing.T) {
		nc := rawConn(t, e)
		body := binary.BigEndian.AppendUint32(nil, 3<<16)
		body = append(body, "user\x00app"...) // no terminators
		pkt := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
		_, _ = nc.Write(append(pkt, body...))
		expectFatal(t, readAllMessages(t, nc), "08P01")
	})
	t.Run("protocol 2", func(t *testing.T) {
		nc := rawConn(t, e)
		body := binary.BigEndian.AppendUint32(nil, 2<<16)
		body = append(body, "user\x00app\x00\x00"...)
		pkt := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
		_, _ = nc.Write(append(pkt, body...))
		expectFatal(t, readAllMessages(t, nc), "0A000")
	})
	t.Run("garbage instead of TLS handshake", func(t *testing.T) {
		nc := rawConn(t, e)
		_, _ = nc.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47})
		var b [1]byte
		if _, err := io.ReadFull(nc, b[:]); err != nil {
			t.Fatal(err)
		}
		if b[0] != 'S' && b[0] != 'N' {
			t.Fatalf("SSLRequest answered %q", b[0])
		}
		_, _ = nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		// The proxy must close the connection (TLS alert or plain close).
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, nc); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("proxy kept a garbage TLS connection open")
			}
		}
	})
	t.Run("unknown message type", func(t *testing.T) {
		nc, _ := loginRaw(t, e)
		_, _ = nc.Write([]byte{'z', 0, 0, 0, 4})
		expectFatal(t, readAllMessages(t, nc), "08P01")
	})
	t.Run("oversized message", func(t *testing.T) {
		nc, _ := loginRaw(t, e)
		q := make([]byte, 5+100<<10)
		q[0] = 'Q'
		binary.BigEndian.PutUint32(q[1:], uint32(len(q)-1))
		_, _ = nc.Write(q[:5])
		expectFatal(t, readAllMessages(t, nc), "08P01")
	})
	t.Run("impossible message length", func(t *testing.T) {
		nc, _ := loginRaw(t, e)
		_, _ = nc.Write([]byte{'Q', 0, 0, 0, 1})
		expectFatal(t, readAllMessages(t, nc), "08P01")
	})
	t.Run("silent client", func(t *testing.T) {
		e2 := startProxy(t, func(p *proxyConfig, _ *poolConfig) { p.ClientLoginTimeout = 300 * time.Millisecond })
		nc := rawConn(t, e2)
		start := time.Now()
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := nc.Read(make([]byte, 1))
		if err == nil || time.Since(start) > 8*time.Second {
			t.Fatalf("silent client not dropped: %v after %s", err, time.Since(start))
		}
	})
	t.Run("TLS required", func(t *testing.T) {
		e2 := startProxy(t, func(p *proxyConfig, _ *poolConfig) {
			p.TLS = tlsFiles(t)
			p.TLS.Client = "require"
			p.AuthType = "trust"
		})
		nc := rawConn(t, e2)
		fe := pgproto3.NewFrontend(bufio.NewReader(nc), nc)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "app"}})
		_ = fe.Flush()
		expectFatal(t, readAllMessages(t, nc), "28000")
		// With TLS it works.
		nc2 := rawConn(t, e2)
		_, _ = nc2.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47})
		var b [1]byte
		if _, err := io.ReadFull(nc2, b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("SSLRequest: %q %v", b[0], err)
		}
		tc := tls.Client(nc2, &tls.Config{InsecureSkipVerify: true})
		fe2 := pgproto3.NewFrontend(bufio.NewReader(tc), tc)
		fe2.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "app"}})
		if err := fe2.Flush(); err != nil {
			t.Fatal(err)
		}
		for {
			m, err := fe2.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
			if er, ok := m.(*pgproto3.ErrorResponse); ok {
				t.Fatalf("TLS login refused: %s", er.Message)
			}
		}
	})

	var v int
	if err := good.QueryRow(ctx, "select 1").Scan(&v); err != nil || v != 1 {
		t.Fatalf("healthy client affected: %v", err)
	}
}
