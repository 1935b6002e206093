package admin

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// A job store keeps the registry's jobs across restarts: SHOW JOBS after
// a restart still lists the jobs of the previous run, and a job that was
// running when its pgshield died (kill -9, a crash, the machine lost) is
// shown failed, never running (nothing runs it any more) nor done (its
// work may be half done). A clean shutdown cancels the running jobs, so
// they are stored cancelled.
//
// The store is one JSON file, rewritten whole (a temporary file beside
// it, fsync, rename) at every change of a job's state, and at most every
// jobProgressSave while a job only reports progress. It holds what the
// registry keeps: the jobs not ended and the last 100 finished.

// JobStore is the file a registry keeps its jobs in (WithStore). One
// registry uses a store; each pgshield has its own file.
type JobStore struct {
	path string

	// records are the jobs the file held when it was opened; the
	// registry takes them at NewJobs.
	records []jobRecord

	mu sync.Mutex // held while the file is written; guards the fields below
	// lastSave is when the file was last written (the registry's clock).
	lastSave time.Time
	failing  bool // the last write failed (logged once until one succeeds)
}

// jobProgressSave is how often progress alone is written.
const jobProgressSave = 3 * time.Second

// errJobInterrupted is the error of a job that was running (or queued)
// when its pgshield stopped without ending it.
const errJobInterrupted = "pgshield stopped while the job ran"

// jobFileVersion is the format of the file; a file of another version
// is refused.
const jobFileVersion = 1

// jobFile is the store's file.
type jobFile struct {
	Version int         `json:"version"`
	Jobs    []jobRecord `json:"jobs"`
}

// jobRecord is one job in the file.
type jobRecord struct {
	ID      int64      `json:"id"`
	Kind    string     `json:"kind"`
	Target  string     `json:"target,omitempty"`
	State   string     `json:"state"`
	Done    int64      `json:"done,omitempty"`
	Total   int64      `json:"total,omitempty"`
	Unit    string     `json:"unit,omitempty"`
	Detail  string     `json:"detail,omitempty"`
	Started time.Time  `json:"started"`
	Ended   *time.Time `json:"ended,omitempty"`
	Error   string     `json:"error,omitempty"`
	// Saved is when the record was written: for a job not ended, the
	// last time pgshield is known to have run it.
	Saved time.Time `json:"saved"`
}

// OpenJobStore opens the job file at path, in a directory that exists
// (a missing file is an empty store, created at the first change). A
// file that cannot be read or parsed is an error: pgshield may then run
// without a store, or stop.
func OpenJobStore(path string) (*JobStore, error) {
	if path == "" {
		return nil, errors.New("job store: no file name")
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("job store: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("job store: %s is not a directory", filepath.Dir(path))
	}
	s := &JobStore{path: path}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("job store: %w", err)
	}
	var f jobFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("job store %s: %w", path, err)
	}
	if f.Version != jobFileVersion {
		return nil, fmt.Errorf("job store %s: version %d, want %d", path, f.Version, jobFileVersion)
	}
	s.records = f.Jobs
	return s, nil
}

// Path is the store's file.
func (s *JobStore) Path() string { return s.path }

// WithStore keeps the registry's jobs in store: NewJobs takes the jobs
// the file holds (those not ended become failed with the error "pgshield
// stopped while the job ran", and the ids go on after the highest), and
// every change is written to it.
func WithStore(store *JobStore) JobsOption {
	return func(j *Jobs) { j.store = store }
}

// JobsOption adds to what NewJobs builds (WithStore).
type JobsOption func(*Jobs)

// parseJobState is the JobState of a stored name.
func parseJobState(s string) (JobState, bool) {
	for st := JobQueued; st <= JobCancelled; st++ {
		if st.String() == s {
			return st, true
		}
	}
	return 0, false
}

// loadStore takes the store's records into j, which is new: the jobs of
// the previous run, finished, those it did not end failed. It then
// writes the file, so that what it changed is stored before any job runs.
func (j *Jobs) loadStore() {
	s := j.store
	noop := func(error) {}
	var finished []*job
	for _, r := range s.records {
		if r.ID < 1 || r.Kind == "" || j.jobs[r.ID] != nil {
			j.log.Warn("job store: a record without an id or kind, or a duplicate id, dropped", zap.Int64("job", r.ID))
			continue
		}
		jb := &job{id: r.ID, kind: r.Kind, target: r.Target, cancel: noop, done: make(chan struct{}), now: j.now,
			started: r.Started, err: r.Error,
			progress: JobProgress{Done: r.Done, Total: r.Total, Unit: r.Unit, Detail: truncateUTF8(r.Detail, maxJobDetail)}}
		close(jb.done)
		state, ok := parseJobState(r.State)
		switch {
		case !ok:
			jb.state, jb.err = JobFailed, fmt.Sprintf("%s (stored in an unknown state %q)", errJobInterrupted, r.State)
		case !state.Finished():
			jb.state, jb.err = JobFailed, errJobInterrupted
		default:
			jb.state = state
		}
		switch {
		case ok && state.Finished() && r.Ended != nil:
			jb.ended = *r.Ended
		case !r.Saved.IsZero():
			jb.ended = r.Saved // the last time it is known to have run
		default:
			jb.ended = r.Started
		}
		if jb.state == JobFailed && jb.err != r.Error {
			j.log.Warn("job store: a job pgshield did not end is failed", zap.Int64("job", jb.id),
				zap.String("kind", jb.kind), zap.String("target", jb.target), zap.String("state", r.State))
		}
		j.jobs[jb.id] = jb
		finished = append(finished, jb)
		j.nextID = max(j.nextID, jb.id)
	}
	slices.SortFunc(finished, func(a, b *job) int {
		return cmp.Or(a.ended.Compare(b.ended), cmp.Compare(a.id, b.id))
	})
	for _, jb := range finished {
		j.finished = append(j.finished, jb.id)
	}
	for len(j.finished) > maxFinishedJobs {
		delete(j.jobs, j.finished[0])
		j.finished = slices.Delete(j.finished, 0, 1)
	}
	s.records = nil
	j.persist()
}

// persist writes every job the registry keeps to the store (none: it
// does nothing). It is called without j.mu, after a change; the snapshot
// is taken under the store's lock, so the last write has the newest
// state whatever the order of concurrent calls.
func (j *Jobs) persist() {
	s := j.store
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := j.now()
	f := jobFile{Version: jobFileVersion, Jobs: j.records(now)}
	err := writeFileAtomic(s.path, f)
	s.lastSave = now
	switch {
	case err != nil && !s.failing:
		s.failing = true
		j.log.Warn("job store: the jobs could not be saved; after a restart SHOW JOBS may not show the latest", zap.String("file", s.path), zap.Error(err))
	case err == nil && s.failing:
		s.failing = false
		j.log.Info("job store: the jobs are saved again", zap.String("file", s.path))
	}
}

// progressed writes the store after a progress report, when the last
// write is jobProgressSave old.
func (j *Jobs) progressed() {
	s := j.store
	if s == nil {
		return
	}
	if !s.mu.TryLock() { // a write is under way; a later report saves
		return
	}
	due := j.now().Sub(s.lastSave) >= jobProgressSave
	s.mu.Unlock()
	if due {
		j.persist()
	}
}

// records is a record of every job the registry keeps, by id.
func (j *Jobs) records(now time.Time) []jobRecord {
	j.mu.Lock()
	jobs := make([]*job, 0, len(j.jobs))
	for _, jb := range j.jobs {
		jobs = append(jobs, jb)
	}
	j.mu.Unlock()
	slices.SortFunc(jobs, func(a, b *job) int { return cmp.Compare(a.id, b.id) })
	out := make([]jobRecord, 0, len(jobs))
	for _, jb := range jobs {
		jb.mu.Lock()
		r := jobRecord{ID: jb.id, Kind: jb.kind, Target: jb.target, State: jb.state.String(),
			Done: jb.progress.Done, Total: jb.progress.Total, Unit: jb.progress.Unit, Detail: jb.progress.Detail,
			Started: jb.started, Error: jb.err, Saved: now}
		if jb.state.Finished() {
			ended := jb.ended
			r.Ended, r.Saved = &ended, ended
		}
		jb.mu.Unlock()
		out = append(out, r)
	}
	return out
}

// writeFileAtomic writes v as JSON to path: a temporary file in the same
// directory, synced, renamed over path, and the directory synced, so a
// reader (or the next start after a crash) sees the old file or the new
// one, whole.
func writeFileAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	name := tmp.Name()
	defer func() {
		if name != "" {
			_ = os.Remove(name)
		}
	}()
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	name = ""
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
