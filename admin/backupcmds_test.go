package admin

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pgshield/pgshield/admin/backup"
	"github.com/pgshield/pgshield/internal/pgcluster"
	"github.com/pgshield/pgshield/metrics"
)

// The fake Source of the console tests has no backups.
func (f *fakeSource) Backups() *Backups { return nil }

// Without backup: in the configuration every backup command answers
// 55000 naming it; a command that is not well formed is refused first.
func TestBackupCommandsWithoutRepository(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, true)
	for _, cmd := range []string{"BACKUP FULL", "backup incremental", "SHOW BACKUPS", "SHOW WAL", "SHOW SCHEDULE",
		"RESTORE LATEST INTO '/srv/restore'", "RESTORE 20240506T020000Z TO LSN '0/3000060' INTO '/srv/restore' PORT 5499",
		"VERIFY BACKUP 20240506T020000Z", "DELETE EXPIRED BACKUPS"} {
		_, err := c.Exec(ctxT(t), cmd)
		pe := pgErr(t, err)
		if pe.Code != CodeObjectNotInPrerequisiteState || !strings.Contains(pe.Message, "no backup repository configured (backup: in the configuration)") {
			t.Errorf("%s: %s %q; want 55000, no backup repository configured", cmd, pe.Code, pe.Message)
		}
	}
}

func TestBackupCommandsSyntax(t *testing.T) {
	e := startConsole(t)
	c, _ := e.connect(t, true)
	for cmd, code := range map[string]string{
		"BACKUP":                                CodeSyntaxError,
		"BACKUP PARTIAL":                        CodeSyntaxError,
		"BACKUP 'full'":                         CodeSyntaxError,
		"BACKUP FULL NOW":                       CodeSyntaxError,
		"VERIFY":                                CodeSyntaxError,
		"VERIFY BACKUP":                         CodeSyntaxError,
		"VERIFY x":                              CodeSyntaxError,
		"VERIFY BACKUP a b":                     CodeSyntaxError,
		"DELETE":                                CodeSyntaxError,
		"DELETE EXPIRED":                        CodeSyntaxError,
		"DELETE ALL BACKUPS":                    CodeSyntaxError,
		"DELETE EXPIRED BACKUPS NOW":            CodeSyntaxError,
		"RESTORE":                               CodeSyntaxError,
		"RESTORE LATEST":                        CodeSyntaxError,
		"RESTORE LATEST INTO":                   CodeSyntaxError,
		"RESTORE LATEST TO TIMESTAMP":           CodeSyntaxError,
		"RESTORE LATEST TO NOW INTO '/r'":       CodeSyntaxError,
		"RESTORE LATEST INTO '/r' TO LSN '0/1'": CodeSyntaxError,
		"RESTORE LATEST TO LSN '0/1' TO LSN '0/2' INTO '/r'": CodeSyntaxError,
		"RESTORE LATEST INTO '/r' PORT":                      CodeSyntaxError,
		"RESTORE LATEST INTO '/r' OVER '/s'":                 CodeSyntaxError,
		"RESTORE LATEST INTO 'relative/dir'":                 CodeInvalidParameterValue,
		"RESTORE LATEST INTO '/r' PORT 0":                    CodeInvalidParameterValue,
		"RESTORE LATEST INTO '/r' PORT 70000":                CodeInvalidParameterValue,
		"RESTORE LATEST INTO '/r' PORT x":                    CodeInvalidParameterValue,
		"RESTORE LATEST TO TIMESTAMP 'yesterday' INTO '/r'":  CodeInvalidParameterValue,
		"RESTORE LATEST TO TIMESTAMP '2999-01-01' INTO '/r'": CodeInvalidParameterValue,
		"RESTORE LATEST TO LSN 'x/y' INTO '/r'":              CodeInvalidParameterValue,
		"RESTORE LATEST TO LSN '0/123456789' INTO '/r'":      CodeInvalidParameterValue,
	} {
		_, err := c.Exec(ctxT(t), cmd)
		if pe := pgErr(t, err); pe.Code != code {
			t.Errorf("%s: %s %q, want %s", cmd, pe.Code, pe.Message, code)
		}
	}
}

func TestParseRestore(t *testing.T) {
	now := time.Date(2024, 5, 7, 0, 0, 0, 0, time.UTC)
	toks := func(s string) []token {
		tt, err := tokenize(s)
		if err != nil {
			t.Fatal(err)
		}
		return tt
	}
	for in, want := range map[string]restoreRequest{
		"latest INTO '/srv/r/'":                                         {id: "LATEST", dir: "/srv/r"},
		"'latest' INTO /srv/r":                                          {id: "latest", dir: "/srv/r"}, // quoted: an id
		"20240506T020000Z INTO '/srv/r' PORT 5499":                      {id: "20240506T020000Z", dir: "/srv/r", port: 5499},
		"LATEST TO TIMESTAMP '2024-05-06 07:08:09' INTO '/r'":           {id: "LATEST", dir: "/r", at: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)},
		"LATEST TO TIMESTAMP '2024-05-06 09:08:09.5+02' INTO '/r'":      {id: "LATEST", dir: "/r", at: time.Date(2024, 5, 6, 7, 8, 9, 5e8, time.UTC)},
		"LATEST TO TIMESTAMP '2024-05-06T07:08:09Z' INTO '/r'":          {id: "LATEST", dir: "/r", at: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)},
		"LATEST TO TIMESTAMP '2024-05-06 07:08:09 UTC' INTO '/r'":       {id: "LATEST", dir: "/r", at: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)},
		"LATEST TO TIMESTAMP '2024-05-06 07:08:09.123-07:00' INTO '/r'": {id: "LATEST", dir: "/r", at: time.Date(2024, 5, 6, 14, 8, 9, 123e6, time.UTC)},
		"x to lsn '0/3000060' into '/r' port 6000":                      {id: "x", dir: "/r", lsn: "0/3000060", port: 6000},
		"x TO LSN 'a/b0' INTO '/r'":                                     {id: "x", dir: "/r", lsn: "A/B0"},
	} {
		got, err := parseRestore(toks(in), now)
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if got.id != want.id || got.dir != want.dir || got.lsn != want.lsn || got.port != want.port || !got.at.Equal(want.at) {
			t.Errorf("%s:\n got %+v\nwant %+v", in, got, want)
		}
	}
}

func TestDeletedSummary(t *testing.T) {
	many := make([]string, maxDeletedNotice+3)
	for i := range many {
		many[i] = "b"
	}
	for _, c := range []struct {
		in   []string
		want string
	}{
		{nil, "nothing had expired: nothing deleted"},
		{[]string{"20240406T020000Z-full"}, "deleted 1 backup: 20240406T020000Z-full"},
		{[]string{"a", "wal/000000010000000000000001", "b", "wal/000000010000000000000002", "wal/000000010000000000000003"},
			"deleted 2 backups: a, b and 3 WAL files (000000010000000000000001 to 000000010000000000000003)"},
		{[]string{"wal/000000010000000000000001"}, "deleted 1 WAL file (000000010000000000000001)"},
		{many, "deleted 53 backups: " + strings.Repeat("b, ", maxDeletedNotice-1) + "b and 3 more"},
	} {
		if got := deletedSummary(c.in); got != c.want {
			t.Errorf("%q:\n got %q\nwant %q", c.in, got, c.want)
		}
	}
}

// backupSource is the fake Source with backups.
type backupSource struct {
	*fakeSource
	b *Backups
}

func (s *backupSource) Backups() *Backups { return s.b }

// startBackupConsole is startJobsConsole over backups.
func startBackupConsole(t *testing.T, jobs *Jobs, b *Backups) *consoleEnv {
	t.Helper()
	src := &backupSource{fakeSource: newFakeSource(), b: b}
	return serveConsole(t, src, src.fakeSource, nil, WithJobs(jobs))
}

// backupEnv is a backup.Manager over a local repository and a real
// primary, its Backups running (leading through the advisory lock,
// archiving WAL), and a console over them.
type backupEnv struct {
	pg      *pgcluster.Cluster
	dir     string
	key     backup.Key
	mgr     *backup.Manager
	m       *metrics.Metrics
	jobs    *Jobs
	store   string
	b       *Backups
	console *consoleEnv
}

func startBackupEnv(t *testing.T) *backupEnv {
	t.Helper()
	bin, err := pgcluster.BinDir()
	if err != nil {
		t.Skipf("no PostgreSQL: %v", err)
	}
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	ctx := ctxT(t)
	if err := pg.CreateDatabase(ctx, "app", pg.User); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "app", `CREATE TABLE people (id bigint PRIMARY KEY, name text);
		INSERT INTO people SELECT i, 'person ' || i FROM generate_series(1, 1000) i`); err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	e := &backupEnv{pg: pg, dir: t.TempDir()}
	repo, err := backup.NewLocal(filepath.Join(e.dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	if e.key, err = backup.NewKey(bytes.Repeat([]byte{7}, backup.KeySize)); err != nil {
		t.Fatal(err)
	}
	e.mgr, err = backup.NewManager(backup.Config{Repo: repo, Key: e.key, PGBin: bin, Cluster: "app",
		Source: func(context.Context) (backup.Source, error) {
			return backup.Source{Host: pg.Host, Port: pg.Port, User: pg.User, Password: pg.Password, DBName: "app"}, nil
		},
		StagingDir: filepath.Join(e.dir, "staging"), ScratchDir: filepath.Join(e.dir, "scratch"),
		ConfigFile: filepath.Join(e.dir, "pgshield.yaml")}, log)
	if err != nil {
		t.Fatal(err)
	}
	e.m = metrics.New(nil)
	e.store = filepath.Join(e.dir, "jobs.json")
	e.jobs = NewJobs(log, nil, WithStore(openTestStore(t, e.store)))
	e.b, err = NewBackups(e.jobs, BackupConfig{Manager: e.mgr, WAL: true, Observer: e.m, LeaderRetry: 50 * time.Millisecond, Log: log,
		Leader: func(ctx context.Context) (*pgconn.PgConn, error) { return pgconn.Connect(ctx, pg.ConnString("app")) }})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- e.b.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("backups run: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.jobs.Close(ctx); err != nil {
			t.Errorf("close jobs: %v", err)
		}
	})
	e.console = startBackupConsole(t, e.jobs, e.b)
	return e
}

// ctxLong bounds a backup command: a verification starts a server.
func ctxLong(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// run runs cmd and returns its one result; NOTICEs go to ns.
func runBackupCmd(t *testing.T, c *pgx.Conn, cmd string) *pgconn.Result {
	t.Helper()
	res, err := readAll(c.PgConn().Exec(ctxLong(t), cmd))
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if len(res) != 1 {
		t.Fatalf("%s: %d results", cmd, len(res))
	}
	return res[0]
}

// rowsByColumn is a result's rows as column → text (NULL: "NULL").
func rowsByColumn(r *pgconn.Result) []map[string]string {
	var out []map[string]string
	for _, row := range r.Rows {
		m := map[string]string{}
		for i, f := range r.FieldDescriptions {
			if row[i] == nil {
				m[f.Name] = "NULL"
			} else {
				m[f.Name] = string(row[i])
			}
		}
		out = append(out, m)
	}
	return out
}

// startedJob is the id a job command answered, and the job once ended.
func (e *backupEnv) startedJob(t *testing.T, r *pgconn.Result) JobInfo {
	t.Helper()
	if len(r.Rows) != 1 || len(r.FieldDescriptions) != 1 || r.FieldDescriptions[0].Name != "id" {
		t.Fatalf("a job command answered %d rows, columns %v; want its id", len(r.Rows), columnNames(r))
	}
	id, err := strconv.ParseInt(string(r.Rows[0][0]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	info, err := e.jobs.Wait(ctxLong(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// The backup commands over a real backup.Manager: a full and an
// incremental backup, SHOW BACKUPS and the metrics, VERIFY BACKUP,
// RESTORE into a directory, DELETE EXPIRED BACKUPS, SHOW WAL and SHOW
// SCHEDULE, and the errors with their SQLSTATEs.
func TestBackupCommandsOnARealRepository(t *testing.T) {
	e := startBackupEnv(t)
	c, ns := e.console.connect(t, true)
	eventually(t, "this pgshield leads", func() bool { return e.b.Scheduler().Leader().Leading })

	res := runBackupCmd(t, c, "SHOW SCHEDULE")
	if got := strings.Join(columnNames(res), ","); got != "job,schedule,next_run,leader,last_run,last_job,last_result" {
		t.Errorf("SHOW SCHEDULE columns %s", got)
	}
	rows := rowsByColumn(res)
	if len(rows) != 4 || rows[0]["job"] != "full" || rows[0]["schedule"] != "0 2 * * *" || rows[0]["leader"] != "t" ||
		!strings.HasSuffix(rows[0]["next_run"], " 02:00:00.000+00") || rows[2]["schedule"] != "0 3 * * 0" || rows[3]["schedule"] != "30 2 * * *" {
		t.Errorf("SHOW SCHEDULE: %v", rows)
	}
	if n := ns.take(); len(n) != 1 || !strings.Contains(n[0], "this pgshield leads") {
		t.Errorf("SHOW SCHEDULE notices %q", n)
	}

	res = runBackupCmd(t, c, "SHOW BACKUPS")
	if got := strings.Join(columnNames(res), ","); got != "id,kind,started,finished,start_lsn,stop_lsn,size,key_id,verified,verified_at,parent" {
		t.Errorf("SHOW BACKUPS columns %s", got)
	}
	if len(res.Rows) != 0 {
		t.Errorf("SHOW BACKUPS of an empty repository: %d rows", len(res.Rows))
	}
	ns.take()

	// A full backup: a job, answered at once.
	info := e.startedJob(t, runBackupCmd(t, c, "BACKUP FULL"))
	if info.State != JobSucceeded || info.Kind != "backup" || info.Target != "full" {
		t.Fatalf("BACKUP FULL: %s %s %s: %s", info.Kind, info.Target, info.State, info.Err)
	}
	if n := ns.take(); len(n) != 1 || !strings.Contains(n[0], "started: backup full") {
		t.Errorf("BACKUP FULL notices %q", n)
	}
	rows = rowsByColumn(runBackupCmd(t, c, "SHOW BACKUPS"))
	if len(rows) != 1 {
		t.Fatalf("SHOW BACKUPS after BACKUP FULL: %v", rows)
	}
	full := rows[0]
	if full["kind"] != "full" || full["key_id"] != e.key.ID || full["verified"] != "NULL" || full["parent"] != "NULL" ||
		full["start_lsn"] == "NULL" || full["stop_lsn"] == "NULL" || full["size"] == "0" {
		t.Errorf("the full backup in SHOW BACKUPS: %v", full)
	}
	if !strings.Contains(info.Progress.Detail, "backup "+full["id"]) {
		t.Errorf("the job's last detail does not name the backup: %q", info.Progress.Detail)
	}
	list, err := e.mgr.List(ctxT(t))
	if err != nil || len(list) != 1 {
		t.Fatalf("the catalog: %v, %v", list, err)
	}
	if got := testutil.ToFloat64(e.m.BackupSizeBytes.WithLabelValues("full")); got != float64(list[0].Size) {
		t.Errorf("pgshield_backup_size_bytes{kind=full} = %v, want %d", got, list[0].Size)
	}
	if got := testutil.ToFloat64(e.m.BackupLastSuccess.WithLabelValues("full")); got != float64(list[0].Finished.UnixNano())/1e9 {
		t.Errorf("pgshield_backup_last_success_timestamp_seconds{kind=full} = %v, want %v", got, list[0].Finished)
	}
	if got := testutil.ToFloat64(e.m.BackupPreviousSize.WithLabelValues("full")); got != 0 {
		t.Errorf("pgshield_backup_previous_size_bytes{kind=full} = %v with one full backup", got)
	}

	// An incremental backup needs WAL archiving, which the leader runs.
	eventually(t, "WAL archiving runs", func() bool { return e.mgr.WALStatus().Running })
	if err := e.pg.Exec(ctxT(t), "app", "INSERT INTO people SELECT i, 'later ' || i FROM generate_series(1001, 2000) i"); err != nil {
		t.Fatal(err)
	}
	info = e.startedJob(t, runBackupCmd(t, c, "backup incremental"))
	if info.State != JobSucceeded || info.Target != "incremental" {
		t.Fatalf("BACKUP INCREMENTAL: %s: %s", info.State, info.Err)
	}
	rows = rowsByColumn(runBackupCmd(t, c, "SHOW BACKUPS"))
	if len(rows) != 2 || rows[1]["kind"] != "incremental" || rows[1]["parent"] != full["id"] {
		t.Errorf("SHOW BACKUPS after BACKUP INCREMENTAL: %v", rows)
	}
	ns.take()

	wal := rowsByColumn(runBackupCmd(t, c, "SHOW WAL"))
	if len(wal) != 1 || wal[0]["running"] != "t" || wal[0]["last_segment"] == "NULL" || wal[0]["last_archived"] == "NULL" || wal[0]["lag"] == "NULL" {
		t.Errorf("SHOW WAL: %v", wal)
	}
	if n := ns.take(); len(n) != 0 {
		t.Errorf("SHOW WAL on the leader: notices %q", n)
	}

	// VERIFY BACKUP waits for its job; the result is in SHOW BACKUPS.
	_, err = c.Exec(ctxT(t), "VERIFY BACKUP 20200101T000000Z-full")
	if pe := pgErr(t, err); pe.Code != CodeUndefinedObject {
		t.Errorf("VERIFY BACKUP of an unknown id: %s %q, want 42704", pe.Code, pe.Message)
	}
	res = runBackupCmd(t, c, "VERIFY BACKUP "+full["id"])
	if n := ns.take(); len(n) != 2 || !strings.Contains(n[1], "backup "+full["id"]+" verified at ") {
		t.Errorf("VERIFY BACKUP notices %q", n)
	}
	if info := e.startedJob(t, res); info.State != JobSucceeded || info.Kind != "verify" || info.Target != full["id"] {
		t.Errorf("the verify job: %+v", info)
	}
	rows = rowsByColumn(runBackupCmd(t, c, "SHOW BACKUPS"))
	if rows[0]["verified"] != "t" || rows[0]["verified_at"] == "NULL" || rows[1]["verified"] != "NULL" {
		t.Errorf("SHOW BACKUPS after VERIFY BACKUP: %v", rows)
	}
	ns.take()

	// RESTORE waits for its job and says where the copy is.
	target := filepath.Join(e.dir, "restored")
	res = runBackupCmd(t, c, "RESTORE "+full["id"]+" INTO '"+target+"'")
	n := ns.take()
	if len(n) != 2 || !strings.Contains(n[1], "backup "+full["id"]+" restored in "+target+"; took ") {
		t.Errorf("RESTORE notices %q", n)
	}
	if info := e.startedJob(t, res); info.State != JobSucceeded || info.Kind != "restore" || info.Target != target {
		t.Errorf("the restore job: %+v", info)
	}
	if _, err := os.Stat(filepath.Join(target, "PG_VERSION")); err != nil {
		t.Errorf("the restored directory: %v", err)
	}
	for cmd, code := range map[string]string{
		"RESTORE " + full["id"] + " INTO '" + target + "'":                           CodeInvalidParameterValue, // not empty
		"RESTORE 20200101T000000Z-full INTO '" + filepath.Join(e.dir, "other") + "'": CodeUndefinedObject,
	} {
		_, err := c.Exec(ctxT(t), cmd)
		if pe := pgErr(t, err); pe.Code != code {
			t.Errorf("%s: %s %q, want %s", cmd, pe.Code, pe.Message, code)
		}
	}
	ns.take()

	// Nothing is older than the retention.
	res = runBackupCmd(t, c, "DELETE EXPIRED BACKUPS")
	n = ns.take()
	if len(n) != 3 || !strings.Contains(n[1], "nothing had expired") || !strings.Contains(n[2], "full backups 30 days, incremental 7 days, WAL 1 day") {
		t.Errorf("DELETE EXPIRED BACKUPS notices %q", n)
	}
	if info := e.startedJob(t, res); info.State != JobSucceeded || info.Kind != "retention" {
		t.Errorf("the retention job: %+v", info)
	}
	if rows := rowsByColumn(runBackupCmd(t, c, "SHOW BACKUPS")); len(rows) != 2 {
		t.Errorf("DELETE EXPIRED BACKUPS deleted a backup: %v", rows)
	}

	// Every job is in the store, ended.
	stored := readStoreFile(t, e.store)
	if len(stored) != 5 {
		t.Errorf("%d jobs stored, want 5", len(stored))
	}
	for id, r := range stored {
		if r.State != "succeeded" || r.Ended == nil {
			t.Errorf("job %d stored as %s", id, r.State)
		}
	}
	for _, kind := range []string{"full", "incremental", "verify", "retention"} {
		if got := testutil.ToFloat64(e.m.BackupFailures.WithLabelValues(kind)); got != 0 {
			t.Errorf("pgshield_backup_failures_total{kind=%s} = %v", kind, got)
		}
	}
	if got := testutil.ToFloat64(e.m.BackupLastSuccess.WithLabelValues("verify")); got == 0 {
		t.Error("no verify success recorded")
	}
}

// A scheduled full backup runs through the registry; the metrics give
// the size of the previous one; a backup whose object was changed fails
// VERIFY BACKUP with XX001, recorded in SHOW BACKUPS and counted.
func TestBackupScheduledAndFailures(t *testing.T) {
	e := startBackupEnv(t)
	c, ns := e.console.connect(t, true)
	eventually(t, "this pgshield leads", func() bool { return e.b.Scheduler().Leader().Leading })

	first := e.startedJob(t, runBackupCmd(t, c, "BACKUP FULL"))
	if first.State != JobSucceeded {
		t.Fatalf("BACKUP FULL: %s", first.Err)
	}
	// The next scheduled full backup, as the scheduler fires it.
	sched := e.b.Scheduler()
	due := scheduleByName(sched)["full"].Next
	sched.fireDue(due)
	row := scheduleByName(sched)["full"]
	if row.LastResult != "started" || row.LastJob == 0 || !row.Next.Equal(due.Add(24*time.Hour)) {
		t.Fatalf("the scheduled full backup: %+v", row)
	}
	if info, err := e.jobs.Wait(ctxLong(t), row.LastJob); err != nil || info.State != JobSucceeded || info.Target != "full" {
		t.Fatalf("the scheduled full backup's job: %+v, %v", info, err)
	}
	list, err := e.mgr.List(ctxT(t))
	if err != nil || len(list) != 2 {
		t.Fatalf("the catalog: %v, %v", list, err)
	}
	if got := testutil.ToFloat64(e.m.BackupPreviousSize.WithLabelValues("full")); got != float64(list[0].Size) {
		t.Errorf("pgshield_backup_previous_size_bytes{kind=full} = %v, want the first backup's %d", got, list[0].Size)
	}
	if got := testutil.ToFloat64(e.m.BackupSizeBytes.WithLabelValues("full")); got != float64(list[1].Size) {
		t.Errorf("pgshield_backup_size_bytes{kind=full} = %v, want the second backup's %d", got, list[1].Size)
	}

	// Change a byte of the newest backup's base.tar.
	base := filepath.Join(e.dir, "repo", "app", "backups", list[1].ID, "base.tar")
	b, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(base, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ns.take()
	_, err = c.Exec(ctxLong(t), "VERIFY BACKUP LATEST")
	pe := pgErr(t, err)
	if pe.Code != codeDataCorrupted || !strings.Contains(pe.Message, "VERIFY: job") || !strings.Contains(pe.Message, "failed") {
		t.Errorf("VERIFY BACKUP of a changed backup: %s %q, want XX001 naming the job", pe.Code, pe.Message)
	}
	if got := testutil.ToFloat64(e.m.BackupFailures.WithLabelValues("verify")); got != 1 {
		t.Errorf("pgshield_backup_failures_total{kind=verify} = %v, want 1", got)
	}
	var verify JobInfo
	for _, info := range e.jobs.List() {
		if info.Kind == "verify" {
			verify = info
		}
	}
	if verify.State != JobFailed || verify.Target != list[1].ID || !strings.Contains(verify.Err, "failed verification") {
		t.Errorf("the verify job: %+v", verify)
	}
	rows := rowsByColumn(runBackupCmd(t, c, "SHOW BACKUPS"))
	if len(rows) != 2 || rows[1]["verified"] != "f" || rows[0]["verified"] != "NULL" {
		t.Errorf("SHOW BACKUPS after a failed verification: %v", rows)
	}

	// A backup the primary cannot give fails, and is counted.
	if err := e.pg.Stop(ctxT(t), "fast"); err != nil {
		t.Fatal(err)
	}
	info := e.startedJob(t, runBackupCmd(t, c, "BACKUP INCREMENTAL"))
	if info.State != JobFailed || info.Err == "" {
		t.Errorf("BACKUP INCREMENTAL with the primary down: %s %q", info.State, info.Err)
	}
	if got := testutil.ToFloat64(e.m.BackupFailures.WithLabelValues("incremental")); got != 1 {
		t.Errorf("pgshield_backup_failures_total{kind=incremental} = %v, want 1", got)
	}
}

// The metrics' side of BackupObserver: a repository without a full
// backup exports 0 (BackupFullMissing fires), the WAL lag exists only
// while this pgshield archives, and every failure kind starts at 0.
func TestBackupObserverMetrics(t *testing.T) {
	m := metrics.New(nil)
	var obs BackupObserver = m
	series := func(name string) map[string]float64 {
		t.Helper()
		families, err := m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, f := range families {
			if f.GetName() != name {
				continue
			}
			for _, s := range f.GetMetric() {
				label := ""
				for _, l := range s.GetLabel() {
					label += l.GetName() + "=" + l.GetValue()
				}
				out[label] = s.GetGauge().GetValue() + s.GetCounter().GetValue()
			}
		}
		return out
	}
	if got := series("pgshield_backup_failures_total"); len(got) != 5 || got["kind=full"] != 0 || got["kind=wal"] != 0 {
		t.Errorf("failure counters before any failure: %v", got)
	}
	if got := series("pgshield_backup_last_success_timestamp_seconds"); len(got) != 0 {
		t.Errorf("a last success before any report: %v", got)
	}
	obs.BackupSucceeded("full", time.Time{}, 0)
	obs.BackupSucceeded("incremental", time.Unix(1714960800, 5e8), 90*time.Second)
	obs.BackupSize("incremental", 300, 200)
	obs.BackupFailed("verify")
	if got := series("pgshield_backup_last_success_timestamp_seconds"); got["kind=full"] != 0 || got["kind=incremental"] != 1714960800.5 {
		t.Errorf("last success: %v", got)
	}
	if got := series("pgshield_backup_duration_seconds"); len(got) != 1 || got["kind=incremental"] != 90 {
		t.Errorf("duration: %v (none for a kind without a backup)", got)
	}
	if a, b := series("pgshield_backup_size_bytes"), series("pgshield_backup_previous_size_bytes"); a["kind=incremental"] != 300 || b["kind=incremental"] != 200 {
		t.Errorf("sizes %v, previous %v", a, b)
	}
	if got := series("pgshield_backup_failures_total"); got["kind=verify"] != 1 {
		t.Errorf("failures: %v", got)
	}
	if got := series("pgshield_wal_archive_lag_seconds"); len(got) != 0 {
		t.Errorf("WAL lag before archiving: %v", got)
	}
	obs.WALArchiveLag(1500*time.Millisecond, true)
	if got := series("pgshield_wal_archive_lag_seconds"); len(got) != 1 || got[""] != 1.5 {
		t.Errorf("WAL lag while archiving: %v", got)
	}
	obs.WALArchiveLag(0, false)
	if got := series("pgshield_wal_archive_lag_seconds"); len(got) != 0 {
		t.Errorf("WAL lag once this pgshield no longer archives: %v", got)
	}
}
