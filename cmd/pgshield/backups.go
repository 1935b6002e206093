package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/admin"
	"github.com/pgshield/pgshield/admin/backup"
	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/metrics"
	"github.com/pgshield/pgshield/router"
)

// startBackups builds the backups of the configuration (none when it has
// no backup section): the manager over its repository, the jobs, their
// schedule and WAL archiving, given to the console through live; the
// schedule runs until ctx ends, and wait waits for it.
func startBackups(ctx context.Context, cfg *config.File, current func() *config.File, topo *router.Topology, jobs *admin.Jobs,
	live *admin.Live, m *metrics.Metrics, log *zap.Logger) (wait func(), err error) {
	if !cfg.Backup.Enabled() {
		return func() {}, nil
	}
	repo, key, cluster, err := cfg.BackupRepository(ctx, os.Getenv)
	if err != nil {
		return nil, err
	}
	source := func(ctx context.Context) (backup.Source, error) {
		f := current()
		db, ok := f.Pools.Databases[cluster]
		if !ok {
			return backup.Source{}, fmt.Errorf("backup: database %s is no longer configured", cluster)
		}
		addr := db.Primary
		if topo != nil {
			if a, ok := topo.HealthyPrimary(cluster); ok {
				addr = a
			}
		}
		host, portText, err := net.SplitHostPort(addr)
		if err != nil {
			return backup.Source{}, fmt.Errorf("backup: the primary %s: %w", addr, err)
		}
		port, err := strconv.Atoi(portText)
		if err != nil {
			return backup.Source{}, fmt.Errorf("backup: the primary %s: %w", addr, err)
		}
		user, password := f.Backup.User, f.Backup.Password
		if user == "" {
			user, password = db.User, db.Password
		}
		dbname := db.DBName
		if dbname == "" {
			dbname = cluster
		}
		return backup.Source{Host: host, Port: port, User: user, Password: password, DBName: dbname}, nil
	}
	self, _ := os.Executable()
	mgr, err := backup.NewManager(backup.Config{Repo: repo, Key: key, PGBin: cfg.Backup.PGBin, Source: source, Slot: cfg.Backup.Slot,
		StagingDir: cfg.BackupStagingDir(), Cluster: cluster, ConfigFile: cfg.Path, WALFetchCommand: self,
		ArchiveInterval: cfg.Backup.ArchiveInterval}, log.Named("backup"))
	if err != nil {
		return nil, err
	}
	b, err := admin.NewBackups(jobs, admin.BackupConfig{
		Manager: mgr,
		Schedule: admin.BackupSchedule{Full: cfg.Backup.Schedule.Full, Incremental: cfg.Backup.Schedule.Incremental,
			Verify: cfg.Backup.Schedule.Verify, Retention: cfg.Backup.Schedule.Retention},
		Retention: backup.Retention{FullKeep: cfg.Backup.Retention.Full, IncrementalKeep: cfg.Backup.Retention.Incremental,
			WALKeep: cfg.Backup.Retention.WAL},
		WAL:      cfg.Backup.WAL,
		Leader:   func(ctx context.Context) (*pgconn.PgConn, error) { return live.ConnectPrimary(ctx, cluster) },
		Observer: m,
		Log:      log.Named("backups"),
	})
	if err != nil {
		return nil, err
	}
	live.SetBackups(b)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := b.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("the backup schedule stopped", zap.Error(err))
		}
	}()
	log.Info("backups", zap.String("repository", repo.String()), zap.String("database", cluster), zap.String("key_id", key.ID),
		zap.Bool("wal", cfg.Backup.WAL))
	return func() {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			log.Warn("the backup schedule did not stop in 30 s")
		}
	}, nil
}
