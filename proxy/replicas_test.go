package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/pgshield/pgshield/internal/pgcluster"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// replicated is a primary with one streaming replica, both new for the
// test.
type replicated struct {
	primary, replica *pgcluster.Cluster
}

func startReplicated(t *testing.T, sync bool) *replicated {
	t.Helper()
	p := pgcluster.StartForTest(t, pgcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := p.CreateDatabase(ctx, "app", "postgres"); err != nil {
		t.Fatal(err)
	}
	if err := p.Exec(ctx, "app", "CREATE TABLE t (id bigint PRIMARY KEY, v text); INSERT INTO t VALUES (0, 'seed'); CREATE SEQUENCE s START 100"); err != nil {
		t.Fatal(err)
	}
	r, err := p.AddReplica(ctx, pgcluster.ReplicaOptions{Sync: sync})
	if err != nil {
		t.Fatal(err)
	}
	return &replicated{primary: p, replica: r}
}

// proxyFor points the test proxy's database at the cluster: primary (or
// the address standing in for it) and the replica.
func (rc *replicated) proxyFor(t *testing.T, primary string, routing func(*router.TopologyConfig), pool func(*poolConfig)) *env {
	t.Helper()
	if primary == "" {
		primary = rc.primary.Addr()
	}
	return startProxyRouted(t, func(_ *proxyConfig, m *poolConfig) {
		m.Databases = map[string]poolmgr.DatabaseConfig{"app": {
			Primary: primary, Replicas: []string{rc.replica.Addr()}, DBName: "app",
			User: rc.primary.User, Password: rc.primary.Password, ServerTLS: poolmgr.ServerTLS{Mode: "disable"},
		}}
		if pool != nil {
			pool(m)
		}
	}, func(r *router.TopologyConfig) {
		r.LagCheckInterval = 100 * time.Millisecond
		if routing != nil {
			routing(r)
		}
	})
}

func inRecovery(t *testing.T, ctx context.Context, c *pgx.Conn, sql string) bool {
	t.Helper()
	var b bool
	if err := c.QueryRow(ctx, sql).Scan(&b); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return b
}

// TestReadRouting: reads on the replica, writes and locking reads on the
// primary, in both protocols; hints, read-only transactions and the
// service's reads setting; read-your-writes.
func TestReadRouting(t *testing.T) {
	rc := startReplicated(t, false)
	e := rc.proxyFor(t, "", nil, func(m *poolConfig) {
		m.Services["analytics"] = poolmgr.ServiceConfig{MaxConnections: 2, PoolMode: poolmgr.ModeTransaction, Reads: "primary"}
	})
	ctx := ctxT(t)
	for _, mode := range []string{"simple_protocol", "cache_statement", "exec"} {
		t.Run(mode, func(t *testing.T) {
			c := e.connect(t, "app", "default_query_exec_mode="+mode)
			for _, tc := range []struct {
				sql     string
				replica bool
			}{
				{"SELECT pg_is_in_recovery()", true},
				{"SELECT pg_is_in_recovery() FROM t LIMIT 1 FOR UPDATE", false},
				{"SELECT pg_is_in_recovery() FROM (SELECT nextval('s')) x", false},
				{"SELECT /* pgshield:primary */ pg_is_in_recovery()", false},
				{"WITH w AS (INSERT INTO t VALUES (nextval('s'), 'x') RETURNING 1) SELECT pg_is_in_recovery() FROM w", false},
			} {
				// Outside read-your-writes: wait until a replica has
				// replayed what this client wrote.
				if tc.replica {
					waitReplicaRead(t, ctx, c)
				}
				if got := inRecovery(t, ctx, c, tc.sql); got != tc.replica {
					t.Errorf("%s: ran on the replica = %v, want %v", tc.sql, got, tc.replica)
				}
			}
			// An explicit read-write transaction stays on the primary, a
			// read-only one may use the replica.
			waitReplicaRead(t, ctx, c)
			for _, tc := range []struct {
				begin   string
				replica bool
			}{{"BEGIN", false}, {"BEGIN READ ONLY", true}, {"START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", true}} {
				if _, err := c.Exec(ctx, tc.begin); err != nil {
					t.Fatal(err)
				}
				got := inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()")
				if _, err := c.Exec(ctx, "COMMIT"); err != nil {
					t.Fatal(err)
				}
				if got != tc.replica {
					t.Errorf("%s: ran on the replica = %v, want %v", tc.begin, got, tc.replica)
				}
			}
		})
	}

	t.Run("read your writes", func(t *testing.T) {
		c := e.connect(t, "app", "")
		for i := 0; i < 50; i++ {
			id := int64(1_000_000 + i)
			if _, err := c.Exec(ctx, "INSERT INTO t VALUES ($1, 'mine')", id); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := c.QueryRow(ctx, "SELECT count(*) FROM t WHERE id = $1", id).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Fatalf("row %d written and committed is not visible to its writer's next read", id)
			}
		}
		// Another client, which wrote nothing, reads from the replica.
		other := e.connect(t, "app", "")
		if !inRecovery(t, ctx, other, "SELECT pg_is_in_recovery()") {
			t.Error("a client that wrote nothing did not read from the replica")
		}
	})

	t.Run("reads primary", func(t *testing.T) {
		c := e.connect(t, "tiny", "")
		if inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()") {
			t.Error("a service with reads: primary read from the replica")
		}
	})

	t.Run("pipelined write after a read", func(t *testing.T) {
		// A read, then a write in the same pgx batch (one round trip, two
		// Syncs): the write must reach the primary.
		c := e.connect(t, "app", "")
		waitReplicaRead(t, ctx, c)
		b := &pgx.Batch{}
		b.Queue("SELECT pg_is_in_recovery()")
		b.Queue("INSERT INTO t VALUES (nextval('s'), 'batch') RETURNING pg_is_in_recovery()")
		res := c.SendBatch(ctx, b)
		var r1, r2 bool
		if err := res.QueryRow().Scan(&r1); err != nil {
			t.Fatal(err)
		}
		if err := res.QueryRow().Scan(&r2); err != nil {
			t.Fatalf("write in a batch after a read: %v", err)
		}
		if err := res.Close(); err != nil {
			t.Fatal(err)
		}
		if r2 {
			t.Error("the write of a batch ran on the replica")
		}
	})
}

// waitReplicaRead waits until c's reads go to the replica again (its
// writes replayed there).
func waitReplicaRead(t *testing.T, ctx context.Context, c *pgx.Conn) {
	t.Helper()
	pollFor(t, "reads to return to the replica", 10*time.Second, func() bool {
		return inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()")
	})
}

// TestLaggingReplicaGetsNothing: with the replica's replay paused and the
// primary writing, the replica falls behind max_replica_lag_bytes and every
// read goes to the primary; once it catches up it serves reads again.
func TestLaggingReplicaGetsNothing(t *testing.T) {
	rc := startReplicated(t, false)
	e := rc.proxyFor(t, "", func(r *router.TopologyConfig) { r.MaxReplicaLagBytes = 64 << 10 }, nil)
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	waitReplicaRead(t, ctx, c)

	if err := rc.replica.Exec(ctx, "app", "SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatal(err)
	}
	d, err := pgx.Connect(ctx, rc.primary.ConnString("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	// About 1 MB of WAL, far past the 64 KB limit.
	if _, err := d.Exec(ctx, "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g"); err != nil {
		t.Fatal(err)
	}
	// Until the next lag check the replica may still look current.
	pollFor(t, "replica lag seen", 10*time.Second, func() bool {
		for _, st := range e.topo.Status() {
			if st.Addr == rc.replica.Addr() && st.LagBytes > 64<<10 {
				return true
			}
		}
		return false
	})
	reader := e.connect(t, "app", "") // wrote nothing: would read from a replica
	for i := 0; i < 50; i++ {
		if inRecovery(t, ctx, reader, "SELECT pg_is_in_recovery()") {
			t.Fatal("a replica lagging past max_replica_lag_bytes received a read")
		}
	}
	if err := rc.replica.Exec(ctx, "app", "SELECT pg_wal_replay_resume()"); err != nil {
		t.Fatal(err)
	}
	waitReplicaRead(t, ctx, reader)
}

// toxic is a toxiproxy proxy in front of a backend, in this process.
type toxic struct {
	p *toxiproxy.Proxy
}

func newToxic(t *testing.T, upstream string) *toxic {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := toxiproxy.NewProxy(srv, "pg", addr, upstream)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return &toxic{p: p}
}

func (x *toxic) addr() string { return x.p.Listen }

// blackhole makes the backend swallow everything and answer nothing, on
// open connections and new ones, without closing them.
func (x *toxic) blackhole(t *testing.T) {
	t.Helper()
	for _, stream := range []string{"upstream", "downstream"} {
		js := fmt.Sprintf(`{"name":"hole_%s","type":"timeout","stream":%q,"attributes":{"timeout":0}}`, stream, stream)
		if _, err := x.p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			t.Fatal(err)
		}
	}
}

func (x *toxic) heal(t *testing.T) {
	t.Helper()
	for _, stream := range []string{"upstream", "downstream"} {
		if err := x.p.Toxics.RemoveToxic(context.Background(), "hole_"+stream); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBreakerBlackHole: the primary's port black-holed, the breaker opens,
// new clients get 08006 at once (no dial attempted) while reads go on from
// the replica; removing the fault closes the breaker again.
func TestBreakerBlackHole(t *testing.T) {
	rc := startReplicated(t, false)
	x := newToxic(t, rc.primary.Addr())
	const connectTimeout = 3 * time.Second
	e := rc.proxyFor(t, x.addr(), nil, func(m *poolConfig) {
		m.Pool.ConnectTimeout = connectTimeout
		m.Pool.BreakerFailures = 2
		m.Pool.BreakerTimeout = time.Second
	})
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	if _, err := c.Exec(ctx, "INSERT INTO t VALUES (1, 'before')"); err != nil {
		t.Fatal(err)
	}

	x.blackhole(t)
	pollFor(t, "breaker open", 30*time.Second, func() bool { return e.pools.Breaker(x.addr()) == poolmgr.BreakerOpen })

	// New clients needing the primary: 08006 naming the backend, without
	// waiting for a connect timeout.
	for i := 0; i < 3; i++ {
		w := e.connect(t, "app", "")
		start := time.Now()
		_, err := w.Exec(ctx, "INSERT INTO t VALUES (2, 'during')")
		took := time.Since(start)
		if pgCode(err) != "08006" || !strings.Contains(err.Error(), x.addr()) {
			t.Fatalf("write with the primary black-holed: %v; want 08006 naming %s", err, x.addr())
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || !strings.Contains(pe.Message, "unavailable") || !strings.Contains(pe.Detail, "circuit breaker open") {
			t.Errorf("error %+v: want the server unavailable, detail: circuit breaker open (no dial attempted)", pe)
		}
		// Timing is reported, not asserted: the detail above proves no
		// connect timeout was waited out.
		t.Logf("write refused in %v (connect timeout %v): %v", took, connectTimeout, err)
		// Reads keep working from the replica.
		r := e.connect(t, "app", "")
		if !inRecovery(t, ctx, r, "SELECT pg_is_in_recovery()") {
			t.Error("read while the primary is black-holed did not come from the replica")
		}
		var n int
		if err := r.QueryRow(ctx, "SELECT count(*) FROM t WHERE id = 1").Scan(&n); err != nil || n != 1 {
			t.Errorf("read from the replica: %d, %v", n, err)
		}
	}

	x.heal(t)
	pollFor(t, "breaker closed", 30*time.Second, func() bool { return e.pools.Breaker(x.addr()) == poolmgr.BreakerClosed })
	w := e.connect(t, "app", "")
	if _, err := w.Exec(ctx, "INSERT INTO t VALUES (3, 'after')"); err != nil {
		t.Fatalf("write after the fault was removed: %v", err)
	}
}

// TestRolesDiscovered: the configuration names the replica as primary and
// the primary as replica; the checks find out, writes go to the real
// primary and reads to the real replica.
func TestRolesDiscovered(t *testing.T) {
	rc := startReplicated(t, false)
	e := startProxyRouted(t, func(_ *proxyConfig, m *poolConfig) {
		m.Databases = map[string]poolmgr.DatabaseConfig{"app": {
			Primary: rc.replica.Addr(), Replicas: []string{rc.primary.Addr()}, DBName: "app",
			User: rc.primary.User, Password: rc.primary.Password, ServerTLS: poolmgr.ServerTLS{Mode: "disable"},
		}}
	}, func(r *router.TopologyConfig) { r.LagCheckInterval = 100 * time.Millisecond })
	ctx := ctxT(t)
	c := e.connect(t, "app", "")
	if inRecovery(t, ctx, c, "INSERT INTO t VALUES (nextval('s'), 'w') RETURNING pg_is_in_recovery()") {
		t.Fatal("a write went to the host configured as primary, which is a replica")
	}
	r := e.connect(t, "app", "")
	if !inRecovery(t, ctx, r, "SELECT pg_is_in_recovery()") {
		t.Error("a read did not go to the real replica")
	}
	for _, st := range e.topo.Status() {
		if st.Addr == rc.replica.Addr() && (st.Fenced || st.IsPrimary || st.Role != router.RoleReplica) {
			t.Errorf("the real replica: role %s, primary %v, fenced %v", st.Role, st.IsPrimary, st.Fenced)
		}
	}
}
