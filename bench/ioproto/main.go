// Command ioproto is an I/O-model prototype for the bench: a minimal
// transaction-mode pooler implemented twice with the same pooling logic,
// once with a goroutine per client over Go's netpoll (-model goroutine,
// goroutine.go, as pgshield works today) and once with one edge-triggered
// epoll event loop on a locked OS thread (-model epoll, epoll.go), so that
// the bench can compare their CPU per transaction with PgBouncer's.
//
//	ioproto -model goroutine|epoll -listen 127.0.0.1:PORT -server 127.0.0.1:PGPORT \
//		-user bench -database bench -password bench -servers 20
//
// At start it opens -servers connections to PostgreSQL (trust, cleartext,
// md5 or SCRAM-SHA-256 authentication) and remembers the ParameterStatus
// messages of the first, which it replays to every client. Clients are not
// authenticated: SSLRequest and GSSENCRequest are refused with 'N', a
// CancelRequest is dropped, and a StartupMessage (whose parameters are
// ignored) is answered with AuthenticationOk, the remembered parameters,
// BackendKeyData and ReadyForQuery.
//
// Pooling: a client with bytes to send and no server takes a free one
// (clients wait in FIFO order when none is free); bytes are forwarded
// unchanged both ways, except a client's Terminate, which closes the client
// (and the server it holds, which is replaced by a new connection, unless
// nothing was sent to it). The server goes back to the pool when its stream
// reaches a ReadyForQuery with status 'I' that is the last complete frame of
// what has been read from it. Only frame boundaries are scanned
// (frameScanner); nothing else is decoded.
//
// This is enough for `pgbench -S -M simple` and `-M extended` (unnamed
// statements). It is not enough for -M prepared or any client that uses
// named prepared statements (they live on one server connection and would
// need statement tracking, out of scope), nor for clients that pipeline
// several Syncs without waiting (the server could be released after the
// first ReadyForQuery when a read happens to end there), nor for SET,
// LISTEN, advisory locks and other session state.
//
// It prints nothing but errors (to stderr) and runs until SIGINT or
// SIGTERM, then exits 0.
package main

import (
	"context"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/xdg-go/scram"
)

// config is the command line.
type config struct {
	model    string // "goroutine" or "epoll"
	listen   string // client address
	server   string // PostgreSQL address
	user     string
	database string
	password string
	servers  int // server connections
}

var logger = log.New(os.Stderr, "ioproto: ", log.LstdFlags)

func main() {
	var cfg config
	flag.StringVar(&cfg.model, "model", "goroutine", "I/O model: goroutine or epoll")
	flag.StringVar(&cfg.listen, "listen", "127.0.0.1:6433", "client `address`")
	flag.StringVar(&cfg.server, "server", "127.0.0.1:5432", "PostgreSQL `address`")
	flag.StringVar(&cfg.user, "user", "bench", "PostgreSQL user")
	flag.StringVar(&cfg.database, "database", "bench", "PostgreSQL database")
	flag.StringVar(&cfg.password, "password", "", "PostgreSQL password (cleartext, md5 or SCRAM-SHA-256 authentication)")
	flag.IntVar(&cfg.servers, "servers", 20, "server connections")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, nil); err != nil {
		logger.Print(err)
		os.Exit(1)
	}
}

// run opens the server connections, then serves clients with cfg.model
// until ctx is done. ready, if not nil, is called with the listening
// address once clients can connect (tests listen on port 0).
func run(ctx context.Context, cfg config, ready func(addr string)) error {
	if cfg.model != "goroutine" && cfg.model != "epoll" {
		return fmt.Errorf("-model %q: want goroutine or epoll", cfg.model)
	}
	if cfg.servers < 1 {
		return fmt.Errorf("-servers %d: want at least 1", cfg.servers)
	}
	servers := make([]net.Conn, 0, cfg.servers)
	var params []byte
	for i := range cfg.servers {
		nc, ps, err := dialServer(ctx, cfg)
		if err != nil {
			for _, s := range servers {
				s.Close()
			}
			return fmt.Errorf("server connection %d: %w", i+1, err)
		}
		if i == 0 {
			params = ps
		}
		servers = append(servers, nc)
	}
	if ready == nil {
		ready = func(string) {}
	}
	g := greeting(params)
	if cfg.model == "epoll" {
		return runEpoll(ctx, cfg, servers, g, ready)
	}
	return runGoroutine(ctx, cfg, servers, g, ready)
}

// Frame scanning.

// frameScanner follows the frame boundaries of one direction of a protocol
// stream across reads, without copying it. A frame is a type byte, a
// 4-byte big-endian length that counts itself, and length-4 body bytes.
// The zero value is at the start of a stream.
type frameScanner struct {
	hdr    [5]byte // header of the current frame, while incomplete
	nhdr   int     // header bytes of the current frame seen: 0 at a boundary, 5 in the body
	left   int     // body bytes of the current frame still to come
	typ    byte    // type of the current frame or, at a boundary, of the last complete one
	status byte    // first body byte of that frame (a ReadyForQuery's status); 0 before it
}

var errFrameLength = errors.New("protocol error: frame length below 4")

// scan follows p, the next bytes of the stream. When stop is not 0 and a
// frame of that type starts in p, scan stops there and returns its offset
// (the scanner stays before it); otherwise it returns len(p). An error
// means the stream is not the protocol (a length below 4).
func (s *frameScanner) scan(p []byte, stop byte) (int, error) {
	i := 0
	for i < len(p) {
		if s.nhdr < 5 {
			if s.nhdr == 0 && stop != 0 && p[i] == stop {
				return i, nil
			}
			k := copy(s.hdr[s.nhdr:], p[i:])
			s.nhdr += k
			i += k
			if s.nhdr < 5 {
				break
			}
			n := int(binary.BigEndian.Uint32(s.hdr[1:]))
			if n < 4 {
				return i, errFrameLength
			}
			s.typ, s.left, s.status = s.hdr[0], n-4, 0
			if s.left == 0 {
				s.nhdr = 0
			}
			continue
		}
		if s.status == 0 {
			s.status = p[i]
		}
		k := min(s.left, len(p)-i)
		i += k
		s.left -= k
		if s.left == 0 {
			s.nhdr = 0
		}
	}
	return len(p), nil
}

// boundary reports whether the scanner is between frames, and the type of
// the last complete frame (0 at the start).
func (s *frameScanner) boundary() (typ byte, ok bool) {
	return s.typ, s.nhdr == 0
}

// ready reports whether what was scanned ends with a complete ReadyForQuery,
// and its status ('I' idle, 'T' in a transaction, 'E' in a failed one).
func (s *frameScanner) ready() (status byte, ok bool) {
	if s.nhdr != 0 || s.typ != 'Z' {
		return 0, false
	}
	return s.status, true
}

// idle reports whether what was scanned ends with a ReadyForQuery 'I':
// the server can go back to the pool.
func (s *frameScanner) idle() bool {
	st, ok := s.ready()
	return ok && st == 'I'
}

// Protocol messages.

const (
	protocol30     = 3 << 16
	codeCancel     = 80877102
	codeSSL        = 80877103
	codeGSSENC     = 80877104
	maxStartupSize = 10000
	maxServerFrame = 1 << 20 // during the handshake
)

// startupKind classifies a client's startup packet (length included).
type startupKind int

const (
	startupBad startupKind = iota
	startupSSL
	startupGSSENC
	startupCancel
	startupMessage
)

func classifyStartup(pkt []byte) startupKind {
	if len(pkt) < 8 {
		return startupBad
	}
	code := binary.BigEndian.Uint32(pkt[4:])
	switch {
	case len(pkt) == 8 && code == codeSSL:
		return startupSSL
	case len(pkt) == 8 && code == codeGSSENC:
		return startupGSSENC
	case len(pkt) == 16 && code == codeCancel:
		return startupCancel
	case code>>16 == 3:
		return startupMessage
	}
	return startupBad
}

// startupLength checks the length at the start of a startup packet.
func startupLength(hdr []byte) (int, error) {
	n := int(binary.BigEndian.Uint32(hdr))
	if n < 8 || n > maxStartupSize {
		return 0, fmt.Errorf("startup packet length %d", n)
	}
	return n, nil
}

// frame builds a message: type, length, body.
func frame(typ byte, body ...[]byte) []byte {
	n := 4
	for _, b := range body {
		n += len(b)
	}
	out := make([]byte, 5, 1+n)
	out[0] = typ
	binary.BigEndian.PutUint32(out[1:], uint32(n))
	for _, b := range body {
		out = append(out, b...)
	}
	return out
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func cstring(s string) []byte { return append([]byte(s), 0) }

// greeting is what a client gets in answer to its StartupMessage:
// AuthenticationOk, the server's ParameterStatus messages (params, whole
// frames), BackendKeyData and ReadyForQuery 'I'.
func greeting(params []byte) []byte {
	var g []byte
	g = append(g, frame('R', be32(0))...)
	g = append(g, params...)
	g = append(g, frame('K', be32(4242), be32(0x5eed))...)
	g = append(g, frame('Z', []byte{'I'})...)
	return g
}

// Server connections.

// dialServer connects to PostgreSQL and logs in; it returns the connection,
// at ReadyForQuery, and the server's ParameterStatus frames.
func dialServer(ctx context.Context, cfg config) (net.Conn, []byte, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", cfg.server)
	if err != nil {
		return nil, nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	params, err := handshake(nc, cfg.user, cfg.database, cfg.password)
	stop()
	if err == nil {
		err = nc.SetDeadline(time.Time{})
	}
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, params, nil
}

// dialRetry is dialServer retried, with a growing pause, until it succeeds
// or ctx is done.
func dialRetry(ctx context.Context, cfg config) (net.Conn, error) {
	pause := 50 * time.Millisecond
	for {
		nc, _, err := dialServer(ctx, cfg)
		if err == nil {
			return nc, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		logger.Printf("replacing a server connection: %v (retrying in %v)", err, pause)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Second)
	}
}

// handshake sends the StartupMessage, authenticates and reads up to
// ReadyForQuery, returning the ParameterStatus frames.
func handshake(rw io.ReadWriter, user, database, password string) ([]byte, error) {
	var startup []byte
	startup = append(startup, be32(protocol30)...)
	startup = append(startup, cstring("user")...)
	startup = append(startup, cstring(user)...)
	startup = append(startup, cstring("database")...)
	startup = append(startup, cstring(database)...)
	startup = append(startup, 0)
	if _, err := rw.Write(append(be32(uint32(4+len(startup))), startup...)); err != nil {
		return nil, err
	}
	var params []byte
	var sasl *scram.ClientConversation
	for {
		typ, body, err := readFrame(rw)
		if err != nil {
			return nil, err
		}
		var reply []byte
		switch typ {
		case 'R':
			if reply, sasl, err = authenticate(body, user, password, sasl); err != nil {
				return nil, err
			}
		case 'S':
			params = append(params, frame('S', body)...)
		case 'K', 'N':
		case 'E':
			return nil, fmt.Errorf("server: %s", errorText(body))
		case 'Z':
			return params, nil
		default:
			return nil, fmt.Errorf("unexpected message %q during the server handshake", typ)
		}
		if reply != nil {
			if _, err := rw.Write(reply); err != nil {
				return nil, err
			}
		}
	}
}

// authenticate answers an AuthenticationRequest (body of an 'R' message):
// the reply to send (nil for none) and the SCRAM conversation under way.
func authenticate(body []byte, user, password string, conv *scram.ClientConversation) ([]byte, *scram.ClientConversation, error) {
	if len(body) < 4 {
		return nil, conv, errors.New("short authentication request")
	}
	data := body[4:]
	switch code := binary.BigEndian.Uint32(body); code {
	case 0: // AuthenticationOk
		return nil, conv, nil
	case 3: // cleartext password
		return frame('p', cstring(password)), conv, nil
	case 5: // md5: "md5" + md5(hex(md5(password + user)) + salt)
		if len(data) < 4 {
			return nil, conv, errors.New("short md5 authentication request")
		}
		inner := md5.Sum([]byte(password + user))
		outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), data[:4]...))
		return frame('p', cstring("md5"+hex.EncodeToString(outer[:]))), conv, nil
	case 10: // SASL: the mechanisms offered
		mechs := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if !slices.Contains(mechs, "SCRAM-SHA-256") {
			return nil, conv, fmt.Errorf("server offers SASL mechanisms %q, none supported (SCRAM-SHA-256 is)", mechs)
		}
		client, err := scram.SHA256.NewClient(user, password, "")
		if err != nil {
			return nil, conv, fmt.Errorf("SCRAM: %w", err)
		}
		conv = client.NewConversation()
		first, err := conv.Step("")
		if err != nil {
			return nil, conv, fmt.Errorf("SCRAM: %w", err)
		}
		return frame('p', cstring("SCRAM-SHA-256"), be32(uint32(len(first))), []byte(first)), conv, nil
	case 11, 12: // SASLContinue, SASLFinal
		if conv == nil {
			return nil, conv, errors.New("SASL message before SASL authentication started")
		}
		resp, err := conv.Step(string(data))
		if err != nil {
			return nil, conv, fmt.Errorf("SCRAM: %w", err)
		}
		if code == 12 {
			return nil, conv, nil // server signature checked by Step
		}
		return frame('p', []byte(resp)), conv, nil
	default:
		return nil, conv, fmt.Errorf("server asks for authentication method %d, not supported (trust, cleartext password, md5 and SCRAM-SHA-256 are)", code)
	}
}

// readFrame reads one whole message.
func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > maxServerFrame {
		return 0, nil, fmt.Errorf("server message %q of length %d", hdr[0], n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}

// errorText renders the severity, code and message of an ErrorResponse.
func errorText(body []byte) string {
	var sev, code, msg string
	for len(body) > 1 {
		f := body[0]
		end := slices.Index(body[1:], 0)
		if end < 0 {
			break
		}
		v := string(body[1 : 1+end])
		body = body[2+end:]
		switch f {
		case 'S':
			sev = v
		case 'C':
			code = v
		case 'M':
			msg = v
		}
	}
	return fmt.Sprintf("%s %s: %s", sev, code, msg)
}
