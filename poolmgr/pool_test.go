package poolmgr

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

var pg *pgcluster.Cluster

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	cancel()
	if err != nil {
		os.Stderr.WriteString("starting PostgreSQL: " + err.Error() + "\n")
		os.Exit(1)
	}
	pg = c
	code := m.Run()
	_ = c.Remove()
	os.Exit(code)
}

func testConfig(max, min int, s Settings) Config {
	return Config{
		Databases:      map[string]DatabaseConfig{"db": {Primary: pg.Addr(), DBName: "postgres", User: pg.User, Password: pg.Password, ServerTLS: ServerTLS{Mode: "disable"}}},
		Services:       map[string]ServiceConfig{"svc": {MaxConnections: max, MinConnections: min, PoolMode: ModeTransaction}},
		Pool:           s,
		DefaultService: "svc",
	}.WithDefaults()
}

func newManager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	m, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	m.Start(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m.Close(ctx)
	})
	return m
}

func stat(m *Manager, service string) Stat {
	for _, s := range m.Stats() {
		if s.Service == service {
			return s
		}
	}
	return Stat{}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMinimumOpenedAndIdleTrimmed(t *testing.T) {
	m := newManager(t, testConfig(4, 2, Settings{IdleTimeout: 300 * time.Millisecond}))
	eventually(t, "the minimum to open", func() bool { return stat(m, "svc").Idle == 2 })
	ctx := context.Background()
	var held []*Conn
	for i := 0; i < 4; i++ {
		c, err := m.Acquire(ctx, "svc", "db", "")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	if st := stat(m, "svc"); st.Active != 4 {
		t.Fatalf("active %d", st.Active)
	}
	for _, c := range held {
		c.Release()
	}
	eventually(t, "idle connections above the minimum to close", func() bool {
		st := stat(m, "svc")
		return st.Idle == 2 && st.Active == 0
	})
}

func TestWaitTimeoutAndFIFO(t *testing.T) {
	m := newManager(t, testConfig(1, 0, Settings{WaitTimeout: 300 * time.Millisecond}))
	ctx := context.Background()
	c, err := m.Acquire(ctx, "svc", "db", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Acquire(ctx, "svc", "db", ""); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("want ErrWaitTimeout, got %v", err)
	}
	if st := stat(m, "svc"); st.WaitTimeout != 1 {
		t.Fatalf("wait timeouts counted: %+v", st)
	}
	// Waiters are served in arrival order.
	order := make(chan int, 3)
	for i := 0; i < 3; i++ {
		go func() {
			w, err := m.Acquire(ctx, "svc", "db", "")
			if err != nil {
				order <- -1
				return
			}
			order <- i
			time.Sleep(10 * time.Millisecond)
			w.Release()
		}()
		eventually(t, "the waiter to queue", func() bool { return stat(m, "svc").Waiting == i+1 })
	}
	c.Release()
	for i := 0; i < 3; i++ {
		if got := <-order; got != i {
			t.Fatalf("waiter %d served in position %d", got, i)
		}
	}
}

// A connection that died while idle is validated before reuse and
// replaced, so the caller never gets a dead server.
func TestDeadIdleConnectionReplaced(t *testing.T) {
	m := newManager(t, testConfig(1, 0, Settings{HealthCheckInterval: time.Millisecond}))
	ctx := context.Background()
	c, err := m.Acquire(ctx, "svc", "db", "")
	if err != nil {
		t.Fatal(err)
	}
	pid := c.PID()
	c.Release()
	d, err := pgx.Connect(ctx, pg.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	if _, err := d.Exec(ctx, "select pg_terminate_backend($1::int)", pid); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	c, err = m.Acquire(ctx, "svc", "db", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if c.PID() == pid {
		t.Fatal("got the dead connection back")
	}
	if st, err := c.Exec(ctx, "select 1"); err != nil || st != 'I' {
		t.Fatalf("replacement unusable: %v", err)
	}
}

func TestMaxLifetime(t *testing.T) {
	m := newManager(t, testConfig(1, 0, Settings{MaxLifetime: 50 * time.Millisecond}))
	ctx := context.Background()
	c, err := m.Acquire(ctx, "svc", "db", "")
	if err != nil {
		t.Fatal(err)
	}
	pid := c.PID()
	c.Release()
	time.Sleep(100 * time.Millisecond)
	c, err = m.Acquire(ctx, "svc", "db", "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if c.PID() == pid {
		t.Fatal("connection kept past max_lifetime")
	}
}

func TestDialFailureAndUnknownNames(t *testing.T) {
	cfg := testConfig(1, 0, Settings{ConnectTimeout: time.Second})
	db := cfg.Databases["db"]
	db.Password = "wrong"
	cfg.Databases["db"] = db
	m := newManager(t, cfg)
	ctx := context.Background()
	var de *DialError
	if _, err := m.Acquire(ctx, "svc", "db", ""); !errors.As(err, &de) || de.Backend != pg.Addr() {
		t.Fatalf("want DialError for %s, got %v", pg.Addr(), err)
	}
	if _, err := m.Acquire(ctx, "svc", "nope", ""); !errors.Is(err, ErrUnknownDatabase) {
		t.Fatalf("want ErrUnknownDatabase, got %v", err)
	}
	if _, err := m.Acquire(ctx, "nope", "db", ""); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("want ErrUnknownService, got %v", err)
	}
}

func TestUpdateResizes(t *testing.T) {
	cfg := testConfig(1, 0, Settings{WaitTimeout: 200 * time.Millisecond})
	m := newManager(t, cfg)
	ctx := context.Background()
	held, err := m.Acquire(ctx, "svc", "db", "")
	if err != nil {
		t.Fatal(err)
	}
	bigger := testConfig(2, 0, Settings{WaitTimeout: 200 * time.Millisecond})
	if err := m.Update(bigger); err != nil {
		t.Fatal(err)
	}
	c, err := m.Acquire(ctx, "svc", "db", "")
	if err != nil {
		t.Fatalf("after growing the pool: %v", err)
	}
	c.Release()
	held.Release() // returns into the retired pool, which closes it
	if err := m.Update(Config{}); err == nil {
		t.Fatal("invalid configuration accepted")
	}
}

// Acquire says how long it waited: nothing for an idle connection, at
// least as long as the holder kept the only one otherwise.
func TestAcquireReportsWait(t *testing.T) {
	m := newManager(t, testConfig(1, 0, Settings{WaitTimeout: 5 * time.Second}))
	ctx := context.Background()
	c, err := m.Acquire(ctx, "svc", "db", "")
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
	if c, err = m.Acquire(ctx, "svc", "db", ""); err != nil {
		t.Fatal(err)
	}
	if c.Waited != 0 {
		t.Errorf("an idle connection was there, yet Waited = %s", c.Waited)
	}
	const held = 200 * time.Millisecond
	released := make(chan struct{})
	go func() {
		time.Sleep(held)
		c.Release()
		close(released)
	}()
	w, err := m.Acquire(ctx, "svc", "db", "")
	if err != nil {
		t.Fatal(err)
	}
	<-released
	defer w.Release()
	if w.Waited < held/2 {
		t.Errorf("waited for a connection held %s, yet Waited = %s", held, w.Waited)
	}
}

// The default services a configuration does not name open no server
// connections until a client uses them; then they keep their minimum.
// Services the configuration names keep theirs from the start.
func TestUnconfiguredServicesOpenOnDemand(t *testing.T) {
	m := newManager(t, testConfig(4, 2, Settings{IdleTimeout: 400 * time.Millisecond}))
	if s := stat(m, "svc"); s.Idle+s.Active != 2 {
		t.Errorf("configured service: %d connections after Start, want its minimum 2", s.Idle+s.Active)
	}
	time.Sleep(300 * time.Millisecond) // a few maintenance rounds
	for _, name := range []string{ServiceAPI, ServiceDataService, ServiceBackgroundJobs, ServiceAnalytics, ServiceBatchOperations} {
		if s := stat(m, name); s.Idle+s.Active+s.Opening != 0 {
			t.Errorf("%s, not in the configuration and unused: %d connections, want 0", name, s.Idle+s.Active+s.Opening)
		}
	}
	c, err := m.Acquire(context.Background(), ServiceAnalytics, "db", "")
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
	eventually(t, "analytics to keep its minimum once used", func() bool { return stat(m, ServiceAnalytics).Idle == 2 })
	if s := stat(m, ServiceBatchOperations); s.Idle != 0 {
		t.Errorf("batch-operations, still unused: %d idle connections, want 0", s.Idle)
	}
}
