// Package config reads pgshield's YAML file into the per-package
// configurations (proxy.Config, poolmgr.Config, router.TopologyConfig)
// and checks it whole, so a reload either applies completely or not at
// all. The admin console's SET edits a parsed File by key as the file
// writes it (settings.go), and RestartNeeded tells the keys that only a
// restart changes. It belongs to the command: cmd/pgshield (and the test
// of the file bench writes) import it.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgshield/pgshield/policy"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
	"github.com/pgshield/pgshield/router"
)

// File is the whole configuration file.
type File struct {
	Proxy         proxy.Config          `yaml:",inline"`
	Pools         poolmgr.Config        `yaml:",inline"`
	Routing       router.TopologyConfig `yaml:"routing"`
	AdminListen   string                `yaml:"admin_listen"`
	MetricsListen string                `yaml:"metrics_listen"`
	Log           Log                   `yaml:"log"`
	// PolicyFile is the validation rules and firewall (docs/policy.md),
	// relative to this file's directory; reloaded with it.
	PolicyFile string `yaml:"policy_file"`
	// Policy is PolicyFile compiled, by Load; nil without one.
	Policy *policy.Policy `yaml:"-"`
	// Path is the file Load read (relative files are relative to its
	// directory); "" for a configuration parsed from bytes.
	Path string `yaml:"-"`
	// Encryption is the column encryption (docs/encryption.md).
	Encryption Encryption `yaml:"encryption"`
	// JobsFile is where the console's jobs are recorded, so that one a
	// stopped pgshield was running shows as failed after a restart;
	// relative to this file's directory, pgshield-jobs.json by default.
	JobsFile string `yaml:"jobs_file"`
	// Backup is where backups go and when (docs/backups.md).
	Backup Backup `yaml:"backup"`
	// Masking is what a service sees instead of a column's value:
	// service → database → table → column → mask (email, phone, ssn,
	// card, null, keep_last:N).
	Masking map[string]map[string]map[string]map[string]string `yaml:"masking"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json or console
}

// Defaults for the listeners of the operations guide.
const (
	DefaultAdminListen   = "127.0.0.1:6433"
	DefaultMetricsListen = "127.0.0.1:9930"
)

// Load reads, defaults and validates the file at path.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := Parse(data)
	if err == nil {
		f.Path = path
		err = f.loadPolicyOf(path)
	}
	if err != nil {
		// With several problems, the file name gets a line of its own so
		// that each problem stays one line.
		if j, ok := err.(interface{ Unwrap() []error }); ok && len(j.Unwrap()) > 1 {
			return nil, fmt.Errorf("%s:\n%w", path, err)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Parse decodes, defaults and validates a configuration. Unknown keys are
// errors, so a typo is not silently ignored. Every error names the key as
// written in the file, with its line.
func Parse(data []byte) (*File, error) {
	var doc yaml.Node
	// An empty document is an empty configuration, which then fails
	// validation with a clear message rather than "EOF".
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	w := newWalker()
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		w.value(doc.Content[0], reflect.TypeFor[File](), place{})
	}
	if err := errors.Join(w.problems...); err != nil {
		return nil, err
	}

	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		// The walk above accepts only what this decode accepts; this is a
		// safety net.
		return nil, fmt.Errorf("decoding the configuration: %w", err)
	}
	// A shallow copy suffices: the defaulting returns new values and
	// builds new maps rather than changing the decoded ones.
	raw := f
	f.applyDefaults()
	errs := explicitZeros(w.leaves, &raw, &f)
	if err := f.Validate(); err != nil {
		errs = append(errs, w.withLines(err)...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &f, nil
}

// applyDefaults fills what the file leaves unset. The packages' defaulting
// reads a zero as unset; explicitZeros then tells the zeros the file gave
// from those it did not.
func (f *File) applyDefaults() {
	f.Proxy = f.Proxy.WithDefaults()
	f.Pools = f.Pools.WithDefaults()
	f.Routing = f.Routing.WithDefaults()
	if f.AdminListen == "" {
		f.AdminListen = DefaultAdminListen
	}
	if f.MetricsListen == "" {
		f.MetricsListen = DefaultMetricsListen
	}
	if f.Log.Level == "" {
		f.Log.Level = "info"
	}
	if f.Log.Format == "" {
		f.Log.Format = "json"
	}
	f.Encryption = f.Encryption.withDefaults()
	f.Backup = f.Backup.withDefaults()
}

// explicitZeros makes presence in the file, not the zero value, mean "set"
// for numbers: for each number given as 0 that defaulting replaced (so its
// default is not 0), the zero is kept where it means something, and is an
// error elsewhere, rather than silently becoming the default. raw is the
// file as decoded, f the same after applyDefaults; f is corrected in place.
func explicitZeros(leaves []leaf, raw, f *File) []error {
	rv, fv := reflect.ValueOf(raw).Elem(), reflect.ValueOf(f).Elem()
	var errs []error
	for _, l := range leaves {
		given, now := l.lookup(rv), l.lookup(fv)
		if !given.IsValid() || !now.IsValid() || !isNumber(given.Kind()) || !given.IsZero() || now.IsZero() {
			continue
		}
		switch l.pattern {
		case "services.*.min_connections":
			// No warm connections. poolmgr reads 0 as "the default", and
			// lowers a default min to a smaller max, both undone here.
			name := l.keys[0]
			svc := f.Pools.Services[name]
			svc.MinConnections = 0
			f.Pools.Services[name] = svc
		case "max_retries":
			// The proxy's "never" is negative; its 0 is "the default".
			f.Proxy.MaxRetries = -1
		default:
			errs = append(errs, &problem{path: l.path, line: l.line,
				msg: fmt.Sprintf("must be positive, not %s; remove the key for the default %s", show(given), show(now))})
		}
	}
	return errs
}

func isNumber(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

// show writes a value as the file would: durations as 30s or 1h, not
// 1h0m0s.
func show(v reflect.Value) string {
	if isDuration(v.Type()) {
		s := time.Duration(v.Int()).String()
		if strings.HasSuffix(s, "m0s") {
			s = strings.TrimSuffix(s, "0s")
		}
		if strings.HasSuffix(s, "h0m") {
			s = strings.TrimSuffix(s, "0m")
		}
		return s
	}
	return fmt.Sprint(v.Interface())
}

// Validate checks every part and reports all problems at once.
func (f *File) Validate() error {
	var errs []error
	if err := f.Pools.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := f.Routing.Validate(); err != nil {
		errs = append(errs, err)
	}
	services := make([]string, 0, len(f.Pools.Services))
	for name := range f.Pools.Services {
		services = append(services, name)
	}
	sort.Strings(services)
	if err := proxy.ValidateConfig(f.Proxy, services); err != nil {
		errs = append(errs, err)
	}
	if err := f.Encryption.validate(); err != nil {
		errs = append(errs, err)
	}
	dbs := make([]string, 0, len(f.Pools.Databases))
	for name := range f.Pools.Databases {
		dbs = append(dbs, name)
	}
	sort.Strings(dbs)
	if err := f.Backup.validate(dbs); err != nil {
		errs = append(errs, err)
	}
	known := append([]string(nil), services...)
	for _, u := range f.Proxy.Users {
		if u.Service != "" && !slices.Contains(known, u.Service) {
			known = append(known, u.Service)
		}
	}
	sort.Strings(known)
	if err := validateMasking(f.Masking, known); err != nil {
		errs = append(errs, err)
	}
	switch f.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level %q: want debug, info, warn or error", f.Log.Level))
	}
	switch f.Log.Format {
	case "json", "console":
	default:
		errs = append(errs, fmt.Errorf("log.format %q: want json or console", f.Log.Format))
	}
	return errors.Join(errs...)
}
