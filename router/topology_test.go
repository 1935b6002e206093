package router

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// fakeBackends answers checks without a database: a primary and a replica
// whose replay is 5 s behind; probes counts the checks.
type fakeBackends struct {
	replica string
	probes  atomic.Int64
}

func (b *fakeBackends) Probe(_ context.Context, _, addr string, _ bool) (Sample, error) {
	b.probes.Add(1)
	if addr == b.replica {
		return Sample{Started: time.Now(), InRecovery: true, LSN: 100, ReplayDelay: 5 * time.Second}, nil
	}
	return Sample{Started: time.Now(), LSN: 100}, nil
}

func (b *fakeBackends) Promote(context.Context, string, string) error {
	return fmt.Errorf("not in this test")
}

func startTopology(t *testing.T, cfg TopologyConfig) (*Topology, *fakeBackends) {
	t.Helper()
	b := &fakeBackends{replica: "127.0.0.1:2"}
	topo := NewTopology(cfg, []DatabaseTopology{{Name: "db", Primary: "127.0.0.1:1", Replicas: []string{b.replica}}}, b, nil, zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	topo.Start(ctx)
	t.Cleanup(func() {
		cancel()
		topo.Close()
	})
	return topo, b
}

// picks says whether a read (after a write at lastWrite) goes to the
// replica.
func picks(topo *Topology, lastWrite time.Time) bool {
	n := topo.PickReplica("db", lastWrite, false)
	if n == nil {
		return false
	}
	n.Done()
	return true
}

// Update applies the lag limit, read-your-writes, failover and the check
// intervals at once; an invalid configuration changes nothing.
func TestTopologyUpdate(t *testing.T) {
	base := TopologyConfig{HealthCheckInterval: time.Hour, LagCheckInterval: time.Hour, MaxReplicaLag: 10 * time.Second}
	topo, b := startTopology(t, base)
	if !picks(topo, time.Time{}) {
		t.Fatal("a replica 5s behind gets no reads with max_replica_lag 10s")
	}
	if picks(topo, time.Now()) {
		t.Fatal("read-your-writes lsn: a read just after a write went to the replica")
	}

	next := base
	next.MaxReplicaLag = time.Second
	if err := topo.Update(next); err != nil {
		t.Fatal(err)
	}
	if got := topo.Config().MaxReplicaLag; got != time.Second {
		t.Errorf("Config().MaxReplicaLag = %s after Update", got)
	}
	if picks(topo, time.Time{}) {
		t.Error("max_replica_lag 1s: the replica 5s behind still gets reads")
	}

	next.MaxReplicaLag = 10 * time.Second
	next.ReadYourWrites = RYWOff
	next.Failover = FailoverDiscover
	if err := topo.Update(next); err != nil {
		t.Fatal(err)
	}
	if !picks(topo, time.Now()) {
		t.Error("read_your_writes off: a read after a write does not go to the replica")
	}
	if c := topo.Config(); c.ReadYourWrites != RYWOff || c.Failover != FailoverDiscover || c.FailoverAfter != DefaultFailoverAfter {
		t.Errorf("Config() after Update: %+v", c)
	}

	bad := next
	bad.ReadYourWrites = "sideways"
	if err := topo.Update(bad); err == nil {
		t.Error("an invalid read_your_writes was taken")
	}
	if topo.Config().ReadYourWrites != RYWOff {
		t.Error("a refused Update changed the configuration")
	}

	// A shorter check interval takes effect now, not after the hour the
	// loops were waiting for.
	before := b.probes.Load()
	next.LagCheckInterval = 10 * time.Millisecond
	if err := topo.Update(next); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.probes.Load() < before+10 {
		if time.Now().After(deadline) {
			t.Fatalf("lag_check_interval 10ms: %d checks in 5s", b.probes.Load()-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Updates race with the routing reads and the checks (run with -race).
func TestTopologyUpdateConcurrent(t *testing.T) {
	base := TopologyConfig{HealthCheckInterval: time.Hour, LagCheckInterval: time.Millisecond}
	topo, _ := startTopology(t, base)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				picks(topo, time.Now())
				topo.HealthyPrimary("db")
				_ = topo.Config()
			}
		}()
	}
	for i := range 200 {
		c := base
		c.MaxReplicaLag = time.Duration(1+i%20) * time.Second
		c.ReadYourWrites = []string{RYWLSN, RYWWindow, RYWOff}[i%3]
		if err := topo.Update(c); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if c := topo.Config(); c.MaxReplicaLag != 20*time.Second || c.ReadYourWrites != RYWWindow {
		t.Errorf("last Update not in force: %+v", c)
	}
}

// Updates more frequent than the check interval do not put the checks
// off: the next one stays due an interval after the last.
func TestTopologyUpdateKeepsChecking(t *testing.T) {
	base := TopologyConfig{HealthCheckInterval: time.Hour, LagCheckInterval: 100 * time.Millisecond}
	topo, b := startTopology(t, base)
	before := b.probes.Load()
	for i := range 50 {
		c := base
		c.LagCheckInterval += time.Duration(i%2) * time.Millisecond // wakes the loops every time
		if err := topo.Update(c); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// About 1 s at 100 ms, for two backends: some 20 checks.
	if n := b.probes.Load() - before; n < 8 {
		t.Errorf("%d checks in 1s of Updates every 20ms, with checks due every 100ms", n)
	}
}
