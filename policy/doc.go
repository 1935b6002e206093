// Package policy judges the statements pgshield forwards: validation rules
// on the values written to columns (types, required, lengths, ranges,
// patterns, enums, CEL expressions), rules over a written row, allowed
// status transitions, and a firewall per service (statement kinds,
// functions, DELETE/UPDATE without WHERE, several statements in one Query,
// size, and an allow-list of statement fingerprints).
//
// It does no I/O. The proxy gives it the parse tree of a statement, the
// catalog (columns of a table), the values of literals, Bind parameters
// and COPY rows; it answers accept, or a Violation with the SQLSTATE and
// the message the client is told. Rules are compiled once, when the
// policy file is loaded, never per statement. The policy also compiles to
// SQL (CHECK constraints and trigger functions) that enforces the same
// rules inside PostgreSQL, for what the proxy cannot see.
package policy
