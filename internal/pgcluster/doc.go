// Package pgcluster starts and stops throwaway PostgreSQL clusters from the
// machine's PostgreSQL binaries, on free loopback ports, for tests,
// `pgshield dev` and benchmarks. It can add streaming replicas (optionally
// synchronous) with pg_basebackup.
//
// PostgreSQL refuses to run as root, so when the process is root the
// binaries run as the "postgres" operating-system user and the cluster
// directories are owned by it.
package pgcluster
