package proxy_test

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/devcert"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
)

// tryConnect logs in as user with password (the test user's own when "")
// into db and runs a query.
func tryConnect(e *env, user, password, db string) error {
	ctx := context.Background()
	if password == "" {
		for _, u := range testUsers {
			if u.Name == user {
				password = u.Password
			}
		}
	}
	host, port, _ := net.SplitHostPort(e.addr)
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password='%s' dbname=%s sslmode=disable default_query_exec_mode=exec", host, port, user, password, db))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, "select 1")
	return err
}

func TestSCRAMAuthentication(t *testing.T) {
	// A verifier as PostgreSQL stores it.
	d := direct(t)
	ctx := ctxT(t)
	if _, err := d.Exec(ctx, "set password_encryption = 'scram-sha-256'; drop role if exists verifier_src; create role verifier_src password 'v-pass'"); err != nil {
		t.Fatal(err)
	}
	var verifier string
	if err := d.QueryRow(ctx, "select rolpassword from pg_authid where rolname = 'verifier_src'").Scan(&verifier); err != nil {
		t.Fatal(err)
	}
	e := startProxy(t, func(p *proxyConfig, _ *poolConfig) {
		p.Users = append(append([]proxy.User(nil), testUsers...), proxy.User{Name: "ver", Password: verifier, Service: "api"})
	})
	if err := tryConnect(e, "app", "", "app"); err != nil {
		t.Fatalf("correct password: %v", err)
	}
	if err := tryConnect(e, "ver", "v-pass", "app"); err != nil {
		t.Fatalf("SCRAM verifier user: %v", err)
	}
	for _, c := range []struct{ user, pw, db, code string }{
		{"app", "wrong", "app", "28P01"},
		{"ver", "wrong", "app", "28P01"},
		{"nobody", "x", "app", "28000"},
		{"app", "", "nodb", "3D000"},
	} {
		if err := tryConnect(e, c.user, c.pw, c.db); pgCode(err) != c.code {
			t.Errorf("%s/%s@%s: want %s, got %v", c.user, c.pw, c.db, c.code, err)
		}
	}
}

func TestMD5AndTrustAuthentication(t *testing.T) {
	sum := md5.Sum([]byte("h-pass" + "hashed"))
	e := startProxy(t, func(p *proxyConfig, _ *poolConfig) {
		p.AuthType = proxy.AuthMD5
		p.Users = append(append([]proxy.User(nil), testUsers...), proxy.User{Name: "hashed", Password: "md5" + hex.EncodeToString(sum[:]), Service: "api"})
	})
	if err := tryConnect(e, "app", "", "app"); err != nil {
		t.Fatalf("md5 with plain password: %v", err)
	}
	if err := tryConnect(e, "hashed", "h-pass", "app"); err != nil {
		t.Fatalf("md5 with stored hash: %v", err)
	}
	if err := tryConnect(e, "app", "wrong", "app"); pgCode(err) != "28P01" {
		t.Fatalf("md5 wrong password: %v", err)
	}
	trust := startProxy(t, func(p *proxyConfig, _ *poolConfig) { p.AuthType = proxy.AuthTrust })
	if err := tryConnect(trust, "app", "anything", "app"); err != nil {
		t.Fatalf("trust: %v", err)
	}
}

func TestTLSBothSides(t *testing.T) {
	files := tlsFiles(t)
	e := startProxy(t, func(p *proxyConfig, m *poolConfig) {
		p.TLS = files
		p.TLS.Client = proxy.TLSRequire
		db := m.Databases["app"]
		db.ServerTLS = poolmgr.ServerTLS{Mode: "verify-full", CAFile: pg.CAFile}
		m.Databases["app"] = db
	})
	ctx := ctxT(t)
	ca := filepath.Join(filepath.Dir(files.CertFile), "ca.crt")
	url := strings.Replace(e.url("app", "default_query_exec_mode=exec sslrootcert="+ca), "sslmode=disable", "sslmode=verify-full", 1)
	c, err := pgx.Connect(ctx, strings.Replace(url, "host=127.0.0.1", "host=localhost", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, ok := c.PgConn().Conn().(*tls.Conn); !ok {
		t.Fatalf("client connection is %T, not TLS", c.PgConn().Conn())
	}
	var serverSSL bool
	if err := c.QueryRow(ctx, "select ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&serverSSL); err != nil || !serverSSL {
		t.Fatalf("server side not TLS: %v %v", serverSSL, err)
	}
	// Plain clients are refused when TLS is required.
	if err := tryConnect(e, "app", "", "app"); pgCode(err) != "28000" {
		t.Fatalf("plain client with tls.client=require: %v", err)
	}

	// A server certificate that does not verify: the client is told the
	// server is unavailable, naming it, not a TLS detail about itself.
	otherCA, err := devcert.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bad := startProxy(t, func(p *proxyConfig, m *poolConfig) {
		db := m.Databases["app"]
		db.ServerTLS = poolmgr.ServerTLS{Mode: "verify-full", CAFile: otherCA.CAFile}
		m.Databases["app"] = db
		for name, s := range m.Services {
			s.MinConnections = 0
			m.Services[name] = s
		}
	})
	err = tryConnect(bad, "app", "", "app")
	if pgCode(err) != "08006" || !strings.Contains(err.Error(), pg.Addr()) {
		t.Fatalf("unverifiable server: want 08006 naming %s, got %v", pg.Addr(), err)
	}
}
