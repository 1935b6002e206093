package main

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// run runs the binary and returns its stdout, stderr and exit code.
func run(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%v: %v", args, err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// Help asked for goes to stdout with exit 0; a usage error to stderr with
// exit 2. Every flag shows an argument name.
func TestHelpAndUsage(t *testing.T) {
	bin := buildBinary(t)
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		out, errOut, code := run(t, bin, args...)
		if code != 0 || !strings.HasPrefix(out, "usage: pgshield") || errOut != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	for _, args := range [][]string{nil, {"frobnicate"}, {"serve", "--no-such-flag"}, {"dev", "stray"}} {
		out, errOut, code := run(t, bin, args...)
		if code != 2 || out != "" || !strings.Contains(errOut, "usage: pgshield") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	flags := map[string][]string{
		"serve": {"-config file", "-cpuprofile file"},
		"dev":   {"-dir directory", "-listen address", "-admin-listen address", "-metrics-listen address"},
	}
	for cmd, want := range flags {
		for _, help := range []string{"--help", "-h"} {
			out, errOut, code := run(t, bin, cmd, help)
			if code != 0 || errOut != "" {
				t.Errorf("%s %s: exit %d, stderr %q", cmd, help, code, errOut)
			}
			for _, w := range want {
				if !strings.Contains(out, "  "+w+"\n") {
					t.Errorf("%s %s: no %q in\n%s", cmd, help, w, out)
				}
			}
			if strings.Contains(out, "`") {
				t.Errorf("%s %s: a back quote in\n%s", cmd, help, out)
			}
		}
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// gitHead is HEAD's commit, in full or as git abbreviates it; outside a
// git checkout it skips the test.
func gitHead(t *testing.T, short bool) string {
	t.Helper()
	args := []string{"rev-parse", "HEAD"}
	if short {
		args = []string{"rev-parse", "--short", "HEAD"}
	}
	cmd := exec.Command("git", args...)
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("not in a git checkout (git rev-parse: %v)", err)
	}
	return strings.TrimSpace(string(out))
}

// `make build` stamps the version and commit into the binary.
func TestVersionStampedByMake(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is not installed")
	}
	commit := gitHead(t, true)
	binDir := t.TempDir()
	cmd := exec.Command("make", "-s", "build", "BIN="+binDir)
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	out, _, code := run(t, filepath.Join(binDir, "pgshield"), "version")
	if code != 0 || strings.HasPrefix(out, "pgshield dev") ||
		!strings.HasSuffix(out, " (commit "+commit+", "+runtime.Version()+")\n") {
		t.Fatalf("version of the make build: exit %d, %q; want commit %s", code, out, commit)
	}
}

// The ldflags, as given, and without them the VCS revision the Go toolchain
// records.
func TestVersionFromLdflagsAndBuildInfo(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "stamped")
	if out, err := exec.Command("go", "build", "-ldflags", "-X main.version=v9.8.7-test -X main.commit=abc1234", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	want := "pgshield v9.8.7-test (commit abc1234, " + runtime.Version() + ")\n"
	if out, _, code := run(t, bin, "version"); code != 0 || out != want {
		t.Fatalf("version: exit %d, %q, want %q", code, out, want)
	}

	head := gitHead(t, false)
	bin = filepath.Join(dir, "plain")
	if out, err := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, _, code := run(t, bin, "version")
	if code != 0 || strings.HasPrefix(out, "pgshield dev") || !strings.Contains(out, "(commit "+head[:7]) {
		t.Fatalf("version from build info: exit %d, %q, want commit %s", code, out, head[:7])
	}
}
