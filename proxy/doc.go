// Package proxy is pgshield's client side and message loop.
//
// It owns the listener, the startup phase (SSLRequest, GSSENCRequest,
// CancelRequest, StartupMessage), client authentication (SCRAM-SHA-256, md5,
// trust), and one session per client that forwards the PostgreSQL protocol
// to server connections borrowed from poolmgr. docs/architecture.md walks a
// Query, an extended batch and a COPY through it.
//
// # Stages and drivers
//
// A session is two stages fed frames. The request stage (request.go:
// planLocked, with stmts.go) turns each client frame into what is sent to
// the server and what the server owes back (an entry of the
// expected-response queue). The response stage (response.go: respond and
// settleReady) handles each server frame against the head of the queue and
// returns what to do with it. Neither does I/O. Their drivers do: forward
// (request.go) reads the client's frame, attaches a server when the
// message needs one and writes what the stage planned; the reader
// (pump.go: readServer) reads the server's frames and writes what the
// stage returned. Hooks (hooks.go) are called by the stages at named
// events; so are the proxy's own statistics (insight.go), retries
// (retry.go) and session-state tracking (effects.go).
//
// # Goroutines and ownership
//
// Each session has a client goroutine (session.run). It alone reads the
// client, runs the request stage and writes to the server. The reader is
// whoever reads the server's answers: the client goroutine itself while the
// client waits for a ReadyForQuery (readInlineLocked), or a pump goroutine
// (session.pump) for pipelines, Flush, COPY IN, session mode and pinned
// sessions; session.reader says which. While a reader runs, only it writes
// to the client; while none does, only the client goroutine does
// (writeDirect). The one exception to "only the client goroutine writes to
// the server" is a reader sending a retried Query again, after claiming
// the write side (session.writing) so that the client goroutine waits.
//
// Other goroutines (KILL, the limits' reaper, shutdown, cancel requests)
// never write to the client: they record why the session ends
// (session.end) and wake the goroutine that may write, which tells the
// client. They may send a cancel request for the attached server, holding
// session.mu so that the server cannot change hands meanwhile. Fields
// shared between goroutines are guarded by session.mu; the response
// stage's own state (session.resp) belongs to the reader of the moment,
// handed over under session.mu.
//
// # Safe release
//
// Every forwarded message that the server answers (Query, Parse, Bind,
// Describe, Execute, Close, Sync, FunctionCall) appends an entry to the
// queue; the response stage pops entries as responses arrive, and after an
// ErrorResponse in the extended protocol drops the entries the server will
// skip up to Sync, as PostgreSQL does. A server goes back to its pool
// (release.go, the one place) only when ReadyForQuery reports an idle
// transaction, the queue is empty, the session is not pinned and nobody is
// writing to the server; a session that ends returns it rolled back (and
// reset in session mode) or destroys it. The same queue lets the proxy
// answer a message itself at the right place in the stream.
//
// Messages are framed by internal/wire and copied through without decoding;
// only the fields the proxy must understand are read, in place, by
// internal/wire's accessors (a query's text, a statement name, Bind
// parameters, DataRow columns, a ReadyForQuery status, an error's
// SQLSTATE), and what the proxy sends itself is encoded with pgproto3.
package proxy
