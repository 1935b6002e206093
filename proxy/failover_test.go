package proxy_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/router"
)

// TestFailoverPromote: 20 clients insert numbered rows and record every
// acknowledged commit; the primary is stopped with pg_ctl stop -m
// immediate. pgshield promotes the synchronous replica, fences the old
// primary, writes resume, and every acknowledged row is on the new
// primary.
func TestFailoverPromote(t *testing.T) {
	rc := startReplicated(t, true)
	e := rc.proxyFor(t, "", func(r *router.TopologyConfig) {
		r.Failover = router.FailoverPromote
		r.LagCheckInterval = 0 // the default
	}, func(m *poolConfig) {
		m.Pool.WaitTimeout = 30 * time.Second
	})
	res := runFailoverLoad(t, e.url("app", ""), 20, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := rc.primary.Stop(ctx, "immediate"); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("kill to first successful write: %v; %d rows acknowledged (%d after the kill); errors seen by clients: %v",
		res.recovery, len(res.acked), res.ackedAfter, res.errors)
	if res.recovery < 0 {
		t.Fatal("no write succeeded after the primary was stopped")
	}

	// Every acknowledged row is on the new primary.
	ctx := ctxT(t)
	d, err := pgx.Connect(ctx, rc.replica.ConnString("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	var inRecovery bool
	if err := d.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
		t.Fatalf("the replica was not promoted (in recovery %v, %v)", inRecovery, err)
	}
	var missing int64
	if err := d.QueryRow(ctx, "SELECT count(*) FROM unnest($1::bigint[]) a(id) WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.id = a.id)", res.acked).Scan(&missing); err != nil {
		t.Fatal(err)
	}
	if missing != 0 {
		t.Fatalf("%d of %d acknowledged rows are missing on the new primary", missing, len(res.acked))
	}
	for _, st := range e.topo.Status() {
		switch st.Addr {
		case rc.primary.Addr():
			if !st.Fenced || st.IsPrimary {
				t.Errorf("old primary: fenced %v, primary %v; want fenced and out of service", st.Fenced, st.IsPrimary)
			}
		case rc.replica.Addr():
			if !st.IsPrimary || st.Role != router.RolePrimary {
				t.Errorf("promoted replica: primary %v, role %s", st.IsPrimary, st.Role)
			}
		}
	}
}

// failoverResult is what a write load saw across a failover.
type failoverResult struct {
	acked      []int64
	ackedAfter int
	recovery   time.Duration // kill to first successful write; -1 if none
	errors     map[string]int
}

// runFailoverLoad runs writers inserting numbered rows into t through
// url, calls kill after a second, and stops two seconds after writes
// resume (or after a minute).
func runFailoverLoad(t testing.TB, url string, writers int, kill func()) failoverResult {
	var (
		mu      sync.Mutex
		res     = failoverResult{recovery: -1, errors: map[string]int{}}
		killed  atomic.Int64 // unix nanos of the kill
		resumed atomic.Int64 // unix nanos of the first write after it
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *pgx.Conn
			defer func() {
				if c != nil {
					_ = c.Close(context.Background())
				}
			}()
			for n := int64(0); ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
				if c == nil || c.IsClosed() {
					var err error
					if c, err = pgx.Connect(ctx, url); err != nil {
						cancel()
						mu.Lock()
						res.errors["connect: "+errCode(err)]++
						mu.Unlock()
						c = nil
						time.Sleep(20 * time.Millisecond)
						continue
					}
				}
				id := int64(w+1)*10_000_000 + n
				start := time.Now()
				_, err := c.Exec(ctx, "INSERT INTO t VALUES ($1, 'load')", id)
				cancel()
				mu.Lock()
				if err != nil {
					res.errors[errCode(err)]++
				} else {
					res.acked = append(res.acked, id)
					if k := killed.Load(); k != 0 && start.UnixNano() > k {
						res.ackedAfter++
						resumed.CompareAndSwap(0, time.Now().UnixNano())
					}
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(time.Second)
	killStart := time.Now()
	kill()
	// Only writes begun once the primary is down count as resumed.
	killed.Store(time.Now().UnixNano())
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if r := resumed.Load(); r != 0 && time.Since(time.Unix(0, r)) > 2*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if r := resumed.Load(); r != 0 {
		res.recovery = time.Duration(r - killStart.UnixNano())
	}
	return res
}

func errCode(err error) string {
	if c := pgCode(err); c != "" {
		return c
	}
	return "client: " + err.Error()
}

// TestFailoverDiscover: with failover: discover an external manager
// promotes the replica; pgshield finds the new primary by checking every
// host, fences the old one, and writes resume with nothing acknowledged
// lost.
func TestFailoverDiscover(t *testing.T) {
	rc := startReplicated(t, true)
	e := rc.proxyFor(t, "", func(r *router.TopologyConfig) {
		r.Failover = router.FailoverDiscover
	}, func(m *poolConfig) {
		m.Pool.WaitTimeout = 30 * time.Second
	})
	res := runFailoverLoad(t, e.url("app", ""), 5, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := rc.primary.Stop(ctx, "immediate"); err != nil {
			t.Fatal(err)
		}
		// The "external manager".
		if err := rc.replica.Exec(ctx, "app", "SELECT pg_promote(true, 60)"); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("kill to first successful write: %v; %d rows acknowledged; errors: %v", res.recovery, len(res.acked), res.errors)
	if res.recovery < 0 {
		t.Fatal("no write succeeded after the external promotion")
	}
	ctx := ctxT(t)
	d, err := pgx.Connect(ctx, rc.replica.ConnString("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	var missing int64
	if err := d.QueryRow(ctx, "SELECT count(*) FROM unnest($1::bigint[]) a(id) WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.id = a.id)", res.acked).Scan(&missing); err != nil {
		t.Fatal(err)
	}
	if missing != 0 {
		t.Fatalf("%d of %d acknowledged rows are missing on the new primary", missing, len(res.acked))
	}
	for _, st := range e.topo.Status() {
		if st.Addr == rc.primary.Addr() && (!st.Fenced || st.IsPrimary) {
			t.Errorf("old primary: fenced %v, primary %v", st.Fenced, st.IsPrimary)
		}
	}
}
