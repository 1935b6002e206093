package backup

import (
	"path"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRetention: with short retentions, expired backups go with the WAL
// before the oldest kept one, what the kept ones need stays (a LATEST
// restore still works), and the newest full backup always stays.
func TestRetention(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Now().UTC()}
	e, _ := newEnv(t, envOptions{clock: clock})
	e.runWAL()

	e.insert(1, 10, "A")
	f1, err := e.m.BackupFull(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.insert(11, 20, "B")
	clock.Add(time.Hour)
	i1, err := e.m.BackupIncremental(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Hour)
	f2, err := e.m.BackupFull(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.insert(21, 30, "C")
	clock.Add(time.Hour)
	i2, err := e.m.BackupIncremental(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if i2.Parent != f2.ID || i1.Parent != f1.ID {
		t.Fatalf("parents: %s→%s, %s→%s", i1.ID, i1.Parent, i2.ID, i2.Parent)
	}
	e.insert(31, 40, "D")
	if _, err := e.m.SwitchWAL(e.ctx); err != nil {
		t.Fatal(err)
	}
	walBefore := walNames(e)
	clock.Add(time.Minute)

	// f1 is 3h old, f2 1h: a full backup keeps 90 minutes; i1 is young
	// enough, but its full backup goes, and it with it. The WAL is
	// "older" than 30 minutes by the clock (the files are new).
	deleted, err := e.m.DeleteExpired(e.ctx, Retention{FullKeep: 90 * time.Minute, IncrementalKeep: 10 * time.Hour, WALKeep: 30 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var backups, wal []string
	for _, d := range deleted {
		if strings.HasPrefix(d, "wal/") {
			wal = append(wal, strings.TrimPrefix(d, "wal/"))
		} else {
			backups = append(backups, d)
		}
	}
	slices.Sort(backups)
	if want := []string{f1.ID, i1.ID}; !slices.Equal(backups, want) {
		t.Fatalf("deleted backups %v, want %v", backups, want)
	}
	start, _ := parseLSN(f2.StartLSN)
	cutoff := segmentOf(start, f2.WALSegmentSize)
	if len(wal) == 0 {
		t.Fatalf("no WAL deleted (archive %v, cutoff %s)", walBefore, segmentName(1, cutoff, f2.WALSegmentSize))
	}
	for _, n := range wal {
		if _, segno, ok := parseSegment(n, f2.WALSegmentSize); !ok || segno >= cutoff {
			t.Fatalf("deleted %s, which backup %s (from %s) needs", n, f2.ID, f2.StartLSN)
		}
	}
	for _, n := range walBefore {
		_, segno, ok := parseSegment(n, f2.WALSegmentSize)
		if ok && segno < cutoff && !slices.Contains(wal, n) {
			t.Fatalf("kept %s, from before the oldest kept backup", n)
		}
		if (!ok || segno >= cutoff) && !slices.Contains(walNames(e), n) {
			t.Fatalf("%s is gone", n)
		}
	}
	list, err := e.m.List(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(list); !slices.Equal(got, []string{f2.ID, i2.ID}) {
		t.Fatalf("left %v", got)
	}
	for _, id := range []string{f1.ID, i1.ID} {
		if left := e.objectNames(backupsPrefix(testCluster) + id + "/"); len(left) != 0 {
			t.Fatalf("backup %s left %v", id, left)
		}
	}

	res, err := e.restore(RestoreOptions{ID: Latest})
	if err != nil {
		t.Fatal(err)
	}
	if res.Backup != i2.ID {
		t.Fatalf("LATEST restored %s, not %s", res.Backup, i2.ID)
	}
	wantCounts(t, e.counts(res.Port), map[string]int{"A": 10, "B": 10, "C": 10, "D": 10})

	// Everything expired: the newest full backup stays.
	deleted, err = e.m.DeleteExpired(e.ctx, Retention{FullKeep: time.Nanosecond, IncrementalKeep: time.Nanosecond, WALKeep: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(deleted, i2.ID) || slices.Contains(deleted, f2.ID) {
		t.Fatalf("deleted %v", deleted)
	}
	if list, err = e.m.List(e.ctx); err != nil || !slices.Equal(ids(list), []string{f2.ID}) {
		t.Fatalf("left %v, %v", ids(list), err)
	}
}

func walNames(e *testEnv) []string {
	var out []string
	for _, n := range e.objectNames(walPrefix(testCluster)) {
		out = append(out, path.Base(n))
	}
	return out
}

func TestRetainedChains(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	b := func(id string, kind Kind, parent string, age time.Duration) Manifest {
		return Manifest{ID: id, Kind: kind, Parent: parent, Started: now.Add(-age), Finished: now.Add(-age)}
	}
	backups := []Manifest{
		b("f1", KindFull, "", 40*24*time.Hour),
		b("i1", KindIncremental, "f1", 39*24*time.Hour),
		b("f2", KindFull, "", 10*24*time.Hour),
		b("i2", KindIncremental, "f2", 9*24*time.Hour),
		b("i3", KindIncremental, "i2", 6*24*time.Hour), // needs i2, past its retention
		b("i4", KindIncremental, "gone", time.Hour),    // broken chain
		b("f3", KindFull, "", 2*time.Hour),
		b("i5", KindIncremental, "f3", time.Hour),
	}
	r := Retention{}.withDefaults()
	keep := retained(backups, r, now, nil)
	var kept []string
	for _, x := range backups {
		if keep[x.ID] {
			kept = append(kept, x.ID)
		}
	}
	if want := []string{"f2", "i2", "i3", "f3", "i5"}; !slices.Equal(kept, want) {
		t.Fatalf("kept %v, want %v", kept, want)
	}
	// In use: kept, with its chain.
	keep = retained(backups, r, now, map[string]bool{"i1": true})
	if !keep["i1"] || !keep["f1"] {
		t.Fatalf("an incremental backup in use: %v", keep)
	}
	// Only expired full backups: the newest stays.
	keep = retained(backups[:3], Retention{FullKeep: time.Second, IncrementalKeep: time.Second, WALKeep: time.Second}, now, nil)
	if len(keep) != 1 || !keep["f2"] {
		t.Fatalf("kept %v", keep)
	}
}
