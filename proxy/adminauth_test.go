package proxy_test

import (
	"context"
	"crypto/tls"
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

	"github.com/pgshield/pgshield/proxy"
)

const adminPassword = "admin-secret"

// adminOutcome is what one AcceptAdmin call on the test's admin listener
// returned, and the first message the client sent after logging in.
type adminOutcome struct {
	err     error
	user    string
	app     string
	tls     bool
	next    byte
	nextErr error
}

// adminEnv is a proxy with an admin user and AcceptAdmin served on a
// loopback listener of its own.
type adminEnv struct {
	*env
	adminAddr string
	outcomes  chan adminOutcome
}

func startAdmin(t *testing.T, mutate func(*proxyConfig)) *adminEnv {
	t.Helper()
	e := startProxy(t, func(p *proxyConfig, _ *poolConfig) {
		p.Users = append(append([]proxy.User(nil), testUsers...), proxy.User{Name: "admin", Password: adminPassword, Admin: true})
		if mutate != nil {
			mutate(p)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ae := &adminEnv{env: e, adminAddr: ln.Addr().String(), outcomes: make(chan adminOutcome, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	var conns sync.WaitGroup
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				cl, err := e.srv.AcceptAdmin(ctx, nc)
				o := adminOutcome{err: err}
				if cl != nil {
					o.user, o.app, o.tls = cl.User(), cl.ApplicationName(), cl.TLS()
					o.next, _, o.nextErr = cl.Next()
					_ = cl.Close()
				}
				ae.outcomes <- o
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-loopDone
		cancel()
		conns.Wait()
	})
	return ae
}

func (ae *adminEnv) adminConfig(t *testing.T, user, password, database, extra string) *pgx.ConnConfig {
	t.Helper()
	host, port, _ := net.SplitHostPort(ae.adminAddr)
	s := fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s connect_timeout=10", host, port, user, password, database)
	if !strings.Contains(extra, "sslmode") {
		s += " sslmode=disable"
	}
	cfg, err := pgx.ParseConfig(s + " " + extra)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// outcome waits for the AcceptAdmin result of the last connection.
func (ae *adminEnv) outcome(t *testing.T) adminOutcome {
	t.Helper()
	select {
	case o := <-ae.outcomes:
		return o
	case <-time.After(20 * time.Second):
		t.Fatal("AcceptAdmin did not return")
		return adminOutcome{}
	}
}

func TestAdminAuthLogin(t *testing.T) {
	ae := startAdmin(t, nil)
	ctx := ctxT(t)

	login := func() *pgx.Conn {
		t.Helper()
		c, err := pgx.ConnectConfig(ctx, ae.adminConfig(t, "admin", adminPassword, "pgshield", "application_name=ops"))
		if err != nil {
			t.Fatalf("admin login: %v", err)
		}
		return c
	}

	// No client has logged in on the main port: no server version is
	// cached, so the default is reported.
	c := login()
	pc := c.PgConn()
	for name, want := range map[string]string{
		"server_version": "15.0", "client_encoding": "UTF8", "server_encoding": "UTF8",
		"DateStyle": "ISO, MDY", "integer_datetimes": "on", "standard_conforming_strings": "on",
		"application_name": "ops",
	} {
		if got := pc.ParameterStatus(name); got != want {
			t.Errorf("ParameterStatus %s = %q, want %q", name, got, want)
		}
	}
	if pc.PID() == 0 {
		t.Error("BackendKeyData process id is 0")
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	o := ae.outcome(t)
	if o.err != nil || o.user != "admin" || o.app != "ops" || o.tls {
		t.Fatalf("AcceptAdmin = %+v, want user admin, application ops, no TLS, no error", o)
	}
	if o.next != 'X' || o.nextErr != nil {
		t.Errorf("first message after login = %q (%v), want Terminate", o.next, o.nextErr)
	}

	// After a client of the main port logged in, the real server's
	// version is reported.
	app := ae.connect(t, "app", "")
	want := app.PgConn().ParameterStatus("server_version")
	if want == "" || want == "15.0" {
		t.Fatalf("server_version of PostgreSQL = %q", want)
	}
	c = login()
	if got := c.PgConn().ParameterStatus("server_version"); got != want {
		t.Errorf("server_version after a backend reported = %q, want %q", got, want)
	}
	_ = c.Close(ctx)
	if o := ae.outcome(t); o.err != nil {
		t.Fatal(o.err)
	}
}

func TestAdminAuthRefusals(t *testing.T) {
	ae := startAdmin(t, nil)
	for _, tc := range []struct {
		name, user, password, database, code, message string
	}{
		{"non-admin", "app", "app-secret", "pgshield", "28000", `user "app" is not a pgshield admin`},
		{"non-admin wrong password", "app", "wrong", "pgshield", "28P01", "password authentication failed"},
		{"wrong password", "admin", "wrong", "pgshield", "28P01", `password authentication failed for user "admin"`},
		{"unknown user", "nobody", "x", "pgshield", "28000", "not a pgshield user"},
		{"wrong database", "admin", adminPassword, "app", "3D000", `database "app" does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := pgx.ConnectConfig(ctxT(t), ae.adminConfig(t, tc.user, tc.password, tc.database, ""))
			if err == nil {
				_ = c.Close(context.Background())
				t.Fatal("login succeeded")
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != tc.code || pe.Severity != "FATAL" || !strings.Contains(pe.Message, tc.message) {
				t.Fatalf("login error = %v, want FATAL %s %q", err, tc.code, tc.message)
			}
			if tc.code == "3D000" && !strings.Contains(pe.Hint, "pgshield") {
				t.Errorf("hint = %q, want it to name the pgshield database", pe.Hint)
			}
			o := ae.outcome(t)
			if o.err == nil || !strings.Contains(o.err.Error(), tc.code) {
				t.Errorf("AcceptAdmin returned %v, want the %s refusal", o.err, tc.code)
			}
		})
	}
}

func TestAdminAuthTLS(t *testing.T) {
	files := tlsFiles(t)
	ae := startAdmin(t, func(p *proxyConfig) {
		p.TLS = files
		p.TLS.Client = proxy.TLSRequire
	})
	ctx := ctxT(t)

	cfg := ae.adminConfig(t, "admin", adminPassword, "pgshield", "sslmode=require")
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("TLS admin login: %v", err)
	}
	if _, ok := c.PgConn().Conn().(*tls.Conn); !ok {
		t.Errorf("connection is %T, want TLS", c.PgConn().Conn())
	}
	_ = c.Close(ctx)
	if o := ae.outcome(t); o.err != nil || !o.tls {
		t.Fatalf("AcceptAdmin = %+v, want a TLS login", o)
	}

	_, err = pgx.ConnectConfig(ctx, ae.adminConfig(t, "admin", adminPassword, "pgshield", ""))
	if code := pgCode(err); code != "28000" {
		t.Fatalf("plain-text login with tls.client require: %v, want 28000", err)
	}
	if o := ae.outcome(t); o.err == nil {
		t.Error("AcceptAdmin accepted a plain-text login with tls.client require")
	}
}

func TestAdminAuthCancelRequest(t *testing.T) {
	ae := startAdmin(t, nil)
	nc, err := net.Dial("tcp", ae.adminAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pkt := make([]byte, 16)
	binary.BigEndian.PutUint32(pkt[0:], 16)
	binary.BigEndian.PutUint32(pkt[4:], 80877102)
	binary.BigEndian.PutUint32(pkt[8:], 1)
	binary.BigEndian.PutUint32(pkt[12:], 2)
	if _, err := nc.Write(pkt); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := nc.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("after a CancelRequest: read %d bytes, %v; want the connection closed without a reply", n, err)
	}
	if o := ae.outcome(t); o.err == nil {
		t.Error("AcceptAdmin returned no error for a CancelRequest")
	}
}

// An admin user logs in on the client port only with client_login: true;
// without it the refusal comes after the password check (28P01 for a wrong
// password), as on the admin port.
func TestAdminUserOnClientPort(t *testing.T) {
	e := startProxy(t, func(p *proxyConfig, _ *poolConfig) {
		p.Users = append(append([]proxy.User(nil), testUsers...),
			proxy.User{Name: "admin", Password: adminPassword, Admin: true},
			proxy.User{Name: "both", Password: adminPassword, Admin: true, ClientLogin: true})
	})
	host, port, _ := net.SplitHostPort(e.addr)
	login := func(user, password string) error {
		c, err := pgx.Connect(ctxT(t), fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=app sslmode=disable", host, port, user, password))
		if err == nil {
			_, err = c.Exec(ctxT(t), "select 1")
			_ = c.Close(context.Background())
		}
		return err
	}
	if err := login("admin", adminPassword); pgCode(err) != "28000" || !strings.Contains(err.Error(), "admin console user") {
		t.Errorf("admin on the client port: %v, want 28000 naming the admin console", err)
	}
	if err := login("admin", "wrong"); pgCode(err) != "28P01" {
		t.Errorf("admin with a wrong password: %v, want 28P01", err)
	}
	if err := login("both", adminPassword); err != nil {
		t.Errorf("an admin with client_login: true on the client port: %v", err)
	}
}
