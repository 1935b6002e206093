package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCatalogListsOnlyFinishedBackups(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	repo, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, err := NewKey(bytes.Repeat([]byte{1}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(Config{Repo: repo, Key: key, Cluster: "app"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 5, 1, 2, 0, 0, 0, time.UTC)
	id, err := m.begin(ctx, KindFull, start)
	if err != nil {
		t.Fatal(err)
	}
	if id != "20260501T020000Z-full" {
		t.Fatalf("id %s", id)
	}
	id2, err := m.begin(ctx, KindFull, start) // the same second
	if err != nil {
		t.Fatal(err)
	}
	if id2 != "20260501T020000Z-full-2" || !ValidID(id2) {
		t.Fatalf("second id %s", id2)
	}
	m.setRunning(id2, false)
	done := Manifest{ID: id, Kind: KindFull, Cluster: "app", Started: start, Finished: start.Add(time.Minute),
		StartLSN: "0/2000028", StopLSN: "0/2000100", WALSegmentSize: 16 << 20,
		Objects: []ObjectRef{{Name: backupObject("app", id, baseFile)}}}
	if err := writeManifest(ctx, repo, done); err != nil {
		t.Fatal(err)
	}
	// A finished backup without a marker is listed; a manifest put under
	// another backup's id is not.
	if err := writeManifest(ctx, repo, Manifest{ID: "20260501T030000Z-full", Kind: KindFull, Cluster: "app", Started: start.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := repo.Put(ctx, backupObject("app", "20260501T040000Z-full", manifestFile), strings.NewReader(`{"id":"20260501T050000Z-full","kind":"full","cluster":"app"}`)); err != nil {
		t.Fatal(err)
	}
	list, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != id || list[1].ID != "20260501T030000Z-full" {
		t.Fatalf("List %v", ids(list))
	}
	c, err := loadCatalog(ctx, repo, "app")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.broken["20260501T040000Z-full"]; !errors.Is(err, ErrCorrupt) {
		t.Fatalf("the misplaced manifest: %v", err)
	}
	attempts, err := m.Attempts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(attempts) != 1 || attempts[0].ID != id2 || attempts[0].Running || !attempts[0].Started.Equal(start) {
		t.Fatalf("attempts %+v", attempts)
	}
	if _, err := pickBackup(c, RestoreOptions{ID: "20260501T040000Z-full"}); err == nil || !strings.Contains(err.Error(), "not usable") {
		t.Fatalf("restoring a broken backup: %v", err)
	}
}

func TestPickBackupAndChain(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	c := &catalog{usable: []Manifest{
		{ID: "f1", Kind: KindFull, Started: t0, Finished: t0.Add(time.Minute), StopLSN: "0/3000000"},
		{ID: "i1", Kind: KindIncremental, Parent: "f1", Started: t0.Add(time.Hour), Finished: t0.Add(time.Hour), StopLSN: "0/5000000"},
		{ID: "i2", Kind: KindIncremental, Parent: "i1", Started: t0.Add(2 * time.Hour), Finished: t0.Add(2 * time.Hour), StopLSN: "0/7000000"},
		{ID: "i9", Kind: KindIncremental, Parent: "nope", Started: t0.Add(3 * time.Hour), Finished: t0.Add(3 * time.Hour), StopLSN: "0/9000000"},
	}, broken: map[string]error{}}
	for _, x := range []struct {
		o    RestoreOptions
		want string
	}{
		{RestoreOptions{}, "i2"}, // i9's chain is broken
		{RestoreOptions{TargetTime: t0.Add(90 * time.Minute)}, "i1"},
		{RestoreOptions{TargetTime: t0.Add(time.Minute)}, "f1"},
		{RestoreOptions{TargetLSN: "0/6000000"}, "i1"},
		{RestoreOptions{TargetLSN: "0/2000000"}, ""},
	} {
		b, err := pickBackup(c, x.o)
		if x.want == "" {
			if err == nil {
				t.Errorf("pickBackup(%+v) = %s", x.o, b.ID)
			}
			continue
		}
		if err != nil || b.ID != x.want {
			t.Errorf("pickBackup(%+v) = %s, %v; want %s", x.o, b.ID, err, x.want)
		}
	}
	i2, _ := c.byID("i2")
	chain, err := chainOf(c, i2)
	if err != nil || len(chain) != 3 || chain[0].ID != "f1" || chain[2].ID != "i2" {
		t.Fatalf("chain %v, %v", ids(chain), err)
	}
	i9, _ := c.byID("i9")
	if _, err := chainOf(c, i9); err == nil {
		t.Fatal("a broken chain passed")
	}
}

func TestRestoreCommandQuoting(t *testing.T) {
	t.Parallel()
	cmd, check, err := restoreCommand(RestoreOptions{ConfigFile: "/etc/pg shield/it's 100%.yaml", WALFetchCommand: "/opt/pgshield"}, "app")
	if err != nil {
		t.Fatal(err)
	}
	want := `'/opt/pgshield' 'wal-fetch' '--config' '/etc/pg shield/it'\''s 100%%.yaml' '--cluster' 'app' %f %p`
	if cmd != want {
		t.Fatalf("restore_command\n got %s\nwant %s", cmd, want)
	}
	if len(check) != 7 || check[3] != "/etc/pg shield/it's 100%.yaml" || check[6] != "--check" {
		t.Fatalf("check %q", check)
	}
	if got := confQuote(cmd); !strings.HasPrefix(got, `'''/opt/pgshield'' ''wal-fetch''`) {
		t.Fatalf("in postgresql.auto.conf: %s", got)
	}
	if _, _, err := restoreCommand(RestoreOptions{}, "app"); err == nil {
		t.Fatal("restore_command without a configuration file")
	}
	if cmd, check, err := restoreCommand(RestoreOptions{RestoreCommand: "cp /a/%f %p"}, "app"); err != nil || cmd != "cp /a/%f %p" || check != nil {
		t.Fatalf("a given restore_command: %s %v %v", cmd, check, err)
	}
}

func TestUntarRefusesEscapes(t *testing.T) {
	t.Parallel()
	build := func(hs ...tar.Header) io.Reader {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hs {
			h := h
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatal(err)
			}
			if h.Size > 0 {
				if _, err := tw.Write(bytes.Repeat([]byte{'x'}, int(h.Size))); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		return &b
	}
	for _, h := range []tar.Header{
		{Name: "../escape", Typeflag: tar.TypeReg, Size: 1, Mode: 0o600},
		{Name: "/abs", Typeflag: tar.TypeReg, Size: 1, Mode: 0o600},
		{Name: "pg_tblspc/16384", Typeflag: tar.TypeSymlink, Linkname: "/elsewhere"},
		{Name: "dev", Typeflag: tar.TypeChar},
	} {
		dir := t.TempDir()
		if err := untar(build(h), dir, nil, false); err == nil {
			t.Errorf("untar took %q (%c)", h.Name, h.Typeflag)
		}
	}
	dir := t.TempDir()
	if err := untar(build(tar.Header{Name: "./base/1/", Typeflag: tar.TypeDir, Mode: 0o700},
		tar.Header{Name: "base/1/112", Typeflag: tar.TypeReg, Size: 3, Mode: 0o600},
		tar.Header{Name: "global/pg_control", Typeflag: tar.TypeReg, Size: 2, Mode: 0o600}), dir, nil, false); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "base", "1", "112")); err != nil || string(data) != "xxx" {
		t.Fatalf("untarred %q, %v", data, err)
	}
	// WAL only for an incremental backup's tar.
	if err := untar(build(tar.Header{Name: "postgresql.conf", Typeflag: tar.TypeReg, Size: 1, Mode: 0o600}), t.TempDir(), nil, true); err == nil {
		t.Fatal("a WAL tar with another file passed")
	}
}

func TestOpenVerifiedNamesTheObject(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	repo, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key, err := NewKey(bytes.Repeat([]byte{2}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	name := "app/backups/20260501T020000Z-full/base.tar"
	data := bytes.Repeat([]byte("0123456789"), 300000)
	ref, err := putSealed(ctx, repo, key, name, func(w io.Writer) error { _, err := w.Write(data); return err })
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := openVerified(ctx, repo, key, ref, nil, func(r io.Reader) error { _, err := io.Copy(&got, r); return err }); err != nil || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("round trip: %v", err)
	}
	// A reader that stops early still gets the whole object checked.
	bad := ref
	bad.SHA256 = strings.Repeat("f", 64)
	err = openVerified(ctx, repo, key, bad, nil, func(r io.Reader) error { _, err := r.Read(make([]byte, 10)); return err })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), name) {
		t.Fatalf("a mismatched sha256: %v", err)
	}
	missing := ref
	missing.Name = "app/backups/20260501T020000Z-full/backup_manifest"
	if err := openVerified(ctx, repo, key, missing, nil, func(io.Reader) error { return nil }); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), missing.Name) {
		t.Fatalf("a missing object: %v", err)
	}
	// A failed write stores nothing.
	if _, err := putSealed(ctx, repo, key, name+".2", func(w io.Writer) error {
		_, _ = w.Write(data[:1000])
		return errors.New("the producer died")
	}); err == nil {
		t.Fatal("a failed producer stored an object")
	}
	if ok, err := hasObject(ctx, repo, name+".2"); ok || err != nil {
		t.Fatalf("the failed object: %v %v", ok, err)
	}
}
