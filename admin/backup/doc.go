// Package backup is the backup job of the admin layer: full and
// incremental backups of one PostgreSQL cluster, continuous WAL
// archiving, point-in-time restore, verification by restore, and
// retention, all into a Repository (a local directory or an S3 bucket)
// with every object sealed (zstd, then streaming AES-256-GCM with the
// object's name as associated data) under a Key from
// BACKUP_ENCRYPTION_KEY. It drives PostgreSQL's own programs
// (pg_basebackup, pg_receivewal, pg_verifybackup, pg_amcheck, pg_ctl) and
// talks SQL with pgx; as root it runs them as the postgres OS user.
//
// # Full backups
//
// BACKUP FULL runs `pg_basebackup -D - -Ft -X fetch`: one tar of the
// cluster on stdout, compressed and encrypted while it uploads, nothing
// kept locally. PostgreSQL 15 refuses -X stream into a tar on stdout, so
// the WAL that makes the backup consistent is fetched at its end into the
// tar's pg_wal: every full backup restores on its own, without the WAL
// archive. The server must still hold that WAL at the end (the archiver's
// slot keeps it while WAL archiving runs; else wal_keep_size). Clusters
// with tablespaces besides the default ones are not supported (they
// would need one tar each). PostgreSQL's backup_manifest is stored as an
// object of its own.
//
// # The catalog
//
// A backup is the objects under <cluster>/backups/<id>/: attempt.json (a
// marker, written first), its data, and manifest.json, the Manifest:
// start and stop LSN, timeline, times, sizes, the sha256 of every object,
// the PostgreSQL version and the key id. It is written last and in plain
// JSON (it holds no secret, and says which key a restore needs): a backup
// killed before it has none, and List does not show it; Attempts shows
// such attempts, and DeleteExpired removes them once a later backup has
// succeeded.
//
// # WAL archiving and the RPO
//
// RunWAL runs pg_receivewal against the primary with a replication slot
// (created when missing), restarts it when it dies, and follows a change
// of primary (Config.Source names another server). Each finished segment
// and timeline history file is sealed into <cluster>/wal/ and then
// removed from the staging directory; a .partial segment never is. So
// that the latest state reaches the repository, RunWAL forces a segment
// switch (pg_switch_wal()) once written WAL has waited
// Config.ArchiveInterval (15 minutes by default) without being archived:
// the RPO is ArchiveInterval plus an upload, and what was written since
// the last switch is what a loss of the primary can take. SwitchWAL
// forces one at once and waits for the segment (what a planned
// maintenance, or a test, wants). The role needs EXECUTE on
// pg_switch_wal(); without it WALStatus says so and segments go when
// they fill (or when the server's archive_timeout switches them).
//
// A failover to a replica with the WAL the old primary had is followed
// seamlessly (pg_receivewal crosses to the new timeline, whose history
// file is archived too); WAL the old primary wrote and never replicated
// is, as with any archiver streaming from the new primary, a gap. The old
// timeline's unfinished segment is kept in the repository as
// <name>.partial, for forensics: recovery never reads it. A .partial that
// pg_receivewal died zero-filling (it holds no WAL, and pg_receivewal
// refuses to start beside it) is removed before a restart.
//
// # Incremental backups
//
// On PostgreSQL 15 and 16 an incremental backup (BACKUP INCREMENTAL) is
// WAL: it writes a restore point, forces a segment switch so the range is
// complete, and stores the archived segments since the previous backup
// (with the history files) as one sealed tar, a backup of its own with
// Kind incremental and Parent the previous backup. Retention keeps or
// deletes it with its chain, and a restore of it needs its chain only,
// not the WAL archive: the WAL goes into pg_wal and recovery stops at its
// restore point. PostgreSQL 17's block-level `pg_basebackup
// --incremental` (with pg_combinebackup) is the later path: smaller and
// faster to restore than replaying a day of WAL.
//
// # Restore
//
// Restore (and `pgshield restore`) needs only the repository and the key:
// it fetches the manifest, fetches each object checking its sha256 (a
// mismatch, or an object that fails to open, is an error naming it),
// opens and untars it into the new data directory, and writes recovery
// settings into postgresql.auto.conf and recovery.signal. restore_command
// is `pgshield wal-fetch --config FILE --cluster NAME %f %p`, which reads
// the repository from the configuration file and the key from
// BACKUP_ENCRYPTION_KEY in the server's environment (Restore passes its
// own); as root the server and so restore_command run as the postgres OS
// user, which must be able to read the configuration file and a local
// repository (Restore checks that first). wal-fetch exits 1 for a file
// the archive does not have, and 126 for any other failure, which makes
// PostgreSQL abort the recovery instead of ending it early. A backup id
// restores that backup (a full backup to its end, an incremental one to
// its restore point); LATEST to the end of the archive; --to-time and
// --to-lsn to that point, from the newest backup that ends before it; all
// then promote. The restored copy listens on 127.0.0.1 only, without a
// Unix socket, with archive_mode off and no synchronous standbys; edit
// its postgresql.auto.conf to serve clients.
//
// # Verify and retention
//
// Verify restores into a scratch directory, runs pg_verifybackup against
// the backup_manifest before starting anything, starts the copy on a free
// loopback port and runs pg_amcheck on every database, records the result
// in the manifest and removes the scratch directory. DeleteExpired
// applies Retention (see there): backups past their kind's retention go,
// the newest full backup and the WAL any kept backup needs stay.
package backup
