// Package router decides where SQL goes: it classifies statements with the
// real PostgreSQL parser (pg_query_go) and keeps the topology of each
// database's backends, from which the proxy picks one.
//
// Classify reports, for a query text, whether every statement is provably
// read-only and which session-level state it touches: settings (SET,
// RESET), and state that cannot be replayed on another server (LISTEN,
// session advisory locks, temporary objects, cursors WITH HOLD, LOAD, SQL
// PREPARE) together with what clears it. Results are cached by query text in
// an LRU, so each distinct text is parsed once.
//
// Topology checks every backend through the Backends interface it is given
// (roles, WAL positions, replay lag), chooses the replica for a read,
// tracks read-your-writes positions, and runs failover: promotion of the
// most advanced replica, or discovery of one promoted by another manager,
// with the old primary fenced until READMIT.
//
// router holds no server connections of its own: the checks run on
// connections the caller's Backends provides.
package router
