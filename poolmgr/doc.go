// Package poolmgr owns pgshield's server connections.
//
// It dials PostgreSQL through pgconn (TLS including verify-full, SCRAM and
// md5 server authentication), takes the raw connection over with Hijack, and
// keeps the connections in one pool per (service, database, backend). A pool
// has a maximum and a minimum size, a FIFO wait queue bounded by the wait
// timeout, idle and lifetime limits, and validation of connections that sat
// idle longer than the health-check interval.
//
// poolmgr never parses SQL and never talks to clients. The proxy package
// acquires a Conn, forwards bytes over it, and hands it back with Release
// only at a safe point (ReadyForQuery, idle, session state reset) or
// Destroy otherwise.
package poolmgr
