package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
)

// AdminDatabase is the database name operators connect to on the admin
// port: psql -h … -p 6433 -U admin pgshield.
const AdminDatabase = "pgshield"

// AdminMaxMessage bounds one message from an admin client. Console
// commands are short; anything larger is refused as a protocol violation.
const AdminMaxMessage = 1 << 20

// adminServerVersion is reported when no real server has told the proxy its
// version yet.
const adminServerVersion = "15.0"

// ErrAdminProtocol reports a message from an admin client that cannot be
// framed (impossible length, or larger than AdminMaxMessage). The console
// answers it with FATAL 08P01 and closes the connection.
var ErrAdminProtocol = errors.New("protocol violation")

// errAdminCancel: a CancelRequest on the admin port; admin commands cannot
// be cancelled, so the request is dropped.
var errAdminCancel = errors.New("cancel request on the admin port ignored")

// AdminClient is an authenticated admin console connection.
//
// Next belongs to the goroutine that serves the connection; Send and Close
// may be called from any goroutine.
type AdminClient struct {
	nc      net.Conn // the socket, or the TLS connection over it
	r       *wire.Reader
	user    string
	appName string
	tls     bool

	wmu sync.Mutex // guards bw and buf; held for the whole of one Send
	bw  *bufio.Writer
	buf []byte

	closeOnce sync.Once
	closeErr  error
}

// User is the admin user the client authenticated as.
func (a *AdminClient) User() string { return a.user }

// ApplicationName is the application_name the client sent, if any.
func (a *AdminClient) ApplicationName() string { return a.appName }

// RemoteAddr is the client's address.
func (a *AdminClient) RemoteAddr() net.Addr { return a.nc.RemoteAddr() }

// TLS reports whether the connection is encrypted.
func (a *AdminClient) TLS() bool { return a.tls }

// Next reads one framed message and returns its type and body. The body is
// valid until the next call to Next. A frame that cannot be read as a
// message (impossible length, larger than AdminMaxMessage) is reported as
// an error wrapping ErrAdminProtocol; a closed connection as io.EOF or the
// network error.
func (a *AdminClient) Next() (typ byte, body []byte, err error) {
	typ, _, err = a.r.Next()
	if err != nil {
		var tooLarge *wire.TooLargeError
		switch {
		case errors.As(err, &tooLarge):
			return 0, nil, fmt.Errorf("%w: message of %d bytes exceeds the admin console's limit of %d bytes",
				ErrAdminProtocol, tooLarge.Len, tooLarge.Max)
		case errors.Is(err, wire.ErrMalformed):
			return 0, nil, fmt.Errorf("%w: invalid message length", ErrAdminProtocol)
		}
		return 0, nil, err
	}
	body, err = a.r.Body()
	if err != nil {
		return 0, nil, fmt.Errorf("reading message %q: %w", typ, err)
	}
	return typ, body, nil
}

// Send encodes msgs and writes them to the client in one flush.
func (a *AdminClient) Send(msgs ...pgproto3.BackendMessage) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	return a.sendLocked(msgs)
}

func (a *AdminClient) sendLocked(msgs []pgproto3.BackendMessage) error {
	for _, m := range msgs {
		var err error
		if a.buf, err = m.Encode(a.buf[:0]); err != nil {
			return fmt.Errorf("encoding %T: %w", m, err)
		}
		if _, err := a.bw.Write(a.buf); err != nil {
			return err
		}
	}
	if cap(a.buf) > 64<<10 {
		a.buf = nil
	}
	return a.bw.Flush()
}

// Terminate tells the client why its connection ends (e.g. FATAL 57P01 at
// shutdown) and closes it. The message is sent only if no other Send is in
// progress and the client takes it within a second: a stuck client must
// not hold up whoever is closing it.
func (a *AdminClient) Terminate(msg *pgproto3.ErrorResponse) error {
	if a.wmu.TryLock() {
		_ = a.nc.SetWriteDeadline(time.Now().Add(time.Second))
		_ = a.sendLocked([]pgproto3.BackendMessage{msg})
		a.wmu.Unlock()
	}
	return a.Close()
}

// Close closes the connection. It is safe to call more than once.
func (a *AdminClient) Close() error {
	a.closeOnce.Do(func() { a.closeErr = a.nc.Close() })
	return a.closeErr
}

// AcceptAdmin runs the startup phase of an admin console connection: TLS
// as on the client port, database pgshield, authentication with the
// configured auth_type, and only then the check that the user is an admin,
// so that nobody learns who is an admin without the password. Every refusal
// is sent to the client as an ErrorResponse and returned; on any error nc
// is closed. client_login_timeout bounds the handshake, and cancelling ctx
// abandons it.
//
// Admin connections do not count against max_client_connections: the
// operator must get in when the clients have used up every slot.
func (s *Server) AcceptAdmin(ctx context.Context, nc net.Conn) (*AdminClient, error) {
	rt := s.rt.Load()
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		_ = tc.SetKeepAlive(true)
	}
	deadline := time.Now().Add(rt.cfg.ClientLoginTimeout)
	_ = nc.SetDeadline(deadline)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	// A cancelled ctx must unblock a read or write in progress.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })

	br := bufio.NewReaderSize(nc, clientReadBuf)
	sc := &startupConn{nc: nc, br: br, r: wire.NewReader(br, 64<<10)}
	a, err := s.adminLogin(ctx, sc, rt)
	if err == nil && !stop() {
		err = fmt.Errorf("admin login: %w", ctx.Err())
	}
	if err != nil {
		stop()
		if !errors.Is(err, errAdminCancel) {
			s.refuse(sc, err)
		}
		_ = sc.nc.Close()
		return nil, err
	}
	_ = sc.nc.SetDeadline(time.Time{})
	s.log.Info("admin logged in", zap.String("user", a.user), zap.String("remote", nc.RemoteAddr().String()),
		zap.Bool("tls", a.tls))
	return a, nil
}

// adminLogin is AcceptAdmin's handshake once the deadlines are set.
func (s *Server) adminLogin(ctx context.Context, sc *startupConn, rt *runtime) (*AdminClient, error) {
	req, err := sc.negotiate(ctx, rt.tls, rt.cfg.TLS.Client)
	if err != nil {
		return nil, err
	}
	if req.cancel != nil {
		return nil, errAdminCancel
	}
	params := req.params
	userName, database, err := identity(params)
	if err != nil {
		return nil, err
	}
	if database != AdminDatabase {
		e := fatalf(codeInvalidCatalog, "database %q does not exist", database)
		e.hint = "the admin console's database is " + AdminDatabase + ": psql -U <admin user> " + AdminDatabase
		return nil, e
	}
	u, err := sc.login(rt, userName)
	if err != nil {
		return nil, err
	}
	if !u.Admin {
		e := fatalf(codeInvalidAuthSpec, "user %q is not a pgshield admin", userName)
		e.hint = "admin console users have admin: true in the users section of the configuration"
		return nil, e
	}

	var key [8]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, fmt.Errorf("backend key: %w", err)
	}
	msgs := []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}}
	if req.minor > 0 {
		msgs = append(msgs, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unsupportedPQOptions(params)})
	}
	for _, p := range [][2]string{
		{"server_version", s.adminServerVersion()},
		{"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"},
		{"integer_datetimes", "on"},
		{"standard_conforming_strings", "on"},
		{"application_name", params["application_name"]},
	} {
		msgs = append(msgs, &pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	msgs = append(msgs,
		&pgproto3.BackendKeyData{ProcessID: binary.BigEndian.Uint32(key[:4]), SecretKey: key[4:]},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := sc.send(msgs...); err != nil {
		return nil, fmt.Errorf("admin login: %w", err)
	}
	sc.r.SetMax(AdminMaxMessage)
	return &AdminClient{
		nc: sc.nc, r: sc.r, user: userName, appName: params["application_name"], tls: sc.isTLS,
		bw: bufio.NewWriterSize(sc.nc, 16<<10),
	}, nil
}

// adminServerVersion is the server_version a real backend reported, from
// the first configured database (in name order) with cached parameters.
func (s *Server) adminServerVersion() string {
	names := make([]string, 0)
	for name := range s.pools.Config().Databases {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if v := s.cachedParams(name)["server_version"]; v != "" {
			return v
		}
	}
	return adminServerVersion
}
