package router

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Failover modes.
const (
	// FailoverNone: pgshield never changes the primary on its own; a dead
	// primary means writes fail (08006) until it is back.
	FailoverNone = "none"
	// FailoverPromote: pgshield promotes the most advanced replica with
	// pg_promote() and fences the old primary.
	FailoverPromote = "promote"
	// FailoverDiscover: an external manager promotes; pgshield finds the
	// new primary by asking every host, and fences the old one.
	FailoverDiscover = "discover"
)

// Read-your-writes modes.
const (
	RYWLSN    = "lsn"
	RYWWindow = "window"
	RYWOff    = "off"
)

// ErrFailingOver: no healthy primary appeared within the wait.
var ErrFailingOver = errors.New("the primary is down and failover has not completed")

// ErrUnknownDatabase: the database is not part of the topology.
var ErrUnknownDatabase = errors.New("unknown database")

// ErrNotFenced: Readmit of a backend that is in service already.
var ErrNotFenced = errors.New("backend is not fenced")

// TopologyConfig configures health checking, replica selection and
// failover. Zero fields take the defaults of WithDefaults.
type TopologyConfig struct {
	// HealthCheckInterval: every backend gets a full check (a fresh
	// connection) this often, and sooner after a failed dial or a dead
	// connection. Filled in from the pool settings.
	HealthCheckInterval time.Duration `yaml:"-"`
	// CheckTimeout bounds one check. Filled in from connect_timeout.
	CheckTimeout time.Duration `yaml:"-"`
	// LagCheckInterval is how often the WAL positions of a database with
	// replicas are read, on a kept connection.
	LagCheckInterval time.Duration `yaml:"lag_check_interval"`
	// MaxReplicaLag: a replica whose replay is further behind in time gets
	// no reads.
	MaxReplicaLag time.Duration `yaml:"max_replica_lag"`
	// MaxReplicaLagBytes: likewise in bytes of WAL behind the primary (0:
	// no byte limit).
	MaxReplicaLagBytes int64 `yaml:"max_replica_lag_bytes"`
	// ReadYourWrites is lsn (reads after a write stay on the primary until
	// a replica has replayed past it), window (for ReadYourWritesWindow) or
	// off.
	ReadYourWrites       string        `yaml:"read_your_writes"`
	ReadYourWritesWindow time.Duration `yaml:"read_your_writes_window"`
	// Failover is none, promote or discover.
	Failover string `yaml:"failover"`
	// FailoverAfter is how long the primary must fail its checks before
	// failover starts.
	FailoverAfter time.Duration `yaml:"failover_after"`
}

// Defaults.
const (
	DefaultLagCheckInterval     = time.Second
	DefaultMaxReplicaLag        = 10 * time.Second
	DefaultReadYourWritesWindow = 5 * time.Second
	DefaultFailoverAfter        = 3 * time.Second
	// recheckInterval is how often a failing backend is checked.
	recheckInterval = 250 * time.Millisecond
	// downAfter consecutive failed checks declare a backend down: its
	// connections are closed so nobody waits on them.
	downAfter = 2
)

// WithDefaults fills unset fields.
func (c TopologyConfig) WithDefaults() TopologyConfig {
	if c.HealthCheckInterval <= 0 {
		c.HealthCheckInterval = 60 * time.Second
	}
	if c.CheckTimeout <= 0 {
		c.CheckTimeout = 5 * time.Second
	}
	if c.LagCheckInterval <= 0 {
		c.LagCheckInterval = DefaultLagCheckInterval
	}
	if c.MaxReplicaLag <= 0 {
		c.MaxReplicaLag = DefaultMaxReplicaLag
	}
	if c.ReadYourWrites == "" {
		c.ReadYourWrites = RYWLSN
	}
	if c.ReadYourWritesWindow <= 0 {
		c.ReadYourWritesWindow = DefaultReadYourWritesWindow
	}
	if c.Failover == "" {
		c.Failover = FailoverNone
	}
	if c.FailoverAfter <= 0 {
		c.FailoverAfter = DefaultFailoverAfter
	}
	return c
}

// Validate reports every problem at once.
func (c TopologyConfig) Validate() error {
	var errs []error
	switch c.ReadYourWrites {
	case "", RYWLSN, RYWWindow, RYWOff:
	default:
		errs = append(errs, fmt.Errorf("routing.read_your_writes %q: want lsn, window or off", c.ReadYourWrites))
	}
	switch c.Failover {
	case "", FailoverNone, FailoverPromote, FailoverDiscover:
	default:
		errs = append(errs, fmt.Errorf("routing.failover %q: want none, promote or discover", c.Failover))
	}
	if c.MaxReplicaLagBytes < 0 {
		errs = append(errs, errors.New("routing.max_replica_lag_bytes must not be negative"))
	}
	return errors.Join(errs...)
}

// Sample is what one check of a backend found.
type Sample struct {
	Started     time.Time // when the check query was sent
	InRecovery  bool
	LSN         uint64 // primary: insert position; replica: replayed position
	ReplayDelay time.Duration
	// BlksHit and BlksRead: buffer hits and reads of the database.
	BlksHit, BlksRead uint64
}

// Backends runs checks and promotions; poolmgr provides it (the router
// holds no server connection itself).
type Backends interface {
	Probe(ctx context.Context, database, addr string, fresh bool) (Sample, error)
	Promote(ctx context.Context, database, addr string) error
}

// EventKind says what changed.
type EventKind int

// Events.
const (
	// EventPrimaryChanged: Addr is now the primary of Database (Old was).
	EventPrimaryChanged EventKind = iota + 1
	// EventDown: Addr failed its checks; its connections must be closed.
	EventDown
	// EventFenced: Addr is out of service until an operator re-admits it.
	EventFenced
)

// Event is a topology change.
type Event struct {
	Kind     EventKind
	Database string
	Addr     string
	Old      string
}

// DatabaseTopology is a database's configured hosts.
type DatabaseTopology struct {
	Name     string
	Primary  string
	Replicas []string
}

// Role of a backend, as discovered.
type Role string

// Roles.
const (
	RoleUnknown Role = "unknown"
	RolePrimary Role = "primary"
	RoleReplica Role = "replica"
)

// Node is one backend of one database.
type Node struct {
	db   *dbState
	addr string

	// Outstanding counts clients attached to this node for reads; replicas
	// are balanced by it.
	outstanding atomic.Int64
	kick        chan struct{}

	// Guarded by Topology.mu.
	role       Role
	healthy    bool
	checked    bool
	fenced     bool
	failures   int
	lastErr    string
	lastCheck  time.Time
	lastFresh  time.Time
	sample     Sample
	failedAt   time.Time // first failure of the current run of failures
	configured Role
}

// Addr is the node's host:port.
func (n *Node) Addr() string { return n.addr }

// Done ends a use of a node begun by PickReplica.
func (n *Node) Done() { n.outstanding.Add(-1) }

type dbState struct {
	name        string
	nodes       []*Node
	primary     *Node
	failingOver bool
	// primaryLSNs are recent samples of the primary's WAL position, oldest
	// first, for read-your-writes.
	primaryLSNs []Sample
}

// snapshot is the routing state read without locks on every attach.
type snapshot struct {
	primaryNode    *Node
	primary        string
	primaryHealthy bool
	replicas       []*Node   // eligible for reads
	replayed       []uint64  // their replayed LSN, same order
	primaryLSNs    []Sample  // copy of dbState.primaryLSNs
	changed        chan bool // closed at the next change
}

// Topology tracks the backends of every database: roles, health, lag, and
// failover. Its methods are safe for concurrent use.
type Topology struct {
	// cfg is the configuration in force, defaults filled in; Update swaps
	// it whole (under mu), and the routing reads it without a lock.
	cfg     atomic.Pointer[TopologyConfig]
	b       Backends
	log     *zap.Logger
	onEvent func(Event)

	mu      sync.Mutex
	dbs     map[string]*dbState
	changed chan bool
	// reconfigured is closed (and replaced) by an Update that changes the
	// check intervals, so that the check loops take them at once.
	reconfigured chan struct{}
	snaps        atomic.Pointer[map[string]*snapshot]
	stop         context.CancelFunc
	wg           sync.WaitGroup
}

// NewTopology returns a topology for dbs; Start begins checking.
func NewTopology(cfg TopologyConfig, dbs []DatabaseTopology, b Backends, onEvent func(Event), log *zap.Logger) *Topology {
	t := &Topology{b: b, log: log, onEvent: onEvent,
		dbs: make(map[string]*dbState), changed: make(chan bool), reconfigured: make(chan struct{})}
	cfg = cfg.WithDefaults()
	t.cfg.Store(&cfg)
	for _, d := range dbs {
		st := &dbState{name: d.Name}
		for i, addr := range append([]string{d.Primary}, d.Replicas...) {
			n := &Node{db: st, addr: addr, role: RoleUnknown, kick: make(chan struct{}, 1), configured: RoleReplica}
			if i == 0 {
				// Trusted only until the first check says otherwise.
				n.configured, n.role, n.healthy = RolePrimary, RolePrimary, true
				st.primary = n
			}
			st.nodes = append(st.nodes, n)
		}
		t.dbs[d.Name] = st
	}
	t.mu.Lock()
	t.publishLocked()
	t.mu.Unlock()
	return t
}

// Start checks every backend once (waiting up to the check timeout, so
// that routing starts from discovered roles), then keeps checking until
// ctx ends or Close.
func (t *Topology) Start(ctx context.Context) {
	ctx, t.stop = context.WithCancel(ctx)
	var first sync.WaitGroup
	for _, st := range t.dbs {
		for _, n := range st.nodes {
			first.Add(1)
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				t.check(ctx, n, true)
				first.Done()
				t.loop(ctx, n)
			}()
		}
	}
	first.Wait()
}

// Close stops checking.
func (t *Topology) Close() {
	if t.stop != nil {
		t.stop()
	}
	t.wg.Wait()
}

func (t *Topology) loop(ctx context.Context, n *Node) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		t.mu.Lock()
		cfg := t.cfg.Load()
		interval := cfg.HealthCheckInterval
		if len(n.db.nodes) > 1 {
			interval = min(interval, cfg.LagCheckInterval)
		}
		if !n.healthy {
			interval = min(interval, recheckInterval)
		}
		fresh := !n.healthy || time.Since(n.lastFresh) >= cfg.HealthCheckInterval-interval/2
		// The next check is due an interval after the last one, also
		// when Update changed the interval meanwhile.
		wait := interval
		if !n.lastCheck.IsZero() {
			wait = time.Until(n.lastCheck.Add(interval))
		}
		reconfigured := t.reconfigured
		t.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-reconfigured:
			// The intervals changed: wait for the new deadline.
			continue
		case <-n.kick:
			fresh = true
		case <-timer.C:
		}
		t.check(ctx, n, fresh)
	}
}

// check probes n once and records the result.
func (t *Topology) check(ctx context.Context, n *Node, fresh bool) {
	cctx, cancel := context.WithTimeout(ctx, t.cfg.Load().CheckTimeout)
	s, err := t.b.Probe(cctx, n.db.name, n.addr, fresh)
	cancel()
	if ctx.Err() != nil {
		return
	}
	t.record(n, s, err, fresh)
}

// Report tells the topology that a connection to addr failed (a dial, or a
// connection found dead); the backends at addr are checked at once.
func (t *Topology) Report(addr string) {
	for _, st := range t.dbs {
		for _, n := range st.nodes {
			if n.addr == addr {
				select {
				case n.kick <- struct{}{}:
				default:
				}
			}
		}
	}
}

func (t *Topology) record(n *Node, s Sample, err error, fresh bool) {
	var events []Event
	t.mu.Lock()
	st := n.db
	now := time.Now()
	n.lastCheck = now
	n.checked = true
	if err != nil {
		if n.failures == 0 {
			n.failedAt = now
		}
		n.failures++
		n.lastErr = err.Error()
		if n.healthy {
			t.log.Warn("backend failed its health check", zap.String("database", st.name),
				zap.String("backend", n.addr), zap.Error(err))
		}
		n.healthy = false
		if n.failures == downAfter {
			events = append(events, Event{Kind: EventDown, Database: st.name, Addr: n.addr})
		}
	} else {
		if !n.healthy && n.failures > 0 {
			t.log.Info("backend passes its health check again", zap.String("database", st.name), zap.String("backend", n.addr))
		}
		n.failures, n.lastErr, n.healthy = 0, "", true
		if fresh {
			n.lastFresh = now
		}
		n.sample = s
		n.role = RolePrimary
		if s.InRecovery {
			n.role = RoleReplica
		}
		if n == st.primary && n.role == RolePrimary {
			st.primaryLSNs = append(st.primaryLSNs, s)
			if len(st.primaryLSNs) > 16 {
				st.primaryLSNs = append(st.primaryLSNs[:0], st.primaryLSNs[1:]...)
			}
		}
	}
	events = append(events, t.electLocked(st)...)
	cfg := t.cfg.Load()
	if p := st.primary; p != nil && !p.healthy && !p.fenced && cfg.Failover == FailoverPromote &&
		!st.failingOver && now.Sub(p.failedAt) >= cfg.FailoverAfter {
		st.failingOver = true
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			t.promote(st, p)
		}()
	}
	t.publishLocked()
	t.mu.Unlock()
	t.emit(events)
}

// electLocked settles which node is the primary from what the checks
// found: roles are discovered, not trusted from the configuration.
func (t *Topology) electLocked(st *dbState) []Event {
	cur := st.primary
	if cur != nil && cur.healthy && cur.role == RolePrimary && !cur.fenced {
		// Another host claiming to be primary too is split brain: keep the
		// one in service and say so.
		for _, n := range st.nodes {
			if n != cur && n.healthy && n.role == RolePrimary && !n.fenced && n.checked {
				t.log.Error("two hosts claim to be primary; keeping the one in service",
					zap.String("database", st.name), zap.String("primary", cur.addr), zap.String("other", n.addr))
			}
		}
		return nil
	}
	var next *Node
	for _, n := range st.nodes {
		if n != cur && n.healthy && n.role == RolePrimary && !n.fenced {
			next = n
			break
		}
	}
	if next == nil {
		return nil
	}
	events := []Event{{Kind: EventPrimaryChanged, Database: st.name, Addr: next.addr}}
	if cur != nil {
		events[0].Old = cur.addr
		// A former primary that is unreachable is fenced: if it comes back
		// as a primary it must not take writes. One that answers as a
		// replica (the configuration had the roles wrong, or it was
		// demoted) simply serves reads.
		if !cur.healthy {
			cur.fenced = true
			events = append(events, Event{Kind: EventFenced, Database: st.name, Addr: cur.addr})
		}
	}
	t.log.Warn("new primary", zap.String("database", st.name), zap.String("primary", next.addr), zap.String("old", events[0].Old))
	st.primary = next
	st.primaryLSNs = append(st.primaryLSNs[:0], next.sample)
	st.failingOver = false
	return events
}

// promote runs a promote failover: the healthy replica that has replayed
// the most WAL is promoted and the old primary fenced.
func (t *Topology) promote(st *dbState, old *Node) {
	t.mu.Lock()
	var best *Node
	for _, n := range st.nodes {
		if n != old && n.healthy && !n.fenced && n.role == RoleReplica && (best == nil || n.sample.LSN > best.sample.LSN) {
			best = n
		}
	}
	t.mu.Unlock()
	if best == nil {
		t.log.Error("primary is down and no healthy replica can be promoted", zap.String("database", st.name), zap.String("primary", old.addr))
		t.mu.Lock()
		st.failingOver = false
		t.mu.Unlock()
		return
	}
	t.log.Warn("primary is down: promoting a replica", zap.String("database", st.name),
		zap.String("primary", old.addr), zap.String("replica", best.addr), zap.Uint64("replayed_lsn", best.sample.LSN))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	err := t.b.Promote(ctx, st.name, best.addr)
	cancel()
	var events []Event
	t.mu.Lock()
	st.failingOver = false
	if err != nil {
		t.log.Error("promotion failed", zap.String("database", st.name), zap.String("replica", best.addr), zap.Error(err))
	} else if st.primary == old {
		old.fenced = true
		best.role = RolePrimary
		best.healthy = true
		st.primary = best
		st.primaryLSNs = st.primaryLSNs[:0]
		events = append(events,
			Event{Kind: EventPrimaryChanged, Database: st.name, Addr: best.addr, Old: old.addr},
			Event{Kind: EventFenced, Database: st.name, Addr: old.addr})
		t.log.Warn("failover complete", zap.String("database", st.name), zap.String("primary", best.addr), zap.String("fenced", old.addr))
	}
	t.publishLocked()
	t.mu.Unlock()
	t.emit(events)
	// Read the new primary's position at once, for read-your-writes.
	select {
	case best.kick <- struct{}{}:
	default:
	}
}

func (t *Topology) emit(events []Event) {
	if t.onEvent == nil {
		return
	}
	for _, ev := range events {
		t.onEvent(ev)
	}
}

// Config is the configuration in force, defaults filled in.
func (t *Topology) Config() TopologyConfig { return *t.cfg.Load() }

// Update applies cfg at once: the lag limits (the replicas eligible for
// reads are chosen again now), read-your-writes, failover and the check
// intervals. HealthCheckInterval and CheckTimeout are taken as given, as
// by NewTopology (proxy.NewTopology fills them in from the pool
// settings). The databases and their hosts stay those NewTopology was
// given. An invalid cfg is refused and nothing changes.
func (t *Topology) Update(cfg TopologyConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.WithDefaults()
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.cfg.Swap(&cfg)
	if old.HealthCheckInterval != cfg.HealthCheckInterval || old.LagCheckInterval != cfg.LagCheckInterval {
		close(t.reconfigured)
		t.reconfigured = make(chan struct{})
	}
	t.publishLocked()
	return nil
}

// Readmit puts a fenced backend back in service (an operator has made sure
// it is a replica of the current primary, or the primary again).
func (t *Topology) Readmit(database, addr string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.dbs[database]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownDatabase, database)
	}
	for _, n := range st.nodes {
		if n.addr == addr {
			if !n.fenced {
				return fmt.Errorf("%w: %s of database %q is in service", ErrNotFenced, addr, database)
			}
			n.fenced = false
			t.publishLocked()
			return nil
		}
	}
	return fmt.Errorf("backend %s is not part of database %q", addr, database)
}

// publishLocked rebuilds the routing snapshots and wakes waiters.
func (t *Topology) publishLocked() {
	cfg := t.cfg.Load()
	snaps := make(map[string]*snapshot, len(t.dbs))
	close(t.changed)
	t.changed = make(chan bool)
	for name, st := range t.dbs {
		sn := &snapshot{changed: t.changed, primaryLSNs: append([]Sample(nil), st.primaryLSNs...)}
		var latest uint64
		if p := st.primary; p != nil {
			sn.primaryNode = p
			sn.primary = p.addr
			sn.primaryHealthy = p.healthy && !p.fenced && p.role == RolePrimary
			latest = p.sample.LSN
		}
		for _, n := range st.nodes {
			if n == st.primary || !n.healthy || n.fenced || n.role != RoleReplica {
				continue
			}
			if n.sample.ReplayDelay > cfg.MaxReplicaLag {
				continue
			}
			if cfg.MaxReplicaLagBytes > 0 && latest > n.sample.LSN && int64(latest-n.sample.LSN) > cfg.MaxReplicaLagBytes {
				continue
			}
			sn.replicas = append(sn.replicas, n)
			sn.replayed = append(sn.replayed, n.sample.LSN)
		}
		snaps[name] = sn
	}
	t.snaps.Store(&snaps)
}

// HealthyPrimary returns the primary of a database without waiting: ok is
// false when it is down and a failover may replace it (call Primary).
func (t *Topology) HealthyPrimary(database string) (addr string, ok bool) {
	sn, found := (*t.snaps.Load())[database]
	if !found {
		return "", false
	}
	return sn.primary, sn.primaryHealthy || t.cfg.Load().Failover == FailoverNone
}

// Primary returns the primary of a database. While it is down and a
// failover may replace it, Primary waits for a healthy primary until ctx
// has passed (ErrFailingOver). With failover off it returns the primary whatever
// its health, and connecting to it reports the failure.
func (t *Topology) Primary(ctx context.Context, database string, wait time.Duration) (string, error) {
	var timeout <-chan time.Time
	for {
		sn, ok := (*t.snaps.Load())[database]
		if !ok {
			return "", fmt.Errorf("%w %q", ErrUnknownDatabase, database)
		}
		if sn.primaryHealthy || t.cfg.Load().Failover == FailoverNone {
			return sn.primary, nil
		}
		if timeout == nil {
			tm := time.NewTimer(wait)
			defer tm.Stop()
			timeout = tm.C
		}
		select {
		case <-sn.changed:
		case <-timeout:
			return "", fmt.Errorf("%w within %s (database %q, primary %s)", ErrFailingOver, wait, database, sn.primary)
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// PickReplica returns the eligible replica with the fewest clients
// attached for reads, counting this one (call Done when finished), or nil
// when reads must go to the primary: no replica is healthy and within the
// lag limits, or none has replayed the client's last write (lastWrite is
// when it committed; zero if it has not written). With withPrimary the
// primary competes with the replicas on the same terms (reads: any).
func (t *Topology) PickReplica(database string, lastWrite time.Time, withPrimary bool) *Node {
	sn, ok := (*t.snaps.Load())[database]
	if !ok || len(sn.replicas) == 0 {
		return nil
	}
	var need uint64
	if !lastWrite.IsZero() {
		cfg := t.cfg.Load()
		switch cfg.ReadYourWrites {
		case RYWWindow:
			if time.Since(lastWrite) < cfg.ReadYourWritesWindow {
				return nil
			}
		case RYWLSN:
			// The first primary position read after the commit bounds the
			// commit's LSN from above.
			found := false
			for _, s := range sn.primaryLSNs {
				if s.Started.After(lastWrite) {
					need, found = s.LSN, true
					break
				}
			}
			if !found {
				return nil
			}
		}
	}
	var best *Node
	var bestLoad int64
	for i, n := range sn.replicas {
		if sn.replayed[i] < need {
			continue
		}
		if load := n.outstanding.Load(); best == nil || load < bestLoad {
			best, bestLoad = n, load
		}
	}
	if p := sn.primaryNode; withPrimary && sn.primaryHealthy && best != nil && p.outstanding.Load() < bestLoad {
		best = p
	}
	if best != nil {
		best.outstanding.Add(1)
	}
	return best
}

// NodeStatus is a backend's state, for the admin console and metrics.
type NodeStatus struct {
	Database    string
	Addr        string
	Role        Role
	Healthy     bool
	Checked     bool
	Fenced      bool
	LastCheck   time.Time
	LastError   string
	LSN         uint64
	LagBytes    uint64
	ReplayDelay time.Duration
	Outstanding int64
	IsPrimary   bool // the one writes go to
	// CacheHitRatio is blks_hit / (blks_hit + blks_read) of the database
	// on this backend since its statistics were reset; 0 when unknown.
	CacheHitRatio float64
	// BlocksHit and BlocksRead are those counters themselves, so that a
	// ratio can be taken over a window.
	BlocksHit, BlocksRead uint64
}

// Status returns every backend's state, by database and address.
func (t *Topology) Status() []NodeStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []NodeStatus
	for _, st := range t.dbs {
		var latest uint64
		if st.primary != nil {
			latest = st.primary.sample.LSN
		}
		for _, n := range st.nodes {
			ns := NodeStatus{Database: st.name, Addr: n.addr, Role: n.role, Healthy: n.healthy, Checked: n.checked,
				Fenced: n.fenced, LastCheck: n.lastCheck, LastError: n.lastErr, LSN: n.sample.LSN,
				ReplayDelay: n.sample.ReplayDelay, Outstanding: n.outstanding.Load(), IsPrimary: n == st.primary,
				BlocksHit: n.sample.BlksHit, BlocksRead: n.sample.BlksRead}
			if total := n.sample.BlksHit + n.sample.BlksRead; total > 0 {
				ns.CacheHitRatio = float64(n.sample.BlksHit) / float64(total)
			}
			if n.role == RoleReplica && latest > n.sample.LSN {
				ns.LagBytes = latest - n.sample.LSN
			}
			out = append(out, ns)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Database != out[j].Database {
			return out[i].Database < out[j].Database
		}
		return out[i].Addr < out[j].Addr
	})
	return out
}
