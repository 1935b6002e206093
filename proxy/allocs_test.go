package proxy_test

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/internal/example"
	"github.com/pgshield/pgshield/proxy"
)

// rawClient speaks the protocol by hand after pgconn's login, so that the
// client itself allocates nothing per statement.
type rawClient struct {
	nc  net.Conn
	br  *bufio.Reader
	out []byte
	buf []byte
}

func rawConnect(t *testing.T, e *env) *rawClient {
	t.Helper()
	pc, err := pgconn.Connect(ctxT(t), e.url("app", ""))
	if err != nil {
		t.Fatal(err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	return &rawClient{nc: hc.Conn, br: bufio.NewReaderSize(hc.Conn, 16<<10), buf: make([]byte, 16<<10)}
}

// untilReady reads messages up to ReadyForQuery, failing on an error.
func (c *rawClient) untilReady(t *testing.T) {
	for {
		hdr, err := c.br.Peek(5)
		if err != nil {
			t.Fatal(err)
		}
		typ, n := hdr[0], int(binary.BigEndian.Uint32(hdr[1:]))+1
		if _, err := io.ReadFull(c.br, c.buf[:n]); err != nil {
			t.Fatal(err)
		}
		switch typ {
		case 'E':
			t.Fatalf("server error: %q", c.buf[5:n])
		case 'Z':
			return
		}
	}
}

func (c *rawClient) send(t *testing.T, msgs ...pgproto3.FrontendMessage) {
	c.out = c.out[:0]
	for _, m := range msgs {
		var err error
		if c.out, err = m.Encode(c.out); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.nc.Write(c.out); err != nil {
		t.Fatal(err)
	}
}

// The forwarding path allocates nothing per statement, statistics on, in
// transaction mode, for simple queries and for prepared statements: each
// statement attaches a server, is classified, timed, recorded by
// fingerprint and released. What other goroutines allocate meanwhile
// (health checks, pool maintenance) is far below one allocation per
// statement over a thousand of them.
//
// make test runs it a second time without -race, which it needs.
func TestForwardingDoesNotAllocate(t *testing.T) {
	if raceDetector {
		t.Skip("allocation counts need a build without -race (make test runs this test so)")
	}
	e := startProxy(t, nil)
	c := rawConnect(t, e)
	query := &pgproto3.Query{String: "select 1"}
	parse := &pgproto3.Parse{Name: "s1", Query: "select $1::int"}
	bind := &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("7")}}
	exec := &pgproto3.Execute{}
	sync := &pgproto3.Sync{}
	c.send(t, parse, sync)
	c.untilReady(t)
	// Hooks that act on nothing: a configured policy that no statement of
	// these matches costs no allocation either.
	var events atomic.Int64
	idle := &proxy.Hooks{
		Statement:       func(proxy.StatementEvent) proxy.Verdict { events.Add(1); return proxy.Verdict{} },
		Bind:            func(proxy.BindEvent) proxy.Verdict { events.Add(1); return proxy.Verdict{} },
		Described:       func(proxy.DescribedEvent) proxy.DescribedVerdict { events.Add(1); return proxy.DescribedVerdict{} },
		CommandComplete: func(proxy.CompleteEvent) { events.Add(1) },
		Ready:           func(proxy.ReadyEvent) { events.Add(1) },
	}
	// The example application's policy and encryption, which these
	// statements do not concern (they name no table).
	ef, err := config.ParseEncryption([]byte(example.Encryption()))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	enc, err := ef.ProxyEncryption(keys)
	if err != nil {
		t.Fatal(err)
	}
	shield := func() {
		e.srv.SetPolicy(examplePolicy(t), e.m)
		e.srv.SetEncryption(enc, nil)
	}
	for _, tc := range []struct {
		name  string
		msgs  []pgproto3.FrontendMessage
		hooks *proxy.Hooks
		setup func()
	}{
		{"simple", []pgproto3.FrontendMessage{query}, nil, nil},
		{"prepared", []pgproto3.FrontendMessage{bind, exec, sync}, nil, nil},
		{"simple with hooks", []pgproto3.FrontendMessage{query}, idle, nil},
		{"prepared with hooks", []pgproto3.FrontendMessage{bind, exec, sync}, idle, nil},
		{"simple with policy and encryption", []pgproto3.FrontendMessage{query}, nil, shield},
		{"prepared with policy and encryption", []pgproto3.FrontendMessage{bind, exec, sync}, nil, shield},
	} {
		e.srv.SetHooks(tc.hooks)
		if tc.setup != nil {
			tc.setup()
		}
		round := func(n int) {
			for i := 0; i < n; i++ {
				c.send(t, tc.msgs...)
				c.untilReady(t)
			}
		}
		round(200) // warm up: buffers, sketches, caches
		const n = 2000
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		round(n)
		runtime.ReadMemStats(&after)
		perStatement := float64(after.Mallocs-before.Mallocs) / n
		t.Logf("%s: %.3f allocations per statement", tc.name, perStatement)
		if perStatement >= 0.5 {
			t.Errorf("%s: %.2f allocations per statement, want none", tc.name, perStatement)
		}
	}
	if events.Load() == 0 {
		t.Error("the hooks were not called, so the test did not measure them")
	}
	if e.srv.QueryStats().Len() == 0 {
		t.Error("statistics were not recorded, so the test did not measure them")
	}
}
