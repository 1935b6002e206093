package admin

// Statistics queries behind SHOW HEALTH, SHOW LOCKS, SHOW TABLES and
// SHOW INDEXES. Each runs on one database's primary, on a connection from
// poolmgr.Manager.Connect; the console runs it once per configured database
// (Source.DatabaseQuery) and prefixes a database column. All work on
// PostgreSQL 12 to 17.
//
//	command        SQL         run it with
//	SHOW HEALTH    sqlHealth   queryStats(ctx, conn, sqlHealth)
//	SHOW LOCKS     sqlLocks    queryStats(ctx, conn, sqlLocks), or LocksResult(ctx, conn)
//	SHOW TABLES    sqlTables   queryStats(ctx, conn, sqlTables)
//	SHOW INDEXES   sqlIndexes  queryStats(ctx, conn, sqlIndexes)
//
// queryStats (dbhealth.go) is QueryDatabase plus redactStatements: every
// column whose name ends in _statement carries text from pg_stat_activity,
// literal values included, and is replaced by its pg_query normalized form
// (or "<not parsable>"). Never run these through QueryDatabase alone.
// redactStatements is idempotent, so a caller holding a Result from a
// Source may apply it again.
//
// Counts exclude the querying backend itself. Ratios are float8 rounded
// to 4 decimals and NULL while their denominator is zero. Waits and ages
// are seconds (float8, rounded to the millisecond) up
// to clock_timestamp(), not now(), so a wait that began after the query's
// transaction started is not negative.

// sqlHealth is one row about the current database: client connections
// (total, active, idle, idle_in_transaction, waiting on a lock),
// max_connections, cache_hit_ratio, commits, rollbacks, rollback_ratio,
// deadlocks, conflicts, temp_files, replicas, max_replication_lag_seconds
// (NULL without replicas; 0 when every replica has caught up, which
// PostgreSQL reports as a NULL replay_lag) and stats_reset.
const sqlHealth = `SELECT
	a.total,
	a.active,
	a.idle,
	a.idle_in_transaction,
	a.waiting,
	current_setting('max_connections')::int8 AS max_connections,
	round(d.blks_hit::numeric / nullif(d.blks_hit + d.blks_read, 0), 4)::float8 AS cache_hit_ratio,
	d.xact_commit AS commits,
	d.xact_rollback AS rollbacks,
	round(d.xact_rollback::numeric / nullif(d.xact_commit + d.xact_rollback, 0), 4)::float8 AS rollback_ratio,
	d.deadlocks,
	d.conflicts,
	d.temp_files,
	r.replicas,
	r.max_replication_lag_seconds,
	d.stats_reset
FROM pg_stat_database d
CROSS JOIN (
	SELECT count(*) AS total,
		count(*) FILTER (WHERE state = 'active') AS active,
		count(*) FILTER (WHERE state = 'idle') AS idle,
		count(*) FILTER (WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')) AS idle_in_transaction,
		count(*) FILTER (WHERE wait_event_type = 'Lock') AS waiting
	FROM pg_stat_activity
	WHERE datname = current_database()
		AND backend_type = 'client backend'
		AND pid <> pg_backend_pid()
) a
CROSS JOIN (
	SELECT count(*) AS replicas,
		CASE WHEN count(*) > 0
			THEN coalesce(round(extract(epoch FROM max(replay_lag)), 3)::float8, 0)
		END AS max_replication_lag_seconds
	FROM pg_stat_replication
) r
WHERE d.datname = current_database()`

// sqlLocks is one row per (blocked, blocking) pair of backends of the
// current database, the longest wait first. lock_type, lock_mode and
// relation describe the lock the blocked backend waits for (relation is
// NULL for a wait on a transaction, as behind a row lock).
const sqlLocks = `SELECT
	blocked.pid AS blocked_pid,
	blocked.usename::text AS blocked_user,
	blocked.application_name AS blocked_application,
	round(extract(epoch FROM clock_timestamp() - coalesce(blocked.state_change, blocked.query_start)), 3)::float8 AS blocked_wait_seconds,
	l.locktype AS lock_type,
	l.mode AS lock_mode,
	l.relation::regclass::text AS relation,
	blocked.query AS blocked_statement,
	blocking.pid AS blocking_pid,
	blocking.usename::text AS blocking_user,
	blocking.application_name AS blocking_application,
	blocking.state AS blocking_state,
	round(extract(epoch FROM clock_timestamp() - blocking.xact_start), 3)::float8 AS blocking_xact_seconds,
	blocking.query AS blocking_statement
FROM pg_stat_activity blocked
CROSS JOIN LATERAL unnest(pg_blocking_pids(blocked.pid)) AS b(pid)
JOIN pg_stat_activity blocking ON blocking.pid = b.pid
LEFT JOIN LATERAL (
	SELECT locktype, mode, relation
	FROM pg_locks
	WHERE pid = blocked.pid AND NOT granted
	LIMIT 1
) l ON true
WHERE blocked.datname = current_database()
	AND blocked.wait_event_type = 'Lock'
	AND blocked.pid <> pg_backend_pid()
ORDER BY blocked_wait_seconds DESC NULLS LAST, blocked_pid, blocking_pid`

// sqlTables is the 100 largest user tables with their scan counts, live
// and dead rows, last vacuum and analyze (manual or auto, the later) and
// size. idx_scan is NULL for a table without indexes.
const sqlTables = `SELECT
	s.schemaname::text AS "schema",
	s.relname::text AS "table",
	s.seq_scan,
	s.seq_tup_read,
	s.idx_scan,
	s.idx_tup_fetch,
	round(s.seq_scan::numeric / nullif(s.seq_scan + coalesce(s.idx_scan, 0), 0), 4)::float8 AS seq_scan_ratio,
	s.n_live_tup AS live_rows,
	s.n_dead_tup AS dead_rows,
	round(s.n_dead_tup::numeric / nullif(s.n_live_tup + s.n_dead_tup, 0), 4)::float8 AS dead_ratio,
	greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum,
	greatest(s.last_analyze, s.last_autoanalyze) AS last_analyze,
	pg_total_relation_size(s.relid) AS total_bytes,
	pg_size_pretty(pg_total_relation_size(s.relid)) AS size
FROM pg_stat_user_tables s
ORDER BY total_bytes DESC NULLS LAST, 1, 2
LIMIT 100`

// sqlIndexes is up to 200 user indexes, those never scanned that enforce
// nothing first: unused is false for unique, primary-key and exclusion
// constraint indexes, which do their work without being scanned.
const sqlIndexes = `SELECT
	s.schemaname::text AS "schema",
	s.relname::text AS "table",
	s.indexrelname::text AS "index",
	s.idx_scan,
	s.idx_tup_read,
	s.idx_tup_fetch,
	pg_relation_size(s.indexrelid) AS total_bytes,
	pg_size_pretty(pg_relation_size(s.indexrelid)) AS size,
	i.indisunique AS "unique",
	i.indisprimary AS "primary",
	(s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary AND NOT i.indisexclusion) AS unused
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
ORDER BY unused DESC, total_bytes DESC NULLS LAST, 1, 2, 3
LIMIT 200`
