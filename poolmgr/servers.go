package poolmgr

import (
	"cmp"
	"slices"
	"time"
)

// ServerInfo is one open server connection of a pool, for SHOW SERVERS.
type ServerInfo struct {
	Key
	PID       uint32
	Created   time.Time
	InUse     bool
	IdleSince time.Time // when it last went back to its pool; zero if never
}

// Servers lists the server connections of every pool (not the health
// check connections), by pool and process id.
func (m *Manager) Servers() []ServerInfo {
	m.bmu.Lock()
	backends := make([]*backend, 0, len(m.backends))
	for _, b := range m.backends {
		backends = append(backends, b)
	}
	m.bmu.Unlock()
	var out []ServerInfo
	for _, b := range backends {
		b.mu.Lock()
		for c := range b.conns {
			if c.pool == nil || c.pool.key.Service == monitorService {
				continue
			}
			si := ServerInfo{Key: c.pool.key, PID: c.pid, Created: c.created, InUse: c.inUse.Load()}
			if ns := c.released.Load(); ns != 0 {
				si.IdleSince = time.Unix(0, ns)
			}
			out = append(out, si)
		}
		b.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b ServerInfo) int {
		if c := a.Key.Compare(b.Key); c != 0 {
			return c
		}
		return cmp.Compare(a.PID, b.PID)
	})
	return out
}

// Compare orders keys by service, database, then backend.
func (k Key) Compare(o Key) int {
	return cmp.Or(cmp.Compare(k.Service, o.Service), cmp.Compare(k.Database, o.Database), cmp.Compare(k.Backend, o.Backend))
}
