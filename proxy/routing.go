package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/internal/wire"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/router"
)

// Read routing.
//
// In transaction mode a client is routed each time it attaches to a
// server, that is, at the start of a batch: a simple Query, or the extended
// messages up to a Sync. The batch goes to a replica when every statement in
// it is proven read-only (router.Class.ReadOnly, which includes BEGIN READ
// ONLY), it carries no /* pgshield:primary */ hint, the service's reads
// setting allows it and the client has no write a replica has not yet
// replayed. An extended batch is only routed to a replica when it is
// already wholly buffered, so a write later in the same implicit
// transaction can never land on a replica. When a client still attached to
// a replica starts a batch that is not read-only, the proxy lets the
// replica answer everything outstanding first, then routes afresh.

// Reads settings of a service.
const (
	readsPrimary = "primary"
	readsReplica = "replica"
	readsAny     = "any"
)

// primaryHint in a statement's text keeps it on the primary.
var primaryHint = []byte("pgshield:primary")

// NewTopology builds the topology of the databases in pools' configuration
// and joins the two: a failed dial or dead connection triggers a health
// check, a backend declared down or fenced has its connections closed, and a
// new primary gets the primary's pool minimums.
func NewTopology(cfg router.TopologyConfig, pools *poolmgr.Manager, log *zap.Logger) *router.Topology {
	pc := pools.Config()
	cfg.HealthCheckInterval = pc.Pool.HealthCheckInterval
	cfg.CheckTimeout = pc.Pool.ConnectTimeout
	var dbs []router.DatabaseTopology
	for _, name := range sortedNames(pc.Databases) {
		db := pc.Databases[name]
		dbs = append(dbs, router.DatabaseTopology{Name: name, Primary: db.Primary, Replicas: db.Replicas})
	}
	topo := router.NewTopology(cfg, dbs, poolBackends{pools}, func(ev router.Event) {
		switch ev.Kind {
		case router.EventPrimaryChanged:
			pools.SetPrimary(ev.Database, ev.Addr)
		case router.EventDown, router.EventFenced:
			pools.CloseBackend(ev.Addr)
		}
	}, log)
	pools.OnEvent(func(ev poolmgr.BackendEvent) {
		if ev.Failed || ev.Breaker == poolmgr.BreakerOpen {
			topo.Report(ev.Backend)
		}
	})
	return topo
}

func sortedNames(m map[string]poolmgr.DatabaseConfig) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// poolBackends gives the router its checks through poolmgr.
type poolBackends struct{ m *poolmgr.Manager }

func (b poolBackends) Probe(ctx context.Context, database, addr string, fresh bool) (router.Sample, error) {
	p, err := b.m.Probe(ctx, database, addr, fresh)
	if err != nil {
		return router.Sample{}, err
	}
	return router.Sample{Started: p.Started, InRecovery: p.InRecovery, LSN: p.LSN,
		ReplayDelay: p.ReplayDelay, BlksHit: p.BlksHit, BlksRead: p.BlksRead}, nil
}

func (b poolBackends) Promote(ctx context.Context, database, addr string) error {
	return b.m.Promote(ctx, database, addr)
}

// readOnlyClass reports whether a statement may run on a replica.
func readOnlyClass(cl *router.Class, text []byte) bool {
	return cl != nil && cl.ReadOnly && cl.Pins == 0 && cl.SyntaxError == "" && !bytes.Contains(text, primaryHint)
}

// readOnlyBatchLocked reports whether the batch the current message starts
// runs only read-only statements. s.mu must be held.
func (s *session) readOnlyBatchLocked(typ byte, body []byte, class *router.Class) bool {
	if typ == 'Q' {
		return len(body) > 0 && readOnlyClass(class, body)
	}
	unnamed := s.unnamed.class
	if !s.readOnlyMsgLocked(typ, body, class, &unnamed) {
		return false
	}
	// The rest of the batch must already be here, up to its Sync.
	ahead := s.r.Ahead()
	for len(ahead) >= wire.HeaderLen {
		t := ahead[0]
		l := int(binary.BigEndian.Uint32(ahead[1:]))
		if l < 4 || len(ahead) < 1+l {
			return false
		}
		b := ahead[wire.HeaderLen : 1+l]
		ahead = ahead[1+l:]
		if t == 'S' {
			return true
		}
		var cl *router.Class
		if t == 'P' && s.srv.classifier != nil {
			if _, q, _, ok := wire.ParseFields(b); ok {
				cl = s.classifyText(q)
			}
		}
		if !s.readOnlyMsgLocked(t, b, cl, &unnamed) {
			return false
		}
	}
	return false
}

// readOnlyMsgLocked judges one extended-protocol message of a batch.
// unnamed tracks the class of the unnamed statement through the batch.
func (s *session) readOnlyMsgLocked(typ byte, body []byte, class *router.Class, unnamed **router.Class) bool {
	switch typ {
	case 'P':
		name, query, _, ok := wire.ParseFields(body)
		if !ok || !readOnlyClass(class, query) {
			return false
		}
		if len(name) == 0 {
			*unnamed = class
		}
		return true
	case 'B':
		_, stmt, _, ok := wire.BindStatement(body)
		if !ok {
			return false
		}
		if len(stmt) == 0 {
			return readOnlyClass(*unnamed, nil)
		}
		st, ok := s.stmts[string(stmt)]
		return ok && readOnlyClass(st.class, st.query)
	case 'D', 'E', 'C', 'H':
		return true // they run what Bind and Parse brought, judged there
	}
	return false
}

// routeLocked picks a replica for the batch the current message starts,
// or returns nil for the primary. s.mu must be held.
func (s *session) routeLocked(typ byte, body []byte, class *router.Class) *router.Node {
	if !s.routing || !s.readOnlyBatchLocked(typ, body, class) {
		return nil
	}
	return s.srv.topo.PickReplica(s.database, s.lastWrite, s.reads == readsAny)
}

// primary returns the primary's address, waiting during a failover up to
// wait_timeout.
func (s *session) primary(ctx context.Context) (string, error) {
	if s.srv.topo == nil {
		return "", nil
	}
	if addr, ok := s.srv.topo.HealthyPrimary(s.database); ok {
		return addr, nil
	}
	addr, err := s.srv.topo.Primary(ctx, s.database, s.srv.pools.Config().Pool.WaitTimeout)
	if errors.Is(err, router.ErrUnknownDatabase) {
		return "", nil // added by a reload: the configured primary
	}
	return addr, err
}

// attachRouted attaches the server the batch needs: the replica node, else
// the primary. A replica that cannot be reached is reported and the batch
// goes to the primary instead.
func (s *session) attachRouted(node *router.Node) error {
	if node != nil {
		err := s.attach(s.ctx, node.Addr(), node)
		if err == nil {
			return nil
		}
		var dialErr *poolmgr.DialError
		if !errors.As(err, &dialErr) && !errors.Is(err, poolmgr.ErrWaitTimeout) {
			return err
		}
		s.log.Info("replica unavailable; reading from the primary", zap.String("backend", node.Addr()), zap.Error(err))
	}
	addr, err := s.primary(s.ctx)
	if err != nil {
		return err
	}
	return s.attach(s.ctx, addr, nil)
}

// noteWriteLocked records that a message that may write goes to the
// attached primary, for read-your-writes.
func (s *session) noteWriteLocked(typ byte, class *router.Class) {
	if !s.routing || s.node != nil || s.wrote {
		return
	}
	switch typ {
	case 'Q', 'E', 'F':
		if class == nil || (!class.ReadOnly && !class.Transaction) {
			s.wrote = true
		}
	}
}

// mustReroute reports whether the client, still attached to a replica,
// starts a batch that must go elsewhere.
func (s *session) mustRerouteLocked(typ byte, body []byte, class *router.Class) bool {
	if s.node == nil || (s.lastSent != 'S' && s.lastSent != 'Q') {
		return false
	}
	switch typ {
	case 'Q', 'P', 'B', 'D', 'E':
	default:
		return false
	}
	return !s.readOnlyBatchLocked(typ, body, class)
}

// settleOutstanding lets the attached server answer everything sent to it,
// so that the next batch can be routed afresh. When it returns, the server
// is released unless the client is inside a transaction on it.
func (s *session) settleOutstanding() error {
	if s.needFlush {
		if err := s.flushServer(); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.life >= lifeClosing {
			return net.ErrClosed
		}
		if s.server == nil || s.queue.empty() {
			return nil
		}
		if s.reader != readerNone {
			s.idle.Wait()
			continue
		}
		handoff := s.readInlineLocked()
		s.mu.Lock()
		if handoff {
			s.startPumpLocked()
		}
	}
}
