package poolmgr

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// queryValues runs sql on pc and returns the text values of its one row.
func queryValues(t *testing.T, pc *pgconn.PgConn, sql string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := pc.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		t.Fatalf("%s: want one row, got %d result sets", sql, len(res))
	}
	out := make([]string, len(res[0].Rows[0]))
	for i, v := range res[0].Rows[0] {
		out[i] = string(v)
	}
	return out
}

func connectForTest(t *testing.T, m *Manager, database, addr string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pc, err := m.Connect(ctx, database, addr)
	if err != nil {
		t.Fatalf("Connect(%q, %q): %v", database, addr, err)
	}
	t.Cleanup(func() { pc.Close(context.Background()) })
	return pc
}

func TestConnectPrimaryWithServerCredentials(t *testing.T) {
	ctx := context.Background()
	if err := pg.CreateRole(ctx, "connect_admin", "connect-pw", true); err != nil {
		t.Fatal(err)
	}
	if err := pg.CreateDatabase(ctx, "connect_db", "connect_admin"); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(1, 0, Settings{ConnectTimeout: 5 * time.Second})
	// The configured primary is not listening: only the primary recorded by
	// SetPrimary (as after a failover) can answer a Connect with addr "".
	cfg.Databases["stats"] = DatabaseConfig{Primary: "127.0.0.1:1", DBName: "connect_db",
		User: "connect_admin", Password: "connect-pw", ServerTLS: ServerTLS{Mode: "disable"}}
	m := newManager(t, cfg.WithDefaults())
	m.SetPrimary("stats", pg.Addr())

	pc := connectForTest(t, m, "stats", "")
	got := queryValues(t, pc, "SELECT current_database(), current_user, current_setting('application_name'), "+
		"(SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid())")
	want := []string{"connect_db", "connect_admin", "pgshield admin", "pgshield admin"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("connection: got %q, want %q", got, want)
	}

	// An explicit backend is used as given.
	pc2 := connectForTest(t, m, "db", pg.Addr())
	if got := queryValues(t, pc2, "SELECT current_database(), current_user"); got[0] != "postgres" || got[1] != pg.User {
		t.Fatalf("explicit backend: got %q", got)
	}

	// Each call is a connection of its own, outside the pools: the caller
	// closes it, and the pools are none the wiser.
	pid := queryValues(t, pc, "SELECT pg_backend_pid()")[0]
	if pid2 := queryValues(t, pc2, "SELECT pg_backend_pid()")[0]; pid == pid2 {
		t.Fatalf("two Connect calls share backend %s", pid)
	}
	if err := pc.Close(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := m.Acquire(ctx, "svc", "db", "")
	if err != nil {
		t.Fatalf("pool after closing an admin connection: %v", err)
	}
	c.Release()
}

func TestConnectErrors(t *testing.T) {
	cfg := testConfig(1, 0, Settings{ConnectTimeout: 5 * time.Second})
	db := cfg.Databases["db"]
	db.Password = "wrong"
	cfg.Databases["badpw"] = db
	m := newManager(t, cfg.WithDefaults())
	ctx := context.Background()

	if _, err := m.Connect(ctx, "nope", ""); !errors.Is(err, ErrUnknownDatabase) {
		t.Fatalf("unknown database: want ErrUnknownDatabase, got %v", err)
	}
	_, err := m.Connect(ctx, "badpw", "")
	var de *DialError
	var pgErr *pgconn.PgError
	if !errors.As(err, &de) || de.Backend != pg.Addr() || !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("wrong password: want DialError for %s with 28P01, got %v", pg.Addr(), err)
	}

	// An open breaker refuses at once, without dialling.
	for i := 0; m.Breaker("127.0.0.1:1") != BreakerOpen; i++ {
		if i > 100 {
			t.Fatal("failed dials from Connect do not open the breaker")
		}
		if _, err := m.Connect(ctx, "db", "127.0.0.1:1"); err == nil {
			t.Fatal("connected to a closed port")
		}
	}
	if _, err := m.Connect(ctx, "db", "127.0.0.1:1"); !errors.Is(err, ErrBreakerOpen) {
		t.Fatalf("open breaker: want ErrBreakerOpen, got %v", err)
	}
}

func TestConnectServerTLS(t *testing.T) {
	tlsPG := pgcluster.StartForTest(t, pgcluster.Options{SSL: true})
	cfgFor := func(mode, ca string) Config {
		return Config{
			Databases: map[string]DatabaseConfig{"tls": {Primary: tlsPG.Addr(), DBName: "postgres",
				User: tlsPG.User, Password: tlsPG.Password, ServerTLS: ServerTLS{Mode: mode, CAFile: ca}}},
			Services:       map[string]ServiceConfig{"svc": {MaxConnections: 1, PoolMode: ModeTransaction}},
			DefaultService: "svc",
		}.WithDefaults()
	}
	sslOf := func(pc *pgconn.PgConn) string {
		return queryValues(t, pc, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[0]
	}

	m := newManager(t, cfgFor("verify-full", tlsPG.CAFile))
	if got := sslOf(connectForTest(t, m, "tls", "")); got != "true" {
		t.Fatalf("verify-full: ssl = %s", got)
	}

	m = newManager(t, cfgFor("disable", ""))
	if got := sslOf(connectForTest(t, m, "tls", "")); got != "false" {
		t.Fatalf("disable: ssl = %s", got)
	}

	// verify-full without the CA must refuse the server's certificate.
	m = newManager(t, cfgFor("verify-full", ""))
	if pc, err := m.Connect(context.Background(), "tls", ""); err == nil {
		pc.Close(context.Background())
		t.Fatal("verify-full accepted a certificate from an unknown CA")
	}
}
