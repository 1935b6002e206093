package admin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fakeClock is the registry's clock in tests: it moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)}
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// stepper is a JobFunc the test drives: each progress sent by step is
// reported before step returns; finish makes the job return its error.
// Without ignoreCancel the job returns ctx.Err() when cancelled.
type stepper struct {
	steps        chan JobProgress
	acked        chan struct{}
	result       chan error
	ignoreCancel bool
	started      chan struct{} // closed when the job runs
	once         sync.Once
	report       atomic.Pointer[func(JobProgress)] // the job's report, kept to call it late
}

func newStepper() *stepper {
	return &stepper{steps: make(chan JobProgress), acked: make(chan struct{}), result: make(chan error), started: make(chan struct{})}
}

func (s *stepper) fn(ctx context.Context, report func(JobProgress)) error {
	s.report.Store(&report)
	s.once.Do(func() { close(s.started) })
	done := ctx.Done()
	if s.ignoreCancel {
		done = nil
	}
	for {
		select {
		case p := <-s.steps:
			report(p)
			s.acked <- struct{}{}
		case err := <-s.result:
			return err
		case <-done:
			return ctx.Err()
		}
	}
}

func (s *stepper) step(t *testing.T, p JobProgress) {
	t.Helper()
	select {
	case s.steps <- p:
	case <-time.After(30 * time.Second):
		t.Fatal("the job does not take a step")
	}
	<-s.acked
}

func (s *stepper) finish(t *testing.T, err error) {
	t.Helper()
	select {
	case s.result <- err:
	case <-time.After(30 * time.Second):
		t.Fatal("the job does not finish")
	}
}

func waitJob(t *testing.T, jobs *Jobs, id int64) JobInfo {
	t.Helper()
	info, err := jobs.Wait(ctxT(t), id)
	if err != nil {
		t.Fatalf("wait for job %d: %v", id, err)
	}
	return info
}

func getJob(t *testing.T, jobs *Jobs, id int64) JobInfo {
	t.Helper()
	info, ok := jobs.Get(id)
	if !ok {
		t.Fatalf("job %d not found", id)
	}
	return info
}

func newTestJobs(t *testing.T, clock *fakeClock) (*Jobs, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	var now func() time.Time
	if clock != nil {
		now = clock.now
	}
	jobs := NewJobs(zap.New(core), now)
	t.Cleanup(func() {
		if err := jobs.Close(ctxT(t)); err != nil {
			t.Errorf("close jobs: %v", err)
		}
	})
	return jobs, logs
}

func TestJobStateString(t *testing.T) {
	for s, want := range map[JobState]string{JobQueued: "queued", JobRunning: "running", JobSucceeded: "succeeded",
		JobFailed: "failed", JobCancelled: "cancelled", JobState(9): "JobState(9)"} {
		if got := s.String(); got != want {
			t.Errorf("%d: %q, want %q", s, got, want)
		}
	}
	for s, want := range map[JobState]bool{JobQueued: false, JobRunning: false, JobSucceeded: true, JobFailed: true, JobCancelled: true} {
		if s.Finished() != want {
			t.Errorf("%s.Finished() = %v", s, !want)
		}
	}
}

// Progress, percent and ETA, with the clock moved by the test: the ETA is
// the time per unit between the first and the latest report times the
// units left.
func TestJobProgressPercentETA(t *testing.T) {
	clock := newFakeClock()
	jobs, _ := newTestJobs(t, clock)
	start := clock.now()
	s := newStepper()
	id, err := jobs.Start("reencrypt", "app.leads", s.fn)
	if err != nil || id != 1 {
		t.Fatalf("Start: %d, %v; want job 1", id, err)
	}
	<-s.started
	info := getJob(t, jobs, id)
	if info.State != JobRunning || !info.Started.Equal(start) || !info.Ended.IsZero() || info.Percent != 0 || info.ETA != 0 ||
		info.Kind != "reencrypt" || info.Target != "app.leads" {
		t.Fatalf("before any report: %+v", info)
	}

	check := func(what string, percent float64, eta time.Duration) {
		t.Helper()
		info := getJob(t, jobs, id)
		if info.Percent != percent || info.ETA != eta {
			t.Errorf("%s: percent %v ETA %v, want %v %v", what, info.Percent, info.ETA, percent, eta)
		}
	}
	clock.advance(time.Second)
	s.step(t, JobProgress{Done: 0, Total: 1000, Unit: "rows", Detail: "counting rows"})
	check("first report", 0, 0) // one report: no rate yet
	clock.advance(10 * time.Second)
	s.step(t, JobProgress{Done: 100, Total: 1000, Unit: "rows", Detail: "batch 2 of 10"})
	check("second report", 10, 90*time.Second) // 100 rows in 10 s, 900 left
	info = getJob(t, jobs, id)
	if want := (JobProgress{Done: 100, Total: 1000, Unit: "rows", Detail: "batch 2 of 10"}); info.Progress != want {
		t.Errorf("progress %+v, want %+v", info.Progress, want)
	}
	clock.advance(5 * time.Second)
	s.step(t, JobProgress{Done: 400, Total: 1000, Unit: "rows"})
	check("third report", 40, 22500*time.Millisecond) // 400 rows in 15 s, 600 left
	clock.advance(time.Hour)
	check("time alone does not move the ETA", 40, 22500*time.Millisecond)

	s.step(t, JobProgress{Done: 1234, Total: 1000, Unit: "rows"})
	check("more than expected", 100, 0)
	s.step(t, JobProgress{Done: 5000, Unit: "bytes"})
	check("unknown total", 0, 0)
	s.step(t, JobProgress{Done: -5, Total: -1})
	if p := getJob(t, jobs, id).Progress; p.Done != 0 || p.Total != 0 {
		t.Errorf("negative progress kept: %+v", p)
	}
	long := strings.Repeat("é", 150) // 300 bytes
	s.step(t, JobProgress{Detail: long})
	if d := getJob(t, jobs, id).Progress.Detail; len(d) > maxJobDetail || !utf8.ValidString(d) || !strings.HasPrefix(long, d) || len(d) < maxJobDetail-1 {
		t.Errorf("a long detail kept as %d bytes (valid UTF-8 %v)", len(d), utf8.ValidString(d))
	}
	s.step(t, JobProgress{Done: 999, Total: 1000, Unit: "rows", Detail: "last batch"})

	clock.advance(time.Minute)
	s.finish(t, nil)
	info = waitJob(t, jobs, id)
	if info.State != JobSucceeded || info.Err != "" || !info.Ended.Equal(clock.now()) || info.ETA != 0 || info.Percent != 99.9 {
		t.Errorf("finished: %+v", info)
	}
	(*s.report.Load())(JobProgress{Done: 1, Total: 2, Detail: "late"})
	if p := getJob(t, jobs, id).Progress; p.Detail != "last batch" {
		t.Errorf("a report after the end changed the job: %+v", p)
	}
}

func TestJobOnePerKindAndTarget(t *testing.T) {
	jobs, _ := newTestJobs(t, nil)
	s := newStepper()
	id, err := jobs.Start("reencrypt", "app.leads", s.fn)
	if err != nil {
		t.Fatal(err)
	}
	again, err := jobs.Start("reencrypt", "app.leads", newStepper().fn)
	if !errors.Is(err, ErrJobRunning) || again != id || !strings.Contains(err.Error(), fmt.Sprintf("job %d (reencrypt app.leads)", id)) {
		t.Errorf("second Start of the same kind and target: %d, %v; want %d and ErrJobRunning", again, err, id)
	}
	other := newStepper()
	otherID, err := jobs.Start("reencrypt", "app.agents", other.fn)
	if err != nil || otherID == id {
		t.Errorf("another target: %d, %v", otherID, err)
	}
	backup := newStepper()
	if _, err := jobs.Start("backup", "app.leads", backup.fn); err != nil {
		t.Errorf("another kind on the same target: %v", err)
	}
	if n := len(jobs.List()); n != 3 {
		t.Errorf("%d jobs listed, want 3 (the refused Start adds none)", n)
	}

	s.finish(t, nil)
	waitJob(t, jobs, id)
	next, err := jobs.Start("reencrypt", "app.leads", newStepper().fn)
	if err != nil || next <= id {
		t.Errorf("Start after the first ended: %d, %v; want a new job", next, err)
	}

	if _, err := jobs.Start("", "x", s.fn); err == nil {
		t.Error("a job without a kind started")
	}
	if _, err := jobs.Start("backup", "x", nil); err == nil {
		t.Error("a job without a function started")
	}
}

func TestJobCancel(t *testing.T) {
	jobs, logs := newTestJobs(t, nil)
	s := newStepper()
	id, _ := jobs.Start("reencrypt", "app.leads", s.fn)
	if err := jobs.Cancel(id); err != nil {
		t.Fatal(err)
	}
	info := waitJob(t, jobs, id)
	if info.State != JobCancelled || info.Err != "cancelled by CANCEL JOB" || info.Ended.IsZero() {
		t.Errorf("cancelled job: %+v", info)
	}
	if err := jobs.Cancel(id); !errors.Is(err, ErrJobFinished) {
		t.Errorf("Cancel of a finished job: %v, want ErrJobFinished", err)
	}
	if err := jobs.Cancel(999); !errors.Is(err, ErrJobNotFound) {
		t.Errorf("Cancel of an unknown job: %v, want ErrJobNotFound", err)
	}
	if _, err := jobs.Wait(ctxT(t), 999); !errors.Is(err, ErrJobNotFound) {
		t.Errorf("Wait of an unknown job: %v, want ErrJobNotFound", err)
	}
	if _, ok := jobs.Get(999); ok {
		t.Error("Get of an unknown job found one")
	}
	if got := logs.FilterMessage("job ended").FilterField(zap.String("state", "cancelled")).Len(); got != 1 {
		t.Errorf("%d log lines of the cancelled job, want 1", got)
	}

	// Any error returned once cancelled counts as the cancellation; a nil
	// one says the work was done.
	s = newStepper()
	s.ignoreCancel = true
	id, _ = jobs.Start("reencrypt", "app.agents", s.fn)
	<-s.started
	if err := jobs.Cancel(id); err != nil {
		t.Fatal(err)
	}
	if err := jobs.Cancel(id); err != nil {
		t.Errorf("a second Cancel before the job returned: %v", err)
	}
	if st := getJob(t, jobs, id).State; st != JobRunning {
		t.Errorf("state %s before the job returned, want running", st)
	}
	s.finish(t, errors.New("batch 3: context canceled"))
	if info := waitJob(t, jobs, id); info.State != JobCancelled || info.Err != "cancelled by CANCEL JOB" {
		t.Errorf("an error after cancellation: %s %q, want cancelled", info.State, info.Err)
	}

	s = newStepper()
	s.ignoreCancel = true
	id, _ = jobs.Start("reencrypt", "app.carriers", s.fn)
	if err := jobs.Cancel(id); err != nil {
		t.Fatal(err)
	}
	s.finish(t, nil)
	if info := waitJob(t, jobs, id); info.State != JobSucceeded {
		t.Errorf("nil after cancellation: %s, want succeeded", info.State)
	}
}

func TestJobFailed(t *testing.T) {
	jobs, logs := newTestJobs(t, nil)
	id, _ := jobs.Start("reencrypt", "app.leads", func(context.Context, func(JobProgress)) error {
		return fmt.Errorf("batch 7: %w", errors.New("key 3 is not in the key set"))
	})
	info := waitJob(t, jobs, id)
	if info.State != JobFailed || info.Err != "batch 7: key 3 is not in the key set" {
		t.Errorf("failed job: %s %q", info.State, info.Err)
	}
	entries := logs.FilterMessage("job ended").FilterField(zap.String("state", "failed")).All()
	if len(entries) != 1 || entries[0].Level != zapcore.WarnLevel || entries[0].ContextMap()["error"] != info.Err {
		t.Errorf("log of the failed job: %+v", entries)
	}
}

func panickingJob(context.Context, func(JobProgress)) error {
	panic(errors.New("the key set is empty"))
}

func TestJobPanic(t *testing.T) {
	jobs, logs := newTestJobs(t, nil)
	id, _ := jobs.Start("maintenance", "vacuum", panickingJob)
	info := waitJob(t, jobs, id)
	if info.State != JobFailed || info.Err != "panic: the key set is empty" {
		t.Errorf("panicked job: %s %q", info.State, info.Err)
	}
	entries := logs.FilterMessage("job panicked").All()
	if len(entries) != 1 {
		t.Fatalf("%d panic log lines, want 1", len(entries))
	}
	if stack, _ := entries[0].ContextMap()["stack"].(string); !strings.Contains(stack, "panickingJob") {
		t.Errorf("the panic's stack does not show where it happened:\n%s", stack)
	}
	// The registry goes on.
	id, _ = jobs.Start("maintenance", "vacuum", func(context.Context, func(JobProgress)) error { return nil })
	if info := waitJob(t, jobs, id); info.State != JobSucceeded {
		t.Errorf("a job after a panic: %s", info.State)
	}
}

func TestJobWaitContext(t *testing.T) {
	jobs, _ := newTestJobs(t, nil)
	s := newStepper()
	id, _ := jobs.Start("backup", "full", s.fn)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	info, err := jobs.Wait(ctx, id)
	if !errors.Is(err, context.Canceled) || info.ID != id || info.State != JobRunning {
		t.Errorf("Wait with an ended context: %s, %v; want the running job and context.Canceled", info.State, err)
	}
}

// Close cancels every job and returns once they have returned, or when
// its context ends.
func TestJobsClose(t *testing.T) {
	jobs := NewJobs(nil, nil)
	stopping, release := make(chan struct{}), make(chan struct{})
	var returned atomic.Bool
	slow, err := jobs.Start("backup", "full", func(ctx context.Context, _ func(JobProgress)) error {
		<-ctx.Done()
		close(stopping)
		<-release // the job takes its time to stop
		returned.Store(true)
		return ctx.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	quick := newStepper()
	quickID, _ := jobs.Start("reencrypt", "app.leads", quick.fn)

	ctx, cancel := context.WithCancel(context.Background())
	closed := make(chan error, 1)
	go func() { closed <- jobs.Close(ctx) }()
	<-stopping
	if info := waitJob(t, jobs, quickID); info.State != JobCancelled || info.Err != "cancelled: pgshield is shutting down" {
		t.Errorf("a job at Close: %s %q", info.State, info.Err)
	}
	cancel()
	if err := <-closed; !errors.Is(err, context.Canceled) {
		t.Errorf("Close with a job still running and its context ended: %v, want context.Canceled", err)
	}
	if _, err := jobs.Start("backup", "incremental", newStepper().fn); !errors.Is(err, ErrJobsClosed) {
		t.Errorf("Start after Close: %v, want ErrJobsClosed", err)
	}

	close(release)
	if err := jobs.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if !returned.Load() {
		t.Error("Close returned before the job did")
	}
	if info := getJob(t, jobs, slow); info.State != JobCancelled {
		t.Errorf("the slow job after Close: %s", info.State)
	}
}

// List is newest first and keeps every job not ended and the last 100
// finished.
func TestJobsListOrderAndKept(t *testing.T) {
	jobs, _ := newTestJobs(t, nil)
	running := newStepper()
	first, _ := jobs.Start("backup", "wal", running.fn)
	const n = maxFinishedJobs + 5
	for i := range n {
		id, err := jobs.Start("maintenance", fmt.Sprintf("t%d", i), func(context.Context, func(JobProgress)) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		waitJob(t, jobs, id)
	}
	list := jobs.List()
	if len(list) != maxFinishedJobs+1 {
		t.Fatalf("%d jobs listed, want %d finished and the running one", len(list), maxFinishedJobs)
	}
	for i, info := range list[:maxFinishedJobs] {
		if want := int64(n + 1 - i); info.ID != want || info.State != JobSucceeded {
			t.Fatalf("list[%d]: job %d %s, want job %d succeeded", i, info.ID, info.State, want)
		}
	}
	if last := list[maxFinishedJobs]; last.ID != first || last.State != JobRunning {
		t.Errorf("the oldest job, still running: job %d %s, want job %d kept", last.ID, last.State, first)
	}
	for id := first + 1; id <= first+5; id++ {
		if _, ok := jobs.Get(id); ok {
			t.Errorf("job %d, among the first to end, is still kept", id)
		}
	}
	if _, ok := jobs.Get(first + 6); !ok {
		t.Errorf("job %d dropped", first+6)
	}
	running.finish(t, nil)
	waitJob(t, jobs, first)
	if got := len(jobs.List()); got != maxFinishedJobs {
		t.Errorf("%d jobs listed once every one ended, want %d", got, maxFinishedJobs)
	}
	if _, ok := jobs.Get(first + 6); ok {
		t.Errorf("job %d kept beyond the last %d to end", first+6, maxFinishedJobs)
	}
}

// Reports from several goroutines, listings and cancels at once (for the
// race detector).
func TestJobsConcurrent(t *testing.T) {
	jobs, _ := newTestJobs(t, nil)
	var ids []int64
	for i := range 8 {
		id, err := jobs.Start("reencrypt", fmt.Sprintf("t%d", i), func(ctx context.Context, report func(JobProgress)) error {
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for d := range int64(200) {
						report(JobProgress{Done: d, Total: 1 << 40, Unit: "rows"})
					}
				})
			}
			wg.Wait()
			<-ctx.Done()
			return ctx.Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for range 50 {
		for _, info := range jobs.List() {
			if info.State != JobRunning || info.Progress.Done > info.Progress.Total {
				t.Fatalf("job %d: %s %+v", info.ID, info.State, info.Progress)
			}
		}
	}
	for _, id := range ids {
		if err := jobs.Cancel(id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		if info := waitJob(t, jobs, id); info.State != JobCancelled {
			t.Errorf("job %d: %s", id, info.State)
		}
	}
}

// startJobsConsole is startConsole with a job registry (nil: none) and
// setup run on the console before it serves.
func startJobsConsole(t *testing.T, jobs *Jobs, setup func(*Console)) *consoleEnv {
	t.Helper()
	fake := newFakeSource()
	return serveConsole(t, fake, fake, setup, WithJobs(jobs))
}

// rowText is a row with NULL as "NULL", the columns joined by "|".
func rowText(row [][]byte) string {
	vals := make([]string, len(row))
	for i, v := range row {
		if v == nil {
			vals[i] = "NULL"
			continue
		}
		vals[i] = string(v)
	}
	return strings.Join(vals, "|")
}

const jobColumnNames = "id kind target state done total unit percent eta started ended detail error"

// testJobSet starts three jobs on clock: 1 failed, 2 running with
// progress (ETA 1m30s), 3 succeeded without a total.
func testJobSet(t *testing.T, jobs *Jobs, clock *fakeClock) (running *stepper) {
	t.Helper()
	id, _ := jobs.Start("reencrypt", "app.agents", func(context.Context, func(JobProgress)) error {
		clock.advance(2 * time.Second)
		return errors.New("key 3 is not in the key set")
	})
	waitJob(t, jobs, id)
	running = newStepper()
	if _, err := jobs.Start("reencrypt", "app.leads", running.fn); err != nil {
		t.Fatal(err)
	}
	running.step(t, JobProgress{Done: 0, Total: 1000, Unit: "rows", Detail: "starting"})
	clock.advance(10 * time.Second)
	running.step(t, JobProgress{Done: 100, Total: 1000, Unit: "rows", Detail: "batch 2 of 10"})
	id, _ = jobs.Start("backup", "full", func(_ context.Context, report func(JobProgress)) error {
		report(JobProgress{Done: 4096, Unit: "bytes"})
		clock.advance(1500 * time.Millisecond)
		return nil
	})
	waitJob(t, jobs, id)
	return running
}

func TestConsoleShowJobs(t *testing.T) {
	clock := newFakeClock()
	jobs, _ := newTestJobs(t, clock)
	e := startJobsConsole(t, jobs, nil)
	c, _ := e.connect(t, true)

	res := exec1(t, c, "SHOW JOBS")
	if len(res) != 1 || res[0].CommandTag.String() != "SHOW" || len(res[0].Rows) != 0 {
		t.Fatalf("SHOW JOBS of an empty registry: %d results", len(res))
	}
	if got := strings.Join(columnNames(res[0]), " "); got != jobColumnNames {
		t.Errorf("columns\n got %s\nwant %s", got, jobColumnNames)
	}
	want := map[string]uint32{"id": TypeInt8, "kind": TypeText, "state": TypeText, "done": TypeInt8, "total": TypeInt8,
		"percent": 1700, "eta": TypeText, "started": TypeTimestamptz, "ended": TypeTimestamptz, "error": TypeText}
	for _, f := range res[0].FieldDescriptions {
		if oid, ok := want[f.Name]; ok && f.DataTypeOID != oid {
			t.Errorf("column %s has type %d, want %d", f.Name, f.DataTypeOID, oid)
		}
	}

	running := testJobSet(t, jobs, clock)
	var rows []string
	for _, r := range exec1(t, c, "show jobs;")[0].Rows {
		rows = append(rows, rowText(r))
	}
	wantRows := []string{
		"3|backup|full|succeeded|4096|NULL|bytes|NULL|NULL|2024-05-06 07:08:21.000+00|2024-05-06 07:08:22.500+00|NULL|NULL",
		"2|reencrypt|app.leads|running|100|1000|rows|10.0|1m30s|2024-05-06 07:08:11.000+00|NULL|batch 2 of 10|NULL",
		"1|reencrypt|app.agents|failed|0|NULL|NULL|NULL|NULL|2024-05-06 07:08:09.000+00|2024-05-06 07:08:11.000+00|NULL|key 3 is not in the key set",
	}
	if !slices.Equal(rows, wantRows) {
		t.Errorf("SHOW JOBS\n got %q\nwant %q", rows, wantRows)
	}

	// Through pgx's own decoding: the declared types are what the text is.
	var percent float64
	var started time.Time
	var ended *time.Time
	var eta string
	if err := c.QueryRow(ctxT(t), "SHOW JOB 2").Scan(nil, nil, nil, nil, nil, nil, nil, &percent, &eta, &started, &ended, nil, nil); err != nil {
		t.Fatalf("scanning SHOW JOB 2: %v", err)
	}
	if percent != 10 || eta != "1m30s" || !started.Equal(time.Date(2024, 5, 6, 7, 8, 11, 0, time.UTC)) || ended != nil {
		t.Errorf("SHOW JOB 2 decoded: percent %v eta %q started %v ended %v", percent, eta, started, ended)
	}
	running.finish(t, nil)
	waitJob(t, jobs, 2)
}

func TestConsoleShowJob(t *testing.T) {
	clock := newFakeClock()
	jobs, _ := newTestJobs(t, clock)
	e := startJobsConsole(t, jobs, nil)
	c, _ := e.connect(t, true)
	running := testJobSet(t, jobs, clock)
	defer func() { running.finish(t, nil); waitJob(t, jobs, 2) }()

	for id, want := range map[string]string{
		"1":   "1|reencrypt|app.agents|failed|",
		"2":   "2|reencrypt|app.leads|running|100|1000|rows|10.0|1m30s|",
		"'3'": "3|backup|full|succeeded|4096|",
	} {
		res := exec1(t, c, "SHOW JOB "+id)
		if len(res) != 1 || res[0].CommandTag.String() != "SHOW" || len(res[0].Rows) != 1 {
			t.Fatalf("SHOW JOB %s: %d results, want one row", id, len(res))
		}
		if got := strings.Join(columnNames(res[0]), " "); got != jobColumnNames {
			t.Errorf("SHOW JOB %s columns %s", id, got)
		}
		if got := rowText(res[0].Rows[0]); !strings.HasPrefix(got, want) {
			t.Errorf("SHOW JOB %s: %s, want %s…", id, got, want)
		}
	}
	for _, tc := range []struct{ sql, code, message, hint string }{
		{"SHOW JOB 99", "42704", "job 99 does not exist", "SHOW JOBS"},
		{"SHOW JOB", "42601", "SHOW JOB needs a job id: SHOW JOB <id>", "SHOW JOBS"},
		{"SHOW JOB 1 2", "42601", "SHOW JOB takes one job id, got 2 arguments", ""},
		{"SHOW JOB x", "22023", `invalid job id "x": want a positive number`, "SHOW JOBS"},
		{"SHOW JOB 0", "22023", `invalid job id "0"`, ""},
		{"SHOW JOB -1", "22023", `invalid job id "-1"`, ""},
		{"SHOW JOB 99999999999999999999", "22023", "invalid job id", ""},
		{"SHOW JOBS 1", "42601", "SHOW JOBS takes no arguments", ""},
	} {
		_, err := c.PgConn().Exec(ctxT(t), tc.sql).ReadAll()
		if pe := pgErr(t, err); pe.Code != tc.code || !strings.Contains(pe.Message, tc.message) || !strings.Contains(pe.Hint, tc.hint) {
			t.Errorf("%s: %s %q (hint %q), want %s %q (hint with %q)", tc.sql, pe.Code, pe.Message, pe.Hint, tc.code, tc.message, tc.hint)
		}
	}
}

func TestConsoleCancelJob(t *testing.T) {
	jobs, _ := newTestJobs(t, nil)
	e := startJobsConsole(t, jobs, nil)
	c, ns := e.connect(t, true)

	s := newStepper()
	id, _ := jobs.Start("reencrypt", "app.leads", s.fn)
	res := exec1(t, c, fmt.Sprintf("cancel job %d;", id))
	if len(res) != 1 || res[0].CommandTag.String() != "CANCEL JOB" || len(res[0].FieldDescriptions) != 0 {
		t.Fatalf("CANCEL JOB: %d results, want one with tag CANCEL JOB", len(res))
	}
	if got := ns.take(); !slices.Equal(got, []string{"NOTICE: job 1 (reencrypt app.leads) cancelled"}) {
		t.Errorf("notices %q", got)
	}
	if row := rowText(exec1(t, c, "SHOW JOB 1")[0].Rows[0]); !strings.HasPrefix(row, "1|reencrypt|app.leads|cancelled|") ||
		!strings.HasSuffix(row, "|cancelled by CANCEL JOB") {
		t.Errorf("SHOW JOB after CANCEL JOB: %s", row)
	}

	// A job that does not stop within the wait: the cancellation is
	// requested, and the job ends cancelled when it returns.
	slow := newStepper()
	slow.ignoreCancel = true
	slowID, _ := jobs.Start("backup", "full", slow.fn)
	jobs.mu.Lock()
	jobs.cancelWait = time.Nanosecond
	jobs.mu.Unlock()
	exec1(t, c, fmt.Sprintf("CANCEL JOB %d", slowID))
	if got := ns.take(); len(got) != 1 || !strings.Contains(got[0], "job 2 (backup full): cancellation requested; it has not stopped yet (SHOW JOB 2") {
		t.Errorf("notices of a job slow to stop %q", got)
	}
	if row := rowText(exec1(t, c, "SHOW JOB 2")[0].Rows[0]); !strings.HasPrefix(row, "2|backup|full|running|") {
		t.Errorf("SHOW JOB of a job slow to stop: %s", row)
	}
	slow.finish(t, errors.New("interrupted"))
	if info := waitJob(t, jobs, slowID); info.State != JobCancelled {
		t.Errorf("the slow job ended %s, want cancelled", info.State)
	}

	for _, tc := range []struct{ sql, code, message, hint string }{
		{"CANCEL JOB 1", "55000", "CANCEL JOB: job 1 (reencrypt app.leads) has already finished: cancelled", ""},
		{"CANCEL JOB 99", "42704", "job 99 does not exist", "SHOW JOBS"},
		{"CANCEL JOB", "42601", "CANCEL JOB needs a job id: CANCEL JOB <id>", "SHOW JOBS"},
		{"CANCEL", "42601", "CANCEL needs JOB and a job id: CANCEL JOB <id>", "SHOW JOBS"},
		{"CANCEL 1", "42601", "CANCEL needs JOB", ""},
		{"CANCEL JOBS 1", "42601", "CANCEL needs JOB", ""},
		{"CANCEL 'JOB' 1", "42601", "CANCEL needs JOB", ""},
		{"CANCEL JOB 1 2", "42601", "CANCEL JOB takes one job id, got 2 arguments", ""},
		{"CANCEL JOB abc", "22023", `invalid job id "abc": want a positive number`, "SHOW JOBS"},
	} {
		_, err := c.PgConn().Exec(ctxT(t), tc.sql).ReadAll()
		if pe := pgErr(t, err); pe.Code != tc.code || pe.Severity != "ERROR" || !strings.Contains(pe.Message, tc.message) || !strings.Contains(pe.Hint, tc.hint) {
			t.Errorf("%s: %s %s %q (hint %q), want ERROR %s %q (hint with %q)", tc.sql, pe.Severity, pe.Code, pe.Message, pe.Hint, tc.code, tc.message, tc.hint)
		}
	}
	if res := exec1(t, c, "SHOW VERSION"); len(res) != 1 {
		t.Error("connection not usable after the errors")
	}
}

// A console built without a registry (as startConsole builds it) answers
// the job commands 55000.
func TestConsoleJobsWithoutRegistry(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, true)
	for _, sql := range []string{"SHOW JOBS", "SHOW JOB 1", "CANCEL JOB 1"} {
		_, err := c.PgConn().Exec(ctxT(t), sql).ReadAll()
		if pe := pgErr(t, err); pe.Code != "55000" || !strings.Contains(pe.Message, "no job registry") {
			t.Errorf("%s: %s %q, want 55000 no job registry", sql, pe.Code, pe.Message)
		}
	}
	if _, err := e.console.startJob("REENCRYPT", "reencrypt", "app.leads", newStepper().fn); err == nil || !strings.Contains(err.Error(), "55000") {
		t.Errorf("startJob without a registry: %v, want 55000", err)
	}
	// Syntax is checked first, as for every command.
	_, err := c.PgConn().Exec(ctxT(t), "CANCEL JOB").ReadAll()
	if pe := pgErr(t, err); pe.Code != "42601" {
		t.Errorf("CANCEL JOB without an id and a registry: %s, want 42601", pe.Code)
	}
}

// A command that starts a job, written as REENCRYPT will be: startJob
// answers the id and a NOTICE; a second one while the first runs is 55000;
// the job outlives the connection that started it.
func TestConsoleStartJob(t *testing.T) {
	jobs, _ := newTestJobs(t, nil)
	s := newStepper()
	e := startJobsConsole(t, jobs, func(c *Console) {
		c.commands["TESTJOB"] = command{name: "TESTJOB", usage: "TESTJOB <table>",
			args: exactly(1, "a table: TESTJOB <table>", "one table", ""),
			run: func(c *Console, _ context.Context, args []token) (*answer, error) {
				return c.startJob("TESTJOB", "reencrypt", args[0].text, s.fn)
			}}
	})
	c, ns := e.connect(t, true)
	res := exec1(t, c, "TESTJOB app.leads")
	if len(res) != 1 || res[0].CommandTag.String() != "TESTJOB" || strings.Join(columnNames(res[0]), " ") != "id" ||
		len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "1" {
		t.Fatalf("TESTJOB: %d results, want the job id", len(res))
	}
	if got := ns.take(); !slices.Equal(got, []string{"NOTICE: job 1 started: reencrypt app.leads; SHOW JOB 1 follows it, CANCEL JOB 1 stops it"}) {
		t.Errorf("notices %q", got)
	}
	_, err := c.PgConn().Exec(ctxT(t), "TESTJOB app.leads").ReadAll()
	if pe := pgErr(t, err); pe.Code != "55000" || pe.Message != "TESTJOB: job 1 (reencrypt app.leads) is already running" ||
		pe.Hint != "SHOW JOB 1 follows it; CANCEL JOB 1 stops it" {
		t.Errorf("a second TESTJOB: %s %q (hint %q)", pe.Code, pe.Message, pe.Hint)
	}

	if err := c.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	s.step(t, JobProgress{Done: 1, Total: 2, Unit: "rows"}) // still running without the connection
	c2, _ := e.connect(t, true)
	if row := rowText(exec1(t, c2, "SHOW JOB 1")[0].Rows[0]); !strings.HasPrefix(row, "1|reencrypt|app.leads|running|1|2|rows|50.0|") {
		t.Errorf("SHOW JOB from another connection: %s", row)
	}

	if err := jobs.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	_, err = c2.PgConn().Exec(ctxT(t), "TESTJOB app.agents").ReadAll()
	if pe := pgErr(t, err); pe.Code != "57P01" {
		t.Errorf("TESTJOB after the registry closed: %s %q, want 57P01", pe.Code, pe.Message)
	}
}

func TestConsoleJobsHelp(t *testing.T) {
	var help []string
	for _, h := range helpLines() {
		help = append(help, h[0])
	}
	for _, want := range []string{"SHOW JOBS", "SHOW JOB <id>", "CANCEL JOB <id>"} {
		if !slices.Contains(help, want) {
			t.Errorf("SHOW HELP has no line %q", want)
		}
	}
	if !strings.Contains(commandsHint(), "CANCEL JOB <id>") {
		t.Errorf("the commands hint does not list CANCEL JOB: %s", commandsHint())
	}
}

// psql shows the job columns as an operator sees them.
func TestConsoleJobsPsql(t *testing.T) {
	clock := newFakeClock()
	jobs, _ := newTestJobs(t, clock)
	e := startJobsConsole(t, jobs, nil)
	running := testJobSet(t, jobs, clock)
	defer func() { running.finish(t, nil); waitJob(t, jobs, 2) }()

	host, port, _ := net.SplitHostPort(e.addr)
	cmd := exec.CommandContext(ctxT(t), psqlPath(t), "-X", "-A", "-F", ",", "-h", host, "-p", port, "-U", "admin", "-c", "SHOW JOB 2", "pgshield")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+testAdminPassword, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	want := []string{
		"id,kind,target,state,done,total,unit,percent,eta,started,ended,detail,error",
		"2,reencrypt,app.leads,running,100,1000,rows,10.0,1m30s,2024-05-06 07:08:11.000+00,,batch 2 of 10,",
		"(1 row)",
	}
	if !slices.Equal(lines, want) {
		t.Errorf("psql printed\n%s\nwant\n%s", out, strings.Join(want, "\n"))
	}
}
