package admin

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
)

// Jobs is the registry of the long jobs the console hosts: re-encryption
// of a table after a key rotation first, later backups, maintenance and
// migrations. A job is a JobFunc run in its own goroutine; the registry
// keeps its state and progress for SHOW JOBS and SHOW JOB, and cancels it
// on CANCEL JOB and at Close. It does not schedule: a scheduler calls
// Start when a job is due, as a console command does.
//
// A console command that starts a job is an entry in commandTable whose
// run function calls (*Console).startJob, which answers the job's id (one
// row, column id) and a NOTICE naming SHOW JOB and CANCEL JOB:
//
//	{name: "REENCRYPT", usage: "REENCRYPT <table>", run: (*Console).reencrypt,
//		args: exactly(1, "a table: REENCRYPT <table>", "one table", "a table with encrypted columns, as schema.table"),
//		help: "re-encrypt a table's encrypted columns with the current key, in the background (SHOW JOBS follows it)"},
//
//	func (c *Console) reencrypt(_ context.Context, args []token) (*answer, error) {
//		table := args[0].text
//		// Check what can be checked now (the table exists, it has encrypted
//		// columns): an error here is the command's, with its SQLSTATE.
//		return c.startJob("REENCRYPT", "reencrypt", table, func(ctx context.Context, report func(JobProgress)) error {
//			// ctx is the job's, not the command's: the job outlives the
//			// admin connection, and ends on CANCEL JOB or at shutdown.
//			report(JobProgress{Total: rows, Unit: "rows", Detail: "batch 1 of 40"})
//			…
//			return ctx.Err() // when cancelled; nil when done; an error when it failed
//		})
//	}
//
// One job of a kind and target runs at a time: a second REENCRYPT of the
// same table answers 55000 naming the job that runs. A program (cmd/pgshield)
// makes one registry with NewJobs, gives it to NewConsole with WithJobs,
// and calls Close at shutdown after the console's Shutdown. With
// WithStore the registry keeps its jobs in a file across restarts
// (jobstore.go).
type Jobs struct {
	log *zap.Logger
	now func() time.Time

	// ctx is the parent of every job's context; Close cancels it with
	// errJobsShutdown as the cause.
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // one per job goroutine

	mu       sync.Mutex // guards the fields below; taken before a job's mu
	nextID   int64
	jobs     map[int64]*job  // the jobs not ended and the finished ones kept
	running  map[jobKey]*job // the job of each kind and target not ended
	finished []int64         // ids of the finished jobs kept, in the order they ended
	closed   bool            // Close began: Start refuses
	// cancelWait is how long CANCEL JOB waits for the job to return before
	// it answers that the cancellation is requested only.
	cancelWait time.Duration

	store *JobStore // where the jobs are kept across restarts; nil: nowhere (jobstore.go)
}

// maxFinishedJobs is how many finished jobs the registry keeps for SHOW
// JOBS; the oldest to end is dropped first. Jobs not ended are always kept.
const maxFinishedJobs = 100

// maxJobDetail bounds JobProgress.Detail, a short line.
const maxJobDetail = 200

// defaultCancelWait is how long CANCEL JOB waits for a job to return.
const defaultCancelWait = 5 * time.Second

var (
	// ErrJobRunning is wrapped by Start when a job of the same kind and
	// target has not ended; Start returns that job's id with it.
	ErrJobRunning = errors.New("a job of this kind and target is already running")
	// ErrJobNotFound: no job has this id (or it ended long ago and is no
	// longer kept).
	ErrJobNotFound = errors.New("no such job")
	// ErrJobFinished: the job has already ended.
	ErrJobFinished = errors.New("the job has already finished")
	// ErrJobsClosed is returned by Start once Close has begun.
	ErrJobsClosed = errors.New("the job registry is closed: pgshield is shutting down")

	// The causes a job's context is cancelled with, which its Err says.
	errJobCancelled = errors.New("cancelled by CANCEL JOB")
	errJobsShutdown = errors.New("cancelled: pgshield is shutting down")
)

// JobState is where a job is in its life. A job goes from running to one
// of the three final states; queued is for a job accepted but not started,
// which Start never leaves (it starts the job at once).
type JobState uint8

const (
	JobQueued JobState = iota
	JobRunning
	JobSucceeded
	JobFailed
	JobCancelled
)

func (s JobState) String() string {
	switch s {
	case JobQueued:
		return "queued"
	case JobRunning:
		return "running"
	case JobSucceeded:
		return "succeeded"
	case JobFailed:
		return "failed"
	case JobCancelled:
		return "cancelled"
	}
	return "JobState(" + strconv.Itoa(int(s)) + ")"
}

// Finished reports whether s is a final state.
func (s JobState) Finished() bool { return s >= JobSucceeded }

// JobProgress is what a job reports of its progress.
type JobProgress struct {
	Done, Total int64  // units done and expected (Total 0: unknown)
	Unit        string // "rows", "bytes"
	// Detail is a short line (at most 200 bytes are kept): what the job is
	// doing now. Never values from SQL: it is shown to every operator and
	// logged nowhere else.
	Detail string
}

// JobFunc is a job's work. It reports progress through report (cheap, may
// be called often, from the job's goroutine or others) and must return
// promptly when ctx is cancelled (CANCEL JOB, shutdown), with ctx.Err()
// or an error wrapping it: an error returned while ctx is cancelled makes
// the job cancelled, nil makes it succeeded, another error failed (its
// message is shown in SHOW JOBS, so it must not carry SQL values either).
type JobFunc func(ctx context.Context, report func(JobProgress)) error

// JobInfo is a snapshot of one job.
type JobInfo struct {
	ID           int64
	Kind, Target string
	State        JobState
	Progress     JobProgress
	Started      time.Time // when it began to run
	Ended        time.Time // zero while it has not ended
	Err          string    // why it failed or was cancelled; "" otherwise
	// Percent is Progress.Done/Total in percent (at most 100); 0 when
	// Total is 0 (unknown).
	Percent float64
	// ETA is the time left while the job runs: the time per unit between
	// its first and its latest progress report times the units left. 0
	// when unknown: before two reports, without a Total, without units
	// done since the first report, or once the job has ended.
	ETA time.Duration
}

type jobKey struct{ kind, target string }

// job is one job of the registry. Its goroutine (Jobs.run) and report
// write its mutable fields, under mu.
type job struct {
	id           int64
	kind, target string
	cancel       context.CancelCauseFunc
	done         chan struct{} // closed when the job has ended
	now          func() time.Time
	progressed   func() // called after a report (the store's); nil: none

	mu       sync.Mutex // guards the fields below
	state    JobState
	progress JobProgress
	started  time.Time
	ended    time.Time
	err      string
	reports  int64        // progress reports so far
	first    progressMark // at the first report
	last     progressMark // at the latest report
}

type progressMark struct {
	at   time.Time
	done int64
}

// NewJobs returns an empty registry, or with WithStore one holding the
// jobs its store kept. now is its clock (nil: time.Now); log gets a line
// when a job starts and ends (nil: none).
func NewJobs(log *zap.Logger, now func() time.Time, opts ...JobsOption) *Jobs {
	if log == nil {
		log = zap.NewNop()
	}
	if now == nil {
		now = time.Now
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	j := &Jobs{log: log, now: now, cancelWait: defaultCancelWait, ctx: ctx, cancel: cancel,
		jobs: make(map[int64]*job), running: make(map[jobKey]*job)}
	for _, opt := range opts {
		opt(j)
	}
	if j.store != nil {
		j.loadStore()
	}
	return j
}

// Start runs fn in its own goroutine as a new job of kind ("reencrypt") on
// target ("app.leads") and returns its id. At most one job of the same
// kind and target runs at a time: while one has not ended, Start returns
// its id and an error wrapping ErrJobRunning. After Close began it
// returns ErrJobsClosed.
func (j *Jobs) Start(kind, target string, fn JobFunc) (int64, error) {
	id, err := j.start(kind, target, fn)
	if err == nil {
		j.persist()
	}
	return id, err
}

func (j *Jobs) start(kind, target string, fn JobFunc) (int64, error) {
	if kind == "" || fn == nil {
		return 0, errors.New("start job: a job needs a kind and a function")
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return 0, ErrJobsClosed
	}
	key := jobKey{kind, target}
	if r := j.running[key]; r != nil {
		return r.id, fmt.Errorf("job %d (%s): %w", r.id, describeJob(kind, target), ErrJobRunning)
	}
	j.nextID++
	ctx, cancel := context.WithCancelCause(j.ctx)
	jb := &job{id: j.nextID, kind: kind, target: target, cancel: cancel, done: make(chan struct{}), now: j.now,
		state: JobRunning, started: j.now()}
	if j.store != nil {
		jb.progressed = j.progressed
	}
	j.jobs[jb.id] = jb
	j.running[key] = jb
	j.wg.Add(1)
	j.log.Info("job started", zap.Int64("job", jb.id), zap.String("kind", kind), zap.String("target", target))
	go j.run(ctx, jb, fn)
	return jb.id, nil
}

// run is a job's goroutine.
func (j *Jobs) run(ctx context.Context, jb *job, fn JobFunc) {
	defer j.wg.Done()
	err := j.call(ctx, jb, fn)
	state, msg := JobSucceeded, ""
	var pe *jobPanic
	switch {
	case errors.As(err, &pe):
		state, msg = JobFailed, err.Error()
	case err != nil && ctx.Err() != nil:
		state, msg = JobCancelled, context.Cause(ctx).Error()
	case err != nil:
		state, msg = JobFailed, err.Error()
	}
	jb.cancel(nil) // release the context's resources

	j.mu.Lock()
	jb.mu.Lock()
	jb.state, jb.err, jb.ended = state, msg, j.now()
	elapsed := jb.ended.Sub(jb.started)
	jb.mu.Unlock()
	delete(j.running, jobKey{jb.kind, jb.target})
	j.finished = append(j.finished, jb.id)
	for len(j.finished) > maxFinishedJobs {
		delete(j.jobs, j.finished[0])
		j.finished = slices.Delete(j.finished, 0, 1)
	}
	j.mu.Unlock()
	j.persist() // before Wait returns, so that what waited finds it stored

	// Logged before Wait returns, so that what waited finds the line.
	fields := []zap.Field{zap.Int64("job", jb.id), zap.String("kind", jb.kind), zap.String("target", jb.target),
		zap.String("state", state.String()), zap.Duration("elapsed", elapsed)}
	switch state {
	case JobSucceeded:
		j.log.Info("job ended", fields...)
	case JobCancelled:
		j.log.Info("job ended", append(fields, zap.String("reason", msg))...)
	default:
		j.log.Warn("job ended", append(fields, zap.String("error", msg))...)
	}
	close(jb.done)
}

// jobPanic is the error of a JobFunc that panicked.
type jobPanic struct{ value any }

func (p *jobPanic) Error() string { return fmt.Sprintf("panic: %v", p.value) }

// call runs fn, turning a panic into a *jobPanic logged with its stack.
func (j *Jobs) call(ctx context.Context, jb *job, fn JobFunc) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &jobPanic{value: r}
			j.log.Error("job panicked", zap.Int64("job", jb.id), zap.String("kind", jb.kind), zap.String("target", jb.target),
				zap.String("panic", fmt.Sprint(r)), zap.Stack("stack"))
		}
	}()
	return fn(ctx, jb.report)
}

// report records p; it is the report of the job's JobFunc. Reports after
// the job ended are dropped.
func (jb *job) report(p JobProgress) {
	p.Done, p.Total = max(p.Done, 0), max(p.Total, 0)
	p.Detail = truncateUTF8(p.Detail, maxJobDetail)
	at := jb.now()
	jb.mu.Lock()
	if jb.state.Finished() {
		jb.mu.Unlock()
		return
	}
	jb.progress = p
	jb.last = progressMark{at: at, done: p.Done}
	if jb.reports == 0 {
		jb.first = jb.last
	}
	jb.reports++
	jb.mu.Unlock()
	if jb.progressed != nil {
		jb.progressed()
	}
}

// infoLocked is the job's snapshot; jb.mu is held.
func (jb *job) infoLocked() JobInfo {
	p := jb.progress
	info := JobInfo{ID: jb.id, Kind: jb.kind, Target: jb.target, State: jb.state, Progress: p,
		Started: jb.started, Ended: jb.ended, Err: jb.err}
	if p.Total > 0 {
		info.Percent = min(100, 100*float64(p.Done)/float64(p.Total))
	}
	units, elapsed := jb.last.done-jb.first.done, jb.last.at.Sub(jb.first.at)
	if !jb.state.Finished() && jb.reports >= 2 && p.Total > p.Done && units > 0 && elapsed > 0 {
		eta := float64(elapsed) / float64(units) * float64(p.Total-p.Done)
		info.ETA = time.Duration(min(eta, math.MaxInt64/2))
	}
	return info
}

func (jb *job) info() JobInfo {
	jb.mu.Lock()
	defer jb.mu.Unlock()
	return jb.infoLocked()
}

// List returns every job not ended and the last 100 finished, newest
// (highest id) first.
func (j *Jobs) List() []JobInfo {
	j.mu.Lock()
	jobs := make([]*job, 0, len(j.jobs))
	for _, jb := range j.jobs {
		jobs = append(jobs, jb)
	}
	j.mu.Unlock()
	slices.SortFunc(jobs, func(a, b *job) int { return cmp.Compare(b.id, a.id) })
	out := make([]JobInfo, len(jobs))
	for i, jb := range jobs {
		out[i] = jb.info()
	}
	return out
}

// Get returns the job id, if the registry has it.
func (j *Jobs) Get(id int64) (JobInfo, bool) {
	jb := j.lookup(id)
	if jb == nil {
		return JobInfo{}, false
	}
	return jb.info(), true
}

func (j *Jobs) lookup(id int64) *job {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.jobs[id]
}

// Cancel cancels the context of job id and returns at once; the job ends
// cancelled when its JobFunc returns. Cancelling a job already cancelled
// but not yet returned is not an error. Errors wrap ErrJobNotFound or
// ErrJobFinished.
func (j *Jobs) Cancel(id int64) error {
	jb := j.lookup(id)
	if jb == nil {
		return fmt.Errorf("job %d: %w", id, ErrJobNotFound)
	}
	jb.mu.Lock()
	defer jb.mu.Unlock()
	if jb.state.Finished() {
		return fmt.Errorf("job %d (%s) %s: %w", id, describeJob(jb.kind, jb.target), jb.state, ErrJobFinished)
	}
	jb.cancel(errJobCancelled)
	return nil
}

// Wait waits until job id has ended and returns its final snapshot, or,
// when ctx ends first, the snapshot then and an error wrapping ctx's.
func (j *Jobs) Wait(ctx context.Context, id int64) (JobInfo, error) {
	jb := j.lookup(id)
	if jb == nil {
		return JobInfo{}, fmt.Errorf("job %d: %w", id, ErrJobNotFound)
	}
	select {
	case <-jb.done:
		return jb.info(), nil
	case <-ctx.Done():
		return jb.info(), fmt.Errorf("wait for job %d: %w", id, ctx.Err())
	}
}

// Close refuses new jobs, cancels every job and waits until they have
// returned or ctx ends (then it returns an error wrapping ctx's; the jobs
// still running end cancelled when they return). It may be called again.
func (j *Jobs) Close(ctx context.Context) error {
	j.mu.Lock()
	j.closed = true
	j.mu.Unlock()
	j.cancel(errJobsShutdown)
	done := make(chan struct{})
	go func() { j.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close jobs: %w", ctx.Err())
	}
}

func describeJob(kind, target string) string {
	if target == "" {
		return kind
	}
	return kind + " " + target
}

// truncateUTF8 cuts s to at most n bytes, at a character boundary.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// The console's side: SHOW JOBS, SHOW JOB <id>, CANCEL JOB <id>, and
// startJob for the commands that start jobs.

// typeNumeric is PostgreSQL's numeric, the type of the percent column.
const typeNumeric uint32 = 1700

// WithJobs gives the console the job registry its job commands use.
// Without it (or with nil) they answer 55000.
func WithJobs(jobs *Jobs) ConsoleOption {
	return func(c *Console) { c.jobs = jobs }
}

func jobColumns() []Column {
	return Cols(
		"id", TypeInt8, "kind", TypeText, "target", TypeText, "state", TypeText,
		"done", TypeInt8, "total", TypeInt8, "unit", TypeText, "percent", typeNumeric, "eta", TypeText,
		"started", TypeTimestamptz, "ended", TypeTimestamptz, "detail", TypeText, "error", TypeText,
	)
}

func jobRow(info JobInfo) []any {
	p := info.Progress
	var percent, eta any
	if p.Total > 0 {
		percent = strconv.FormatFloat(info.Percent, 'f', 1, 64)
	}
	if info.ETA > 0 {
		// Whole seconds, rounded up: an ETA of 0.4 s is not "0s".
		eta = (time.Duration(math.Ceil(info.ETA.Seconds())) * time.Second).String()
	}
	return []any{
		info.ID, info.Kind, info.Target, info.State.String(),
		p.Done, nullIf(p.Total), nullIf(p.Unit), percent, eta,
		info.Started, info.Ended, nullIf(p.Detail), nullIf(info.Err),
	}
}

// jobRegistry is the console's registry, or the 55000 of a console
// without one.
func (c *Console) jobRegistry(cmd string) (*Jobs, error) {
	if c.jobs == nil {
		return nil, Errorf(CodeObjectNotInPrerequisiteState, "%s: no job registry", cmd).
			withHint("this pgshield runs no background jobs")
	}
	return c.jobs, nil
}

// showJobs is SHOW JOBS.
func (c *Console) showJobs(context.Context, []token) (*answer, error) {
	jobs, err := c.jobRegistry("SHOW JOBS")
	if err != nil {
		return nil, err
	}
	res := &Result{Columns: jobColumns()}
	for _, info := range jobs.List() {
		res.Rows = append(res.Rows, jobRow(info))
	}
	return &answer{res: res, tag: showTag}, nil
}

// showJob is SHOW JOB <id>.
func (c *Console) showJob(_ context.Context, args []token) (*answer, error) {
	jobs, err := c.jobRegistry("SHOW JOB")
	if err != nil {
		return nil, err
	}
	id, err := jobID(args[0])
	if err != nil {
		return nil, err
	}
	info, ok := jobs.Get(id)
	if !ok {
		return nil, unknownJob(id)
	}
	return &answer{res: &Result{Columns: jobColumns(), Rows: [][]any{jobRow(info)}}, tag: showTag}, nil
}

// cancelJob is CANCEL JOB <id>: it cancels the job and waits a little for
// it to return, so that the NOTICE can say how it ended.
func (c *Console) cancelJob(ctx context.Context, args []token) (*answer, error) {
	const tag = "CANCEL JOB"
	jobs, err := c.jobRegistry(tag)
	if err != nil {
		return nil, err
	}
	id, err := jobID(args[1])
	if err != nil {
		return nil, err
	}
	switch err := jobs.Cancel(id); {
	case errors.Is(err, ErrJobNotFound):
		return nil, unknownJob(id)
	case errors.Is(err, ErrJobFinished):
		info, _ := jobs.Get(id)
		return nil, (&Error{Code: CodeObjectNotInPrerequisiteState, Err: err,
			Message: fmt.Sprintf("CANCEL JOB: job %d (%s) has already finished: %s", id, describeJob(info.Kind, info.Target), info.State)})
	case err != nil:
		return nil, sourceError(tag, err)
	}
	jobs.mu.Lock()
	wait := jobs.cancelWait
	jobs.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	info, err := jobs.Wait(wctx, id)
	what := fmt.Sprintf("job %d (%s)", id, describeJob(info.Kind, info.Target))
	switch {
	case err != nil:
		return control(tag, fmt.Sprintf("%s: cancellation requested; it has not stopped yet (SHOW JOB %d shows when it has)", what, id)), nil
	case info.State == JobCancelled:
		return control(tag, what+" cancelled"), nil
	}
	return control(tag, fmt.Sprintf("%s ended %s before the cancellation reached it", what, info.State)), nil
}

// startJob starts a job for the console command tag (REENCRYPT) and
// answers its id, one row of column id, with a NOTICE naming the commands
// that follow and stop it. fn runs under the registry's context, not the
// command's: the job goes on after the admin connection closes.
func (c *Console) startJob(tag, kind, target string, fn JobFunc) (*answer, error) {
	jobs, err := c.jobRegistry(tag)
	if err != nil {
		return nil, err
	}
	id, err := jobs.Start(kind, target, fn)
	switch {
	case errors.Is(err, ErrJobRunning):
		return nil, (&Error{Code: CodeObjectNotInPrerequisiteState, Err: err,
			Message: fmt.Sprintf("%s: job %d (%s) is already running", tag, id, describeJob(kind, target))}).
			withHint(fmt.Sprintf("SHOW JOB %d follows it; CANCEL JOB %d stops it", id, id))
	case errors.Is(err, ErrJobsClosed):
		return nil, &Error{Code: CodeAdminShutdown, Err: err, Message: tag + ": pgshield is shutting down"}
	case err != nil:
		return nil, sourceError(tag, err)
	}
	return &answer{
		res:     &Result{Columns: Cols("id", TypeInt8), Rows: [][]any{{id}}},
		notices: []string{fmt.Sprintf("job %d started: %s; SHOW JOB %d follows it, CANCEL JOB %d stops it", id, describeJob(kind, target), id, id)},
		tag:     tag,
	}, nil
}

// jobID reads a job id argument.
func jobID(t token) (int64, error) {
	id, err := strconv.ParseInt(t.text, 10, 64)
	if err != nil || id < 1 {
		return 0, Errorf(CodeInvalidParameterValue, "invalid job id %q: want a positive number", t.text).
			withHint("the ids are in the id column of SHOW JOBS")
	}
	return id, nil
}

func unknownJob(id int64) *Error {
	return Errorf(CodeUndefinedObject, "job %d does not exist", id).
		withHint(fmt.Sprintf("SHOW JOBS lists the jobs running and the last %d finished", maxFinishedJobs))
}

// cancelArgs is the rule of CANCEL JOB <id>.
func cancelArgs(cmd string, args []token) error {
	switch {
	case len(args) == 0 || args[0].quoted || !strings.EqualFold(args[0].text, "JOB"):
		return Errorf(CodeSyntaxError, "%s needs JOB and a job id: CANCEL JOB <id>", cmd).
			withHint("the ids are in the id column of SHOW JOBS")
	case len(args) == 1:
		return Errorf(CodeSyntaxError, "CANCEL JOB needs a job id: CANCEL JOB <id>").
			withHint("the ids are in the id column of SHOW JOBS")
	case len(args) > 2:
		return Errorf(CodeSyntaxError, "CANCEL JOB takes one job id, got %d arguments", len(args)-1)
	}
	return nil
}
