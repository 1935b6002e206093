package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/example"
)

// pgshield policy sql prints the SQL the configuration's policy compiles
// to; without a policy_file it says so.
func TestPolicySQLCommand(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(example.Policy()), 0o644); err != nil {
		t.Fatal(err)
	}
	base := "databases:\n  app: {primary: 127.0.0.1:5432, user: app}\n"
	if err := os.WriteFile(filepath.Join(dir, "with.yaml"), []byte(base+"policy_file: policy.yaml\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "without.yaml"), []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "policy", "sql", "--config", filepath.Join(dir, "with.yaml")).Output()
	if err != nil || !strings.Contains(string(out), "-- database app") || !strings.Contains(string(out), "CHECK") ||
		!strings.Contains(string(out), "leads_email_type") {
		t.Errorf("policy sql: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "policy", "sql", "--config", filepath.Join(dir, "without.yaml")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no policy_file") {
		t.Errorf("policy sql without a policy: %v\n%s", err, out)
	}
}
