package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

func openTestStore(t *testing.T, path string) *JobStore {
	t.Helper()
	s, err := OpenJobStore(path)
	if err != nil {
		t.Fatalf("open the job store: %v", err)
	}
	return s
}

// readStoreFile is the store's file as written.
func readStoreFile(t *testing.T, path string) map[int64]jobRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f jobFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("the job file is not JSON: %v\n%s", err, b)
	}
	out := map[int64]jobRecord{}
	for _, r := range f.Jobs {
		out[r.ID] = r
	}
	return out
}

// A job running when its pgshield died is failed in the registry the
// next start builds on the file, never running nor done; the jobs that
// ended keep their state; ids go on after the highest.
func TestJobStoreKilledJobIsFailed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.json")
	clock := newFakeClock()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))

	// The first pgshield: a job that succeeded, one that failed, and one
	// running when it is "killed" (the registry is never closed; its job
	// is released only at the end of the test).
	first := NewJobs(log, clock.now, WithStore(openTestStore(t, path)))
	ok, _ := first.Start("backup", "full", func(context.Context, func(JobProgress)) error { return nil })
	waitJob(t, first, ok)
	bad, _ := first.Start("verify", "20240506T020000Z", func(context.Context, func(JobProgress)) error {
		return errors.New("checksum mismatch in base.tar")
	})
	waitJob(t, first, bad)
	s := newStepper()
	running, err := first.Start("restore", "/srv/restore", s.fn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.finish(t, nil); waitJob(t, first, running) })
	clock.advance(jobProgressSave)
	s.step(t, JobProgress{Done: 40, Total: 100, Unit: "bytes", Detail: "extracting base.tar"})
	lastAlive := clock.now()
	if r := readStoreFile(t, path)[running]; r.State != "running" || r.Done != 40 {
		t.Fatalf("the running job as stored: %+v", r)
	}

	// The next start.
	clock.advance(time.Hour)
	second := NewJobs(log, clock.now, WithStore(openTestStore(t, path)))
	t.Cleanup(func() { _ = second.Close(ctxT(t)) })
	info := getJob(t, second, running)
	if info.State != JobFailed || info.Err != "pgshield stopped while the job ran" {
		t.Errorf("the job killed with its pgshield: %s %q; want failed, pgshield stopped while the job ran", info.State, info.Err)
	}
	if info.Kind != "restore" || info.Target != "/srv/restore" || info.Progress.Done != 40 || info.Progress.Detail != "extracting base.tar" ||
		!info.Ended.Equal(lastAlive) || info.ETA != 0 {
		t.Errorf("the killed job's record: %+v; want its kind, target, last progress, ended when last known to run", info)
	}
	if got := getJob(t, second, ok); got.State != JobSucceeded {
		t.Errorf("a job that succeeded before the restart: %s", got.State)
	}
	if got := getJob(t, second, bad); got.State != JobFailed || got.Err != "checksum mismatch in base.tar" {
		t.Errorf("a job that failed before the restart: %s %q", got.State, got.Err)
	}
	list := second.List()
	if len(list) != 3 || list[0].ID != running {
		t.Errorf("SHOW JOBS after the restart: %+v", list)
	}
	if err := second.Cancel(running); !errors.Is(err, ErrJobFinished) {
		t.Errorf("CANCEL JOB of the killed job: %v, want ErrJobFinished", err)
	}
	// The failure is stored at once, so a second crash keeps it.
	if r := readStoreFile(t, path)[running]; r.State != "failed" || r.Error != errJobInterrupted {
		t.Errorf("the killed job as stored after the restart: %+v", r)
	}
	next, err := second.Start("backup", "full", func(context.Context, func(JobProgress)) error { return nil })
	if err != nil || next != running+1 {
		t.Errorf("the first job after the restart: %d, %v; want id %d", next, err, running+1)
	}
	waitJob(t, second, next)
	if r := readStoreFile(t, path)[next]; r.State != "succeeded" || r.Ended == nil {
		t.Errorf("a job ended after the restart, as stored: %+v", r)
	}
}

// A clean shutdown stores the jobs it cancels as cancelled.
func TestJobStoreShutdownCancels(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.json")
	jobs := NewJobs(nil, nil, WithStore(openTestStore(t, path)))
	s := newStepper()
	id, _ := jobs.Start("backup", "incremental", s.fn)
	<-s.started
	if err := jobs.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	again := NewJobs(nil, nil, WithStore(openTestStore(t, path)))
	if info := getJob(t, again, id); info.State != JobCancelled || info.Err != "cancelled: pgshield is shutting down" {
		t.Errorf("a job cancelled at shutdown, after the restart: %s %q", info.State, info.Err)
	}
}

// Progress alone is written at most every jobProgressSave; a state
// change at once.
func TestJobStoreProgressThrottled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.json")
	clock := newFakeClock()
	jobs := NewJobs(nil, clock.now, WithStore(openTestStore(t, path)))
	t.Cleanup(func() { _ = jobs.Close(ctxT(t)) })
	s := newStepper()
	id, _ := jobs.Start("backup", "full", s.fn)
	if r := readStoreFile(t, path)[id]; r.State != "running" {
		t.Fatalf("a started job is not stored running: %+v", r)
	}
	s.step(t, JobProgress{Done: 1, Unit: "bytes"})
	clock.advance(jobProgressSave - time.Millisecond)
	s.step(t, JobProgress{Done: 2, Unit: "bytes"})
	if r := readStoreFile(t, path)[id]; r.Done != 0 {
		t.Errorf("progress written %v after the last write: done %d, want 0 until %v have passed", jobProgressSave-time.Millisecond, r.Done, jobProgressSave)
	}
	clock.advance(time.Millisecond)
	s.step(t, JobProgress{Done: 3, Unit: "bytes"})
	if r := readStoreFile(t, path)[id]; r.Done != 3 {
		t.Errorf("progress %v after the last write: done %d stored, want 3", jobProgressSave, r.Done)
	}
	s.step(t, JobProgress{Done: 4, Unit: "bytes"})
	s.finish(t, nil)
	waitJob(t, jobs, id)
	if r := readStoreFile(t, path)[id]; r.State != "succeeded" || r.Done != 4 {
		t.Errorf("the end, stored at once with the last progress: %+v", r)
	}
}

// The file keeps the last 100 finished jobs, as the registry does.
func TestJobStoreKeepsTheLast100(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.json")
	jobs := NewJobs(nil, nil, WithStore(openTestStore(t, path)))
	const n = maxFinishedJobs + 7
	for i := range n {
		id, err := jobs.Start("maintenance", fmt.Sprintf("t%d", i), func(context.Context, func(JobProgress)) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		waitJob(t, jobs, id)
	}
	if err := jobs.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	stored := readStoreFile(t, path)
	if len(stored) != maxFinishedJobs {
		t.Fatalf("%d jobs stored, want %d", len(stored), maxFinishedJobs)
	}
	for id := int64(1); id <= n; id++ {
		if _, ok := stored[id]; ok != (id > n-maxFinishedJobs) {
			t.Errorf("job %d stored: %v", id, ok)
		}
	}
	again := NewJobs(nil, nil, WithStore(openTestStore(t, path)))
	if got := len(again.List()); got != maxFinishedJobs {
		t.Errorf("%d jobs after the restart, want %d", got, maxFinishedJobs)
	}
	if id, _ := again.Start("maintenance", "x", func(context.Context, func(JobProgress)) error { return nil }); id != n+1 {
		t.Errorf("id after the restart: %d, want %d", id, n+1)
	}
	_ = again.Close(ctxT(t))
}

// A file that is not the store's is refused, not overwritten.
func TestJobStoreRefusesABadFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "jobs.json")
	if err := os.WriteFile(bad, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenJobStore(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("a file that is not JSON: %v", err)
	}
	other := filepath.Join(dir, "other.json")
	if err := os.WriteFile(other, []byte(`{"version": 9, "jobs": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenJobStore(other); err == nil || !strings.Contains(err.Error(), "version 9") {
		t.Errorf("a file of another version: %v", err)
	}
	if _, err := OpenJobStore(filepath.Join(dir, "missing", "jobs.json")); err == nil {
		t.Error("a store in a directory that does not exist opened")
	}
	if b, _ := os.ReadFile(bad); string(b) != "{not json" {
		t.Errorf("the refused file was changed: %q", b)
	}
	s := openTestStore(t, filepath.Join(dir, "new.json"))
	if jobs := NewJobs(nil, nil, WithStore(s)); len(jobs.List()) != 0 {
		t.Error("a new store has jobs")
	}
	if fi, err := os.Stat(s.Path()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the new store's file: %v %v; want it written, mode 0600", fi, err)
	}
}
