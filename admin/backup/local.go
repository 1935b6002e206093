package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// tempPrefix starts the name of the file a Put writes before renaming it
// into place. List skips such files (a crash mid-Put can leave one), and
// names whose last element starts with it are refused.
const tempPrefix = ".pgshield-put-"

// Local is a repository in a directory of the local file system. Each
// object is a file; a slash in a name is a subdirectory.
//
// A Put is atomic and durable: the bytes go to a temporary file beside the
// final one, which is fsynced, renamed into place, and its directory
// fsynced, so a reader (or a restart after a crash) sees the old object or
// the whole new one, never a part.
type Local struct {
	dir string // absolute, cleaned
	// The modes of what it creates, taken from the root directory's:
	// its directories' (with its setgid bit, so that they keep its
	// group), and its files' (the same without execute bits). A root of
	// 0700 keeps everything to its owner; one of 02750 owned by the
	// postgres group lets restore_command, which runs as the server's OS
	// user, read the repository.
	dirMode, fileMode os.FileMode
}

var _ Repository = (*Local)(nil)

// NewLocal opens the repository in dir, creating the directory (0700)
// when missing. What it creates below takes the directory's permissions.
func NewLocal(dir string) (*Local, error) {
	if dir == "" {
		return nil, errors.New("backup: local repository: no directory given")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("backup: local repository %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("backup: local repository: %w", err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("backup: local repository: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("backup: local repository %s: not a directory", abs)
	}
	perm := st.Mode().Perm()
	return &Local{dir: abs, dirMode: perm | st.Mode()&os.ModeSetgid, fileMode: perm &^ 0o111}, nil
}

// String names the repository by its directory.
func (l *Local) String() string { return "local " + l.dir }

func (l *Local) path(name string) string { return filepath.Join(l.dir, filepath.FromSlash(name)) }

// Put implements Repository.
func (l *Local) Put(ctx context.Context, name string, r io.Reader) (int64, string, error) {
	if err := checkName(name); err != nil {
		return 0, "", err
	}
	final := l.path(name)
	parent := filepath.Dir(final)
	f, err := l.createTemp(parent)
	if err != nil {
		return 0, "", fmt.Errorf("backup: %s: put %s: %w", l, name, err)
	}
	tmp := f.Name()
	committed := false
	defer func() {
		if !committed {
			f.Close()
			os.Remove(tmp)
		}
	}()

	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx: ctx, r: r})
	if err != nil {
		return 0, "", fmt.Errorf("backup: %s: put %s: %w", l, name, err)
	}
	if err := f.Sync(); err != nil {
		return 0, "", fmt.Errorf("backup: %s: put %s: %w", l, name, err)
	}
	if err := f.Close(); err != nil {
		return 0, "", fmt.Errorf("backup: %s: put %s: %w", l, name, err)
	}
	// A cancelled Put stores nothing, even when the reader had ended.
	if err := ctx.Err(); err != nil {
		return 0, "", fmt.Errorf("backup: %s: put %s: %w", l, name, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return 0, "", fmt.Errorf("backup: %s: put %s: %w", l, name, err)
	}
	committed = true
	// The rename is durable once the directory is.
	if err := syncDir(parent); err != nil {
		return 0, "", fmt.Errorf("backup: %s: put %s: %w", l, name, err)
	}
	return size, hex.EncodeToString(h.Sum(nil)), nil
}

// createTemp makes the temporary file of a Put in dir, creating dir; a
// concurrent Delete may remove an empty dir in between, hence the retry.
func (l *Local) createTemp(dir string) (*os.File, error) {
	var err error
	for range 3 {
		if err = l.mkdirAll(dir); err != nil {
			return nil, err
		}
		var f *os.File
		if f, err = os.CreateTemp(dir, tempPrefix+"*"); err == nil {
			if err = f.Chmod(l.fileMode); err != nil {
				f.Close()
				_ = os.Remove(f.Name())
				return nil, err
			}
			return f, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	return nil, err
}

// mkdirAll makes dir and its missing parents below the root, with the
// root's mode.
func (l *Local) mkdirAll(dir string) error {
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir && len(parent) > len(l.dir) {
		if err := l.mkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, l.dirMode.Perm()); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return os.Chmod(dir, l.dirMode) // past the umask, and the setgid bit
}

// Get implements Repository.
func (l *Local) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("backup: %s: get %s: %w", l, name, err)
	}
	f, err := os.Open(l.path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("backup: %s: %s: %w", l, name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("backup: %s: get %s: %w", l, name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("backup: %s: get %s: %w", l, name, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("backup: %s: %s: %w", l, name, ErrNotFound)
	}
	return f, nil
}

// List implements Repository. It walks only the directory the prefix
// names up to its last slash.
func (l *Local) List(ctx context.Context, prefix string) ([]Object, error) {
	start := l.dir
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		dir := prefix[:i]
		if err := checkName(dir); err != nil {
			return nil, err
		}
		start = l.path(dir)
	}
	objs := []Object{}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == start && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() || strings.HasPrefix(d.Name(), tempPrefix) {
			return nil
		}
		rel, err := filepath.Rel(l.dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if !strings.HasPrefix(name, prefix) {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted while we walked
		}
		if err != nil {
			return err
		}
		objs = append(objs, Object{Name: name, Size: info.Size(), Modified: info.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup: %s: list %q: %w", l, prefix, err)
	}
	// WalkDir's order is per directory; "a-b" sorts before "a/b" by name.
	slices.SortFunc(objs, func(a, b Object) int { return strings.Compare(a.Name, b.Name) })
	return objs, nil
}

// Delete implements Repository. It also removes the directories the
// object leaves empty, up to the repository's.
func (l *Local) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("backup: %s: delete %s: %w", l, name, err)
	}
	p := l.path(name)
	if st, err := os.Lstat(p); err == nil && st.IsDir() {
		return nil // a directory is no object
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("backup: %s: delete %s: %w", l, name, err)
	}
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		if os.Remove(l.path(dir)) != nil {
			break // not empty, or gone already
		}
	}
	return nil
}

// checkName refuses names that are not a clean relative slash-separated
// path (fs.ValidPath: no leading slash, no "." or ".." element, no empty
// element), and names that would be taken for a Local temporary file. Both
// repositories apply it, so that a name valid in one is valid in the
// other.
func checkName(name string) error {
	if !fs.ValidPath(name) || name == "." || strings.Contains(name, `\`) {
		return fmt.Errorf("backup: invalid object name %q: want a relative slash-separated path", name)
	}
	if strings.HasPrefix(path.Base(name), tempPrefix) {
		return fmt.Errorf("backup: invalid object name %q: %s is reserved", name, tempPrefix)
	}
	return nil
}

// syncDir fsyncs a directory, so that a rename in it survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ctxReader stops a copy when its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
