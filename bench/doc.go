// Command bench measures pgshield side by side with PgBouncer and direct
// PostgreSQL, in one run on one machine, and reports ratios. It starts its
// own PostgreSQL (internal/pgcluster), PgBouncer and pgshield on loopback;
// its backup scenario sets pgshield's backups beside pgBackRest's.
//
//	go run ./bench [-duration 10s] [-rounds 3] [-out bench/RESULTS.md]
//	go run ./bench -only poolers|failover|stats|policy|encryption|backup   (one scenario, its section printed)
//	go run ./bench -only backup [-backup-scale 50] [-backup-rounds 3] [-backup-load 20s]
//	go run ./bench -baseline bin/pgshield-baseline   (an earlier pgshield as a third target)
//
// Nothing imports this package; timing goals live here, never in tests.
package main
