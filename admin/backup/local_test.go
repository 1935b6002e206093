package backup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/admin/backup"
)

// repoImpl is one Repository implementation under test; each call of
// open gives an empty repository.
type repoImpl struct {
	name string
	open func(t *testing.T) backup.Repository
}

// repoImpls is the table every repository test runs through: a local
// directory, and a bucket of a real MinIO server on loopback (one server
// for the table, a new bucket per repository).
func repoImpls(t *testing.T) []repoImpl {
	t.Helper()
	return []repoImpl{
		{"local", func(t *testing.T) backup.Repository {
			l, err := backup.NewLocal(filepath.Join(t.TempDir(), "repo"))
			if err != nil {
				t.Fatal(err)
			}
			return l
		}},
		{"s3", newS3Bucket(startMinIO(t))},
	}
}

func put(t *testing.T, repo backup.Repository, name string, data []byte) {
	t.Helper()
	size, sum, err := repo.Put(t.Context(), name, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if size != int64(len(data)) || sum != hex.EncodeToString(want[:]) {
		t.Fatalf("Put %s = %d, %s; want %d, %x", name, size, sum, len(data), want)
	}
}

func get(t *testing.T, repo backup.Repository, name string) []byte {
	t.Helper()
	r, err := repo.Get(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	return readAllBytes(t, r)
}

func wantNotFound(t *testing.T, repo backup.Repository, name string) {
	t.Helper()
	r, err := repo.Get(t.Context(), name)
	if err == nil {
		r.Close()
		t.Fatalf("Get %s: found, want ErrNotFound", name)
	}
	if !errors.Is(err, backup.ErrNotFound) || !strings.Contains(err.Error(), name) {
		t.Fatalf("Get %s: err = %v, want ErrNotFound naming it", name, err)
	}
}

func names(objs []backup.Object) []string {
	var ns []string
	for _, o := range objs {
		ns = append(ns, o.Name)
	}
	return ns
}

func list(t *testing.T, repo backup.Repository, prefix string) []backup.Object {
	t.Helper()
	objs, err := repo.List(t.Context(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func TestRepositories(t *testing.T) {
	for _, impl := range repoImpls(t) {
		t.Run(impl.name, func(t *testing.T) {
			t.Run("PutGet", func(t *testing.T) {
				repo := impl.open(t)
				put(t, repo, "backups/20260101T020000Z/manifest.json", []byte(`{"id":"20260101T020000Z"}`))
				put(t, repo, "empty", nil)
				if got := get(t, repo, "backups/20260101T020000Z/manifest.json"); string(got) != `{"id":"20260101T020000Z"}` {
					t.Fatalf("Get = %q", got)
				}
				if got := get(t, repo, "empty"); len(got) != 0 {
					t.Fatalf("Get empty = %q", got)
				}
				put(t, repo, "backups/20260101T020000Z/manifest.json", []byte("v2"))
				if got := get(t, repo, "backups/20260101T020000Z/manifest.json"); string(got) != "v2" {
					t.Fatalf("Get after replace = %q", got)
				}
				wantNotFound(t, repo, "backups/20260101T020000Z/missing")
				wantNotFound(t, repo, "nothing/here")
			})

			// A stream longer than an S3 upload part (64 MiB), so that the
			// multipart upload has several.
			t.Run("LargeStream", func(t *testing.T) {
				repo := impl.open(t)
				const size = 70 << 20
				size_, sum, err := repo.Put(t.Context(), "wal/big", pseudoRandom(3, size))
				if err != nil {
					t.Fatal(err)
				}
				h := sha256.New()
				io.Copy(h, pseudoRandom(3, size))
				if size_ != size || sum != hex.EncodeToString(h.Sum(nil)) {
					t.Fatalf("Put = %d, %s; want %d, %x", size_, sum, size, h.Sum(nil))
				}
				r, err := repo.Get(t.Context(), "wal/big")
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				got := sha256.New()
				if n, err := io.Copy(got, r); err != nil || n != size || !bytes.Equal(got.Sum(nil), h.Sum(nil)) {
					t.Fatalf("Get: %d bytes, %v; sha256 %x, want %x", n, err, got.Sum(nil), h.Sum(nil))
				}
				objs := list(t, repo, "wal/")
				if len(objs) != 1 || objs[0].Size != size {
					t.Fatalf("List = %+v", objs)
				}
			})

			// A Put whose reader fails stores nothing: the old object
			// stays, and a new name does not appear.
			t.Run("PutIsAtomic", func(t *testing.T) {
				repo := impl.open(t)
				put(t, repo, "catalog/latest", []byte("old"))
				for _, n := range []int64{0, 100, 5 << 20} {
					_, _, err := repo.Put(t.Context(), "catalog/latest", &failingReader{r: pseudoRandom(4, 1<<30), n: n, err: errDisk})
					if !errors.Is(err, errDisk) {
						t.Fatalf("Put of a failing reader: err = %v, want the reader's", err)
					}
					if got := get(t, repo, "catalog/latest"); string(got) != "old" {
						t.Fatalf("after a failed replace: %q", got)
					}
					_, _, err = repo.Put(t.Context(), "backups/x/base.tar.zst.enc", &failingReader{r: pseudoRandom(4, 1<<30), n: n, err: errDisk})
					if !errors.Is(err, errDisk) {
						t.Fatalf("Put of a failing reader: err = %v, want the reader's", err)
					}
					wantNotFound(t, repo, "backups/x/base.tar.zst.enc")
				}
				// Cancelled mid-stream.
				ctx, cancel := context.WithCancel(t.Context())
				cr := &cancellingReader{r: pseudoRandom(5, 1<<30), after: 1 << 20, cancel: cancel}
				if _, _, err := repo.Put(ctx, "backups/y/base.tar.zst.enc", cr); !errors.Is(err, context.Canceled) {
					t.Fatalf("cancelled Put: err = %v, want context.Canceled", err)
				}
				wantNotFound(t, repo, "backups/y/base.tar.zst.enc")
				if got := names(list(t, repo, "")); !slices.Equal(got, []string{"catalog/latest"}) {
					t.Fatalf("List after failed Puts = %q", got)
				}
			})

			t.Run("List", func(t *testing.T) {
				repo := impl.open(t)
				before := time.Now().Add(-time.Minute)
				all := []string{
					"wal/000000010000000000000002",
					"backups/20260102T020000Z/manifest.json",
					"wal/000000010000000000000001",
					"backups-old",
					"a/b",
					"backups/20260101T020000Z/manifest.json",
					"backups/20260102T020000Z/base.tar.zst.enc",
					"a-c",
					"wal/00000002.history",
				}
				for i, n := range all {
					put(t, repo, n, bytes.Repeat([]byte{'x'}, i))
				}
				sorted := slices.Sorted(slices.Values(all))
				objs := list(t, repo, "")
				if got := names(objs); !slices.Equal(got, sorted) {
					t.Fatalf("List(\"\") = %q, want %q", got, sorted)
				}
				for _, o := range objs {
					if want := slices.Index(all, o.Name); o.Size != int64(want) {
						t.Errorf("%s: size %d, want %d", o.Name, o.Size, want)
					}
					if o.Modified.Before(before) || o.Modified.After(time.Now().Add(time.Minute)) {
						t.Errorf("%s: modified %s", o.Name, o.Modified)
					}
				}
				for prefix, want := range map[string][]string{
					"backups/":                     {"backups/20260101T020000Z/manifest.json", "backups/20260102T020000Z/base.tar.zst.enc", "backups/20260102T020000Z/manifest.json"},
					"backups":                      {"backups-old", "backups/20260101T020000Z/manifest.json", "backups/20260102T020000Z/base.tar.zst.enc", "backups/20260102T020000Z/manifest.json"},
					"backups/20260102T020000Z/":    {"backups/20260102T020000Z/base.tar.zst.enc", "backups/20260102T020000Z/manifest.json"},
					"wal/00000001":                 {"wal/000000010000000000000001", "wal/000000010000000000000002"},
					"a":                            {"a-c", "a/b"},
					"a/":                           {"a/b"},
					"wal/000000010000000000000001": {"wal/000000010000000000000001"},
					"nothing/":                     nil,
					"backups/2027":                 nil,
				} {
					if got := names(list(t, repo, prefix)); !slices.Equal(got, want) {
						t.Errorf("List(%q) = %q, want %q", prefix, got, want)
					}
				}
			})

			t.Run("Delete", func(t *testing.T) {
				repo := impl.open(t)
				put(t, repo, "backups/1/base.tar.zst.enc", []byte("base"))
				put(t, repo, "backups/1/manifest.json", []byte("m"))
				put(t, repo, "backups/2/manifest.json", []byte("m"))
				for _, n := range []string{"backups/1/base.tar.zst.enc", "backups/1/manifest.json"} {
					if err := repo.Delete(t.Context(), n); err != nil {
						t.Fatal(err)
					}
					wantNotFound(t, repo, n)
				}
				if err := repo.Delete(t.Context(), "backups/1/manifest.json"); err != nil {
					t.Fatalf("deleting a missing object: %v", err)
				}
				if err := repo.Delete(t.Context(), "never/was"); err != nil {
					t.Fatalf("deleting a missing object: %v", err)
				}
				if got := names(list(t, repo, "")); !slices.Equal(got, []string{"backups/2/manifest.json"}) {
					t.Fatalf("List after Delete = %q", got)
				}
				// The name can be used again.
				put(t, repo, "backups/1/manifest.json", []byte("again"))
				if got := get(t, repo, "backups/1/manifest.json"); string(got) != "again" {
					t.Fatalf("Get = %q", got)
				}
			})

			t.Run("InvalidNames", func(t *testing.T) {
				repo := impl.open(t)
				for _, n := range []string{"", ".", "/abs", "a/../b", "../up", "a//b", "./a", "a/", `a\b`, "a/.pgshield-put-1"} {
					if _, _, err := repo.Put(t.Context(), n, strings.NewReader("x")); err == nil {
						t.Errorf("Put %q succeeded", n)
					}
					if _, err := repo.Get(t.Context(), n); err == nil || errors.Is(err, backup.ErrNotFound) {
						t.Errorf("Get %q: err = %v, want an invalid name", n, err)
					}
					if err := repo.Delete(t.Context(), n); err == nil {
						t.Errorf("Delete %q succeeded", n)
					}
				}
				if got := list(t, repo, ""); len(got) != 0 {
					t.Fatalf("List = %+v", got)
				}
			})

			t.Run("Sealed", func(t *testing.T) { testSealedInRepository(t, impl.open(t)) })
		})
	}
}

// testSealedInRepository seals a tar while it uploads (through a pipe: no
// local copy), checks that what is stored shows nothing of it, reads it
// back, and then flips one byte of the stored object.
func testSealedInRepository(t *testing.T, repo backup.Repository) {
	k := randomKey(t)
	plain := sampleTar(t)
	pr, pw := io.Pipe()
	go func() {
		w, err := k.Seal(pw, sealName)
		if err == nil {
			_, err = w.Write(plain)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
		}
		pw.CloseWithError(err)
	}()
	size, sum, err := repo.Put(t.Context(), sealName, pr)
	if err != nil {
		t.Fatal(err)
	}
	stored := get(t, repo, sealName)
	if want := sha256.Sum256(stored); int64(len(stored)) != size || sum != hex.EncodeToString(want[:]) {
		t.Fatalf("Put returned %d, %s for %d stored bytes (sha256 %x)", size, sum, len(stored), want)
	}
	checkOpaque(t, stored)

	r, err := repo.Get(t.Context(), sealName)
	if err != nil {
		t.Fatal(err)
	}
	got, err := open(k, sealName, r)
	r.Close()
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}

	put(t, repo, sealName, flipped(stored, len(stored)/2))
	r, err = repo.Get(t.Context(), sealName)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err = open(k, sealName, r)
	wantCorrupt(t, err, got, plain)
}

// cancellingReader cancels its context after some bytes.
type cancellingReader struct {
	r      io.Reader
	after  int64
	cancel context.CancelFunc
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	if c.after <= 0 {
		c.cancel()
	}
	n, err := c.r.Read(p)
	c.after -= int64(n)
	return n, err
}

func TestLocalLayout(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "repo")
	repo, err := backup.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(repo.String(), dir) {
		t.Errorf("String = %q, want the directory", repo)
	}
	put(t, repo, "backups/1/base.tar.zst.enc", []byte("base"))
	// An object is a plain file at its name.
	if b, err := os.ReadFile(filepath.Join(dir, "backups", "1", "base.tar.zst.enc")); err != nil || string(b) != "base" {
		t.Fatalf("file: %q, %v", b, err)
	}

	// A Put killed mid-write leaves its temporary file: List skips it,
	// and a failed Put removes its own.
	if err := os.WriteFile(filepath.Join(dir, "backups", "1", ".pgshield-put-123456"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := repo.Put(t.Context(), "backups/2/base.tar.zst.enc", &failingReader{r: pseudoRandom(6, 1<<20), n: 1000, err: errDisk}); !errors.Is(err, errDisk) {
		t.Fatalf("Put: %v", err)
	}
	if got := names(list(t, repo, "")); !slices.Equal(got, []string{"backups/1/base.tar.zst.enc"}) {
		t.Fatalf("List = %q", got)
	}
	var temps []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".pgshield-put-") {
			temps = append(temps, p)
		}
		return nil
	})
	if len(temps) != 1 {
		t.Fatalf("temporary files %q, want only the one left by hand", temps)
	}

	// Deleting the last object of a directory removes the directory.
	put(t, repo, "wal/0001/a", []byte("a"))
	if err := repo.Delete(t.Context(), "wal/0001/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "wal")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("wal/ after its last object was deleted: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the repository's directory: %v", err)
	}

	// A byte flipped in the file on disk is caught by Open, naming it.
	k := randomKey(t)
	plain := sampleTar(t)
	put(t, repo, sealName, seal(t, k, sealName, plain))
	path := filepath.Join(dir, filepath.FromSlash(sealName))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	b := make([]byte, 1)
	f.ReadAt(b, st.Size()-3)
	b[0] ^= 0x80
	f.WriteAt(b, st.Size()-3)
	f.Close()
	r, err := repo.Get(t.Context(), sealName)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := open(k, sealName, r)
	wantCorrupt(t, err, got, plain)
}

func TestNewLocal(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := backup.NewLocal(file); err == nil {
		t.Error("NewLocal of a file succeeded")
	}
	if _, err := backup.NewLocal(""); err == nil {
		t.Error("NewLocal of \"\" succeeded")
	}
	// A repository opened again sees its objects.
	dir := filepath.Join(t.TempDir(), "a", "b")
	r1, err := backup.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	put(t, r1, "x", []byte("1"))
	r2, err := backup.NewLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := get(t, r2, "x"); string(got) != "1" {
		t.Fatalf("Get = %q", got)
	}
}
