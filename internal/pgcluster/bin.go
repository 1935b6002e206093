package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// BinDir finds the directory of the PostgreSQL server binaries: $PG_BIN,
// else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin
// (Debian's layout), else the directory of initdb on PATH.
func BinDir() (string, error) {
	has := func(dir string) bool {
		_, err := os.Stat(filepath.Join(dir, "initdb"))
		return err == nil
	}
	if d := os.Getenv("PG_BIN"); d != "" {
		if has(d) {
			return d, nil
		}
		return "", fmt.Errorf("PG_BIN=%s has no initdb", d)
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); has(d) {
			return d, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if has(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL server binaries not found: install PostgreSQL (Debian: apt-get install postgresql) or set PG_BIN")
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// runAs says which OS user runs PostgreSQL: nil for the current user, or
// the postgres user's ids when we are root.
type runAs struct {
	uid, gid uint32
}

func osUser() (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a postgres OS user to run PostgreSQL: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &runAs{uid: uint32(uid), gid: uint32(gid)}, nil
}

// command builds a command run as the cluster's OS user.
func (r *runAs) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	if r != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: r.uid, Gid: r.gid}}
		cmd.Env = append(os.Environ(), "HOME="+os.TempDir())
	}
	// Keep the caller's libpq environment out of the tools we run.
	cmd.Env = filterEnv(cmd.Env)
	return cmd
}

func filterEnv(env []string) []string {
	if env == nil {
		env = os.Environ()
	}
	out := env[:0:0]
	for _, kv := range env {
		if strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "PG_BIN=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// run runs a command and returns its combined output in the error.
func (r *runAs) run(ctx context.Context, name string, args ...string) error {
	cmd := r.command(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// chown gives path (recursively) to the cluster's OS user.
func (r *runAs) chown(path string) error {
	if r == nil {
		return nil
	}
	return filepath.Walk(path, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(r.uid), int(r.gid))
	})
}
