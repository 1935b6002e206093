package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The admin console's SET edits the running configuration by key, as the
// key is written in the file (pool.wait_timeout,
// services.api.max_connections, max_retries …), and the result is
// validated whole like a file. The edits are kept as Overrides, which a
// reload applies again on top of the file it read.

// Override is a value the admin console's SET gave to a key of the file.
type Override struct {
	Key   string // as written in the file: services.api.max_connections
	Value string // as typed on the console: 500ms, 250 (milliseconds), on
}

// SettingError is a SET or RESET of a key the file does not have, or a
// value the key does not take.
type SettingError struct {
	Key  string
	Msg  string
	Hint string
	// missing: the key names a map entry (a service, a database) that
	// the configuration does not have.
	missing bool
}

func (e *SettingError) Error() string { return e.Msg }

// RestartError is a change to a key that pgshield reads only at start.
type RestartError struct {
	// Changes say what differs, one key each: "listen changed from
	// 127.0.0.1:6432 to 127.0.0.1:7000", or "listen is read at start only".
	Changes []string
}

func (e *RestartError) Error() string {
	what := "that setting"
	if len(e.Changes) > 1 {
		what = "those settings"
	}
	return strings.Join(e.Changes, "; ") + ": only a restart changes " + what
}

// fixedKeys are the keys whose value pgshield reads once, at start: the
// listeners are bound, the logger is built, the classifier exists or not,
// the query statistics are sized, the jobs file is opened and the backups
// are set up then.
func fixedKeys() []string {
	return []string{"listen", "admin_listen", "metrics_listen", "log.format", "disable_classification", "query_stats_size",
		"jobs_file", "backup.repository.dir", "backup.database", "backup.wal", "backup.slot", "backup.staging_dir",
		"backup.archive_interval", "backup.pg_bin", "backup.user", "backup.schedule.full", "backup.schedule.incremental",
		"backup.schedule.verify", "backup.schedule.retention", "backup.retention.full", "backup.retention.incremental",
		"backup.retention.wal"}
}

// Fixed reports whether key (as written in the file) takes effect only
// at start.
func Fixed(key string) bool { return slices.Contains(fixedKeys(), key) }

// RestartNeeded compares the keys fixed at start: a *RestartError naming
// each that differs in next, nil when none does.
func (f *File) RestartNeeded(next *File) error {
	var changes []string
	for _, k := range fixedKeys() {
		t, err := f.find(k)
		if err != nil {
			// Every fixed key is a plain field of File.
			return fmt.Errorf("fixed key %s: %w", k, err)
		}
		old, now := t.lookup(reflect.ValueOf(f).Elem()), t.lookup(reflect.ValueOf(next).Elem())
		if !reflect.DeepEqual(old.Interface(), now.Interface()) {
			changes = append(changes, fmt.Sprintf("%s changed from %s to %s", k, showSetting(old), showSetting(now)))
		}
	}
	if changes != nil {
		return &RestartError{Changes: changes}
	}
	return nil
}

func showSetting(v reflect.Value) string {
	if v.Kind() == reflect.String {
		return strconv.Quote(v.String())
	}
	return show(v)
}

// aliases are names SET has always taken besides the keys of the file.
func aliases() map[string]string {
	return map[string]string{"wait_timeout": "pool.wait_timeout", "idle_timeout": "pool.idle_timeout"}
}

// setHint is the hint of a SET of an unknown key.
const setHint = "SET takes a key as written in the configuration file, such as pool.wait_timeout, " +
	"services.<name>.max_connections or routing.max_replica_lag; SHOW CONFIG lists the settings"

// Key returns key as written in the file (an alias resolved, section
// names in lower case), or a *SettingError when the configuration has no
// such key: it must name a single value of an existing entry.
func (f *File) Key(key string) (string, error) {
	t, err := f.find(key)
	if err != nil {
		return "", err
	}
	return t.path, nil
}

// find resolves key against File's keys and f's map entries.
func (f *File) find(key string) (leaf, error) {
	key = strings.TrimSpace(key)
	if a, ok := aliases()[strings.ToLower(key)]; ok {
		key = a
	}
	unknown := func(msg string, args ...any) (leaf, error) {
		return leaf{}, &SettingError{Key: key, Msg: fmt.Sprintf(msg, args...), Hint: setHint}
	}
	if key == "" {
		return unknown("SET needs a setting")
	}
	v := reflect.ValueOf(f).Elem()
	var at place
	for _, seg := range strings.Split(key, ".") {
		switch v.Kind() {
		case reflect.Struct:
			fs := fieldsOf(v.Type())
			name := strings.ToLower(seg)
			spec, ok := fs.byName[name]
			if !ok {
				if hint := suggest(name, fs.candidates()); hint != "" {
					return unknown("unknown setting %q; did you mean %s?", key, joinPath(at.path, hint))
				}
				return unknown("unknown setting %q", key)
			}
			at = at.field(name, spec.index)
			v = v.FieldByIndex(spec.index)
		case reflect.Map:
			if v.Type().Key().Kind() != reflect.String {
				return unknown("%s cannot be set on the console", at.path)
			}
			e := v.MapIndex(reflect.ValueOf(seg).Convert(v.Type().Key()))
			if !e.IsValid() {
				names := make([]string, 0, v.Len())
				for _, k := range v.MapKeys() {
					names = append(names, k.String())
				}
				slices.Sort(names)
				return leaf{}, &SettingError{Key: key, missing: true,
					Msg:  fmt.Sprintf("unknown %s in %q", entryNoun(at.name), key),
					Hint: fmt.Sprintf("the configuration has %s: %s", at.path, strings.Join(names, ", "))}
			}
			at = at.entry(seg)
			v = e
		default:
			return unknown("unknown setting %q: %s has no keys", key, at.path)
		}
	}
	return leaf{place: at}, nil
}

// entryNoun names an entry of the map at key: services hold services.
func entryNoun(key string) string {
	switch key {
	case "services":
		return "service"
	case "databases":
		return "database"
	}
	return "entry of " + key
}

// Apply returns a copy of f with the overrides set in order, validated
// whole. An override naming an entry f does not have (a service or a
// database the file no longer has) is left out and returned in skipped;
// any other that does not fit is an error, and so is a result that does
// not validate. f is not changed.
func (f *File) Apply(overrides []Override) (next *File, skipped []Override, err error) {
	next = f.Clone()
	var errs []error
	for _, o := range overrides {
		t, err := next.find(o.Key)
		var se *SettingError
		switch {
		case errors.As(err, &se) && se.missing:
			skipped = append(skipped, o)
			continue
		case err != nil:
			errs = append(errs, err)
			continue
		}
		if err := next.set(t, o.Value); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, skipped, err
	}
	if err := next.Validate(); err != nil {
		return nil, skipped, err
	}
	return next, skipped, nil
}

// set gives the value at t the console value raw, in f.
func (f *File) set(t leaf, raw string) error {
	root := reflect.ValueOf(f).Elem()
	typ := t.lookup(root).Type()
	x, err := consoleValue(typ, t, raw)
	if err != nil {
		return err
	}
	// As in the file, a 0 means 0 where 0 means something, and is refused
	// where the defaulting would replace it.
	if isNumber(typ.Kind()) && x.IsZero() {
		switch t.pattern {
		case "services.*.min_connections":
			// No warm connections; poolmgr keeps the 0 of a configuration
			// that has been defaulted.
		case "max_retries":
			x = reflect.ValueOf(-1).Convert(typ) // never; the proxy reads 0 as its default
		default:
			scratch := f.Clone()
			assign(reflect.ValueOf(scratch).Elem(), t.steps, x)
			scratch.applyDefaults()
			if def := t.lookup(reflect.ValueOf(scratch).Elem()); def.IsValid() && !def.IsZero() {
				return &SettingError{Key: t.path, Msg: fmt.Sprintf("invalid value %q for %s: must be positive, not %s (0 would mean the default, %s)",
					raw, t.path, show(x), show(def))}
			}
		}
	}
	assign(root, t.steps, x)
	return nil
}

// consoleValue reads raw as the console writes a value of type typ:
// durations such as 500ms or 30s (a bare number is milliseconds, as in
// PostgreSQL), on/off for booleans.
func consoleValue(typ reflect.Type, t leaf, raw string) (reflect.Value, error) {
	raw = strings.TrimSpace(raw)
	bad := func(want string) (reflect.Value, error) {
		shown := strconv.Quote(raw)
		if isSecret(t.name) {
			shown = "(not shown, as the key looks secret)"
		}
		return reflect.Value{}, &SettingError{Key: t.path, Msg: fmt.Sprintf("invalid value %s for %s: want %s", shown, t.path, want)}
	}
	switch {
	case isDuration(typ):
		d, err := time.ParseDuration(raw)
		if err != nil {
			const maxMillis = math.MaxInt64 / int64(time.Millisecond)
			n, nerr := strconv.ParseInt(raw, 10, 64)
			if nerr != nil || n > maxMillis || n < -maxMillis {
				return bad("a duration such as 500ms or 30s")
			}
			d = time.Duration(n) * time.Millisecond
		}
		if d < 0 {
			return bad("a duration that is not negative")
		}
		return reflect.ValueOf(d), nil
	}
	switch typ.Kind() {
	case reflect.Bool:
		switch strings.ToLower(raw) {
		case "true", "on", "1", "yes":
			return reflect.ValueOf(true).Convert(typ), nil
		case "false", "off", "0", "no":
			return reflect.ValueOf(false).Convert(typ), nil
		}
		return bad("on or off")
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(raw, 10, typ.Bits())
		if err != nil {
			return bad("an integer")
		}
		return reflect.ValueOf(n).Convert(typ), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(raw, 10, typ.Bits())
		if err != nil {
			return bad("a whole number, not negative")
		}
		return reflect.ValueOf(n).Convert(typ), nil
	case reflect.Float32, reflect.Float64:
		n, err := strconv.ParseFloat(raw, typ.Bits())
		if err != nil {
			return bad("a number")
		}
		return reflect.ValueOf(n).Convert(typ), nil
	case reflect.String:
		return reflect.ValueOf(raw).Convert(typ), nil
	case reflect.Slice, reflect.Array:
		return reflect.Value{}, &SettingError{Key: t.path,
			Msg: fmt.Sprintf("%s is a list: change it in the configuration file and RELOAD", t.path)}
	case reflect.Struct:
		return reflect.Value{}, &SettingError{Key: t.path,
			Msg: fmt.Sprintf("%s is a section: SET takes one of its keys, such as %s.%s", t.path, t.path, fieldsOf(typ).names[0])}
	case reflect.Map:
		example := "<name>"
		if el := typ.Elem(); el.Kind() == reflect.Struct {
			example += "." + fieldsOf(el).names[0]
		}
		return reflect.Value{}, &SettingError{Key: t.path,
			Msg: fmt.Sprintf("%s is a section: SET takes a key of one of its entries, such as %s.%s", t.path, t.path, example)}
	}
	return reflect.Value{}, &SettingError{Key: t.path, Msg: fmt.Sprintf("%s cannot be set on the console", t.path)}
}

// assign sets the value that steps lead to from v (addressable) to x. A
// map entry is replaced, not changed in place: v's maps must be v's own
// (Clone).
func assign(v reflect.Value, steps []step, x reflect.Value) {
	if len(steps) == 0 {
		v.Set(x)
		return
	}
	s := steps[0]
	switch s.kind {
	case stepField:
		assign(v.FieldByIndex(s.field), steps[1:], x)
	case stepEntry:
		k := reflect.ValueOf(s.key).Convert(v.Type().Key())
		e := reflect.New(v.Type().Elem()).Elem()
		e.Set(v.MapIndex(k))
		assign(e, steps[1:], x)
		v.SetMapIndex(k, e)
	case stepElement:
		assign(v.Index(s.index), steps[1:], x)
	}
}

// Clone returns a deep copy of f: its maps and lists are its own.
func (f *File) Clone() *File {
	return deepCopy(reflect.ValueOf(f).Elem()).Addr().Interface().(*File)
}

// deepCopy copies v with its maps, slices and pointers; the result is
// addressable when v is a struct.
func deepCopy(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Struct:
		c := reflect.New(v.Type()).Elem()
		c.Set(v)
		for i := range c.NumField() {
			if c.Field(i).CanSet() {
				c.Field(i).Set(deepCopy(v.Field(i)))
			}
		}
		return c
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		c := reflect.MakeMapWithSize(v.Type(), v.Len())
		for it := v.MapRange(); it.Next(); {
			c.SetMapIndex(it.Key(), deepCopy(it.Value()))
		}
		return c
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			c.Index(i).Set(deepCopy(v.Index(i)))
		}
		return c
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		c := reflect.New(v.Type().Elem())
		c.Elem().Set(deepCopy(v.Elem()))
		return c
	}
	return v
}
