// Package router classifies SQL with the real PostgreSQL parser
// (pg_query_go) and will choose backends from that classification.
//
// Classify reports, for a query text, whether every statement is provably
// read-only and which session-level state it touches: settings (SET,
// RESET), and state that cannot be replayed on another server (LISTEN,
// session advisory locks, temporary objects, cursors WITH HOLD, LOAD, SQL
// PREPARE) together with what clears it. Results are cached by query text in
// an LRU, so each distinct text is parsed once.
//
// router holds no server connections and does no I/O.
package router
