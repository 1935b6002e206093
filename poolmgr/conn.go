package poolmgr

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/puddle/v2"

	"github.com/pgshield/pgshield/internal/wire"
)

// Server-side buffers. Each server connection owns its reader and writer for
// its whole life, so the memory is per server, not per client.
const (
	serverReadBuf  = 16 << 10
	serverWriteBuf = 16 << 10
)

// Conn is one server connection. While acquired it belongs to exactly one
// client session; the fields below are owned by that holder.
type Conn struct {
	pool    *pool
	res     *puddle.Resource[*Conn]
	backend *backend     // set once dialled through a backend's breaker
	tcp     *net.TCPConn // under TLS, for the liveness check

	netConn   net.Conn
	br        *bufio.Reader
	r         *wire.Reader
	w         *bufio.Writer
	addr      string
	pid       uint32
	secretKey []byte
	params    map[string]string
	created   time.Time
	expires   time.Time
	inUse     atomic.Bool  // acquired by a client
	released  atomic.Int64 // unix nanoseconds of the last Release

	// State is free for the holder to record what it applied to this
	// server (the proxy keeps the client settings last replayed here). It is
	// cleared when the connection is reset.
	State string
	// Ext is free for the holder to keep per-server state that lives as
	// long as the connection (the proxy keeps the statements prepared here).
	Ext any
	// Waited is how long the Acquire that returned it waited (zero when
	// an idle connection was there).
	Waited time.Duration
}

// Reader returns the framed reader of server messages.
func (c *Conn) Reader() *wire.Reader { return c.r }

// Writer returns the buffered writer toward the server.
func (c *Conn) Writer() *bufio.Writer { return c.w }

// NetConn returns the underlying connection (for deadlines and Close).
func (c *Conn) NetConn() net.Conn { return c.netConn }

// Backend returns the server address, host:port.
func (c *Conn) Backend() string { return c.addr }

// PID returns the server process id.
func (c *Conn) PID() uint32 { return c.pid }

// Params returns the ParameterStatus values the server reported. The map
// must not be modified.
func (c *Conn) Params() map[string]string { return c.params }

// Key returns the pool this connection belongs to.
func (c *Conn) Key() Key { return c.pool.key }

// Release returns the connection to its pool. The caller promises the
// server is idle (ReadyForQuery 'I'), nothing is in flight and session
// state is reset as the pool mode requires.
func (c *Conn) Release() {
	if c.w.Buffered() > 0 || c.r.Buffered() > 0 {
		c.Destroy()
		return
	}
	c.r.Release()
	c.inUse.Store(false)
	c.released.Store(time.Now().UnixNano())
	c.res.Release()
}

// Destroy closes the connection and removes it from its pool.
func (c *Conn) Destroy() {
	c.res.Destroy()
}

// Cancel asks the server to cancel whatever this connection is running, on
// a separate connection as the protocol requires.
func (c *Conn) Cancel(ctx context.Context) error {
	d := net.Dialer{Timeout: c.pool.mgr.settings().ConnectTimeout}
	nc, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return fmt.Errorf("cancel request to %s: %w", c.addr, err)
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	buf, err := (&pgproto3.CancelRequest{ProcessID: c.pid, SecretKey: c.secretKey}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := nc.Write(buf); err != nil {
		return fmt.Errorf("cancel request to %s: %w", c.addr, err)
	}
	// The server closes the connection once it has read the request;
	// waiting for that makes the cancel effective before we return.
	var one [1]byte
	_, _ = nc.Read(one[:])
	return nil
}

// Exec runs sql with the simple query protocol and reads up to
// ReadyForQuery. It returns a *pgconn.PgError if the server reported one and
// the final transaction status. ParameterStatus messages update Params.
func (c *Conn) Exec(ctx context.Context, sql string) (txStatus byte, err error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.netConn.SetDeadline(dl)
		defer func() { _ = c.netConn.SetDeadline(time.Time{}) }()
	}
	buf, err := (&pgproto3.Query{String: sql}).Encode(c.w.AvailableBuffer())
	if err != nil {
		return 0, err
	}
	if _, err := c.w.Write(buf); err != nil {
		return 0, err
	}
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	return c.ReadUntilReady()
}

// ReadUntilReady consumes server messages up to and including
// ReadyForQuery, keeping the first error.
func (c *Conn) ReadUntilReady() (txStatus byte, err error) {
	var pgErr error
	for {
		typ, _, err := c.r.Next()
		if err != nil {
			return 0, err
		}
		switch typ {
		case 'Z':
			body, err := c.r.Body()
			if err != nil {
				return 0, err
			}
			if len(body) != 1 {
				return 0, errors.New("malformed ReadyForQuery from server")
			}
			return body[0], pgErr
		case 'E':
			body, err := c.r.Body()
			if err != nil {
				return 0, err
			}
			var msg pgproto3.ErrorResponse
			if err := msg.Decode(body); err != nil {
				return 0, err
			}
			if pgErr == nil {
				pgErr = pgconn.ErrorResponseToPgError(&msg)
			}
		case 'S':
			body, err := c.r.Body()
			if err != nil {
				return 0, err
			}
			var msg pgproto3.ParameterStatus
			if err := msg.Decode(body); err == nil {
				c.SetParam(msg.Name, msg.Value)
			}
		}
	}
}

// QueryRow runs sql with the simple query protocol and returns the text
// values of its first row (nil for NULL), reading up to ReadyForQuery.
func (c *Conn) QueryRow(ctx context.Context, sql string) ([][]byte, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.netConn.SetDeadline(dl)
		defer func() { _ = c.netConn.SetDeadline(time.Time{}) }()
	}
	buf, err := (&pgproto3.Query{String: sql}).Encode(c.w.AvailableBuffer())
	if err != nil {
		return nil, err
	}
	if _, err := c.w.Write(buf); err != nil {
		return nil, err
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	var row [][]byte
	var pgErr error
	for {
		typ, _, err := c.r.Next()
		if err != nil {
			return nil, err
		}
		switch typ {
		case 'D':
			body, err := c.r.Body()
			if err != nil {
				return nil, err
			}
			if row == nil {
				var dr pgproto3.DataRow
				if err := dr.Decode(body); err != nil {
					return nil, err
				}
				row = make([][]byte, len(dr.Values))
				for i, v := range dr.Values {
					if v != nil {
						row[i] = append([]byte{}, v...)
					}
				}
			}
		case 'E':
			body, err := c.r.Body()
			if err != nil {
				return nil, err
			}
			var msg pgproto3.ErrorResponse
			if err := msg.Decode(body); err != nil {
				return nil, err
			}
			if pgErr == nil {
				pgErr = pgconn.ErrorResponseToPgError(&msg)
			}
		case 'Z':
			if pgErr != nil {
				return nil, pgErr
			}
			if row == nil {
				return nil, errors.New("query returned no row")
			}
			return row, nil
		}
	}
}

// SetParam records a ParameterStatus the holder saw pass through.
func (c *Conn) SetParam(name, value string) {
	if c.params[name] == value {
		return
	}
	// Copy on write: the map handed out by Params may be read elsewhere.
	m := make(map[string]string, len(c.params)+1)
	for k, v := range c.params {
		m[k] = v
	}
	m[name] = value
	c.params = m
}

// dial opens and authenticates a server connection for p.
func dial(ctx context.Context, p *pool) (*Conn, error) {
	cfg, err := serverConfig(p.key.Database, p.db, p.key.Backend)
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = p.mgr.settings().ConnectTimeout
	var raw *takeoverConn
	cfg.DialFunc = dialTakeover(cfg.ConnectTimeout, &raw)
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", p.key.Backend, err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, err
	}
	if err := raw.takeover(ctx); err != nil {
		hc.Conn.Close()
		return nil, fmt.Errorf("connect to %s: %w", p.key.Backend, err)
	}
	params := make(map[string]string, len(hc.ParameterStatuses))
	for k, v := range hc.ParameterStatuses {
		params[k] = v
	}
	// Reads bypass the takeover wrapper once nothing is left in it (it is
	// only in the way of plain TCP; TLS reads through it below tls.Conn).
	src := hc.Conn
	if hc.Conn == net.Conn(raw) && raw.drained() {
		src = raw.Conn
	}
	br := bufio.NewReaderSize(src, serverReadBuf)
	now := time.Now()
	return &Conn{
		pool:      p,
		netConn:   hc.Conn,
		br:        br,
		r:         wire.NewReader(br, 0),
		w:         bufio.NewWriterSize(hc.Conn, serverWriteBuf),
		addr:      p.key.Backend,
		pid:       hc.PID,
		secretKey: append([]byte(nil), hc.SecretKey...),
		params:    params,
		tcp:       tcpOf(raw),
		created:   now,
		expires:   now.Add(jitter(p.mgr.settings().MaxLifetime)),
	}, nil
}

// connString renders libpq keyword/value pairs, quoting every value, and
// leaves out empty ones.
func connString(kv map[string]string) string {
	var b strings.Builder
	for _, k := range sortedKeys(kv) {
		v := kv[k]
		if v == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteString("='")
		b.WriteString(strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v))
		b.WriteByte('\'')
	}
	return b.String()
}

// jitter shortens d by up to 10 % so connections opened together do not
// all expire together.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d - time.Duration(rand.Int64N(int64(d)/10+1))
}
