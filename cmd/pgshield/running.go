package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/admin"
	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/policy"
)

// running is the configuration in force: one *config.File, swapped whole.
// A reload (SIGHUP, the console's RELOAD) and the console's SET and RESET
// all go through it, one at a time under mu, and each either applies a
// whole validated configuration or changes nothing.
//
// The console's SETs are kept as overrides of the file: every reload
// applies them again on top of the file it read, so a SET is not lost to
// a reload, until RESET or restart.
type running struct {
	load  func() (*config.File, error)       // reads and validates the file
	apply func(old, next *config.File) error // puts next in force; nothing changes on error
	log   *zap.Logger

	mu   sync.Mutex        // held for a whole reload, SET or RESET
	file *config.File      // the file as last read
	sets []config.Override // the console's SETs, one per key, in order
	cur  atomic.Pointer[config.File]
}

// newRunning starts from file, which is in force already.
func newRunning(file *config.File, load func() (*config.File, error), apply func(old, next *config.File) error, log *zap.Logger) *running {
	r := &running{load: load, apply: apply, log: log, file: file}
	r.cur.Store(file)
	return r
}

// current is the configuration in force: the file with the console's SETs.
func (r *running) current() *config.File { return r.cur.Load() }

// reload reads the file again and applies it with the console's SETs on
// top; by says what asked, for the log. A SET of a service or database
// the file no longer has is dropped.
func (r *running) reload(by string) error {
	err := r.reloadFile()
	if err != nil {
		r.log.Error("configuration reload refused; the previous configuration stays", zap.String("by", by), zap.Error(err))
		return err
	}
	r.log.Info("configuration reloaded", zap.String("by", by))
	return nil
}

// reloadFile is reload without the log.
func (r *running) reloadFile() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.load == nil {
		return errors.New("there is no configuration file to reload")
	}
	file, err := r.load()
	if err != nil {
		return err
	}
	next, skipped, err := file.Apply(r.sets)
	if err != nil {
		if len(r.sets) == 0 {
			return err
		}
		return fmt.Errorf("the file with the console's SETs of %s on top: %w (RESET them, or change the file)",
			strings.Join(setKeys(r.sets), ", "), err)
	}
	sets := slices.DeleteFunc(slices.Clone(r.sets), func(o config.Override) bool { return slices.Contains(skipped, o) })
	if err := r.swapLocked(file, sets, next); err != nil {
		return err
	}
	for _, o := range skipped {
		r.log.Warn("a console SET is dropped: the configuration file no longer has its service or database", zap.String("setting", o.Key))
	}
	return nil
}

// set gives key value, on top of the file until RESET or restart.
func (r *running) set(key, value string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	key, err := r.cur.Load().Key(key)
	if err != nil {
		return err
	}
	if config.Fixed(key) {
		return &config.RestartError{Changes: []string{key + " is read at start only"}}
	}
	sets := slices.DeleteFunc(slices.Clone(r.sets), func(o config.Override) bool { return o.Key == key })
	sets = append(sets, config.Override{Key: key, Value: value})
	next, _, err := r.file.Apply(sets)
	if err != nil {
		return err
	}
	return r.swapLocked(r.file, sets, next)
}

// reset drops the SET of key ("" every SET): the file's value applies.
func (r *running) reset(key string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var sets []config.Override
	if key != "" {
		k, err := r.cur.Load().Key(key)
		if err != nil {
			return err
		}
		sets = slices.DeleteFunc(slices.Clone(r.sets), func(o config.Override) bool { return o.Key == k })
	}
	next, _, err := r.file.Apply(sets)
	if err != nil && len(sets) > 0 {
		return fmt.Errorf("the file with the console's other SETs (%s) on top: %w", strings.Join(setKeys(sets), ", "), err)
	}
	if err != nil {
		return err
	}
	return r.swapLocked(r.file, sets, next)
}

// overridden lists the keys a console SET gave their value.
func (r *running) overridden() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return setKeys(r.sets)
}

// swapLocked puts next in force: refused whole when a key fixed at start
// differs, or when a part refuses it.
func (r *running) swapLocked(file *config.File, sets []config.Override, next *config.File) error {
	old := r.cur.Load()
	if err := old.RestartNeeded(next); err != nil {
		return err
	}
	if err := r.apply(old, next); err != nil {
		return &applyError{err: err}
	}
	r.file, r.sets = file, sets
	r.cur.Store(next)
	return nil
}

// applyError: a part refused a configuration that had validated (a
// certificate file went away meanwhile, shutdown began).
type applyError struct{ err error }

func (e *applyError) Error() string { return "applying the configuration: " + e.err.Error() }
func (e *applyError) Unwrap() error { return e.err }

func setKeys(sets []config.Override) []string {
	keys := make([]string, 0, len(sets))
	for _, o := range sets {
		keys = append(keys, o.Key)
	}
	return keys
}

// consoleSettings is running as the admin console sees it (admin.Settings):
// its errors carry the console's SQLSTATEs.
type consoleSettings struct{ r *running }

var _ admin.Settings = consoleSettings{}

func (s consoleSettings) Reload() error               { return consoleError(s.r.reload("console")) }
func (s consoleSettings) Set(key, value string) error { return consoleError(s.r.set(key, value)) }
func (s consoleSettings) Reset(key string) error      { return consoleError(s.r.reset(key)) }
func (s consoleSettings) Overridden() []string        { return s.r.overridden() }

var _ admin.AllowLists = consoleSettings{}

// SaveAllowList is the console's FIREWALL SAVE: one at a time, and not
// while a reload reads the allow lists.
func (s consoleSettings) SaveAllowList(path, service string, fps []policy.FingerprintInfo) (int, error) {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	return config.SaveAllowFile(path, service, fps)
}

// consoleError maps running's errors to the console's SQLSTATEs: 55000
// for what needs a restart or could not be applied now, 22023 for an
// unknown setting or a value or file that does not validate.
func consoleError(err error) error {
	var re *config.RestartError
	var ae *applyError
	var se *config.SettingError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		return &admin.Error{Code: admin.CodeObjectNotInPrerequisiteState, Message: err.Error(), Err: err,
			Hint: "change it in the configuration file and restart pgshield"}
	case errors.As(err, &ae):
		return &admin.Error{Code: admin.CodeObjectNotInPrerequisiteState, Message: err.Error(), Err: err}
	case errors.As(err, &se):
		return &admin.Error{Code: admin.CodeInvalidParameterValue, Message: err.Error(), Hint: se.Hint, Err: err}
	}
	return &admin.Error{Code: admin.CodeInvalidParameterValue, Message: err.Error(), Err: err}
}
