package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/writeload"
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
	res := writeload.Run(writeload.Options{URL: e.url("app", ""), Writers: 20, Table: "t",
		Before: time.Second, After: 2 * time.Second, Limit: time.Minute,
		Fault: func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := rc.primary.Stop(ctx, "immediate"); err != nil {
				t.Error(err)
			}
		}})
	t.Logf("kill to first successful write: %v; %d rows acknowledged (%d after the kill); errors seen by clients: %v",
		res.Recovery, len(res.Acked), res.AckedAfter, res.Errors)
	if res.Recovery < 0 {
		t.Fatal("no write succeeded after the primary was stopped")
	}

	// Every acknowledged row is on the new primary.
	ctx := ctxT(t)
	if ok, err := rc.replica.InRecovery(ctx); err != nil || ok {
		t.Fatalf("the replica was not promoted (in recovery %v, %v)", ok, err)
	}
	missing, err := writeload.Missing(ctx, rc.replica.ConnString("app"), "t", res.Acked)
	if err != nil {
		t.Fatal(err)
	}
	if missing != 0 {
		t.Fatalf("%d of %d acknowledged rows are missing on the new primary", missing, len(res.Acked))
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
	res := writeload.Run(writeload.Options{URL: e.url("app", ""), Writers: 5, Table: "t",
		Before: time.Second, After: 2 * time.Second, Limit: time.Minute,
		Fault: func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := rc.primary.Stop(ctx, "immediate"); err != nil {
				t.Error(err)
			}
			// The "external manager".
			if err := rc.replica.Exec(ctx, "app", "SELECT pg_promote(true, 60)"); err != nil {
				t.Error(err)
			}
		}})
	t.Logf("kill to first successful write: %v; %d rows acknowledged; errors: %v", res.Recovery, len(res.Acked), res.Errors)
	if res.Recovery < 0 {
		t.Fatal("no write succeeded after the external promotion")
	}
	ctx := ctxT(t)
	missing, err := writeload.Missing(ctx, rc.replica.ConnString("app"), "t", res.Acked)
	if err != nil {
		t.Fatal(err)
	}
	if missing != 0 {
		t.Fatalf("%d of %d acknowledged rows are missing on the new primary", missing, len(res.Acked))
	}
	for _, st := range e.topo.Status() {
		if st.Addr == rc.primary.Addr() && (!st.Fenced || st.IsPrimary) {
			t.Errorf("old primary: fenced %v, primary %v", st.Fenced, st.IsPrimary)
		}
	}
}
