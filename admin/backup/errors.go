package backup

import (
	"errors"
	"fmt"
)

// Sentinel errors of the repositories and of the object format. Test for
// them with errors.Is: the errors returned carry the object's name and the
// cause as well.
var (
	// ErrNotFound: the repository has no object of that name.
	ErrNotFound = errors.New("no such object")
	// ErrCorrupt: a sealed object failed authentication or could not be
	// decoded: it was damaged, truncated, changed, or stored under another
	// name than the one it was sealed for.
	ErrCorrupt = errors.New("corrupt object")
	// ErrWrongKey: a sealed object was sealed with another key than the
	// one given (their ids differ).
	ErrWrongKey = errors.New("wrong backup key")
	// ErrNoKey: BACKUP_ENCRYPTION_KEY is not set.
	ErrNoKey = errors.New("backup: no encryption key")
)

// corruptError names the object and says why it was refused. It matches
// both ErrCorrupt and its cause, and its message leads with the object so
// that VERIFY BACKUP and RESTORE can show it as it is.
type corruptError struct {
	name string
	err  error
}

func (e *corruptError) Error() string {
	return fmt.Sprintf("object %s is corrupt or was changed: %v", e.name, e.err)
}

func (e *corruptError) Unwrap() []error { return []error{ErrCorrupt, e.err} }

func corrupt(name string, err error) error { return &corruptError{name: name, err: err} }
