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
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// BinDir finds the directory of the PostgreSQL server binaries: $PG_BIN if
// set, else `pg_config --bindir` when that directory has initdb, else the
// newest /usr/lib/postgresql/*/bin with initdb (Debian's layout), else the
// directory of initdb on PATH.
func BinDir() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		if hasInitdb(d) {
			return d, nil
		}
		return "", fmt.Errorf("pgcluster: PG_BIN=%s has no initdb", d)
	}
	if d := pgConfigBinDir(); d != "" && hasInitdb(d) {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return slices.Compare(versionOf(b), versionOf(a)) })
	for _, d := range dirs {
		if hasInitdb(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("pgcluster: PostgreSQL server binaries not found (no initdb): install PostgreSQL (Debian: apt-get install postgresql) or set PG_BIN to the directory holding initdb")
}

func hasInitdb(dir string) bool {
	st, err := os.Stat(filepath.Join(dir, "initdb"))
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

func pgConfigBinDir() string {
	p, err := exec.LookPath("pg_config")
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, "--bindir").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// versionOf is the version in /usr/lib/postgresql/<version>/bin, as numbers:
// "15" is [15], "9.6" is [9 6]; nil when it is not a version.
func versionOf(binDir string) []int {
	var v []int
	for _, part := range strings.Split(filepath.Base(filepath.Dir(binDir)), ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			return nil
		}
		v = append(v, n)
	}
	return v
}

// runAs is the operating-system user that runs PostgreSQL: nil for the
// current user, or the postgres user when we are root.
type runAs struct {
	name     string
	uid, gid uint32
	home     string
}

func osUser() (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgcluster: PostgreSQL does not run as root and there is no postgres OS user to run it as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: gid of postgres: %w", err)
	}
	return &runAs{name: u.Username, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}, nil
}

// defaultCommandTimeout bounds a command whose context has no deadline.
const defaultCommandTimeout = 5 * time.Minute

// command builds a command that runs as the cluster's OS user in dir, with
// the caller's libpq environment (PGHOST, PGPASSWORD, ...) left out, plus
// env.
func (r *runAs) command(ctx context.Context, dir, name string, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = filterEnv(os.Environ(), r != nil)
	if r != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: r.uid, Gid: r.gid}}
		home := r.home
		if st, err := os.Stat(home); err != nil || !st.IsDir() {
			home = os.TempDir()
		}
		cmd.Env = append(cmd.Env, "HOME="+home, "USER="+r.name, "LOGNAME="+r.name)
	}
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// filterEnv drops libpq's PG* variables (PG_BIN is ours, not libpq's) and,
// when we switch users, the variables naming the current one.
func filterEnv(env []string, switchUser bool) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		key, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(key, "PG") && key != "PG_BIN":
		case switchUser && (key == "HOME" || key == "USER" || key == "LOGNAME"):
		default:
			out = append(out, kv)
		}
	}
	return out
}

// run runs a command in dir, bounded by ctx or defaultCommandTimeout, and
// puts its output into the error when it fails.
func (r *runAs) run(ctx context.Context, dir string, env []string, name string, args ...string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultCommandTimeout)
		defer cancel()
	}
	cmd := r.command(ctx, dir, name, env, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// chown gives path and everything under it to the cluster's OS user.
func (r *runAs) chown(path string) error {
	if r == nil {
		return nil
	}
	err := filepath.WalkDir(path, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(r.uid), int(r.gid))
	})
	if err != nil {
		return fmt.Errorf("pgcluster: giving %s to the postgres user: %w", path, err)
	}
	return nil
}

// makeTraversable lets the postgres user reach dir through its parents
// (adds the search bit for group and others where it is missing). Nothing
// to do when we are not root: PostgreSQL runs as ourselves then.
func (r *runAs) makeTraversable(dir string) error {
	if r == nil {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if perm := st.Mode().Perm(); perm&0o011 != 0o011 {
			if err := os.Chmod(d, perm|0o011); err != nil {
				return fmt.Errorf("pgcluster: letting the postgres user reach %s: %w", dir, err)
			}
		}
		if parent := filepath.Dir(d); parent == d {
			return nil
		}
	}
}

// StopDataDir stops (fast) a cluster some other program started on
// dataDir with the local binaries, as the OS user pgcluster runs
// PostgreSQL as: a restored copy in tests.
func StopDataDir(ctx context.Context, dataDir string) error {
	bin, err := BinDir()
	if err != nil {
		return err
	}
	r, err := osUser()
	if err != nil {
		return err
	}
	return r.run(ctx, "", nil, filepath.Join(bin, "pg_ctl"), "-D", dataDir, "-m", "fast", "-w", "stop")
}
