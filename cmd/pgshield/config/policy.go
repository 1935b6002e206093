package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/pgshield/pgshield/policy"
)

// LoadPolicy reads and compiles the policy file at path (validation rules
// and firewall, see docs/policy.md), with the allow lists its firewall
// names (allow_file, relative to the policy file's directory). Its errors
// name keys as the configuration's do.
func LoadPolicy(path string) (*policy.Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := parsePolicy(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy decodes and compiles a policy file; an allow_file is read
// relative to the working directory.
func ParsePolicy(data []byte) (*policy.Policy, error) { return parsePolicy(data, ".") }

// parsePolicy decodes a policy file, appends the fingerprints of each
// allow_file (relative to dir) to its service's allow list, and compiles
// it.
func parsePolicy(data []byte, dir string) (*policy.Policy, error) {
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
	if err := readAllowFiles(&f, dir); err != nil {
		return nil, err
	}
	return policy.Compile(f)
}

// readAllowFiles appends the fingerprints of every service's allow_file
// to its allow list, and sets allow_file to the path read (where FIREWALL
// SAVE writes). A file that does not exist is an empty list, but in mode
// enforce, where it would refuse every statement.
func readAllowFiles(f *policy.File, dir string) error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(f.Firewall)) {
		r := f.Firewall[name]
		if r.AllowFile == "" {
			continue
		}
		key := "firewall." + name + ".allow_file"
		path := r.AllowFile
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, path)
		}
		entries, err := ReadAllowFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist) && strings.EqualFold(strings.TrimSpace(r.Mode), policy.FirewallEnforce):
			errs = append(errs, fmt.Errorf("%s: %w (mode enforce needs the allow list: write it with the admin console's FIREWALL SAVE %s in mode learn)", key, err, name))
			continue
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
			continue
		}
		r.Allow = slices.Clone(r.Allow)
		for _, e := range entries {
			r.Allow = append(r.Allow, e.Fingerprint)
		}
		r.AllowFile = path
		f.Firewall[name] = r
	}
	return errors.Join(errs...)
}

// An allow file is one statement fingerprint a line (16 hex digits, as
// pg_query computes it), each after a `#` line with its normalized text
// (literals replaced by $n), which is a comment: blank lines and other
// comments are ignored.

// unknownQuery is the comment above a fingerprint whose normalized text
// is not known.
const unknownQuery = "(normalized text not known)"

// ReadAllowFile reads the allow file at path: its fingerprints, each with
// the comment line right above it as its query.
func ReadAllowFile(path string) ([]policy.FingerprintInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []policy.FingerprintInfo
	var errs []error
	comment := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			comment = ""
		case strings.HasPrefix(line, "#"):
			comment = strings.TrimSpace(strings.TrimPrefix(line, "#"))
			if comment == unknownQuery {
				comment = ""
			}
		default:
			fp := strings.ToLower(line)
			if !fingerprintText(fp) {
				errs = append(errs, fmt.Errorf("%s:%d: %q is not a statement fingerprint (16 hex digits, as pg_query computes it)", path, n, line))
			} else {
				out = append(out, policy.FingerprintInfo{Fingerprint: fp, Query: comment, Allowed: true})
			}
			comment = ""
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func fingerprintText(s string) bool {
	if len(s) != 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// SaveAllowFile adds fps to the allow file of service at path, keeping
// what the file lists already (its queries too, where fps knows none), and
// returns how many fingerprints the file lists now. It writes a
// temporary file beside path and renames it over path, so that a reader
// sees the old file or the new one, never a part.
func SaveAllowFile(path, service string, fps []policy.FingerprintInfo) (int, error) {
	old, err := ReadAllowFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	byFP := map[string]string{}
	for _, e := range old {
		byFP[e.Fingerprint] = e.Query
	}
	for _, e := range fps {
		if q, ok := byFP[e.Fingerprint]; !ok || q == "" {
			byFP[e.Fingerprint] = e.Query
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# The firewall allow list of service %s: one statement fingerprint a line,\n", oneLine(service))
	b.WriteString("# its normalized text in the comment above it. Written by the admin\n")
	b.WriteString("# console's FIREWALL SAVE; with mode: enforce only these statements run.\n")
	for _, fp := range slices.Sorted(maps.Keys(byFP)) {
		q := byFP[fp]
		if q == "" {
			q = unknownQuery
		}
		fmt.Fprintf(&b, "\n# %s\n%s\n", oneLine(q), fp)
	}
	if err := writeAtomic(path, []byte(b.String())); err != nil {
		return 0, err
	}
	return len(byFP), nil
}

// oneLine keeps a comment on its line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// writeAtomic replaces path with data: a temporary file in its directory,
// synced, renamed over it. The file keeps its mode (0644 when new).
func writeAtomic(path string, data []byte) error {
	mode := fs.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	done := false
	defer func() {
		if !done {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	done = true
	// The rename is durable once the directory is synced.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
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
