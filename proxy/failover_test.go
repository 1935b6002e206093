package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/writeload"
	"github.com/pgshield/pgshield/router"
)

// TestFailover: clients insert numbered rows and record every acknowledged
// commit; the primary is stopped with pg_ctl stop -m immediate. With
// failover: promote (20 writers, default check intervals) pgshield promotes
// the synchronous replica; with failover: discover an external manager
// promotes it and pgshield finds it by checking every host. Either way the
// old primary is fenced, writes resume, and every acknowledged row is on
// the new primary.
func TestFailover(t *testing.T) {
	for _, tc := range []struct {
		mode     string
		writers  int
		external bool // the test promotes, as an external manager would
	}{
		{router.FailoverPromote, 20, false},
		{router.FailoverDiscover, 5, true},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			rc := startReplicated(t, true)
			e := rc.proxyFor(t, "", func(r *router.TopologyConfig) {
				r.Failover = tc.mode
				if tc.mode == router.FailoverPromote {
					r.LagCheckInterval = 0 // the default, as in the benchmark
				}
			}, func(m *poolConfig) {
				m.Pool.WaitTimeout = 30 * time.Second
			})
			res := writeload.Run(writeload.Options{URL: e.url("app", ""), Writers: tc.writers, Table: "t",
				Before: time.Second, After: 2 * time.Second, Limit: time.Minute,
				Fault: func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					if err := rc.primary.Stop(ctx, "immediate"); err != nil {
						t.Error(err)
					}
					if !tc.external {
						return
					}
					if err := rc.replica.Exec(ctx, "app", "SELECT pg_promote(true, 60)"); err != nil {
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
			// An operator re-admits the old primary (once it is made a
			// replica of the new one); unknown names are refused.
			if err := e.topo.Readmit("app", rc.primary.Addr()); err != nil {
				t.Fatal(err)
			}
			for _, st := range e.topo.Status() {
				if st.Addr == rc.primary.Addr() && st.Fenced {
					t.Error("old primary still fenced after Readmit")
				}
			}
			if e.topo.Readmit("app", "127.0.0.1:1") == nil || e.topo.Readmit("nope", rc.primary.Addr()) == nil {
				t.Error("Readmit accepted a backend or database it does not know")
			}
		})
	}
}
