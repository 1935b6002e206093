package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
)

func startupBody(version uint32, kv ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, version)
	for _, s := range kv {
		b = append(append(b, s...), 0)
	}
	return append(b, 0)
}

func TestParseStartup(t *testing.T) {
	req, reply, err := parseStartup(startupBody(protocol30, "user", "app", "database", "db", "options", "-c search_path=x --statement-timeout=5s"))
	if err != nil || reply != 0 || req.params["user"] != "app" || req.params["database"] != "db" {
		t.Fatalf("got %+v %q %v", req, reply, err)
	}
	s, err := clientSettings(req.params)
	if err != nil || s["search_path"] != "x" || s["statement_timeout"] != "5s" {
		t.Fatalf("settings %v %v", s, err)
	}
	for name, body := range map[string][]byte{
		"v2":            startupBody(2<<16, "user", "app"),
		"v4":            startupBody(4<<16, "user", "app"),
		"no terminator": startupBody(protocol30, "user", "app")[:12],
		"odd pairs":     startupBody(protocol30, "user"),
		"short":         {0, 3},
		"ssl with junk": append(binary.BigEndian.AppendUint32(nil, codeSSLRequest), 1),
		"cancel short":  binary.BigEndian.AppendUint32(nil, codeCancelRequest),
	} {
		if _, _, err := parseStartup(body); err == nil {
			t.Errorf("%s: want an error", name)
		} else if pe, ok := err.(*pgError); !ok || pe.severity != "FATAL" {
			t.Errorf("%s: want a FATAL pgError, got %v", name, err)
		}
	}
	if _, reply, _ := parseStartup(binary.BigEndian.AppendUint32(nil, codeSSLRequest)); reply != 'S' {
		t.Error("SSLRequest not recognised")
	}
	if _, reply, _ := parseStartup(binary.BigEndian.AppendUint32(nil, codeGSSENCRequest)); reply != 'N' {
		t.Error("GSSENCRequest not recognised")
	}
	if _, err := clientSettings(map[string]string{"replication": "database"}); err == nil {
		t.Error("replication connections must be refused")
	}
}

// FuzzParseStartup: untrusted startup packets never panic, and anything
// refused is refused with a FATAL the client can read.
func FuzzParseStartup(f *testing.F) {
	f.Add(startupBody(protocol30, "user", "app", "database", "app"))
	f.Add(startupBody(protocol30, "user", "app", "options", `-c a=b\ c --x-y=z`))
	f.Add(binary.BigEndian.AppendUint32(nil, codeSSLRequest))
	f.Add(append(binary.BigEndian.AppendUint32(nil, codeCancelRequest), 0, 0, 0, 1, 0, 0, 0, 2))
	f.Add(startupBody(3<<16|2, "user", "app", "_pq_.x", "1"))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, _, err := parseStartup(body)
		if err != nil {
			if pe, ok := err.(*pgError); !ok || pe.severity != "FATAL" {
				t.Fatalf("refusal is not a FATAL pgError: %v", err)
			}
			return
		}
		if req != nil && req.params != nil {
			_, _ = clientSettings(req.params)
			_, _ = settingsSQL(req.params)
		}
	})
}

// noServers is a pool that never has a server: enough to drive the client
// side of a session through every message type without a database.
type noServers struct{}

func (noServers) Acquire(context.Context, string, string, string) (*poolmgr.Conn, error) {
	return nil, poolmgr.ErrWaitTimeout
}
func (noServers) Service(string) (poolmgr.ServiceConfig, bool) {
	return poolmgr.ServiceConfig{MaxConnections: 1, PoolMode: poolmgr.ModeTransaction}, true
}
func (noServers) Config() poolmgr.Config {
	return poolmgr.Config{Services: map[string]poolmgr.ServiceConfig{"api": {}}, DefaultService: "api"}
}

// runClientBytes feeds data to a transaction-mode session whose pool has no
// server and returns everything the session wrote back.
func runClientBytes(t *testing.T, data []byte) []byte {
	srv, err := New(Config{Users: []User{{Name: "app", Password: "x"}}, MaxMessageSize: 1 << 12}, noServers{}, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	client, server := net.Pipe()
	br := bufio.NewReaderSize(server, clientReadBuf)
	sess := &session{srv: srv, log: zap.NewNop(), conn: server, br: br, r: wire.NewReader(br, 1<<12),
		mode: poolmgr.ModeTransaction, txStatus: 'I', service: "api", database: "db", ctx: context.Background()}
	done := make(chan struct{})
	srv.wg.Add(1) // as Serve does for each connection; the session's end counts it down
	go func() { defer close(done); sess.run() }()
	var out bytes.Buffer
	readDone := make(chan struct{})
	go func() { defer close(readDone); _, _ = io.Copy(&out, client) }()
	_ = client.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, _ = client.Write(data)
	_ = client.SetWriteDeadline(time.Time{})
	// A Terminate ends any session still reading.
	_, _ = client.Write([]byte{'X', 0, 0, 0, 4})
	select {
	case <-done:
	case <-time.After(time.Second):
		// The input ended inside a message, so the session is still
		// waiting for the rest, as PostgreSQL would. Hanging up must end it.
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("session did not end after the client hung up")
		}
	}
	client.Close()
	<-readDone
	return out.Bytes()
}

func TestClientMessagesWithoutServer(t *testing.T) {
	var in []byte
	in, _ = (&pgproto3.Query{String: "select 1"}).Encode(in)
	in, _ = (&pgproto3.Parse{Query: "select 1"}).Encode(in)
	in, _ = (&pgproto3.Bind{}).Encode(in)
	in, _ = (&pgproto3.Execute{}).Encode(in)
	in, _ = (&pgproto3.Sync{}).Encode(in)
	out := runClientBytes(t, in)
	fe := pgproto3.NewFrontend(bytes.NewReader(out), io.Discard)
	var got []string
	for {
		m, err := fe.Receive()
		if err != nil {
			break
		}
		switch m := m.(type) {
		case *pgproto3.ErrorResponse:
			got = append(got, "E"+m.Code)
		case *pgproto3.ReadyForQuery:
			got = append(got, "Z"+string(m.TxStatus))
		default:
			got = append(got, "?")
		}
	}
	want := []string{"E53300", "ZI", "E53300", "ZI"}
	if len(got) != len(want) {
		t.Fatalf("got %v want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v want %v", got, want)
		}
	}
}

// FuzzClientMessages: arbitrary client bytes after login never panic or
// hang the session, and whatever it answers is well-formed protocol.
func FuzzClientMessages(f *testing.F) {
	q, _ := (&pgproto3.Query{String: "select 1"}).Encode(nil)
	f.Add(q)
	p, _ := (&pgproto3.Parse{Name: "s1", Query: "select $1"}).Encode(nil)
	b, _ := (&pgproto3.Bind{PreparedStatement: "s1"}).Encode(p)
	s, _ := (&pgproto3.Sync{}).Encode(b)
	f.Add(s)
	f.Add([]byte{'D', 0, 0, 0, 5, 'S'})
	f.Add([]byte{'Z', 0, 0, 0, 4})
	f.Add([]byte{'Q', 0x7f, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		out := runClientBytes(t, data)
		checkBackendStream(t, out)
	})
}

// checkBackendStream checks that out is a sequence of complete, decodable
// backend messages.
func checkBackendStream(t *testing.T, out []byte) {
	t.Helper()
	r := wire.NewReader(bufio.NewReader(bytes.NewReader(out)), 0)
	for {
		_, _, err := r.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("session wrote malformed protocol: %v", err)
		}
		frame, err := r.Frame()
		if err != nil {
			t.Fatalf("session wrote a truncated message: %v", err)
		}
		fe := pgproto3.NewFrontend(bytes.NewReader(frame), io.Discard)
		if _, err := fe.Receive(); err != nil {
			t.Fatalf("undecodable message %q: %v", frame[0], err)
		}
	}
}
