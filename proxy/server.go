package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/metrics"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// Pools is what the proxy needs from poolmgr.
type Pools interface {
	Acquire(ctx context.Context, service, database, backend string) (*poolmgr.Conn, error)
	Service(name string) (poolmgr.ServiceConfig, bool)
	Config() poolmgr.Config
}

// Server accepts clients and runs their sessions.
type Server struct {
	log   *zap.Logger
	pools Pools
	rt    atomic.Pointer[runtime]

	writers sync.Pool // *bufio.Writer toward clients, lent while a server is attached
	readers sync.Pool // *bufio.Reader from clients, given back while a client is parked

	// parker holds parked idle clients (park.go), started on first use.
	parkOnce sync.Once
	parker   atomic.Pointer[parker]

	mu        sync.Mutex // guards the fields below
	listeners []net.Listener
	sessions  map[uint32]*session
	nextID    uint32
	draining  bool
	params    map[string]map[string]string // database -> ParameterStatus of a server
	// endedLookups are the parse cache lookups of sessions that ended.
	endedLookups uint64

	hooks      atomic.Pointer[Hooks]       // nil: none (SetHooks)
	policy     atomic.Pointer[policyState] // nil: none (SetPolicy)
	enc        atomic.Pointer[encState]    // nil: no column encryption (SetEncryption)
	catalogs   *catalogs                   // tables' columns, for the policy
	classifier *router.Classifier          // nil when classification is off
	topo       *router.Topology            // nil: every client goes to the configured primary
	metrics    *metrics.Metrics            // nil: nothing recorded
	queryStats *metrics.QueryStats
	statsOff   atomic.Bool // disable_stats, changed by Reload
	// waits are the pool wait sketches by pool; ended the counters of
	// sessions that ended, by service and database (guarded by mu).
	waits map[poolmgr.Key]*metrics.Latency
	ended map[[2]string]*Traffic

	pauseMu sync.Mutex
	paused  map[string]chan struct{} // database ("" all) → closed on RESUME
	pausing atomic.Int32             // len(paused), read without the lock

	reapOnce sync.Once
	reapStop chan struct{}

	clients atomic.Int64
	pinned  atomic.Int64
	wg      sync.WaitGroup // one per connection goroutine
}

// New validates cfg and returns a Server. pools provides server connections.
func New(cfg Config, pools Pools, topo *router.Topology, log *zap.Logger) (*Server, error) {
	s := &Server{log: log, pools: pools, topo: topo, sessions: make(map[uint32]*session), params: make(map[string]map[string]string),
		waits: make(map[poolmgr.Key]*metrics.Latency), ended: make(map[[2]string]*Traffic),
		paused: make(map[string]chan struct{}), reapStop: make(chan struct{})}
	d := cfg.WithDefaults()
	s.queryStats = metrics.NewQueryStats(d.QueryStatsSize, 200, d.SlowQueryThreshold, log.Named("slow"))
	if err := s.Reload(cfg); err != nil {
		return nil, err
	}
	cfg = s.rt.Load().cfg
	if !cfg.DisableClassification {
		s.classifier = router.New(router.Config{ParseCacheSize: cfg.ParseCacheSize})
	}
	s.writers.New = func() any { return bufio.NewWriterSize(nil, 16<<10) }
	s.readers.New = func() any { return bufio.NewReaderSize(nil, clientReadBuf) }
	conn, _ := pools.(connector)
	s.catalogs = newCatalogs(conn, log.Named("catalog"))
	return s, nil
}

// Reload validates cfg and swaps it in: new logins use the new users and
// limits at once, and the parse cache is resized to parse_cache_size.
// listen and disable_classification keep their values of New. On error
// nothing changes.
func (s *Server) Reload(cfg Config) error {
	cfg = cfg.WithDefaults()
	services := make(map[string]bool)
	for name := range s.pools.Config().Services {
		services[name] = true
	}
	rt, err := compile(cfg, services)
	if err != nil {
		return err
	}
	if old := s.rt.Load(); old != nil && old.cfg.Listen != cfg.Listen {
		s.log.Warn("listen address changes take effect on restart", zap.String("listen", old.cfg.Listen))
	}
	s.rt.Store(rt)
	s.statsOff.Store(cfg.DisableStats)
	s.queryStats.SetThreshold(cfg.SlowQueryThreshold)
	// The classifier is nil in New's first Reload and with classification
	// off (which takes a restart to change).
	if s.classifier != nil {
		s.classifier.Resize(cfg.ParseCacheSize)
	}
	return nil
}

// ListenAndServe listens on the configured address and serves until
// Shutdown.
func (s *Server) ListenAndServe() error {
	ln, err := net.Listen("tcp", s.rt.Load().cfg.Listen)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// Serve accepts clients on ln until Shutdown closes it.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		ln.Close()
		return net.ErrClosed
	}
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	s.reapOnce.Do(func() { go s.reap(s.reapStop) })
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			draining := s.draining
			s.mu.Unlock()
			if draining {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		s.wg.Add(1)
		go s.serveConn(nc)
	}
}

// serveConn runs one client connection from its first byte to its close
// (one s.wg count each). Once logged in, the session owns the connection
// and ends it (connDone): its goroutine may end before, when it is parked.
func (s *Server) serveConn(nc net.Conn) {
	handed := false
	defer func() {
		if !handed {
			nc.Close()
			s.wg.Done()
		}
	}()
	rt := s.rt.Load()
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		_ = tc.SetKeepAlive(true)
	}
	deadline := time.Now().Add(rt.cfg.ClientLoginTimeout)
	_ = nc.SetDeadline(deadline)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	br := bufio.NewReaderSize(nc, clientReadBuf)
	sc := &startupConn{nc: nc, br: br, r: wire.NewReader(br, 64<<10)}
	req, err := sc.negotiate(ctx, rt.tls, rt.cfg.TLS.Client)
	if err != nil {
		s.refuse(sc, err)
		return
	}
	if req.cancel != nil {
		s.cancel(req.cancel)
		return
	}
	if n := s.clients.Add(1); n > int64(rt.cfg.MaxClientConnections) {
		s.clients.Add(-1)
		s.refuse(sc, fatalf(codeTooManyConnections, "sorry, too many clients already (max_client_connections %d)", rt.cfg.MaxClientConnections))
		return
	}
	sess, err := s.login(ctx, sc, req, rt)
	if err != nil {
		s.clients.Add(-1)
		s.refuse(sc, err)
		return
	}
	_ = sc.nc.SetDeadline(time.Time{})
	handed = true
	sess.run()
}

// connDone ends a logged-in client's connection, once its session has
// ended.
func (s *Server) connDone(nc net.Conn) {
	nc.Close()
	s.clients.Add(-1)
	s.wg.Done()
}

// refuse tells a client why it cannot go on, when a reply is possible.
func (s *Server) refuse(sc *startupConn, err error) {
	var pe *pgError
	if !errors.As(err, &pe) {
		s.log.Debug("client connection ended during startup", zap.Error(err))
		return
	}
	if pe.severity == "ERROR" {
		pe = &pgError{severity: "FATAL", code: pe.code, message: pe.message, detail: pe.detail, hint: pe.hint}
	}
	level := zap.InfoLevel
	if sc.probe {
		level = zap.DebugLevel // a readiness probe: refused by design, every few seconds
	}
	s.log.Log(level, "client refused", zap.String("code", pe.code), zap.String("reason", pe.message),
		zap.String("remote", sc.nc.RemoteAddr().String()), zap.Bool("probe", sc.probe))
	_ = sc.nc.SetWriteDeadline(time.Now().Add(time.Second))
	_ = sc.send(pe.response())
}

// identity is the user and database a StartupMessage names; the database
// defaults to the user, as in PostgreSQL.
func identity(params map[string]string) (user, database string, err error) {
	user = params["user"]
	if user == "" {
		return "", "", fatalf(codeInvalidAuthSpec, "no PostgreSQL user name specified in startup packet")
	}
	database = params["database"]
	if database == "" {
		database = user
	}
	return user, database, nil
}

// login looks the user up and runs the configured authentication.
func (c *startupConn) login(rt *runtime, userName string) (*user, error) {
	u, ok := rt.users[userName]
	if !ok {
		return nil, fatalf(codeInvalidAuthSpec, "role %q is not a pgshield user", userName)
	}
	if err := c.authenticate(u, rt.cfg.AuthType); err != nil {
		return nil, err
	}
	return u, nil
}

// login authenticates the client and builds its session.
func (s *Server) login(ctx context.Context, sc *startupConn, req *startupRequest, rt *runtime) (_ *session, err error) {
	params := req.params
	userName, database, err := identity(params)
	if err != nil {
		return nil, err
	}
	settings, err := clientSettings(params)
	if err != nil {
		return nil, err
	}
	u, err := sc.login(rt, userName)
	if err != nil {
		return nil, err
	}
	if u.Admin && !u.ClientLogin {
		// After the password check, as on the admin port, so that nobody
		// learns who is an admin without the password.
		e := fatalf(codeInvalidAuthSpec, "user %q is an admin console user and cannot log in on the client port", userName)
		e.hint = "connect to the admin console's port, or set client_login: true on the user to allow both"
		return nil, e
	}
	cfg := s.pools.Config()
	if _, ok := cfg.Databases[database]; !ok {
		return nil, fatalf(codeInvalidCatalog, "database %q does not exist", database)
	}
	service := u.Service
	if service == "" {
		if _, ok := cfg.Services[params["application_name"]]; ok {
			service = params["application_name"]
		} else {
			service = cfg.DefaultService
		}
	}
	svc, ok := s.pools.Service(service)
	if !ok {
		return nil, fatalf(codeInvalidAuthSpec, "service %q is not configured", service)
	}
	sess := &session{
		srv: s, conn: sc.nc, br: sc.br, r: sc.r,
		user: userName, database: database, service: service, mode: svc.PoolMode,
		settings: settings, connectedAt: time.Now(), txStatus: 'I',
		remote: sc.nc.RemoteAddr().String(), tls: sc.isTLS, gone: make(chan struct{}),
	}
	sess.ctx, sess.cancel = context.WithCancel(context.Background())
	sess.idle.L = &sess.mu
	sess.ins = s.newInstruments(service, database)
	defer func() {
		if err != nil {
			s.releaseInstruments(sess.ins)
		}
	}()
	if s.topo != nil && svc.PoolMode == poolmgr.ModeTransaction && s.classifier != nil &&
		svc.Reads != readsPrimary && len(cfg.Databases[database].Replicas) > 0 {
		sess.routing, sess.reads = true, svc.Reads
	}
	sess.startupSQL, _ = settingsSQL(settings)
	sess.settingsSQL, sess.settingsKey = sess.startupSQL, sess.startupSQL
	sess.r.SetMax(rt.cfg.MaxMessageSize)
	sess.log = s.log.WithLazy(zap.String("user", userName), zap.String("database", database), zap.String("service", service))

	// The client is told the ParameterStatus of a real server. In session
	// mode its server is attached now; otherwise a cached copy serves.
	serverParams := s.cachedParams(database)
	if svc.PoolMode == poolmgr.ModeSession || serverParams == nil {
		addr, err := sess.primary(ctx)
		if err == nil {
			err = sess.attach(ctx, addr, nil)
		}
		if err != nil {
			return nil, toPgError(err)
		}
		serverParams = sess.server.Params()
		s.cacheParams(database, serverParams)
		if svc.PoolMode != poolmgr.ModeSession {
			sess.detachIdle()
		}
	}
	var secret [4]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, err
	}
	sess.secret = secret[:]
	if err := s.register(sess); err != nil {
		sess.close()
		return nil, err
	}
	msgs := []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}}
	if req.minor > 0 {
		msgs = append(msgs, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unsupportedPQOptions(params)})
	}
	for _, p := range reportedParams(serverParams, settings) {
		msgs = append(msgs, &pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	msgs = append(msgs, &pgproto3.BackendKeyData{ProcessID: sess.id, SecretKey: sess.secret}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := sc.send(msgs...); err != nil {
		s.unregister(sess)
		sess.close()
		return nil, err
	}
	sess.log.Debug("client logged in")
	return sess, nil
}

// reportedParams merges the server's ParameterStatus with the client's own
// settings for the same parameters, as the server would report them after
// applying the settings.
func reportedParams(server, client map[string]string) [][2]string {
	out := make([][2]string, 0, len(server))
	for name, v := range server {
		if cv, ok := client[strings.ToLower(name)]; ok {
			v = cv
		}
		out = append(out, [2]string{name, v})
	}
	return out
}

func (s *Server) cachedParams(db string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.params[db]
}

func (s *Server) cacheParams(db string, p map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.params[db] = p
}

// register gives sess an id (its BackendKeyData process id).
func (s *Server) register(sess *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return fatalf(codeAdminShutdown, "pgshield is shutting down")
	}
	for {
		s.nextID++
		if s.nextID == 0 {
			continue
		}
		if _, used := s.sessions[s.nextID]; !used {
			break
		}
	}
	sess.id = s.nextID
	if sess.ins != nil {
		// Spread sessions over the stripes of the shared statistics
		// (again after each park: instrumentsLocked).
		sess.ins.handles.Stripe = int(sess.id)
	}
	// Under s.mu: whoever finds the session in s.sessions sees its logger.
	sess.log = sess.log.WithLazy(zap.Uint32("client", sess.id))
	s.sessions[sess.id] = sess
	return nil
}

func (s *Server) unregister(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[sess.id] == sess {
		delete(s.sessions, sess.id)
		// Under s.mu, as scrapes sum the live sessions, so the lookup
		// counter never goes back.
		s.endedLookups += sess.lookups.Load()
		s.releaseInstruments(sess.ins)
		k := [2]string{sess.service, sess.database}
		t := s.ended[k]
		if t == nil {
			t = &Traffic{Service: sess.service, Database: sess.database}
			s.ended[k] = t
		}
		t.add(&sess.stats)
	}
}

// cancel forwards a client's CancelRequest to the server connection serving
// that client now, if any, and to nothing else.
func (s *Server) cancel(req *pgproto3.CancelRequest) {
	s.mu.Lock()
	sess := s.sessions[req.ProcessID]
	s.mu.Unlock()
	if sess == nil || len(req.SecretKey) != len(sess.secret) || binary.BigEndian.Uint32(req.SecretKey) != binary.BigEndian.Uint32(sess.secret) {
		s.log.Debug("cancel request for an unknown client", zap.Uint32("client", req.ProcessID))
		return
	}
	sess.cancelRunning()
}

// ClientCount returns the number of connected clients.
func (s *Server) ClientCount() int { return int(s.clients.Load()) }

// Shutdown stops accepting clients, ends idle sessions at once, lets
// running transactions finish until ctx ends, then closes what is left.
// Clients are told 57P01.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.draining {
		close(s.reapStop)
	}
	s.draining = true
	for _, ln := range s.listeners {
		ln.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		sess.drain()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	defer s.stopParker()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	sessions = sessions[:0]
	for _, sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		sess.forceClose(fatalf(codeAdminShutdown, "terminating connection: pgshield shutdown timeout reached"))
	}
	select {
	case <-done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%d client connections did not close", len(sessions))
	}
}
