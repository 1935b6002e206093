package admin

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

func noopJob(context.Context, func(JobProgress)) error { return nil }

// blockingJob runs until cancelled.
func blockingJob(ctx context.Context, _ func(JobProgress)) error {
	<-ctx.Done()
	return ctx.Err()
}

// defaultEntries is the backup schedule of the operations guide.
func defaultEntries(run JobFunc) []ScheduledJob {
	return []ScheduledJob{
		{Name: "full", Spec: DefaultScheduleFull, Kind: "backup", Target: "full", Run: run},
		{Name: "incremental", Spec: DefaultScheduleIncremental, Kind: "backup", Target: "incremental", Run: run},
		{Name: "verify", Spec: DefaultScheduleVerify, Kind: "verify", Target: "latest", Run: run},
		{Name: "retention", Spec: DefaultScheduleRetention, Kind: "retention", Target: "expired", Run: run},
	}
}

func scheduleByName(s *Scheduler) map[string]ScheduleRow {
	out := map[string]ScheduleRow{}
	for _, r := range s.Schedule() {
		out[r.Name] = r
	}
	return out
}

func TestScheduleParsing(t *testing.T) {
	jobs, _ := newTestJobs(t, nil)
	for _, spec := range []string{"0 2 * * *", "*/15 * * * *", "0 3 * * 0", "30 2 1 * *", "@daily", "@every 1h", "off"} {
		if err := ParseSchedule(spec); err != nil {
			t.Errorf("ParseSchedule(%q): %v", spec, err)
		}
	}
	for _, spec := range []string{"", "61 * * * *", "0 2 * *", "0 0 2 * * *", "every day", "0 25 * * *", "OFF"} {
		if err := ParseSchedule(spec); err == nil {
			t.Errorf("ParseSchedule(%q) accepted", spec)
		}
	}
	_, err := NewScheduler(SchedulerConfig{Jobs: jobs, Entries: []ScheduledJob{
		{Name: "full", Spec: "0 25 * * *", Kind: "backup", Target: "full", Run: noopJob},
		{Name: "verify", Spec: "0 3 * * 0", Kind: "verify", Run: noopJob},
		{Name: "verify", Spec: "0 3 * * 0", Kind: "verify", Run: noopJob},
		{Name: "nothing", Spec: "0 3 * * 0", Kind: "verify"},
	}})
	if err == nil {
		t.Fatal("a schedule with a bad cron expression, a name twice and a job without a function accepted")
	}
	for _, want := range []string{`schedule of full "0 25 * * *"`, `a name of its own ("verify")`, "nothing needs a kind and a function"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
	if _, err := NewScheduler(SchedulerConfig{}); err == nil {
		t.Error("a scheduler without a registry")
	}
}

// The next runs of the default schedule, in UTC whatever the clock's
// zone, from a clock the test sets.
func TestScheduleNextRuns(t *testing.T) {
	jobs, _ := newTestJobs(t, nil)
	// Monday 2024-05-06 09:08:09 in UTC+2: 07:08:09 UTC.
	zone := time.FixedZone("UTC+2", 2*3600)
	clock := &fakeClock{t: time.Date(2024, 5, 6, 9, 8, 9, 0, zone)}
	entries := append(defaultEntries(blockingJob), ScheduledJob{Name: "never", Spec: "off", Kind: "maintenance", Run: noopJob})
	s, err := NewScheduler(SchedulerConfig{Jobs: jobs, Entries: entries, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Time{
		"full":        time.Date(2024, 5, 7, 2, 0, 0, 0, time.UTC),
		"incremental": time.Date(2024, 5, 6, 12, 0, 0, 0, time.UTC),
		"verify":      time.Date(2024, 5, 12, 3, 0, 0, 0, time.UTC), // the next Sunday
		"retention":   time.Date(2024, 5, 7, 2, 30, 0, 0, time.UTC),
	}
	rows := scheduleByName(s)
	for name, w := range want {
		if got := rows[name].Next; !got.Equal(w) {
			t.Errorf("%s next runs at %s, want %s", name, got.UTC(), w)
		}
	}
	if r := rows["never"]; !r.Next.IsZero() || r.Spec != "off" {
		t.Errorf("a job off: %+v", r)
	}
	if got := s.sleep(clock.now()); got != maxScheduleSleep {
		t.Errorf("sleep five hours before the next job: %v, want the bound %v", got, maxScheduleSleep)
	}
	if got := s.sleep(time.Date(2024, 5, 6, 11, 59, 50, 0, time.UTC)); got != 10*time.Second {
		t.Errorf("sleep 10 s before the next job: %v", got)
	}

	// Past 12:00 the incremental backup is due, once, and runs next at
	// 18:00; nothing else is.
	clock.t = time.Date(2024, 5, 6, 12, 0, 0, 500, time.UTC)
	s.fireDue(clock.now())
	rows = scheduleByName(s)
	inc := rows["incremental"]
	if !inc.Next.Equal(time.Date(2024, 5, 6, 18, 0, 0, 0, time.UTC)) || inc.LastResult != "started" || inc.LastJob == 0 || !inc.LastRun.Equal(clock.now()) {
		t.Errorf("incremental after it was due: %+v", inc)
	}
	if info := getJob(t, jobs, inc.LastJob); info.Kind != "backup" || info.Target != "incremental" {
		t.Errorf("the job started: %+v", info)
	}
	for _, name := range []string{"full", "verify", "retention"} {
		if r := rows[name]; r.LastJob != 0 || !r.Next.Equal(want[name]) {
			t.Errorf("%s ran before it was due: %+v", name, r)
		}
	}
	s.fireDue(clock.now())
	if n := len(jobs.List()); n != 1 {
		t.Errorf("%d jobs after a second look at the same time, want 1", n)
	}

	if err := jobs.Cancel(inc.LastJob); err != nil {
		t.Fatal(err)
	}
	waitJob(t, jobs, inc.LastJob)

	// Asleep for three days: each job due runs once, not once per missed
	// time; the incremental backup is skipped as the full one (of its
	// kind, backup) started just before it runs.
	clock.t = time.Date(2024, 5, 9, 12, 30, 0, 0, time.UTC)
	s.fireDue(clock.now())
	rows = scheduleByName(s)
	if n := len(jobs.List()); n != 3 {
		t.Errorf("%d jobs after three days asleep, want 3 (the first incremental, full and retention)", n)
	}
	if r := rows["full"]; !r.Next.Equal(time.Date(2024, 5, 10, 2, 0, 0, 0, time.UTC)) || r.LastResult != "started" {
		t.Errorf("full after three days asleep: %+v", r)
	}
	if r := rows["incremental"]; r.LastJob != 0 || !strings.HasPrefix(r.LastResult, "skipped: job") || !strings.Contains(r.LastResult, "(backup full) was running") {
		t.Errorf("incremental while the full backup runs: %+v", r)
	}
	if r := rows["retention"]; r.LastResult != "started" {
		t.Errorf("retention: %+v", r)
	}
}

// A scheduled job is skipped while a job of its kind runs, and when this
// pgshield does not lead.
func TestScheduleSkips(t *testing.T) {
	jobs, _ := newTestJobs(t, nil)
	clock := newFakeClock()
	s, err := NewScheduler(SchedulerConfig{Jobs: jobs, Entries: defaultEntries(noopJob), Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	if l := s.Leader(); !l.Leading || l.Lock != "none" {
		t.Errorf("without a leader lock this pgshield leads: %+v", l)
	}
	full := newStepper()
	id, _ := jobs.Start("backup", "full", full.fn)
	clock.t = time.Date(2024, 5, 6, 12, 0, 0, 0, time.UTC)
	s.fireDue(clock.now())
	if r := scheduleByName(s)["incremental"]; r.LastJob != 0 || !strings.Contains(r.LastResult, "skipped: job 1 (backup full) was running") {
		t.Errorf("incremental while a full backup runs: %+v", r)
	}
	full.finish(t, nil)
	waitJob(t, jobs, id)

	s.mu.Lock()
	s.leader = Leadership{}
	s.mu.Unlock()
	clock.t = time.Date(2024, 5, 6, 18, 0, 0, 0, time.UTC)
	s.fireDue(clock.now())
	if r := scheduleByName(s)["incremental"]; r.LastJob != 0 || r.LastResult != "skipped: another pgshield leads" {
		t.Errorf("incremental on a pgshield that does not lead: %+v", r)
	}
	if n := len(jobs.List()); n != 1 {
		t.Errorf("%d jobs, want only the full backup the test started", n)
	}
}

// gatedConnect connects to pg unless the test closed the gate.
type gatedConnect struct {
	pg     *pgcluster.Cluster
	closed atomic.Bool
}

func (g *gatedConnect) connect(ctx context.Context) (*pgconn.PgConn, error) {
	if g.closed.Load() {
		return nil, context.DeadlineExceeded
	}
	return pgconn.Connect(ctx, g.pg.ConnString("postgres"))
}

// leaderPID is the backend holding the leader lock, 0 when none does.
func leaderPID(t *testing.T, pg *pgcluster.Cluster) uint32 {
	t.Helper()
	conn, err := pgconn.Connect(ctxT(t), pg.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn(conn)
	rows, err := execParams(ctxT(t), conn, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
		AND ((classid::bigint << 32) | objid::bigint) = $1`, []byte("8099569347131173988"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		return 0
	}
	pid, err := strconv.ParseUint(string(rows[0][0]), 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(pid)
}

// eventually polls cond until it holds (30 s at most: a bound for a slow
// machine, not a timing goal).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 30 s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Two schedulers against one PostgreSQL: one leads, runs the scheduled
// jobs and WhileLeading; when its connection is terminated the other
// takes over, and the first stops WhileLeading and follows.
func TestSchedulerLeadership(t *testing.T) {
	if LeaderLockKey != 8099569347131173988 {
		t.Fatalf("the leader lock key changed: %d (the test's query names it)", LeaderLockKey)
	}
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	type node struct {
		s       *Scheduler
		jobs    *Jobs
		gate    *gatedConnect
		leading atomic.Int32 // WhileLeading running
		led     atomic.Int32 // times WhileLeading began
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	nodes := make([]*node, 2)
	for i := range nodes {
		n := &node{jobs: NewJobs(log, nil), gate: &gatedConnect{pg: pg}}
		s, err := NewScheduler(SchedulerConfig{Jobs: n.jobs, Entries: defaultEntries(blockingJob), Connect: n.gate.connect,
			Retry: 20 * time.Millisecond, Log: log, WhileLeading: func(ctx context.Context) {
				n.led.Add(1)
				n.leading.Add(1)
				<-ctx.Done()
				n.leading.Add(-1)
			}})
		if err != nil {
			t.Fatal(err)
		}
		n.s = s
		nodes[i] = n
		wg.Go(func() {
			if err := s.Run(ctx); err != nil {
				t.Errorf("scheduler %d: %v", i, err)
			}
		})
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		for _, n := range nodes {
			_ = n.jobs.Close(context.Background())
		}
	})
	leaders := func() []*node {
		var out []*node
		for _, n := range nodes {
			if n.s.Leader().Leading {
				out = append(out, n)
			}
		}
		return out
	}
	eventually(t, "one scheduler leads and the other knows it follows", func() bool {
		return len(leaders()) == 1 && !nodes[0].s.Leader().Since.IsZero() && !nodes[1].s.Leader().Since.IsZero()
	})
	first := leaders()[0]
	other := nodes[0]
	if first == nodes[0] {
		other = nodes[1]
	}
	if l := other.s.Leader(); l.Leading || l.Err != "" {
		t.Errorf("the follower: %+v; want not leading, no error (the other holds the lock)", l)
	}
	eventually(t, "the leader runs WhileLeading", func() bool { return first.leading.Load() == 1 })
	// Many tries later there is still one leader.
	for range 10 {
		time.Sleep(20 * time.Millisecond)
		if n := len(leaders()); n != 1 {
			t.Fatalf("%d leaders", n)
		}
	}
	if other.led.Load() != 0 {
		t.Error("the follower ran WhileLeading")
	}

	// A due job starts on the leader only.
	due := time.Now().Add(8 * 24 * time.Hour) // each is due
	for _, n := range nodes {
		n.s.fireDue(due)
	}
	if got := len(first.jobs.List()); got != 3 {
		t.Errorf("the leader started %d jobs, want 3 (full, verify, retention; incremental waits for the full backup)", got)
	}
	if got := len(other.jobs.List()); got != 0 {
		t.Errorf("the follower started %d jobs", got)
	}

	// The leader's connection is terminated (its primary failed over,
	// say) and it cannot reach a primary: the other takes over.
	pid := leaderPID(t, pg)
	if pid == 0 {
		t.Fatal("no backend holds the leader lock")
	}
	first.gate.closed.Store(true)
	if err := pg.Exec(ctxT(t), "postgres", "SELECT pg_terminate_backend("+strconv.FormatUint(uint64(pid), 10)+")"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the other scheduler takes over", func() bool {
		return other.s.Leader().Leading && !first.s.Leader().Leading
	})
	eventually(t, "WhileLeading moves to the new leader", func() bool {
		return first.leading.Load() == 0 && other.leading.Load() == 1
	})
	if l := first.s.Leader(); !strings.Contains(l.Err, "cannot connect to the primary") && !strings.Contains(l.Err, "lost the connection") {
		t.Errorf("the former leader says: %+v", l)
	}
	if p := leaderPID(t, pg); p == 0 || p == pid {
		t.Errorf("the lock is held by backend %d, want the new leader's (not %d)", p, pid)
	}

	// Back on the network, the former leader follows.
	first.gate.closed.Store(false)
	eventually(t, "the former leader follows again", func() bool {
		l := first.s.Leader()
		return !l.Leading && l.Err == ""
	})
	if !other.s.Leader().Leading {
		t.Error("the new leader lost the lead to the former one")
	}

	// At the end of Run the leader gives the lock up.
	cancel()
	wg.Wait()
	if p := leaderPID(t, pg); p != 0 {
		t.Errorf("backend %d still holds the leader lock after Run returned", p)
	}
	if other.leading.Load() != 0 {
		t.Error("WhileLeading still runs after Run returned")
	}
}
