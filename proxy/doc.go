// Package proxy is pgshield's client side and message loop.
//
// It owns the listener, the startup phase (SSLRequest, GSSENCRequest,
// CancelRequest, StartupMessage), client authentication (SCRAM-SHA-256, md5,
// trust), and one session per client that forwards the PostgreSQL protocol
// to server connections borrowed from poolmgr.
//
// # Goroutines and ownership
//
// Each session has one goroutine reading the client (session.run). Server
// messages are forwarded to the client by session.pumpLoop, run either by
// the client goroutine itself when the client waits for ReadyForQuery
// (afterWrite), or by a second goroutine (session.pump) for pipelines,
// Flush, COPY IN, session mode and pinned sessions. The client goroutine is
// the only writer toward the server; whoever runs pumpLoop is the only
// writer toward the client. Fields shared by the two are guarded by
// session.mu.
//
// # Safe release
//
// Every forwarded message that the server answers (Query, Parse, Bind,
// Describe, Execute, Close, Sync, FunctionCall) appends an entry to the
// session's expected-response queue; the pump pops entries as responses
// arrive, and after an ErrorResponse in the extended protocol drops the
// entries the server will skip up to Sync, as PostgreSQL does. A server is
// released (transaction mode) only when ReadyForQuery reports an idle
// transaction, the queue is empty and the client goroutine is not in the
// middle of a write. The same queue lets the proxy answer a message itself
// at the right place in the stream.
//
// Messages are framed by internal/wire and copied through without decoding;
// only the fields the proxy must understand are read, in place (a query's
// text, a statement name, a ReadyForQuery status, an error's SQLSTATE), and
// what the proxy sends itself is encoded with pgproto3.
//
// # Ending a session
//
// Whoever writes to the client last tells it why its session ends
// (session.endMsg, once): the client goroutine when no pump runs, else the
// pump. KILL cancels a running statement on its server first; the
// statement's answer then ends the session in place of its ReadyForQuery,
// so a killed statement cannot commit later.
package proxy
