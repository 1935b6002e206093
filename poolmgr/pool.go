package poolmgr

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/puddle/v2"
	"go.uber.org/zap"
)

// Errors returned by Acquire. The proxy maps them to SQLSTATEs.
var (
	// ErrWaitTimeout: no server connection became free within wait_timeout.
	ErrWaitTimeout = errors.New("timed out waiting for a server connection")
	// ErrUnknownDatabase: the database is not configured.
	ErrUnknownDatabase = errors.New("unknown database")
	// ErrUnknownService: the service is not configured.
	ErrUnknownService = errors.New("unknown service")
	// ErrClosed: the manager is shut down.
	ErrClosed = errors.New("pool manager closed")
)

// DialError wraps a failure to open a server connection.
type DialError struct {
	Backend string
	Err     error
}

func (e *DialError) Error() string {
	return fmt.Sprintf("cannot connect to server %s: %v", e.Backend, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

// Key identifies one pool.
type Key struct {
	Service  string
	Database string
	Backend  string // host:port
}

// Stat is a snapshot of one pool.
type Stat struct {
	Key
	Mode        PoolMode
	Max, Min    int
	Active      int // acquired by clients
	Idle        int
	Opening     int // being dialled
	Waiting     int // clients in Acquire
	Acquires    int64
	WaitTimeout int64 // acquires that gave up
	DialErrors  int64
}

// Manager owns every pool. Its methods are safe for concurrent use.
type Manager struct {
	log *zap.Logger

	mu     sync.Mutex // guards cfg, pools, used and closed
	cfg    Config
	pools  map[Key]*pool
	closed bool
	// used are the (service, database) pairs clients have acquired from,
	// so that pools rebuilt by a reload or failover keep their minimum
	// (see ServiceConfig.MinOnDemand).
	used map[[2]string]bool

	cfgSettings atomic.Pointer[Settings]
	stop        context.CancelFunc
	done        chan struct{}

	bmu      sync.Mutex // guards backends, onEvent, monitors and primaries
	backends map[string]*backend
	onEvent  func(BackendEvent)
	monitors map[Key]*Conn
	// primaries overrides the configured primary of a database after a
	// failover.
	primaries map[string]string
}

type pool struct {
	mgr     *Manager
	key     Key
	db      DatabaseConfig
	svc     ServiceConfig
	p       *puddle.Pool[*Conn]
	retired atomic.Bool

	waiting     atomic.Int64
	waitTimeout atomic.Int64
	dialErrors  atomic.Int64
	used        atomic.Bool // a client acquired from it (or its predecessor)
}

// New builds a Manager from cfg, which must have passed Validate. Call Start
// to open the minimum connections and run maintenance.
func New(cfg Config, log *zap.Logger) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Manager{log: log, cfg: cfg, pools: make(map[Key]*pool), used: make(map[[2]string]bool),
		backends: make(map[string]*backend), monitors: make(map[Key]*Conn), primaries: make(map[string]string)}
	s := cfg.Pool
	m.cfgSettings.Store(&s)
	return m, nil
}

func (m *Manager) settings() Settings { return *m.cfgSettings.Load() }

// Config returns the configuration in force.
func (m *Manager) Config() Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg
}

// Service returns the configuration of a service.
func (m *Manager) Service(name string) (ServiceConfig, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.cfg.Services[name]
	return s, ok
}

// Start opens the minimum connections of every primary pool and runs the
// maintenance loop until ctx ends or Close is called. Failures to open the
// minimum are logged and retried by maintenance, not fatal: the proxy must
// come up even while a backend is down.
func (m *Manager) Start(ctx context.Context) {
	ctx, m.stop = context.WithCancel(ctx)
	m.done = make(chan struct{})
	m.maintain(ctx)
	go func() {
		defer close(m.done)
		t := time.NewTicker(maintenanceInterval(m.settings()))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.maintain(ctx)
			}
		}
	}()
}

func maintenanceInterval(s Settings) time.Duration {
	d := s.IdleTimeout / 4
	if d > 5*time.Second {
		d = 5 * time.Second
	}
	if d < 100*time.Millisecond {
		d = 100 * time.Millisecond
	}
	return d
}

// Acquire returns an idle server connection of pool (service, database,
// backend), dialling one if the pool has room, or waits in FIFO order up to
// wait_timeout (ErrWaitTimeout). backend "" means the primary. A *Waiter
// as ctx bounds the wait with the timer it keeps (waiter.go).
func (m *Manager) Acquire(ctx context.Context, service, database, backend string) (*Conn, error) {
	p, err := m.pool(service, database, backend)
	if err != nil {
		return nil, err
	}
	if !p.used.Load() { // read-only after the first acquire: no shared write per acquire
		m.markUsed(p)
	}
	s := m.settings()
	// Fast path: an idle connection, without arming a wait timer (nor
	// reading the clock).
	if res, err := p.p.TryAcquire(ctx); err == nil {
		if c, ok := m.checkout(res, s); ok {
			c.Waited = 0
			return c, nil
		}
	}
	start := time.Now()
	if w, ok := ctx.(*Waiter); ok {
		w.begin(start.Add(s.WaitTimeout))
		defer w.end()
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.WaitTimeout)
		defer cancel()
	}
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	for {
		res, err := p.p.Acquire(ctx)
		if err != nil {
			switch {
			case errors.Is(err, context.DeadlineExceeded):
				p.waitTimeout.Add(1)
				return nil, fmt.Errorf("%w after %s (pool %s/%s, max %d)", ErrWaitTimeout, s.WaitTimeout, service, database, p.svc.MaxConnections)
			case errors.Is(err, puddle.ErrClosedPool):
				// Retired by a reload between lookup and acquire.
				if p, err = m.pool(service, database, backend); err != nil {
					return nil, err
				}
				continue
			}
			return nil, err
		}
		if c, ok := m.checkout(res, s); ok {
			c.Waited = time.Since(start)
			return c, nil
		}
	}
}

// markUsed records that a client used p's service on p's database: its
// pools keep their minimum from now on.
func (m *Manager) markUsed(p *pool) {
	m.mu.Lock()
	m.used[[2]string{p.key.Service, p.key.Database}] = true
	m.mu.Unlock()
	p.used.Store(true)
}

// checkout vets an acquired connection: past its lifetime, or idle longer
// than the health-check interval and failing validation, it is destroyed.
func (m *Manager) checkout(res *puddle.Resource[*Conn], s Settings) (*Conn, bool) {
	c := res.Value()
	c.res = res
	c.inUse.Store(true)
	if time.Now().After(c.expires) {
		res.Destroy()
		return nil, false
	}
	// A connection idle for a while may have been closed by its server
	// (restart, failover): check before handing it out, so that the
	// client's request is sent on a live connection instead.
	if res.IdleDuration() > time.Second && !c.alive() {
		m.log.Info("dropping server connection closed by the server",
			zap.String("backend", c.addr), zap.Uint32("pid", c.pid))
		res.Destroy()
		go m.notify(BackendEvent{Backend: c.addr, Failed: true})
		return nil, false
	}
	if res.IdleDuration() > s.HealthCheckInterval {
		vctx, vcancel := context.WithTimeout(context.Background(), s.ConnectTimeout)
		st, err := c.Exec(vctx, "")
		vcancel()
		if err != nil || st != 'I' {
			m.log.Info("dropping server connection that failed validation",
				zap.String("backend", c.addr), zap.Uint32("pid", c.pid), zap.Error(err))
			res.Destroy()
			return nil, false
		}
	}
	return c, true
}

// pool finds or creates the pool for a key.
func (m *Manager) pool(service, database, backend string) (*pool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	db, ok := m.cfg.Databases[database]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownDatabase, database)
	}
	svc, ok := m.cfg.Services[service]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownService, service)
	}
	if backend == "" {
		backend = m.primaryLocked(database, db)
	}
	key := Key{Service: service, Database: database, Backend: backend}
	if p, ok := m.pools[key]; ok {
		return p, nil
	}
	return m.newPoolLocked(key, db, svc)
}

func (m *Manager) newPoolLocked(key Key, db DatabaseConfig, svc ServiceConfig) (*pool, error) {
	p := &pool{mgr: m, key: key, db: db, svc: svc}
	p.used.Store(m.used[[2]string{key.Service, key.Database}])
	pp, err := puddle.NewPool(&puddle.Config[*Conn]{
		Constructor: func(ctx context.Context) (*Conn, error) {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.settings().ConnectTimeout)
			defer cancel()
			c, err := m.dialWithRetry(ctx, key.Backend, func(ctx context.Context) (*Conn, error) { return dial(ctx, p) })
			if err != nil {
				p.dialErrors.Add(1)
				return nil, &DialError{Backend: key.Backend, Err: err}
			}
			return c, nil
		},
		Destructor: func(c *Conn) {
			if c.backend != nil {
				c.backend.untrack(c)
			}
			_ = c.netConn.Close()
		},
		MaxSize: int32(svc.MaxConnections),
	})
	if err != nil {
		return nil, err
	}
	p.p = pp
	m.pools[key] = p
	return p, nil
}

// primaryLocked returns the primary of a database: the configured one
// unless a failover replaced it. m.mu must be held.
func (m *Manager) primaryLocked(name string, db DatabaseConfig) string {
	m.bmu.Lock()
	defer m.bmu.Unlock()
	if p, ok := m.primaries[name]; ok {
		return p
	}
	return db.Primary
}

// primaryOf returns the primary of a database.
func (m *Manager) primaryOf(name string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.primaryLocked(name, m.cfg.Databases[name])
}

// SetPrimary records that addr is now the primary of a database (after a
// failover, or when discovery finds a different primary than configured):
// it receives the minimum connections, and Acquire with backend "" uses it.
func (m *Manager) SetPrimary(database, addr string) {
	m.bmu.Lock()
	m.primaries[database] = addr
	m.bmu.Unlock()
}

// maintain trims idle and expired connections and opens up to the minimum.
func (m *Manager) maintain(ctx context.Context) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	// Every primary pool exists from the start so that its minimum is kept.
	for dbName, db := range m.cfg.Databases {
		primary := m.primaryLocked(dbName, db)
		for svcName, svc := range m.cfg.Services {
			key := Key{Service: svcName, Database: dbName, Backend: primary}
			if _, ok := m.pools[key]; !ok {
				if _, err := m.newPoolLocked(key, db, svc); err != nil {
					m.log.Error("creating pool", zap.Error(err))
				}
			}
		}
	}
	pools := make([]*pool, 0, len(m.pools))
	for _, p := range m.pools {
		pools = append(pools, p)
	}
	m.mu.Unlock()

	s := m.settings()
	for _, p := range pools {
		// Only primary pools keep a minimum; replica pools (and those of a
		// former primary) open on demand and shrink when idle.
		// A service nobody configured keeps none until a client uses it.
		keepMin := p.key.Backend == m.primaryOf(p.key.Database) && (!p.svc.MinOnDemand || p.used.Load())
		if m.Breaker(p.key.Backend) == BreakerOpen {
			continue // nothing to open, and idle ones were closed
		}
		idle := p.p.AcquireAllIdle()
		total := int(p.p.Stat().TotalResources())
		now := time.Now()
		for _, res := range idle {
			c := res.Value()
			if (total > p.svc.MinConnections || !keepMin) && (res.IdleDuration() > s.IdleTimeout || now.After(c.expires)) {
				res.Destroy()
				total--
				continue
			}
			res.ReleaseUnused()
		}
		for i := total; i < p.svc.MinConnections && keepMin; i++ {
			if ctx.Err() != nil {
				return
			}
			if err := p.p.CreateResource(ctx); err != nil {
				if !errors.Is(err, puddle.ErrNotAvailable) {
					m.log.Warn("opening minimum server connections",
						zap.String("service", p.key.Service), zap.String("database", p.key.Database),
						zap.String("backend", p.key.Backend), zap.Error(err))
				}
				break
			}
		}
	}
}

// Update applies a new configuration. Pools whose size, mode or server
// settings changed are retired: new clients get a fresh pool, and the old
// one closes as its connections come back. Limits apply at once.
func (m *Manager) Update(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	s := cfg.Pool
	m.cfgSettings.Store(&s)
	m.cfg = cfg
	for key, p := range m.pools {
		db, dbOK := cfg.Databases[key.Database]
		svc, svcOK := cfg.Services[key.Service]
		if dbOK && svcOK && sameDB(db, p.db) && svc == p.svc {
			continue
		}
		delete(m.pools, key)
		p.retire()
	}
	return nil
}

func sameDB(a, b DatabaseConfig) bool {
	if len(a.Replicas) != len(b.Replicas) {
		return false
	}
	for i := range a.Replicas {
		if a.Replicas[i] != b.Replicas[i] {
			return false
		}
	}
	return a.Primary == b.Primary && a.DBName == b.DBName && a.User == b.User &&
		a.Password == b.Password && a.ServerTLS == b.ServerTLS
}

// retire closes p in the background once its acquired connections return.
func (p *pool) retire() {
	if p.retired.Swap(true) {
		return
	}
	go p.p.Close()
}

// Stats returns a snapshot of every pool.
func (m *Manager) Stats() []Stat {
	m.mu.Lock()
	pools := make([]*pool, 0, len(m.pools))
	for _, p := range m.pools {
		pools = append(pools, p)
	}
	m.mu.Unlock()
	out := make([]Stat, 0, len(pools))
	for _, p := range pools {
		st := p.p.Stat()
		out = append(out, Stat{
			Key: p.key, Mode: p.svc.PoolMode, Max: p.svc.MaxConnections, Min: p.svc.MinConnections,
			Active: int(st.AcquiredResources()), Idle: int(st.IdleResources()),
			Opening: int(st.ConstructingResources()), Waiting: int(p.waiting.Load()),
			Acquires: st.AcquireCount(), WaitTimeout: p.waitTimeout.Load(), DialErrors: p.dialErrors.Load(),
		})
	}
	return out
}

// Close closes every pool, waiting for acquired connections to come back
// until ctx ends; what is still out then is closed by its holder.
func (m *Manager) Close(ctx context.Context) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	pools := m.pools
	m.pools = nil
	m.mu.Unlock()
	if m.stop != nil {
		m.stop()
		<-m.done
	}
	m.bmu.Lock()
	for k, c := range m.monitors {
		c.closeMonitor()
		delete(m.monitors, k)
	}
	m.bmu.Unlock()
	var wg sync.WaitGroup
	for _, p := range pools {
		wg.Add(1)
		go func() { defer wg.Done(); p.p.Close() }()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}
