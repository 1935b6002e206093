package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"

	"gopkg.in/yaml.v3"

	"github.com/pgshield/pgshield/policy"
)

// LoadPolicy reads and compiles the policy file at path (validation rules
// and firewall, see docs/policy.md). Its errors name keys as the
// configuration's do.
func LoadPolicy(path string) (*policy.Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy decodes and compiles a policy file.
func ParsePolicy(data []byte) (*policy.Policy, error) {
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	w := newWalker()
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		w.value(doc.Content[0], reflect.TypeFor[policy.File](), place{})
	}
	if err := errors.Join(w.problems...); err != nil {
		return nil, err
	}
	var f policy.File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("decoding the policy: %w", err)
	}
	return policy.Compile(f)
}

// loadPolicyOf loads the policy the configuration at path names, a
// relative policy_file being relative to the configuration's directory.
func (f *File) loadPolicyOf(path string) error {
	if f.PolicyFile == "" {
		f.Policy = nil
		return nil
	}
	pf := f.PolicyFile
	if !filepath.IsAbs(pf) {
		pf = filepath.Join(filepath.Dir(path), pf)
	}
	p, err := LoadPolicy(pf)
	if err != nil {
		return fmt.Errorf("policy_file: %w", err)
	}
	f.Policy = p
	return nil
}
