package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/admin/backup"
	"github.com/pgshield/pgshield/metrics"
)

// The backups on the console: BACKUP FULL, BACKUP INCREMENTAL, SHOW
// BACKUPS, SHOW WAL, RESTORE, VERIFY BACKUP, DELETE EXPIRED BACKUPS and
// SHOW SCHEDULE, over a backup.Manager (package admin/backup does the
// work). Each long one is a job of the registry (jobs.go); the scheduled
// ones are started by the scheduler (scheduler.go) on the pgshield that
// leads, which also archives WAL while it leads.
//
// The jobs, their kinds and targets:
//
//	BACKUP FULL, INCREMENTAL   backup full, backup incremental
//	VERIFY BACKUP <id>         verify <id> (scheduled: verify latest)
//	DELETE EXPIRED BACKUPS     retention expired
//	RESTORE … INTO '<dir>'     restore <dir>
//
// A scheduled job is skipped while a job of its kind runs: a scheduled
// incremental backup does not start while a full one runs.

// BackupSchedule is when the scheduled jobs run: cron expressions in UTC
// (minute hour day-of-month month day-of-week, or @daily …), "off" for
// never, "" for the default.
type BackupSchedule struct {
	Full, Incremental, Verify, Retention string
}

// The defaults of BackupSchedule, which the configuration file takes too (the
// retention's are backup.DefaultFullKeep …).
const (
	DefaultScheduleFull        = "0 2 * * *"   // daily at 02:00 UTC
	DefaultScheduleIncremental = "0 */6 * * *" // every 6 hours
	DefaultScheduleVerify      = "0 3 * * 0"   // Sundays at 03:00 UTC
	DefaultScheduleRetention   = "30 2 * * *"  // daily at 02:30 UTC
)

const (
	// backupCatalogRefresh is how often every pgshield reads the catalog
	// again for the metrics, leader or not.
	backupCatalogRefresh = 10 * time.Minute
	// walLagReport is how often the leader reports the WAL archive lag.
	walLagReport = 15 * time.Second
	// walRestartMax bounds the wait before WAL archiving starts again
	// after it failed.
	walRestartMax = time.Minute
	// maxDeletedNotice is how many deleted names DELETE EXPIRED BACKUPS
	// lists; the rest are counted.
	maxDeletedNotice = 50
	// backupListTimeout bounds reading the catalog for a command.
	backupListTimeout = time.Minute
)

// The kinds of the backup jobs, the labels of their metrics.
const (
	jobKindBackup    = "backup"
	jobKindVerify    = "verify"
	jobKindRetention = "retention"
	jobKindRestore   = "restore"
	metricFull       = "full"
	metricIncr       = "incremental"
	metricVerify     = "verify"
	metricRetention  = "retention"
	metricWAL        = "wal"
	targetLatest     = "latest"
	targetExpired    = "expired"
	backupLatest     = backup.Latest
)

// BackupObserver is what the backup jobs report to metrics; *metrics.Metrics
// implements it.
type BackupObserver interface {
	// BackupSucceeded: the last job of kind (full, incremental, verify,
	// retention) that succeeded ended at at and took took. For full and
	// incremental it comes from the repository's catalog, so every
	// pgshield reports the leader's backups; at is zero when the catalog
	// has none of the kind.
	BackupSucceeded(kind string, at time.Time, took time.Duration)
	// BackupSize: the newest backup of kind is size bytes, the one before
	// it previous (0: none).
	BackupSize(kind string, size, previous int64)
	// BackupFailed counts a job of kind (full, incremental, verify,
	// retention, wal: WAL archiving stopped on an error) that failed.
	BackupFailed(kind string)
	// WALArchiveLag: how far WAL archiving is behind the primary, while
	// this pgshield archives; archiving false: it does not (any more).
	WALArchiveLag(lag time.Duration, archiving bool)
}

var _ BackupObserver = (*metrics.Metrics)(nil)

// nopObserver is the observer of Backups without one.
type nopObserver struct{}

func (nopObserver) BackupSucceeded(string, time.Time, time.Duration) {}
func (nopObserver) BackupSize(string, int64, int64)                  {}
func (nopObserver) BackupFailed(string)                              {}
func (nopObserver) WALArchiveLag(time.Duration, bool)                {}

// BackupConfig is what NewBackups needs.
type BackupConfig struct {
	Manager   *backup.Manager
	Schedule  BackupSchedule
	Retention backup.Retention // a zero field: its default
	// WAL: archive WAL continuously (Manager.RunWAL) while this pgshield
	// leads the schedule.
	WAL bool
	// Leader opens a connection of its own to the primary of the database
	// backed up, for the leader lock (Live.ConnectPrimary); nil: this
	// pgshield always leads.
	Leader func(ctx context.Context) (*pgconn.PgConn, error)
	// LeaderRetry is how often a follower tries to lead (0: 5 s).
	LeaderRetry time.Duration
	Observer    BackupObserver   // nil: none
	Now         func() time.Time // nil: time.Now
	Log         *zap.Logger      // nil: none
}

// Backups is the backups of a pgshield: the manager, the jobs over it,
// their schedule and its leadership. Live.SetBackups gives it to the
// console; Run runs the schedule.
type Backups struct {
	mgr       *backup.Manager
	jobs      *Jobs
	sched     *Scheduler
	retention backup.Retention
	wal       bool
	obs       BackupObserver
	now       func() time.Time
	log       *zap.Logger

	refreshing sync.Mutex // one catalog read for the metrics at a time
}

// NewBackups builds the backup jobs over cfg.Manager, started in jobs,
// and their schedule. It fails on a schedule that is not a cron
// expression.
func NewBackups(jobs *Jobs, cfg BackupConfig) (*Backups, error) {
	if cfg.Manager == nil {
		return nil, errors.New("backups: no backup manager")
	}
	if jobs == nil {
		return nil, errors.New("backups: no job registry")
	}
	b := &Backups{mgr: cfg.Manager, jobs: jobs, retention: cfg.Retention, wal: cfg.WAL, obs: cfg.Observer, now: cfg.Now, log: cfg.Log}
	if b.obs == nil {
		b.obs = nopObserver{}
	}
	if b.now == nil {
		b.now = time.Now
	}
	if b.log == nil {
		b.log = zap.NewNop()
	}
	r := &b.retention
	r.FullKeep = orDuration(r.FullKeep, backup.DefaultFullKeep)
	r.IncrementalKeep = orDuration(r.IncrementalKeep, backup.DefaultIncrementalKeep)
	r.WALKeep = orDuration(r.WALKeep, backup.DefaultWALKeep)
	s := cfg.Schedule
	sched, err := NewScheduler(SchedulerConfig{
		Jobs: jobs,
		Entries: []ScheduledJob{
			{Name: "full", Spec: orDefault(s.Full, DefaultScheduleFull), Kind: jobKindBackup, Target: metricFull, Run: b.backupJob(backup.Kind(metricFull))},
			{Name: "incremental", Spec: orDefault(s.Incremental, DefaultScheduleIncremental), Kind: jobKindBackup, Target: metricIncr,
				Run: b.backupJob(backup.Kind(metricIncr))},
			{Name: "verify", Spec: orDefault(s.Verify, DefaultScheduleVerify), Kind: jobKindVerify, Target: targetLatest, Run: b.verifyJob(backupLatest, nil)},
			{Name: "retention", Spec: orDefault(s.Retention, DefaultScheduleRetention), Kind: jobKindRetention, Target: targetExpired, Run: b.retentionJob(nil)},
		},
		Connect:      cfg.Leader,
		Retry:        cfg.LeaderRetry,
		WhileLeading: b.whileLeading,
		Now:          cfg.Now,
		Log:          b.log,
	})
	if err != nil {
		return nil, fmt.Errorf("backups: %w", err)
	}
	b.sched = sched
	return b, nil
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Scheduler is the schedule of the backup jobs.
func (b *Backups) Scheduler() *Scheduler { return b.sched }

// Run runs the schedule, the leadership and (on the leader) WAL
// archiving, and reads the catalog for the metrics now and every 10
// minutes, until ctx ends; it returns once all of them have stopped
// (the leader lock is released).
func (b *Backups) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			b.refresh(ctx)
			t := time.NewTimer(backupCatalogRefresh)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	})
	err := b.sched.Run(ctx)
	wg.Wait()
	return err
}

// refresh reports the newest backup of each kind the catalog has, with
// the size of the one before it, to the observer.
func (b *Backups) refresh(ctx context.Context) {
	b.refreshing.Lock()
	defer b.refreshing.Unlock()
	ctx, cancel := context.WithTimeout(ctx, backupListTimeout)
	defer cancel()
	list, err := b.mgr.List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			b.log.Warn("backup catalog not read for the metrics", zap.Error(err))
		}
		return
	}
	for _, kind := range []string{metricFull, metricIncr} {
		var newest, previous *backup.Manifest
		for i := range list {
			if string(list[i].Kind) == kind {
				previous, newest = newest, &list[i]
			}
		}
		if newest == nil {
			b.obs.BackupSucceeded(kind, time.Time{}, 0)
			continue
		}
		b.obs.BackupSucceeded(kind, newest.Finished, newest.Finished.Sub(newest.Started))
		var prev int64
		if previous != nil {
			prev = previous.Size
		}
		b.obs.BackupSize(kind, newest.Size, prev)
	}
}

// failed counts a job's failure, unless it was cancelled.
func (b *Backups) failed(ctx context.Context, kind string, err error) {
	if err != nil && ctx.Err() == nil {
		b.obs.BackupFailed(kind)
	}
}

// progress is report as a backup.Progress, counting bytes.
func progress(report func(JobProgress)) backup.Progress {
	return func(done, total int64, detail string) {
		report(JobProgress{Done: done, Total: total, Unit: "bytes", Detail: detail})
	}
}

// backupJob is BACKUP FULL or BACKUP INCREMENTAL as a job.
func (b *Backups) backupJob(kind backup.Kind) JobFunc {
	return func(ctx context.Context, report func(JobProgress)) error {
		var m backup.Manifest
		var err error
		if kind == backup.Kind(metricFull) {
			m, err = b.mgr.BackupFull(ctx, progress(report))
		} else {
			m, err = b.mgr.BackupIncremental(ctx, progress(report))
		}
		if err != nil {
			b.failed(ctx, string(kind), err)
			return err // it says which backup failed, and why
		}
		b.refresh(context.WithoutCancel(ctx))
		report(JobProgress{Done: m.Size, Total: m.Size, Unit: "bytes",
			Detail: fmt.Sprintf("backup %s: %s, LSN %s to %s, took %s", m.ID, humanBytes(m.Size), m.StartLSN, m.StopLSN, roundDuration(m.Finished.Sub(m.Started)))})
		return nil
	}
}

// verifyOutcome is what a VERIFY BACKUP job found, for the command that
// waits for it.
type verifyOutcome struct {
	id  string
	res backup.VerifyResult
}

// verifyJob is VERIFY BACKUP id as a job (LATEST: the newest backup when
// the job runs); out, if set, gets the result.
func (b *Backups) verifyJob(which string, out *verifyOutcome) JobFunc {
	return func(ctx context.Context, report func(JobProgress)) error {
		started := b.now()
		id := which
		if id == backupLatest {
			list, err := b.mgr.List(ctx)
			if err != nil {
				b.failed(ctx, metricVerify, err)
				return fmt.Errorf("verify: reading the catalog: %w", err)
			}
			if len(list) == 0 {
				return errors.New("verify: the repository has no backup yet")
			}
			id = list[len(list)-1].ID
		}
		res, err := b.mgr.Verify(ctx, id, progress(report))
		if out != nil {
			out.id, out.res = id, res
		}
		switch {
		case err != nil && !res.At.IsZero() && !res.OK:
			// The checks ran and failed: the result is recorded with the
			// backup.
			b.failed(ctx, metricVerify, err)
			return fmt.Errorf("%w: %w", errBackupBad, err)
		case err != nil:
			b.failed(ctx, metricVerify, err)
			return err // it names the backup
		case !res.OK:
			b.failed(ctx, metricVerify, errBackupBad)
			return fmt.Errorf("%w: backup %s: %s", errBackupBad, id, res.Detail)
		}
		b.obs.BackupSucceeded(metricVerify, res.At, b.now().Sub(started))
		report(JobProgress{Unit: "bytes", Detail: truncateUTF8(fmt.Sprintf("backup %s verified: %s", id, res.Detail), maxJobDetail)})
		return nil
	}
}

// errBackupBad is wrapped by a verification that found a backup not
// restorable.
var errBackupBad = errors.New("the backup failed verification")

// retentionJob is DELETE EXPIRED BACKUPS as a job; out, if set, gets
// what it deleted.
func (b *Backups) retentionJob(out *[]string) JobFunc {
	return func(ctx context.Context, report func(JobProgress)) error {
		started := b.now()
		deleted, err := b.mgr.DeleteExpired(ctx, b.retention)
		if out != nil {
			*out = deleted
		}
		if err != nil {
			b.failed(ctx, metricRetention, err)
			return fmt.Errorf("deleting expired backups: %w", err)
		}
		b.obs.BackupSucceeded(metricRetention, b.now(), b.now().Sub(started))
		b.refresh(context.WithoutCancel(ctx))
		report(JobProgress{Done: int64(len(deleted)), Total: int64(len(deleted)), Unit: "objects",
			Detail: truncateUTF8(deletedSummary(deleted), maxJobDetail)})
		return nil
	}
}

// whileLeading archives WAL while this pgshield leads: RunWAL again
// after it fails (backing off to a minute), with its lag reported.
func (b *Backups) whileLeading(ctx context.Context) {
	if !b.wal {
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(walLagReport)
		defer t.Stop()
		for {
			b.obs.WALArchiveLag(b.mgr.WALStatus().Lag, true)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	defer func() {
		wg.Wait()
		b.obs.WALArchiveLag(0, false)
	}()
	wait := time.Second
	for {
		b.log.Info("WAL archiving started")
		err := b.mgr.RunWAL(ctx)
		if ctx.Err() != nil {
			b.log.Info("WAL archiving stopped: this pgshield no longer leads, or stops")
			return
		}
		b.obs.BackupFailed(metricWAL)
		b.log.Warn("WAL archiving stopped; starting it again", zap.Error(err), zap.Duration("in", wait))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, walRestartMax)
	}
}

// The console's side.

// SetBackups gives the console the backups (nil: none, the backup
// commands answer 55000). Call it before the console serves.
func (l *Live) SetBackups(b *Backups) { l.backups.Store(b) }

// Backups is what SetBackups gave.
func (l *Live) Backups() *Backups { return l.backups.Load() }

// backupsOf is the console's backups, or the 55000 of a pgshield without.
func (c *Console) backupsOf(cmd string) (*Backups, error) {
	b := c.src.Backups()
	if b == nil {
		return nil, Errorf(CodeObjectNotInPrerequisiteState, "%s: no backup repository configured (backup: in the configuration)", cmd).
			withHint("the backup: section names a repository (backup.repository.dir or backup.repository.s3); the key comes from BACKUP_ENCRYPTION_KEY")
	}
	return b, nil
}

// backupArgs is the rule of BACKUP FULL|INCREMENTAL.
func backupArgs(cmd string, args []token) error {
	if len(args) != 1 || args[0].quoted || !strings.EqualFold(args[0].text, "FULL") && !strings.EqualFold(args[0].text, "INCREMENTAL") {
		return Errorf(CodeSyntaxError, "%s needs FULL or INCREMENTAL: BACKUP FULL, BACKUP INCREMENTAL", cmd).
			withHint("an incremental backup holds what changed since the last backup; RESTORE needs a full one")
	}
	return nil
}

// words is the rule of a command followed by fixed words (DELETE EXPIRED
// BACKUPS), then n arguments.
func words(usage string, n int, want ...string) argRule {
	return func(cmd string, args []token) error {
		ok := len(args) == len(want)+n
		for i := 0; ok && i < len(want); i++ {
			ok = !args[i].quoted && strings.EqualFold(args[i].text, want[i])
		}
		if !ok {
			return Errorf(CodeSyntaxError, "%s: want %s", cmd, usage)
		}
		return nil
	}
}

// backupCmd is BACKUP FULL and BACKUP INCREMENTAL: a job, answered with
// its id at once.
func (c *Console) backupCmd(_ context.Context, args []token) (*answer, error) {
	kind := strings.ToLower(args[0].text)
	tag := "BACKUP " + strings.ToUpper(kind)
	b, err := c.backupsOf(tag)
	if err != nil {
		return nil, err
	}
	return c.startJob("BACKUP", jobKindBackup, kind, b.backupJob(backup.Kind(kind)))
}

// listBackups reads the catalog for cmd.
func (b *Backups) listBackups(ctx context.Context, cmd string) ([]backup.Manifest, error) {
	ctx, cancel := context.WithTimeout(ctx, backupListTimeout)
	defer cancel()
	list, err := b.mgr.List(ctx)
	if err != nil {
		return nil, backupError(cmd, err)
	}
	return list, nil
}

// findBackup resolves id (LATEST: the newest) in the catalog; an unknown
// id is 42704.
func (b *Backups) findBackup(ctx context.Context, cmd, id string) (backup.Manifest, error) {
	list, err := b.listBackups(ctx, cmd)
	if err != nil {
		return backup.Manifest{}, err
	}
	if id == backupLatest {
		if len(list) == 0 {
			return backup.Manifest{}, Errorf(CodeObjectNotInPrerequisiteState, "%s: the repository has no backup yet", cmd).
				withHint("BACKUP FULL takes one")
		}
		return list[len(list)-1], nil
	}
	for _, m := range list {
		if m.ID == id {
			return m, nil
		}
	}
	return backup.Manifest{}, Errorf(CodeUndefinedObject, "%s: backup %q does not exist", cmd, id).
		withHint("SHOW BACKUPS lists the backups the repository has")
}

// leaderNotice says which pgshield runs the schedule.
func leaderNotice(s *Scheduler) string {
	l := s.Leader()
	switch {
	case l.Leading && l.Lock == "none":
		return "this pgshield runs the backup schedule (no leader lock: it is the only pgshield of the database)"
	case l.Leading:
		return fmt.Sprintf("this pgshield leads: it runs the scheduled backup jobs and WAL archiving (leader lock held on the primary since %s)",
			l.Since.UTC().Format(timeLayout))
	case l.Err != "":
		return "this pgshield does not lead the backup schedule: " + l.Err
	case l.Since.IsZero():
		return "this pgshield has not tried to lead the backup schedule yet"
	}
	return "another pgshield leads: the scheduled backup jobs and WAL archiving run there"
}

// showBackups is SHOW BACKUPS: the catalog, oldest first.
func (c *Console) showBackups(ctx context.Context, _ []token) (*answer, error) {
	const cmd = "SHOW BACKUPS"
	b, err := c.backupsOf(cmd)
	if err != nil {
		return nil, err
	}
	list, err := b.listBackups(ctx, cmd)
	if err != nil {
		return nil, err
	}
	res := &Result{Columns: Cols(
		"id", TypeText, "kind", TypeText, "started", TypeTimestamptz, "finished", TypeTimestamptz,
		"start_lsn", TypeText, "stop_lsn", TypeText, "size", TypeInt8, "key_id", TypeText,
		"verified", TypeBool, "verified_at", TypeTimestamptz, "parent", TypeText,
	)}
	for _, m := range list {
		var verified, verifiedAt any
		if v := m.Verified; v != nil {
			verified, verifiedAt = v.OK, v.At
		}
		res.Rows = append(res.Rows, []any{m.ID, string(m.Kind), m.Started, m.Finished, nullIf(m.StartLSN), nullIf(m.StopLSN),
			m.Size, nullIf(m.KeyID), verified, verifiedAt, nullIf(m.Parent)})
	}
	return &answer{res: res, tag: showTag, notices: []string{leaderNotice(b.sched)}}, nil
}

// showWAL is SHOW WAL: the archiver of this pgshield.
func (c *Console) showWAL(context.Context, []token) (*answer, error) {
	b, err := c.backupsOf("SHOW WAL")
	if err != nil {
		return nil, err
	}
	st := b.mgr.WALStatus()
	var lag any
	if st.Running || !st.LastArchived.IsZero() {
		lag = roundDuration(st.Lag).String()
	}
	res := &Result{Columns: Cols("running", TypeBool, "last_segment", TypeText, "last_archived", TypeTimestamptz, "lag", TypeText, "error", TypeText),
		Rows: [][]any{{st.Running, nullIf(st.LastSegment), st.LastArchived, lag, nullIf(st.Err)}}}
	var notes []string
	switch l := b.sched.Leader(); {
	case !b.wal:
		notes = append(notes, "WAL archiving is off (backup.wal in the configuration): point-in-time RESTORE needs it")
	case !l.Leading:
		notes = append(notes, "WAL is archived by the pgshield that leads the backup schedule, not this one: "+leaderNotice(b.sched))
	}
	return &answer{res: res, tag: showTag, notices: notes}, nil
}

// showSchedule is SHOW SCHEDULE.
func (c *Console) showSchedule(context.Context, []token) (*answer, error) {
	b, err := c.backupsOf("SHOW SCHEDULE")
	if err != nil {
		return nil, err
	}
	leading := b.sched.Leader().Leading
	res := &Result{Columns: Cols("job", TypeText, "schedule", TypeText, "next_run", TypeTimestamptz, "leader", TypeBool,
		"last_run", TypeTimestamptz, "last_job", TypeInt8, "last_result", TypeText)}
	for _, r := range b.sched.Schedule() {
		res.Rows = append(res.Rows, []any{r.Name, r.Spec, r.Next, leading, r.LastRun, nullIf(r.LastJob), nullIf(r.LastResult)})
	}
	return &answer{res: res, tag: showTag, notices: []string{leaderNotice(b.sched)}}, nil
}

// restoreRequest is RESTORE's arguments.
type restoreRequest struct {
	id   string
	at   time.Time
	lsn  string
	dir  string
	port int
}

var lsnPattern = regexp.MustCompile(`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`)

const restoreUsage = "RESTORE <id>|LATEST [TO TIMESTAMP '<time>' | TO LSN '<lsn>'] INTO '<directory>' [PORT <port>]"

// parseRestore reads RESTORE's arguments; now is the clock a target time
// must not be after.
func parseRestore(args []token, now time.Time) (restoreRequest, error) {
	syntax := func(format string, a ...any) error {
		return Errorf(CodeSyntaxError, "RESTORE "+format, a...).withHint(restoreUsage)
	}
	if len(args) == 0 || args[0].isEq() || args[0].text == "" {
		return restoreRequest{}, syntax("needs a backup id (or LATEST) and INTO '<directory>'")
	}
	r := restoreRequest{id: args[0].text}
	if !args[0].quoted && strings.EqualFold(r.id, backupLatest) {
		r.id = backupLatest
	}
	seen := map[string]bool{}
	for i := 1; i < len(args); {
		word := strings.ToUpper(args[i].text)
		if args[i].quoted || seen[word] {
			return restoreRequest{}, syntax("takes %s at most once, in the order %s", args[i].text, restoreUsage)
		}
		seen[word] = true
		switch word {
		case "TO":
			if seen["INTO"] || i+2 >= len(args) || args[i+1].quoted {
				return restoreRequest{}, syntax("TO needs TIMESTAMP '<time>' or LSN '<lsn>', before INTO")
			}
			what, val := strings.ToUpper(args[i+1].text), args[i+2].text
			switch what {
			case "TIMESTAMP":
				t, ok := parseTimestamp(val)
				if !ok {
					return restoreRequest{}, Errorf(CodeInvalidParameterValue, "RESTORE: invalid time %q: want '2006-01-02 15:04:05' (UTC unless it gives an offset, +02 or Z)", val)
				}
				if t.After(now) {
					return restoreRequest{}, Errorf(CodeInvalidParameterValue, "RESTORE: the time %s is in the future", t.UTC().Format(timeLayout))
				}
				r.at = t
			case "LSN":
				if !lsnPattern.MatchString(val) {
					return restoreRequest{}, Errorf(CodeInvalidParameterValue, "RESTORE: invalid LSN %q: want two hexadecimal numbers, such as '0/3000060'", val)
				}
				r.lsn = strings.ToUpper(val)
			default:
				return restoreRequest{}, syntax("TO needs TIMESTAMP '<time>' or LSN '<lsn>', got %s", args[i+1].text)
			}
			i += 3
		case "INTO":
			if i+1 >= len(args) || args[i+1].isEq() || args[i+1].text == "" {
				return restoreRequest{}, syntax("INTO needs a directory: INTO '<directory>'")
			}
			r.dir = args[i+1].text
			if !filepath.IsAbs(r.dir) {
				return restoreRequest{}, Errorf(CodeInvalidParameterValue, "RESTORE: the directory %q is not an absolute path", r.dir)
			}
			r.dir = filepath.Clean(r.dir)
			i += 2
		case "PORT":
			if i+1 >= len(args) {
				return restoreRequest{}, syntax("PORT needs a port number")
			}
			p, err := strconv.Atoi(args[i+1].text)
			if err != nil || p < 1 || p > 65535 {
				return restoreRequest{}, Errorf(CodeInvalidParameterValue, "RESTORE: invalid port %q: want a number from 1 to 65535", args[i+1].text)
			}
			r.port = p
			i += 2
		default:
			return restoreRequest{}, syntax("does not take %q", args[i].text)
		}
	}
	if r.dir == "" {
		return restoreRequest{}, syntax("needs INTO '<directory>': where the restored cluster goes")
	}
	return r, nil
}

// timestampLayouts are the forms of RESTORE … TO TIMESTAMP, as
// PostgreSQL's timestamptz input writes them.
var timestampLayouts = []string{
	"2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07", "2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999Z07:00", "2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04Z07:00", "2006-01-02 15:04", "2006-01-02",
}

// parseTimestamp reads a target time; without an offset it is UTC.
func parseTimestamp(s string) (time.Time, bool) {
	s = strings.TrimSpace(s)
	if strings.HasSuffix(s, " UTC") {
		s = strings.TrimSuffix(s, " UTC") + "Z"
	}
	for _, layout := range timestampLayouts {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// checkRestoreTarget refuses a directory that has files and a port that
// is in use on the loopback interface.
func checkRestoreTarget(r restoreRequest) error {
	entries, err := os.ReadDir(r.dir)
	switch {
	case err == nil && len(entries) > 0:
		return Errorf(CodeInvalidParameterValue, "RESTORE: the directory %s is not empty", r.dir).
			withHint("restore into a new directory (it is created) or an empty one")
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return Errorf(CodeInvalidParameterValue, "RESTORE: the directory %s cannot be used: %v", r.dir, err)
	}
	if r.port != 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)))
		if err != nil {
			return Errorf(CodeInvalidParameterValue, "RESTORE: port %d is in use", r.port).withHint("choose a free port")
		}
		_ = ln.Close()
	}
	return nil
}

// restoreOutcome is what a RESTORE job did, for the command that waits.
type restoreOutcome struct{ res backup.RestoreResult }

// restore is RESTORE: a job that the command waits for, answered with
// where the restored cluster is and how long it took.
func (c *Console) restore(ctx context.Context, args []token) (*answer, error) {
	const tag = "RESTORE"
	now := time.Now()
	if b := c.src.Backups(); b != nil {
		now = b.now()
	}
	r, err := parseRestore(args, now)
	if err != nil {
		return nil, err
	}
	b, err := c.backupsOf(tag)
	if err != nil {
		return nil, err
	}
	if err := checkRestoreTarget(r); err != nil {
		return nil, err
	}
	// An unknown id is 42704 now, not a failed job; LATEST with no
	// backup at all 55000.
	id := r.id
	if _, err := b.findBackup(ctx, tag, id); err != nil {
		return nil, err
	}
	var out restoreOutcome
	opts := backup.RestoreOptions{ID: id, TargetTime: r.at, TargetLSN: r.lsn, Dir: r.dir, Port: r.port}
	fn := func(ctx context.Context, report func(JobProgress)) error {
		res, err := b.mgr.Restore(ctx, opts, progress(report))
		if err != nil {
			return fmt.Errorf("restore of backup %s into %s: %w", id, r.dir, err)
		}
		out.res = res
		report(JobProgress{Unit: "bytes", Detail: truncateUTF8(restoreSummary(res), maxJobDetail)})
		return nil
	}
	return c.runJob(ctx, tag, jobKindRestore, r.dir, fn, func() []string { return []string{restoreSummary(out.res)} })
}

func restoreSummary(res backup.RestoreResult) string {
	where := "in " + res.Dir
	if res.Port != 0 {
		where += fmt.Sprintf(", running on 127.0.0.1:%d (psql -h 127.0.0.1 -p %d)", res.Port, res.Port)
	}
	s := fmt.Sprintf("backup %s restored %s; took %s", res.Backup, where, roundDuration(res.Took))
	if res.ReachedLSN != "" {
		s += ", recovered to LSN " + res.ReachedLSN
	}
	return s
}

// verifyBackup is VERIFY BACKUP <id>|LATEST: a job the command waits
// for; the result is recorded in the backup's manifest (SHOW BACKUPS).
func (c *Console) verifyBackup(ctx context.Context, args []token) (*answer, error) {
	const tag = "VERIFY BACKUP"
	b, err := c.backupsOf(tag)
	if err != nil {
		return nil, err
	}
	id := args[1].text
	if !args[1].quoted && strings.EqualFold(id, backupLatest) {
		id = backupLatest
	}
	m, err := b.findBackup(ctx, tag, id)
	if err != nil {
		return nil, err
	}
	var out verifyOutcome
	return c.runJob(ctx, "VERIFY", jobKindVerify, m.ID, b.verifyJob(m.ID, &out), func() []string {
		return []string{fmt.Sprintf("backup %s verified at %s: %s", out.id, out.res.At.UTC().Format(timeLayout), out.res.Detail)}
	})
}

// deleteExpired is DELETE EXPIRED BACKUPS: a job the command waits for,
// answered with what it deleted.
func (c *Console) deleteExpired(ctx context.Context, _ []token) (*answer, error) {
	const tag = "DELETE EXPIRED BACKUPS"
	b, err := c.backupsOf(tag)
	if err != nil {
		return nil, err
	}
	var deleted []string
	return c.runJob(ctx, "DELETE", jobKindRetention, targetExpired, b.retentionJob(&deleted), func() []string {
		r := b.retention
		return []string{deletedSummary(deleted), fmt.Sprintf("kept: full backups %s, incremental %s, WAL %s (backup.retention)",
			humanDuration(r.FullKeep), humanDuration(r.IncrementalKeep), humanDuration(r.WALKeep))}
	})
}

// deletedSummary is what DeleteExpired deleted: the backups by id (the
// first 50), the WAL files ("wal/<name>") counted, with the first and last.
func deletedSummary(deleted []string) string {
	var backups, wal []string
	for _, d := range deleted {
		if name, ok := strings.CutPrefix(d, "wal/"); ok {
			wal = append(wal, name)
		} else {
			backups = append(backups, d)
		}
	}
	if len(deleted) == 0 {
		return "nothing had expired: nothing deleted"
	}
	var parts []string
	switch n := len(backups); {
	case n > maxDeletedNotice:
		parts = append(parts, fmt.Sprintf("%d backups: %s and %d more", n, strings.Join(backups[:maxDeletedNotice], ", "), n-maxDeletedNotice))
	case n > 0:
		parts = append(parts, fmt.Sprintf("%s: %s", plural(n, "backup"), strings.Join(backups, ", ")))
	}
	switch n := len(wal); {
	case n > 1:
		parts = append(parts, fmt.Sprintf("%d WAL files (%s to %s)", n, wal[0], wal[n-1]))
	case n == 1:
		parts = append(parts, "1 WAL file ("+wal[0]+")")
	}
	return "deleted " + strings.Join(parts, " and ")
}

// runJob starts a job as startJob does and waits for it to end: a job
// that succeeds answers its id with the NOTICEs of done; one that fails
// answers its error. The job goes on if the admin connection closes; at
// shutdown the wait ends and the answer says it goes on.
func (c *Console) runJob(ctx context.Context, tag, kind, target string, fn JobFunc, done func() []string) (*answer, error) {
	var jobErr error
	ans, err := c.startJob(tag, kind, target, func(ctx context.Context, report func(JobProgress)) error {
		jobErr = fn(ctx, report)
		return jobErr
	})
	if err != nil {
		return nil, err
	}
	id := ans.res.Rows[0][0].(int64)
	info, err := c.jobs.Wait(ctx, id)
	switch {
	case err != nil:
		ans.notices = append(ans.notices, fmt.Sprintf("job %d goes on without this session; SHOW JOB %d follows it", id, id))
		return ans, nil
	case info.State == JobSucceeded:
		ans.notices = append(ans.notices, done()...)
		return ans, nil
	case info.State == JobCancelled:
		return nil, &Error{Code: CodeQueryCanceled, Err: jobErr,
			Message: fmt.Sprintf("%s: job %d (%s) %s", tag, id, describeJob(kind, target), info.Err)}
	}
	e := *backupError(tag, jobErr) // a copy: it may be the job's own *Error
	e.Message = fmt.Sprintf("%s: job %d (%s) failed: %s", tag, id, describeJob(kind, target), info.Err)
	return nil, &e
}

// backupError is a failure of the backup package as the console reports
// it: a corrupt object or a backup that failed verification XX001
// (data_corrupted), a missing object 42704, a wrong key 55000; else as
// sourceError.
func backupError(cmd string, err error) *Error {
	switch {
	case err == nil:
		return &Error{Code: CodeInternalError, Message: cmd + " failed"}
	case errors.Is(err, backup.ErrCorrupt), errors.Is(err, errBackupBad):
		return &Error{Code: codeDataCorrupted, Err: err, Message: cmd + ": " + err.Error()}
	case errors.Is(err, backup.ErrWrongKey):
		return (&Error{Code: CodeObjectNotInPrerequisiteState, Err: err, Message: cmd + ": " + err.Error()}).
			withHint("BACKUP_ENCRYPTION_KEY is not the key the backup was sealed with (key_id in SHOW BACKUPS)")
	case errors.Is(err, backup.ErrNotFound):
		return &Error{Code: CodeUndefinedObject, Err: err, Message: cmd + ": " + err.Error()}
	}
	return sourceError(cmd, err)
}

// codeDataCorrupted is PostgreSQL's data_corrupted.
const codeDataCorrupted = "XX001"

// humanBytes is n in binary units, for messages.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// roundDuration is d to the millisecond below a second, to the second
// above.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Second)
}

// humanDuration is d in days when it is whole days.
func humanDuration(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return plural(int(d/(24*time.Hour)), "day")
	}
	return d.String()
}
