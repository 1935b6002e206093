// Package config reads pgshield's YAML file into the per-package
// configurations (proxy.Config, poolmgr.Config) and checks it whole, so a
// reload either applies completely or not at all.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"gopkg.in/yaml.v3"

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
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Parse decodes, defaults and validates a configuration. Unknown keys are
// errors, so a typo is not silently ignored.
func Parse(data []byte) (*File, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// An empty document is an empty configuration, which then fails
	// validation with a clear message rather than "EOF".
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
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
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
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
