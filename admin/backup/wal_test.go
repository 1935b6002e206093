package backup

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestWALRestartAndFailover: pg_receivewal is restarted when it dies, and
// follows the primary to a promoted replica; a restore of the backup
// taken before the failover follows the new timeline to its end.
func TestWALRestartAndFailover(t *testing.T) {
	t.Parallel()
	e, replica := newEnv(t, envOptions{replica: true})
	stopWAL := e.runWAL()
	full, err := e.m.BackupFull(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.insert(1, 10, "A")

	// Killed: restarted.
	e.m.mu.Lock()
	proc := e.m.wal.proc
	e.m.mu.Unlock()
	if proc == nil {
		t.Fatal("no pg_receivewal")
	}
	if err := proc.Kill(); err != nil {
		t.Fatal(err)
	}
	e.waitFor("pg_receivewal to be restarted", func() bool {
		e.m.mu.Lock()
		defer e.m.mu.Unlock()
		return e.m.wal.proc != nil && e.m.wal.proc.Pid != proc.Pid
	})
	if _, err := e.m.SwitchWAL(e.ctx); err != nil {
		t.Fatal(err)
	}

	// The replica has everything; it is promoted and becomes the source.
	e.insert(11, 20, "B")
	var primaryLSN string
	conn, err := pgx.Connect(e.ctx, e.pg.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(e.ctx, "SELECT pg_current_wal_lsn()::text").Scan(&primaryLSN); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	rconn, err := pgx.Connect(e.ctx, replica.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer rconn.Close(context.Background())
	e.waitFor("the replica to catch up", func() bool {
		var ok bool
		return rconn.QueryRow(e.ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", primaryLSN).Scan(&ok) == nil && ok
	})
	if err := e.pg.Stop(e.ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if _, err := rconn.Exec(e.ctx, "SELECT pg_promote(true, 60)"); err != nil {
		t.Fatal(err)
	}
	e.setSource(replica)
	e.waitFor("archiving from the new primary", func() bool {
		st := e.m.WALStatus()
		return st.Running && st.Source == replica.Addr()
	})
	appConn, err := pgx.Connect(e.ctx, replica.ConnString("app"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = appConn.Exec(e.ctx, "INSERT INTO t SELECT g, 'C' FROM generate_series(21, 25) g")
	appConn.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seg, err := e.m.SwitchWAL(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(seg, "00000002") {
		t.Fatalf("the new primary's segment %s is not on timeline 2", seg)
	}
	if names := e.objectNames(walObject(testCluster, "00000002.history")); len(names) != 1 {
		t.Fatalf("the archive has no history file of timeline 2: %v", names)
	}
	// Timeline 1's unfinished segment moves from the staging directory into
	// the repository, as a .partial, once no pg_receivewal runs (here: at
	// the end of WAL archiving).
	stopWAL()
	entries, err := os.ReadDir(e.m.cfg.StagingDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), "00000001") {
			t.Fatalf("timeline 1's %s is still in the staging directory", en.Name())
		}
	}
	var partials []string
	for _, n := range walNames(e) {
		if strings.HasSuffix(n, ".partial") {
			partials = append(partials, n)
		}
	}
	if len(partials) != 1 || !strings.HasPrefix(partials[0], "00000001") {
		t.Fatalf("partial segments in the repository: %v", partials)
	}

	res, err := e.restore(RestoreOptions{ID: Latest})
	if err != nil {
		t.Fatal(err)
	}
	if res.Backup != full.ID {
		t.Fatalf("restored %s", res.Backup)
	}
	wantCounts(t, e.counts(res.Port), map[string]int{"A": 10, "B": 10, "C": 5})
}

// TestArchiveIntervalForcesSwitch: written WAL reaches the repository
// within ArchiveInterval without anyone switching segments.
func TestArchiveIntervalForcesSwitch(t *testing.T) {
	t.Parallel()
	e, _ := newEnv(t, envOptions{archiveInterval: time.Second})
	// What a pg_receivewal killed while it zero-filled a new segment
	// leaves; it would refuse to start beside it.
	if err := os.MkdirAll(e.m.cfg.StagingDir, 0o700); err != nil {
		t.Fatal(err)
	}
	half := filepath.Join(e.m.cfg.StagingDir, "000000010000000000000001.partial")
	if err := os.WriteFile(half, make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	e.runWAL()
	e.insert(1, 5, "A")
	conn, err := pgx.Connect(e.ctx, e.pg.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var written string
	var segSize int64
	if err := conn.QueryRow(e.ctx, "SELECT pg_current_wal_lsn()::text, (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')").Scan(&written, &segSize); err != nil {
		t.Fatal(err)
	}
	at, _ := parseLSN(written)
	e.waitFor("the written WAL to be archived", func() bool {
		_, segno, ok := parseSegment(e.m.WALStatus().LastSegment, segSize)
		return ok && lsn((segno+1)*uint64(segSize)) >= at
	})
	if st := e.m.WALStatus(); st.Err != "" {
		t.Fatalf("WAL status %+v", st)
	}
	// pg_receivewal ran: the half-made segment went, or is a whole one now.
	if st, err := os.Stat(half); err == nil && st.Size() != 16<<20 {
		t.Fatalf("the half-made segment is still there (%d bytes)", st.Size())
	}
	// A staging directory holds only what is not uploaded yet.
	entries, err := os.ReadDir(e.m.cfg.StagingDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if segmentPattern.MatchString(en.Name()) {
			e.waitFor("the staging directory to be emptied of "+en.Name(), func() bool {
				_, err := os.Stat(filepath.Join(e.m.cfg.StagingDir, en.Name()))
				return errors.Is(err, os.ErrNotExist)
			})
		}
	}
}

// TestWALFetch: restore_command's body, against a real local repository.
func TestWALFetch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	repo, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, err := NewKey(bytes.Repeat([]byte{7}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewKey(bytes.Repeat([]byte{8}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	seg := "000000010000000000000003"
	content := bytes.Repeat([]byte("wal"), 1000)
	if _, err := putSealed(ctx, repo, key, walObject("app", seg), func(w io.Writer) error {
		_, err := w.Write(content)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "RECOVERYXLOG")
	if err := WALFetch(ctx, repo, key, "app", seg, out); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("fetched %d bytes, %v", len(got), err)
	}
	for _, name := range []string{"000000010000000000000004", "00000002.history", seg + ".partial", "../etc"} {
		if err := WALFetch(ctx, repo, key, "app", name, filepath.Join(dir, "x")); !errors.Is(err, ErrNotFound) {
			t.Errorf("WALFetch(%s): %v, want ErrNotFound", name, err)
		}
	}
	if err := WALFetch(ctx, repo, other, "app", seg, filepath.Join(dir, "y")); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("with another key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "y")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a failed fetch left its file")
	}
}

// TestIncrementalNeedsArchive: without WAL archiving since the full
// backup, an incremental backup names the missing segment.
func TestIncrementalNeedsArchive(t *testing.T) {
	t.Parallel()
	e, _ := newEnv(t, envOptions{})
	if _, err := e.m.BackupIncremental(e.ctx, nil); err == nil || !strings.Contains(err.Error(), "full backup first") {
		t.Fatalf("an incremental backup without a full one: %v", err)
	}
	if _, err := e.m.BackupFull(e.ctx, nil); err != nil {
		t.Fatal(err)
	}
	e.m.cfg.WALWait = time.Second
	_, err := e.m.BackupIncremental(e.ctx, nil)
	if err == nil || !strings.Contains(err.Error(), "did not reach the repository") {
		t.Fatalf("an incremental backup without archiving: %v", err)
	}
	if list, _ := e.m.List(e.ctx); len(list) != 1 {
		t.Fatalf("List %v", ids(list))
	}
}

func TestSegmentNames(t *testing.T) {
	t.Parallel()
	const seg16 = 16 << 20
	for _, c := range []struct {
		l    string
		size int64
		tli  uint32
		want string
	}{
		{"0/2000028", seg16, 1, "000000010000000000000002"},
		{"1/FF000000", seg16, 3, "0000000300000001000000FF"},
		{"A/12345678", 1 << 30, 2, "000000020000000A00000000"},
		{"0/0", 1 << 20, 1, "000000010000000000000000"},
	} {
		l, err := parseLSN(c.l)
		if err != nil {
			t.Fatal(err)
		}
		if l.String() != c.l {
			t.Errorf("LSN %s prints as %s", c.l, l)
		}
		name := segmentName(c.tli, segmentOf(l, c.size), c.size)
		if name != c.want {
			t.Errorf("segment of %s (%d): %s, want %s", c.l, c.size, name, c.want)
		}
		tli, segno, ok := parseSegment(name, c.size)
		if !ok || tli != c.tli || segno != segmentOf(l, c.size) {
			t.Errorf("parseSegment(%s) = %d %d %v", name, tli, segno, ok)
		}
	}
	for _, bad := range []string{"", "0", "x/1", "1/", "100000000/0"} {
		if _, err := parseLSN(bad); err == nil {
			t.Errorf("parseLSN(%q) passed", bad)
		}
	}
	names := []string{"000000020000000000000003", "000000010000000000000004", "000000010000000000000003"}
	slices.SortFunc(names, compareSegments)
	if want := []string{"000000010000000000000003", "000000020000000000000003", "000000010000000000000004"}; !slices.Equal(names, want) {
		t.Fatalf("sorted %v", names)
	}
	for name, want := range map[string]bool{"000000010000000000000003": true, "00000002.history": true,
		"000000010000000000000003.partial": false, "00000002.history.tmp": false, "archive_status": false, path.Base("a/b"): false} {
		if walFileName(name) != want {
			t.Errorf("walFileName(%q) != %v", name, want)
		}
	}
}
