package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/minio"
)

// TestBackupRestorePointInTime: a full backup with WAL archiving; rows A,
// a time, rows B; a restore to the time has A and not B, LATEST has both;
// an incremental backup restores to its restore point, without the WAL
// archive.
func TestBackupRestorePointInTime(t *testing.T) {
	t.Parallel()
	e, _ := newEnv(t, envOptions{})
	stopWAL := e.runWAL()

	full, err := e.m.BackupFull(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkFullManifest(t, e, full)

	e.insert(1, 100, "A")
	between := e.serverTime()
	e.insert(101, 150, "B")
	seg, err := e.m.SwitchWAL(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st := e.m.WALStatus(); !st.Running || st.LastArchived.IsZero() || compareSegments(st.LastSegment, seg) < 0 || st.Err != "" {
		t.Fatalf("WAL status %+v after archiving %s", st, seg)
	}

	res, err := e.restore(RestoreOptions{ID: Latest, TargetTime: between})
	if err != nil {
		t.Fatal(err)
	}
	if res.Backup != full.ID || res.ReachedLSN == "" || res.Took <= 0 {
		t.Fatalf("restore to a time: %+v", res)
	}
	wantCounts(t, e.counts(res.Port), map[string]int{"A": 100})
	t.Logf("restored to %s (before B) in %v, recovery ended at %s", between.Format(time.RFC3339Nano), res.Took, res.ReachedLSN)

	res, err = e.restore(RestoreOptions{ID: Latest})
	if err != nil {
		t.Fatal(err)
	}
	wantCounts(t, e.counts(res.Port), map[string]int{"A": 100, "B": 50})
	t.Logf("restored LATEST in %v", res.Took)

	// An incremental backup: the WAL since the full one, as a unit.
	e.insert(151, 170, "C")
	inc, err := e.m.BackupIncremental(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if inc.Kind != KindIncremental || inc.Parent != full.ID || inc.StartLSN != full.StopLSN || inc.RestorePoint == "" ||
		len(inc.Objects) != 1 || inc.Size != inc.Objects[0].Size {
		t.Fatalf("incremental manifest %+v", inc)
	}
	walInTar := tarNames(t, e, inc.Objects[0])
	if len(walInTar) < 2 {
		t.Fatalf("the incremental backup holds %v", walInTar)
	}
	e.insert(171, 180, "D") // after the restore point
	list, err := e.m.List(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != full.ID || list[1].ID != inc.ID {
		t.Fatalf("List: %v", ids(list))
	}

	// Without the WAL archive (moved away): the chain is enough.
	stopWAL()
	archive := e.repoFile(walPrefix(testCluster))
	if err := os.Rename(archive, archive+".away"); err != nil {
		t.Fatal(err)
	}
	res, err = e.restore(RestoreOptions{ID: inc.ID})
	if err != nil {
		t.Fatal(err)
	}
	if res.Backup != inc.ID {
		t.Fatalf("restored %s, not %s", res.Backup, inc.ID)
	}
	wantCounts(t, e.counts(res.Port), map[string]int{"A": 100, "B": 50, "C": 20})
	t.Logf("restored incremental %s (%d WAL files) without the archive in %v", inc.ID, len(walInTar), res.Took)
	if err := os.Rename(archive+".away", archive); err != nil {
		t.Fatal(err)
	}
}

func checkFullManifest(t *testing.T, e *testEnv, m Manifest) {
	t.Helper()
	if m.Kind != KindFull || m.Cluster != testCluster || m.KeyID != e.key.ID || !strings.HasPrefix(m.PGVersion, "15") ||
		m.Timeline != 1 || m.WALSegmentSize != 16<<20 || m.Finished.Before(m.Started) || m.Parent != "" || len(m.Objects) != 2 {
		t.Fatalf("manifest %+v", m)
	}
	start, err1 := parseLSN(m.StartLSN)
	stop, err2 := parseLSN(m.StopLSN)
	if err1 != nil || err2 != nil || stop <= start {
		t.Fatalf("LSNs %s..%s", m.StartLSN, m.StopLSN)
	}
	var size int64
	for _, o := range m.Objects {
		size += o.Size
		if e.repoDir == "" {
			continue
		}
		data, err := os.ReadFile(e.repoFile(o.Name))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != o.SHA256 || int64(len(data)) != o.Size {
			t.Fatalf("object %s: the manifest's size or sha256 is not the stored one's", o.Name)
		}
	}
	if size != m.Size {
		t.Fatalf("size %d, objects %d", m.Size, size)
	}
	got, err := readManifest(e.ctx, e.repo, testCluster, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != m.ID || got.StopLSN != m.StopLSN || len(got.Objects) != 2 {
		t.Fatalf("stored manifest %+v", got)
	}
	// The stored objects are sealed: the tar's own bytes do not show.
	if e.repoDir != "" {
		data, err := os.ReadFile(e.repoFile(backupObject(testCluster, m.ID, baseFile)))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte("PG_VERSION")) || bytes.Contains(data, []byte("backup_label")) {
			t.Fatal("base.tar is stored in the clear")
		}
	}
}

// tarNames lists the entries of a sealed tar object.
func tarNames(t *testing.T, e *testEnv, ref ObjectRef) []string {
	t.Helper()
	var names []string
	err := openVerified(e.ctx, e.repo, e.key, ref, nil, func(r io.Reader) error {
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			names = append(names, h.Name)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func ids(ms []Manifest) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

// TestCorruptObject: a byte flipped in a stored object, or an object that
// does not match its manifest, fails Restore and Verify naming it.
func TestCorruptObject(t *testing.T) {
	t.Parallel()
	e, _ := newEnv(t, envOptions{})
	e.insert(1, 10, "A")
	full, err := e.m.BackupFull(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := backupObject(testCluster, full.ID, baseFile)
	file := e.repoFile(base)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	good := bytes.Clone(data)
	data[len(data)/2] ^= 0x40
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = e.restore(RestoreOptions{ID: full.ID})
	if err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), base) {
		t.Fatalf("restore of a damaged backup: %v", err)
	}
	t.Logf("restore: %v", err)
	res, err := e.m.Verify(e.ctx, full.ID, nil)
	if err == nil || res.OK || !strings.Contains(err.Error(), base) || !strings.Contains(res.Detail, base) {
		t.Fatalf("verify of a damaged backup: %+v, %v", res, err)
	}
	list, err := e.m.List(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Verified == nil || list[0].Verified.OK {
		t.Fatalf("the catalog after a failed verify: %+v", list)
	}

	// The object back as it was, but another sha256 in the manifest (as if
	// the object had been swapped for another well-sealed one).
	if err := os.WriteFile(file, good, 0o600); err != nil {
		t.Fatal(err)
	}
	m := list[0]
	pm := backupObject(testCluster, full.ID, pgManifestFile)
	for i := range m.Objects {
		if m.Objects[i].Name == pm {
			m.Objects[i].SHA256 = strings.Repeat("0", 64)
		}
	}
	if err := writeManifest(e.ctx, e.repo, m); err != nil {
		t.Fatal(err)
	}
	_, err = e.restore(RestoreOptions{ID: full.ID})
	if err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), pm) || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("restore with a mismatched sha256: %v", err)
	}
	t.Logf("restore: %v", err)
}

// TestKilledBackup: a backup whose context ends mid-stream leaves no
// listed backup; the next backup succeeds and restores, and retention
// removes the failed attempt.
func TestKilledBackup(t *testing.T) {
	t.Parallel()
	e, _ := newEnv(t, envOptions{})
	e.insert(1, 20000, "A") // a few MB more to stream
	ctx, cancel := context.WithCancel(e.ctx)
	var seen int64
	_, err := e.m.BackupFull(ctx, func(done, total int64, detail string) {
		if done >= 1<<20 {
			seen = done
			cancel()
		}
	})
	cancel()
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled backup: %v", err)
	}
	t.Logf("cancelled after %d bytes: %v", seen, err)
	list, err := e.m.List(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	attempts, err := e.m.Attempts(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 || len(attempts) != 1 || attempts[0].Running || attempts[0].Kind != KindFull {
		t.Fatalf("after a killed backup: List %v, Attempts %+v", ids(list), attempts)
	}
	failed := attempts[0].ID
	for _, n := range e.objectNames(backupsPrefix(testCluster) + failed + "/") {
		if strings.HasSuffix(n, manifestFile) || strings.HasSuffix(n, baseFile) {
			t.Fatalf("the killed backup left %s", n)
		}
	}

	full, err := e.m.BackupFull(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if full.ID == failed {
		t.Fatalf("the next backup reused the id %s", failed)
	}
	if list, err = e.m.List(e.ctx); err != nil || len(list) != 1 || list[0].ID != full.ID {
		t.Fatalf("List %v, %v", ids(list), err)
	}
	res, err := e.restore(RestoreOptions{ID: full.ID})
	if err != nil {
		t.Fatal(err)
	}
	wantCounts(t, e.counts(res.Port), map[string]int{"A": 20000})

	deleted, err := e.m.DeleteExpired(e.ctx, Retention{})
	if err != nil {
		t.Fatal(err)
	}
	if len(deleted) != 1 || deleted[0] != failed {
		t.Fatalf("DeleteExpired deleted %v, want the failed attempt %s", deleted, failed)
	}
	if left := e.objectNames(backupsPrefix(testCluster) + failed + "/"); len(left) != 0 {
		t.Fatalf("the failed attempt left %v", left)
	}
}

// TestRestoreRefuses: what Restore refuses before it touches anything.
func TestRestoreRefuses(t *testing.T) {
	t.Parallel()
	e, _ := newEnv(t, envOptions{})
	full, err := e.m.BackupFull(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	notEmpty := filepath.Join(e.dir, "full")
	if err := os.MkdirAll(filepath.Join(notEmpty, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		o    RestoreOptions
		want string
	}{
		{RestoreOptions{ID: full.ID, Dir: notEmpty}, "not empty"},
		{RestoreOptions{ID: "nonsense", Dir: filepath.Join(e.dir, "a")}, "not a backup id"},
		{RestoreOptions{ID: "20000101T000000Z-full", Dir: filepath.Join(e.dir, "a")}, "no usable backup"},
		{RestoreOptions{TargetTime: time.Now(), TargetLSN: "0/1", Dir: filepath.Join(e.dir, "a")}, "not both"},
		{RestoreOptions{TargetLSN: "0/1", Dir: filepath.Join(e.dir, "a")}, "no backup ends before"},
		{RestoreOptions{ID: full.ID, TargetTime: full.Started.Add(-time.Hour), Dir: filepath.Join(e.dir, "a")}, "ends after the target"},
		{RestoreOptions{Dir: ""}, "no directory"},
	} {
		if _, err := e.m.Restore(e.ctx, c.o, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Restore(%+v): %v, want %q", c.o, err, c.want)
		}
	}
	// restore_command that cannot work is found before the start, and the
	// directory is left empty for the next attempt.
	dir := filepath.Join(e.dir, "nocfg")
	_, err = e.restore(RestoreOptions{ID: full.ID, Dir: dir, ConfigFile: filepath.Join(e.dir, "missing.yaml")})
	if err == nil || !strings.Contains(err.Error(), "restore_command (pgshield wal-fetch) fails") {
		t.Fatalf("a restore whose restore_command fails: %v", err)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Fatalf("after a failed restore the directory holds %v (%v)", entries, err)
	}

	// Not started: prepared only, with the recovery settings.
	dir = filepath.Join(e.dir, "prepared")
	res, err := e.m.Restore(e.ctx, RestoreOptions{ID: full.ID, Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Port != 0 || res.ReachedLSN != "" {
		t.Fatalf("a prepared restore: %+v", res)
	}
	auto, err := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"restore_command = '''", "wal-fetch", "%f %p'", "recovery_target = 'immediate'", "recovery_target_action = 'promote'", "archive_mode = 'off'"} {
		if !strings.Contains(string(auto), want) {
			t.Fatalf("postgresql.auto.conf has no %q:\n%s", want, auto)
		}
	}
	if strings.Contains(string(auto), e.secret) {
		t.Fatal("postgresql.auto.conf holds the key")
	}
	for _, f := range []string{"recovery.signal", "backup_label", "backup_manifest", "PG_VERSION"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("the prepared directory: %v", err)
		}
	}
}

// TestS3BackupRestore: the same round trip through S3 (a real MinIO):
// the backup streams into a multipart upload, and restore_command
// (pgshield wal-fetch, as the server's OS user) reads the WAL from the
// bucket.
func TestS3BackupRestore(t *testing.T) {
	t.Parallel()
	srv := minio.Start(t)
	cfg := backupS3(srv.Config("pgshield-backups"))
	cfg.Prefix = "team/db"
	e, _ := newEnv(t, envOptions{
		repo: func(e *testEnv) Repository {
			s, err := NewS3(e.ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		repoYAML: fmt.Sprintf("{s3: {endpoint: %q, bucket: %q, prefix: %q, access_key: %q, secret_key: %q}}",
			cfg.Endpoint, cfg.Bucket, cfg.Prefix, cfg.AccessKey, cfg.SecretKey),
	})
	e.runWAL()
	e.insert(1, 30, "A")
	full, err := e.m.BackupFull(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkFullManifest(t, e, full)
	e.insert(31, 40, "B")
	if _, err := e.m.SwitchWAL(e.ctx); err != nil {
		t.Fatal(err)
	}
	res, err := e.restore(RestoreOptions{ID: Latest})
	if err != nil {
		t.Fatal(err)
	}
	wantCounts(t, e.counts(res.Port), map[string]int{"A": 30, "B": 10})
	t.Logf("S3: full backup of %d stored bytes, restored LATEST in %v", full.Size, res.Took)
}

func backupS3(c minio.Config) S3Config { return S3Config(c) }
