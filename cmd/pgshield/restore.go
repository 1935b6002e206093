package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/admin/backup"
	"github.com/pgshield/pgshield/cmd/pgshield/config"
)

// walFetchFatal is wal-fetch's exit status for a failure other than a
// missing file: above 125, which makes PostgreSQL abort the recovery
// rather than take the failure for the end of the archive.
const walFetchFatal = 126

// restoreCommand runs `pgshield restore` or `pgshield wal-fetch`.
func restoreCommand(name string, args []string) error {
	if name == "wal-fetch" {
		return walFetchCmd(args)
	}
	return restoreCmd(args)
}

// restoreCmd is `pgshield restore`: a backup from the configured
// repository into a new data directory, optionally started. It needs the
// repository and BACKUP_ENCRYPTION_KEY, not a running pgshield.
func restoreCmd(args []string) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	path := fs.String("config", "pgshield.yaml", "configuration `file`; its backup section names the repository")
	id := fs.String("backup", backup.Latest, "backup `id` to restore, or LATEST: the newest state the repository has")
	toTime := fs.String("to-time", "", "recover up to this `time` (RFC 3339, or \"2006-01-02 15:04:05\" in UTC), from the newest backup that ends before it")
	toLSN := fs.String("to-lsn", "", "recover up to this `LSN` (X/Y)")
	into := fs.String("into", "", "the new data `directory` (must not exist or be empty; required)")
	port := fs.Int("port", 0, "start the restored cluster on this `port` and wait until recovery has ended; 0 only prepares the directory")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *into == "" {
		fmt.Fprintln(os.Stderr, "pgshield restore: --into is required")
		return exitCode(2)
	}
	o := backup.RestoreOptions{ID: *id, TargetLSN: *toLSN, Dir: *into, Port: *port}
	if *toTime != "" {
		t, err := parseTargetTime(*toTime)
		if err != nil {
			return err
		}
		o.TargetTime = t
	}
	cfg, err := config.LoadBackup(*path)
	if err != nil {
		return err
	}
	if o.ConfigFile, err = filepath.Abs(*path); err != nil {
		return err
	}
	log, _, err := newLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runRestore(ctx, cfg, o, os.Stdout, log)
}

// runRestore restores as o says from cfg's repository, writing progress
// and the result to out.
func runRestore(ctx context.Context, cfg *config.File, o backup.RestoreOptions, out io.Writer, log *zap.Logger) error {
	repo, key, cluster, err := cfg.BackupRepository(ctx, os.Getenv)
	if err != nil {
		return err
	}
	last := ""
	progress := func(done, total int64, detail string) {
		if detail != last {
			fmt.Fprintf(out, "%s\n", detail)
			last = detail
		}
	}
	res, err := backup.Restore(ctx, repo, key, cluster, cfg.Backup.PGBin, o, progress, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "restored backup %s into %s in %s\n", res.Backup, res.Dir, res.Took.Round(time.Millisecond))
	if res.Port != 0 {
		fmt.Fprintf(out, "running on 127.0.0.1:%d, out of recovery at %s\n", res.Port, res.ReachedLSN)
	} else {
		fmt.Fprintf(out, "not started: pg_ctl -D %s -l %s start (with %s set, as the cluster's OS user)\n",
			res.Dir, filepath.Join(res.Dir, "restore.log"), backup.KeyEnv)
	}
	return nil
}

// parseTargetTime reads --to-time: RFC 3339, or a date and time (UTC
// unless it has an offset).
func parseTargetTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--to-time %q: want RFC 3339 (2006-01-02T15:04:05Z) or \"2006-01-02 15:04:05\" (UTC)", s)
}

// walFetchCmd is `pgshield wal-fetch`, the restore_command of a restored
// cluster: the archived WAL file NAME into PATH. Exit status 1 means the
// archive has no such file; walFetchFatal any other failure.
func walFetchCmd(args []string) error {
	fs := flag.NewFlagSet("wal-fetch", flag.ContinueOnError)
	path := fs.String("config", "pgshield.yaml", "configuration `file`; its backup section names the repository")
	cluster := fs.String("cluster", "", "the `cluster` in the repository (default: the configuration's backup database)")
	check := fs.Bool("check", false, "only check that the repository and the key work, and exit")
	var msg strings.Builder
	fs.SetOutput(&msg)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: pgshield wal-fetch --config FILE [--cluster NAME] NAME PATH\n       pgshield wal-fetch --config FILE [--cluster NAME] --check\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Print(msg.String())
			return exitCode(0)
		}
		fmt.Fprint(os.Stderr, msg.String())
		return exitCode(2)
	}
	if *check != (fs.NArg() == 0) || (!*check && fs.NArg() != 2) {
		fs.Usage()
		fmt.Fprint(os.Stderr, msg.String())
		return exitCode(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := runWALFetch(ctx, *path, *cluster, *check, fs.Args())
	switch {
	case err == nil:
		return nil
	case errors.Is(err, backup.ErrNotFound) && !*check:
		return exitCode(1) // quiet: recovery asks for files that may not exist
	default:
		fmt.Fprintln(os.Stderr, "pgshield wal-fetch:", err)
		return exitCode(walFetchFatal)
	}
}

func runWALFetch(ctx context.Context, path, cluster string, check bool, args []string) error {
	cfg, err := config.LoadBackup(path)
	if err != nil {
		return err
	}
	repo, key, name, err := cfg.BackupRepository(ctx, os.Getenv)
	if err != nil {
		return err
	}
	if cluster == "" {
		cluster = name
	}
	if check {
		objs, err := repo.List(ctx, cluster+"/wal/")
		if err != nil {
			return err
		}
		// One history file or segment proves that we may read them and
		// hold the key.
		for _, o := range slices.Backward(objs) {
			file := strings.TrimPrefix(o.Name, cluster+"/wal/")
			if len(file) != 24 && !strings.HasSuffix(file, ".history") {
				continue
			}
			dir, err := os.MkdirTemp("", "pgshield-wal-fetch-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			if err := backup.WALFetch(ctx, repo, key, cluster, file, filepath.Join(dir, "check")); err != nil {
				return err
			}
			break
		}
		fmt.Printf("ok: %s, cluster %s, %d archived WAL files, %s\n", repo, cluster, len(objs), key)
		return nil
	}
	return backup.WALFetch(ctx, repo, key, cluster, args[0], args[1])
}
