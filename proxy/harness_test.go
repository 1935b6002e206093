package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pgshield/pgshield/internal/devcert"
	"github.com/pgshield/pgshield/internal/pgcluster"
	"github.com/pgshield/pgshield/metrics"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
	"github.com/pgshield/pgshield/router"
)

// pg is the PostgreSQL cluster shared by this package's integration tests,
// started by TestMain.
var pg *pgcluster.Cluster

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := pgcluster.Start(ctx, pgcluster.Options{SSL: true})
	if err == nil {
		err = c.CreateDatabase(ctx, "app", "postgres")
	}
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting PostgreSQL:", err)
		if c != nil {
			_ = c.Remove()
		}
		os.Exit(1)
	}
	pg = c
	code := m.Run()
	_ = c.Remove()
	os.Exit(code)
}

// env is a running proxy in front of pg.
type env struct {
	addr  string
	srv   *proxy.Server
	pools *poolmgr.Manager
	topo  *router.Topology
	m     *metrics.Metrics
	pcfg  proxy.Config
	mcfg  poolmgr.Config
	logs  *observer.ObservedLogs // everything the proxy logged, debug included
}

// Test users. "app" uses the api service (transaction pooling), "sess" the
// data-service (session pooling).
var testUsers = []proxy.User{
	{Name: "app", Password: "app-secret", Service: "api"},
	{Name: "sess", Password: "sess-secret", Service: "data-service"},
	{Name: "tiny", Password: "tiny-secret", Service: "analytics"},
}

// startProxy runs a proxy for the test; mutate adjusts the configuration.
func startProxy(t *testing.T, mutate func(*proxyConfig, *poolConfig)) *env {
	t.Helper()
	return startProxyRouted(t, mutate, nil)
}

// startProxyRouted is startProxy with a routing configuration as well.
func startProxyRouted(t *testing.T, mutate func(*proxyConfig, *poolConfig), routing func(*router.TopologyConfig)) *env {
	t.Helper()
	pcfg := proxy.Config{Listen: "127.0.0.1:0", Users: testUsers, ShutdownTimeout: 5 * time.Second}
	mcfg := poolmgr.Config{
		Databases: map[string]poolmgr.DatabaseConfig{
			"app": {Primary: pg.Addr(), DBName: "app", User: pg.User, Password: pg.Password,
				ServerTLS: poolmgr.ServerTLS{Mode: "disable"}},
		},
		Services: map[string]poolmgr.ServiceConfig{
			"api":          {MaxConnections: 5, MinConnections: 1, PoolMode: poolmgr.ModeTransaction},
			"data-service": {MaxConnections: 5, MinConnections: 1, PoolMode: poolmgr.ModeSession},
			"analytics":    {MaxConnections: 1, MinConnections: 1, PoolMode: poolmgr.ModeTransaction},
		},
		Pool: poolmgr.Settings{WaitTimeout: 3 * time.Second},
	}
	if mutate != nil {
		mutate(&pcfg, &mcfg)
	}
	mcfg = mcfg.WithDefaults()
	obs, logs := observer.New(zap.DebugLevel)
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel), zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewTee(c, obs)
	})))
	pools, err := poolmgr.New(mcfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pools.Start(ctx)
	var rcfg router.TopologyConfig
	if routing != nil {
		routing(&rcfg)
	}
	topo := proxy.NewTopology(rcfg, pools, log.Named("router"))
	topo.Start(ctx)
	srv, err := proxy.New(pcfg, pools, topo, log)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(proxy.MetricsSource(srv, pools, topo))
	srv.SetMetrics(m)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		pools.Close(sctx)
		cancel()
		topo.Close()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &env{addr: ln.Addr().String(), srv: srv, pools: pools, topo: topo, m: m, pcfg: pcfg, mcfg: mcfg, logs: logs}
}

// url is a connection string to the proxy for user (password from
// testUsers) with extra libpq parameters.
func (e *env) url(user string, extra string) string {
	pw := ""
	for _, u := range testUsers {
		if u.Name == user {
			pw = u.Password
		}
	}
	host, port, _ := net.SplitHostPort(e.addr)
	s := fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=app sslmode=disable connect_timeout=10", host, port, user, pw)
	if extra != "" {
		s += " " + extra
	}
	return s
}

// connect opens a pgx connection through the proxy; extra adds libpq
// parameters. pgx's default mode uses named prepared statements.
func (e *env) connect(t *testing.T, user, extra string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(e.url(user, extra))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// direct opens a superuser connection straight to PostgreSQL.
func direct(t *testing.T) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), pg.ConnString("app"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// pgCode returns the SQLSTATE of err, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type (
	proxyConfig = proxy.Config
	poolConfig  = poolmgr.Config
)

// tlsFiles makes a throwaway certificate for the proxy's client side.
func tlsFiles(t *testing.T) proxy.TLSConfig {
	t.Helper()
	f, err := devcert.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return proxy.TLSConfig{CertFile: f.CertFile, KeyFile: f.KeyFile}
}
