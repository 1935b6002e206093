package config

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgshield/pgshield/admin"
	"github.com/pgshield/pgshield/admin/backup"
	"github.com/pgshield/pgshield/poolmgr"
)

// Backup is the backup section: where backups go, which database they
// are of, WAL archiving, the schedule and retention (docs/backups.md).
// The encryption key comes from BACKUP_ENCRYPTION_KEY.
type Backup struct {
	Repository BackupRepository `yaml:"repository"`
	// Database is the configured database (the name clients connect to)
	// whose primary is backed up; the only one when there is one.
	Database string `yaml:"database"`
	// User and Password are the role pg_basebackup and pg_receivewal log
	// in as (it needs the REPLICATION attribute and a replication line in
	// pg_hba.conf); the database's server user when empty.
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	// WAL: archive WAL continuously (pg_receivewal with Slot), which
	// point-in-time restore needs.
	WAL bool `yaml:"wal"`
	// Slot is the archiver's replication slot.
	Slot string `yaml:"slot"`
	// ArchiveInterval bounds how long written WAL waits before it is in
	// the repository (the RPO when little is written): the segment being
	// written is switched (pg_switch_wal()) once its oldest WAL is that
	// old. A busy primary fills segments faster.
	ArchiveInterval time.Duration `yaml:"archive_interval"`
	// StagingDir is where pg_receivewal writes segments before they are
	// uploaded, relative to the configuration's directory.
	StagingDir string `yaml:"staging_dir"`
	// PGBin is the directory of pg_basebackup, pg_receivewal,
	// pg_verifybackup, pg_amcheck and pg_ctl ("" the PATH).
	PGBin     string         `yaml:"pg_bin"`
	Schedule  BackupSchedule `yaml:"schedule"`
	Retention BackupKeep     `yaml:"retention"`
}

// BackupRepository is a local directory or an S3-compatible bucket.
type BackupRepository struct {
	Dir string          `yaml:"dir"` // relative to the configuration's directory
	S3  *BackupS3Config `yaml:"s3"`
}

// BackupS3Config is an S3-compatible bucket; the keys may come from
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead.
type BackupS3Config struct {
	Endpoint  string `yaml:"endpoint"`
	Bucket    string `yaml:"bucket"`
	Prefix    string `yaml:"prefix"`
	Region    string `yaml:"region"`
	AccessKey string `yaml:"access_key"`
	SecretKey string `yaml:"secret_key"`
	Secure    bool   `yaml:"secure"`
}

// BackupSchedule are cron expressions (UTC); "off" disables one.
type BackupSchedule struct {
	Full        string `yaml:"full"`
	Incremental string `yaml:"incremental"`
	Verify      string `yaml:"verify"`
	Retention   string `yaml:"retention"`
}

// BackupKeep is how long each kind is kept.
type BackupKeep struct {
	Full        time.Duration `yaml:"full"`
	Incremental time.Duration `yaml:"incremental"`
	WAL         time.Duration `yaml:"wal"`
}

// Defaults of the backup section besides those of the schedule and the
// retention, which are admin's and backup's.
const (
	DefaultStagingDir = "wal-staging"
	// DefaultArchiveInterval keeps the RPO to seconds on a quiet primary;
	// the empty end of a switched segment compresses to almost nothing.
	DefaultArchiveInterval = 10 * time.Second
)

// Enabled reports whether backups are configured.
func (b Backup) Enabled() bool { return b.Repository.Dir != "" || b.Repository.S3 != nil }

func (b Backup) withDefaults() Backup {
	if !b.Enabled() {
		return b
	}
	s := &b.Schedule
	for _, d := range []struct {
		v   *string
		def string
	}{{&s.Full, admin.DefaultScheduleFull}, {&s.Incremental, admin.DefaultScheduleIncremental}, {&s.Verify, admin.DefaultScheduleVerify},
		{&s.Retention, admin.DefaultScheduleRetention}} {
		if *d.v == "" {
			*d.v = d.def
		}
	}
	r := &b.Retention
	if r.Full == 0 {
		r.Full = backup.DefaultFullKeep
	}
	if r.Incremental == 0 {
		r.Incremental = backup.DefaultIncrementalKeep
	}
	if r.WAL == 0 {
		r.WAL = backup.DefaultWALKeep
	}
	if b.Slot == "" {
		b.Slot = backup.DefaultSlot
	}
	if b.ArchiveInterval == 0 {
		b.ArchiveInterval = DefaultArchiveInterval
	}
	if b.StagingDir == "" {
		b.StagingDir = DefaultStagingDir
	}
	return b
}

func (b Backup) validate(databases []string) error {
	if !b.Enabled() {
		return nil
	}
	var errs []error
	if b.Repository.Dir != "" && b.Repository.S3 != nil {
		errs = append(errs, errors.New("backup.repository: either dir or s3, not both"))
	}
	if s3 := b.Repository.S3; s3 != nil && (s3.Endpoint == "" || s3.Bucket == "") {
		errs = append(errs, errors.New("backup.repository.s3: endpoint and bucket are required"))
	}
	switch {
	case b.Database == "" && len(databases) != 1:
		errs = append(errs, fmt.Errorf("backup.database: required with several databases (%v)", databases))
	case b.Database != "" && !slices.Contains(databases, b.Database):
		errs = append(errs, fmt.Errorf("backup.database %q: no such database (databases: %v)", b.Database, databases))
	}
	for _, e := range []struct{ key, expr string }{
		{"full", b.Schedule.Full}, {"incremental", b.Schedule.Incremental}, {"verify", b.Schedule.Verify}, {"retention", b.Schedule.Retention},
	} {
		if err := admin.ParseSchedule(e.expr); err != nil {
			errs = append(errs, fmt.Errorf("backup.schedule.%s %q: %w (a cron expression, or off)", e.key, e.expr, err))
		}
	}
	return errors.Join(errs...)
}

// BackupDatabase is the configured database backups are of.
func (f *File) BackupDatabase() string {
	if f.Backup.Database != "" {
		return f.Backup.Database
	}
	if len(f.Pools.Databases) == 1 {
		for name := range f.Pools.Databases {
			return name
		}
	}
	return ""
}

// relative resolves a path of the configuration relative to its file.
func (f *File) relative(p string) string {
	if p == "" || filepath.IsAbs(p) || f.Path == "" {
		return p
	}
	return filepath.Join(filepath.Dir(f.Path), p)
}

// BackupStagingDir is the WAL staging directory, resolved.
func (f *File) BackupStagingDir() string { return f.relative(f.Backup.StagingDir) }

// BackupRepository opens the backup repository and reads the backup key
// from the environment; cluster names the database's backups in it.
func (f *File) BackupRepository(ctx context.Context, getenv func(string) string) (backup.Repository, backup.Key, string, error) {
	if !f.Backup.Enabled() {
		return nil, backup.Key{}, "", errors.New("backup: no repository configured")
	}
	key, err := backup.KeyFrom(getenv)
	if err != nil {
		return nil, backup.Key{}, "", fmt.Errorf("backup: %w", err)
	}
	var repo backup.Repository
	if r := f.Backup.Repository; r.S3 != nil {
		repo, err = backup.NewS3(ctx, backup.S3Config{Endpoint: r.S3.Endpoint, Bucket: r.S3.Bucket, Prefix: r.S3.Prefix, Region: r.S3.Region,
			AccessKey: r.S3.AccessKey, SecretKey: r.S3.SecretKey, Secure: r.S3.Secure})
	} else {
		repo, err = backup.NewLocal(f.relative(r.Dir))
	}
	if err != nil {
		return nil, backup.Key{}, "", fmt.Errorf("backup.repository: %w", err)
	}
	return repo, key, f.BackupDatabase(), nil
}

// DefaultJobsFile is the jobs file beside the configuration.
const DefaultJobsFile = "pgshield-jobs.json"

// JobsPath is the jobs file, resolved; "" for a configuration not read
// from a file and naming none.
func (f *File) JobsPath() string {
	if f.JobsFile != "" {
		return f.relative(f.JobsFile)
	}
	if f.Path == "" {
		return ""
	}
	return f.relative(DefaultJobsFile)
}

// LoadBackup reads only what a restore needs from the configuration at
// path, the backup section and the databases' names, without checking
// the rest (pgshield restore and wal-fetch run where the proxy's TLS key
// or policy file may not be readable: as the server's OS user, or on a
// fresh machine).
func LoadBackup(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var part struct {
		Backup    Backup                    `yaml:"backup"`
		Databases map[string]map[string]any `yaml:"databases"`
	}
	if err := yaml.Unmarshal(data, &part); err != nil {
		return nil, fmt.Errorf("%s: not valid YAML: %w", path, err)
	}
	f := &File{Path: path, Backup: part.Backup.withDefaults()}
	f.Pools.Databases = map[string]poolmgr.DatabaseConfig{}
	for name := range part.Databases {
		f.Pools.Databases[name] = poolmgr.DatabaseConfig{}
	}
	names := make([]string, 0, len(part.Databases))
	for name := range part.Databases {
		names = append(names, name)
	}
	sort.Strings(names)
	if err := f.Backup.validate(names); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !f.Backup.Enabled() {
		return nil, fmt.Errorf("%s: no backup section (backup.repository)", path)
	}
	return f, nil
}
