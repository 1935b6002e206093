package admin

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/robfig/cron/v3"
	"go.uber.org/zap"
)

// The scheduler starts jobs on cron schedules (in UTC) through the job
// registry, as a console command would: the backups of the backup:
// section first. With several pgshields in front of one database each
// has the same schedule, and a scheduled job must run on one of them
// only: the leader, the pgshield holding a session advisory lock
// (pg_try_advisory_lock(LeaderLockKey)) on a connection of its own to the
// primary. The others try again every few seconds; when the leader's
// connection ends (it died, the primary failed over, or its backend was
// terminated) its lock ends with it and the next to try leads. A leader
// checks its connection as often, and gives leadership up when the
// connection fails or the server it reaches is in recovery (a demoted
// primary), so that at most one leads for longer than a check.

// LeaderLockKey is the advisory lock key of the scheduler's leader, in
// the database whose primary the scheduler's connection reaches: the
// bytes of "pgshield" as a big-endian int8.
const LeaderLockKey int64 = 0x7067736869656c64

// ScheduleOff disables a scheduled job.
const ScheduleOff = "off"

// defaultLeaderRetry is how often a follower tries to lead and a leader
// checks its connection.
const defaultLeaderRetry = 5 * time.Second

// leaderQueryTimeout bounds one try or check on the leader connection.
const leaderQueryTimeout = 5 * time.Second

// maxScheduleSleep bounds the scheduler's sleep, so that it notices a
// jump of the clock (a suspended machine, a clock set) within as long.
const maxScheduleSleep = 30 * time.Second

// cronParser reads the schedules: five fields (minute hour day-of-month
// month day-of-week) or a descriptor (@daily, @every 1h); the
// configuration checks them with the same parser.
func cronParser() cron.Parser {
	return cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
}

// ParseSchedule checks a cron expression as the scheduler reads it;
// "off" is valid (the job is not scheduled).
func ParseSchedule(spec string) error {
	if spec == ScheduleOff {
		return nil
	}
	_, err := cronParser().Parse(spec)
	return err
}

// ScheduledJob is one job of the scheduler: when due, it starts Run as a
// job of Kind and Target, unless a job of Kind runs (another backup, say).
type ScheduledJob struct {
	Name         string // in SHOW SCHEDULE: full, incremental, verify, retention
	Spec         string // a cron expression in UTC, or "off"
	Kind, Target string
	Run          JobFunc
}

// SchedulerConfig is what NewScheduler needs.
type SchedulerConfig struct {
	Jobs    *Jobs
	Entries []ScheduledJob
	// Connect opens a connection of its own to the primary, for the
	// leader lock; each try after a failure calls it again, so it must
	// reach the primary in service then. nil: no lock, this pgshield
	// always leads (it is the only one).
	Connect func(ctx context.Context) (*pgconn.PgConn, error)
	// Retry is how often a follower tries to lead and a leader checks its
	// connection (0: 5 s).
	Retry time.Duration
	// WhileLeading, if set, runs in its own goroutine each time this
	// pgshield becomes the leader; its context ends when it no longer
	// leads (and at the end of Run), which waits for it to return.
	WhileLeading func(ctx context.Context)
	Now          func() time.Time // nil: time.Now
	Log          *zap.Logger      // nil: none
}

// Scheduler runs the scheduled jobs on the leader.
type Scheduler struct {
	jobs    *Jobs
	connect func(ctx context.Context) (*pgconn.PgConn, error)
	retry   time.Duration
	while   func(ctx context.Context)
	now     func() time.Time
	log     *zap.Logger

	mu      sync.Mutex // guards the fields below
	entries []*scheduleEntry
	leader  Leadership
	running bool // Run has been called
}

// scheduleEntry is a ScheduledJob and when it runs.
type scheduleEntry struct {
	ScheduledJob
	sched   cron.Schedule // nil: off
	next    time.Time     // zero: off
	lastRun time.Time     // when it was last due
	lastJob int64         // the job it started then; 0: none
	lastMsg string        // what happened then
}

// Leadership is whether this pgshield leads the schedule.
type Leadership struct {
	Leading bool
	// Since is when it became the leader, or when it last found it is
	// not (zero before the first try).
	Since time.Time
	// Lock says how leadership is decided: "" the advisory lock on the
	// primary, "none" no lock (this pgshield always leads).
	Lock string
	// Err is why the last try or check failed (the primary cannot be
	// reached, it is in recovery); "" when it succeeded.
	Err string
}

// ScheduleRow is one scheduled job, for SHOW SCHEDULE.
type ScheduleRow struct {
	Name, Spec, Kind, Target string
	Next                     time.Time // zero when off
	LastRun                  time.Time // zero before it was first due
	LastJob                  int64     // the job started then, 0: none
	LastResult               string    // "started", or why it was skipped
}

// NewScheduler checks the schedules; Run runs them.
func NewScheduler(cfg SchedulerConfig) (*Scheduler, error) {
	if cfg.Jobs == nil {
		return nil, errors.New("scheduler: no job registry")
	}
	s := &Scheduler{jobs: cfg.Jobs, connect: cfg.Connect, retry: cfg.Retry, while: cfg.WhileLeading, now: cfg.Now, log: cfg.Log}
	if s.retry <= 0 {
		s.retry = defaultLeaderRetry
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.connect == nil {
		s.leader = Leadership{Leading: true, Lock: "none"}
	}
	parser := cronParser()
	now := s.now()
	var errs []error
	seen := map[string]bool{}
	for _, e := range cfg.Entries {
		switch {
		case e.Name == "" || seen[e.Name]:
			errs = append(errs, fmt.Errorf("scheduler: a scheduled job needs a name of its own (%q)", e.Name))
			continue
		case e.Kind == "" || e.Run == nil:
			errs = append(errs, fmt.Errorf("scheduler: scheduled job %s needs a kind and a function", e.Name))
			continue
		}
		seen[e.Name] = true
		entry := &scheduleEntry{ScheduledJob: e}
		if e.Spec != ScheduleOff {
			sched, err := parser.Parse(e.Spec)
			if err != nil {
				errs = append(errs, fmt.Errorf("scheduler: schedule of %s %q: %w (a cron expression in UTC, or off)", e.Name, e.Spec, err))
				continue
			}
			entry.sched, entry.next = sched, sched.Next(now.UTC())
		}
		s.entries = append(s.entries, entry)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// Leader says whether this pgshield leads the schedule now.
func (s *Scheduler) Leader() Leadership {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leader
}

// Schedule lists the scheduled jobs in the order of the configuration.
func (s *Scheduler) Schedule() []ScheduleRow {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ScheduleRow, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, ScheduleRow{Name: e.Name, Spec: e.Spec, Kind: e.Kind, Target: e.Target, Next: e.next,
			LastRun: e.lastRun, LastJob: e.lastJob, LastResult: e.lastMsg})
	}
	return out
}

// Run runs the schedule and, with a Connect, the leadership until ctx
// ends; then it gives leadership up (closing its connection ends the
// lock) and returns nil. It runs once.
func (s *Scheduler) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("scheduler: Run called twice")
	}
	s.running = true
	s.mu.Unlock()

	var wg sync.WaitGroup
	if s.connect != nil {
		wg.Go(func() { s.lead(ctx) })
	} else if s.while != nil {
		wg.Go(func() { s.while(ctx) })
	}
	for {
		s.fireDue(s.now())
		t := time.NewTimer(s.sleep(s.now()))
		select {
		case <-ctx.Done():
			t.Stop()
			wg.Wait()
			return nil
		case <-t.C:
		}
	}
}

// sleep is how long to wait from now until the next job is due.
func (s *Scheduler) sleep(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := maxScheduleSleep
	for _, e := range s.entries {
		if !e.next.IsZero() {
			d = min(d, e.next.Sub(now))
		}
	}
	// Past the minute the job is due in: cron's resolution is a minute,
	// so a few milliseconds late is on time.
	return max(d, 10*time.Millisecond)
}

// fireDue starts every job due at now and sets when each runs next. A
// job due while this pgshield does not lead, or while a job of its kind
// runs, is skipped until its next time.
func (s *Scheduler) fireDue(now time.Time) {
	s.mu.Lock()
	var due []*scheduleEntry
	for _, e := range s.entries {
		if !e.next.IsZero() && !now.Before(e.next) {
			due = append(due, e)
			e.next = e.sched.Next(now.UTC())
		}
	}
	leading := s.leader.Leading
	s.mu.Unlock()
	for _, e := range due {
		id, msg := s.fire(e, leading)
		s.mu.Lock()
		e.lastRun, e.lastJob, e.lastMsg = now, id, msg
		s.mu.Unlock()
	}
}

// fire starts e's job, unless it must be skipped; it returns the job
// started and what happened.
func (s *Scheduler) fire(e *scheduleEntry, leading bool) (int64, string) {
	fields := []zap.Field{zap.String("scheduled", e.Name), zap.String("kind", e.Kind), zap.String("target", e.Target)}
	if !leading {
		s.log.Debug("scheduled job left to the leader", fields...)
		return 0, "skipped: another pgshield leads"
	}
	for _, info := range s.jobs.List() {
		if info.Kind == e.Kind && !info.State.Finished() {
			msg := fmt.Sprintf("skipped: job %d (%s) was running", info.ID, describeJob(info.Kind, info.Target))
			s.log.Info("scheduled job skipped", append(fields, zap.Int64("running", info.ID))...)
			return 0, msg
		}
	}
	id, err := s.jobs.Start(e.Kind, e.Target, e.Run)
	if err != nil {
		s.log.Warn("scheduled job not started", append(fields, zap.Error(err))...)
		if errors.Is(err, ErrJobRunning) {
			return 0, fmt.Sprintf("skipped: job %d (%s) was running", id, describeJob(e.Kind, e.Target))
		}
		return 0, "not started: " + err.Error()
	}
	s.log.Info("scheduled job started", append(fields, zap.Int64("job", id))...)
	return id, "started"
}

// lead is the leadership loop: try to lead, or check the lead, every
// retry, until ctx ends.
func (s *Scheduler) lead(ctx context.Context) {
	l := &leaderLoop{s: s}
	defer l.resign("")
	for {
		l.step(ctx)
		t := time.NewTimer(s.retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// leaderLoop is the state of lead, owned by its goroutine.
type leaderLoop struct {
	s       *Scheduler
	conn    *pgconn.PgConn
	leading bool
	stop    context.CancelFunc // ends WhileLeading's context
	done    chan struct{}      // closed when WhileLeading returned
}

// step tries to become the leader, or, leading, checks the connection.
func (l *leaderLoop) step(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	if l.conn == nil {
		cctx, cancel := context.WithTimeout(ctx, leaderQueryTimeout)
		conn, err := l.s.connect(cctx)
		cancel()
		if err != nil {
			l.follow(fmt.Sprintf("cannot connect to the primary: %v", err))
			return
		}
		l.conn = conn
	}
	qctx, cancel := context.WithTimeout(ctx, leaderQueryTimeout)
	defer cancel()
	if l.leading {
		rows, err := execParams(qctx, l.conn, "SELECT pg_is_in_recovery()")
		switch {
		case ctx.Err() != nil: // Run ends: lead resigns
		case err != nil:
			l.resign(fmt.Sprintf("lost the connection holding the leader lock: %v", err))
		case len(rows) != 1 || string(rows[0][0]) != "f":
			l.resign("the server holding the leader lock is in recovery (no longer the primary)")
		}
		return
	}
	rows, err := execParams(qctx, l.conn, "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_try_advisory_lock($1) END",
		strconv.AppendInt(nil, LeaderLockKey, 10))
	switch {
	case ctx.Err() != nil:
	case err != nil:
		l.drop()
		l.follow(fmt.Sprintf("cannot try the leader lock: %v", err))
	case len(rows) != 1 || rows[0][0] == nil:
		l.drop()
		l.follow("the server reached is in recovery, not the primary")
	case string(rows[0][0]) == "t":
		l.become(ctx)
	default:
		l.follow("") // another pgshield holds the lock
	}
}

// become makes this pgshield the leader.
func (l *leaderLoop) become(ctx context.Context) {
	s := l.s
	l.leading = true
	s.mu.Lock()
	s.leader = Leadership{Leading: true, Since: s.now()}
	s.mu.Unlock()
	s.log.Info("this pgshield leads the schedule", zap.Int64("lock", LeaderLockKey), zap.Uint32("backend_pid", l.conn.PID()))
	if s.while != nil {
		wctx, stop := context.WithCancel(ctx)
		l.stop, l.done = stop, make(chan struct{})
		go func() {
			defer close(l.done)
			s.while(wctx)
		}()
	}
}

// follow records that this pgshield does not lead, and why ("" another
// one holds the lock).
func (l *leaderLoop) follow(why string) {
	if l.setFollower(why) && why != "" {
		l.s.log.Warn("this pgshield cannot lead the schedule", zap.String("reason", why))
	}
}

// setFollower records that this pgshield does not lead, and reports
// whether that changed what Leader says.
func (l *leaderLoop) setFollower(why string) bool {
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := s.leader.Leading || s.leader.Since.IsZero() || s.leader.Err != why
	if changed {
		s.leader = Leadership{Since: s.now(), Err: why}
	}
	return changed
}

// resign gives leadership up (why "": at the end of Run): WhileLeading
// is stopped and waited for, and the connection closed, which ends the
// lock if the server still has it.
func (l *leaderLoop) resign(why string) {
	if l.stop != nil {
		l.stop()
		<-l.done
		l.stop, l.done = nil, nil
	}
	l.drop()
	if l.leading {
		l.leading = false
		l.s.log.Warn("this pgshield no longer leads the schedule", zap.String("reason", orDefault(why, "stopping")))
		l.setFollower(why)
		return
	}
	l.follow(why)
}

// drop closes the connection.
func (l *leaderLoop) drop() {
	if l.conn != nil {
		closeConn(l.conn)
		l.conn = nil
	}
}
