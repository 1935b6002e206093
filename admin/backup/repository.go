package backup

import (
	"context"
	"io"
	"time"
)

// Repository is where backups, WAL segments and the catalog live: a local
// directory, or an S3-compatible bucket (and prefix). Names are
// slash-separated paths relative to the repository's root. Objects are
// written whole: a reader sees an object after its Put returned, never a
// part of one, so a backup killed mid-upload leaves no object under its
// final name.
type Repository interface {
	// Put stores the bytes of r under name, replacing any object of that
	// name, and returns its size and the hex sha256 of what was stored.
	Put(ctx context.Context, name string, r io.Reader) (size int64, sha256 string, err error)
	// Get opens the object name; ErrNotFound when there is none.
	Get(ctx context.Context, name string) (io.ReadCloser, error)
	// List returns the objects whose names start with prefix, in name
	// order.
	List(ctx context.Context, prefix string) ([]Object, error)
	// Delete removes the object name; deleting a missing object is no
	// error.
	Delete(ctx context.Context, name string) error
	// String names the repository for messages (no credentials).
	String() string
}

// Object is one stored object.
type Object struct {
	Name     string
	Size     int64
	Modified time.Time
}
