// Package pgcluster starts and stops throwaway PostgreSQL clusters from the
// machine's PostgreSQL binaries, on free loopback ports, for pgshield's
// tests, `pgshield dev` and benchmarks. It can add streaming replicas,
// optionally synchronous, with pg_basebackup.
//
// A cluster lives in one directory: the data directory (data/), the server
// log (postgresql.log), the Unix socket, TLS files (certs/) and the data
// directories of its replicas. An existing data directory is reused, so a
// cluster can be stopped and started again across runs.
//
// PostgreSQL refuses to run as root, so when the process is root the
// binaries run as the "postgres" operating-system user, which owns the
// cluster directory.
//
// The clusters trade durability for speed (fsync=off) and are never meant
// to hold data that matters.
package pgcluster
