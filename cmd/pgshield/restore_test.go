package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/pgshield/pgshield/admin/backup"
	"github.com/pgshield/pgshield/internal/pgcluster"
)

func TestParseTargetTime(t *testing.T) {
	t.Parallel()
	want := time.Date(2026, 5, 1, 12, 30, 15, 250000000, time.UTC)
	for _, s := range []string{"2026-05-01T12:30:15.25Z", "2026-05-01T14:30:15.25+02:00", "2026-05-01 12:30:15.25", "2026-05-01 12:30:15.25+00:00"} {
		got, err := parseTargetTime(s)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseTargetTime(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := parseTargetTime("yesterday"); err == nil {
		t.Fatal("parsed yesterday")
	}
}

// postgresUser is the OS user PostgreSQL's programs run as when we are
// root, nil otherwise.
func postgresUser(t *testing.T) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// shareWithPostgres lets the postgres OS user (when we are root) reach
// dir, and gives it what is under it: the restored server and its
// restore_command run as that user.
func shareWithPostgres(t *testing.T, dir string) {
	t.Helper()
	cred := postgresUser(t)
	if cred == nil {
		return
	}
	for d := filepath.Dir(dir); d != filepath.Dir(d); d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
			t.Fatal(err)
		}
	}
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(cred.Uid), int(cred.Gid))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// loopbackPort is a free port on 127.0.0.1.
func loopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// pgCtlStop stops the server of a restored data directory.
func pgCtlStop(t *testing.T, dir string) {
	t.Helper()
	bin, err := pgcluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "pg_ctl"), "stop", "-m", "immediate", "-w", "-D", dir)
	cmd.Dir = "/"
	if cred := postgresUser(t); cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
}

// backupConfig writes a configuration whose backup section is a local
// repository, readable by the postgres OS user.
func backupConfig(t *testing.T, dir, primary string) (cfgPath, repoDir string) {
	t.Helper()
	repoDir = filepath.Join(dir, "repo")
	cfgPath = filepath.Join(dir, "pgshield.yaml")
	cfg := fmt.Sprintf(`databases:
  app: {primary: %s, dbname: app, user: postgres, password: postgres}
backup:
  repository: {dir: repo}
`, primary)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath, repoDir
}

// runBin runs the pgshield binary with env added, returning its exit
// status and output.
func runBin(t *testing.T, bin string, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatal(err)
	return 0, "", ""
}

// TestWALFetchExitStatus: restore_command's contract with PostgreSQL: 0 for
// a fetched file, 1 (quietly) for one the archive lacks, above 125 for any
// other failure, which aborts the recovery instead of ending it early.
func TestWALFetchExitStatus(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	dir := t.TempDir()
	cfgPath, repoDir := backupConfig(t, dir, "127.0.0.1:5432")
	repo, err := backup.NewLocal(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	const pass = "a passphrase for the wal-fetch test"
	key, err := backup.KeyFrom(func(string) string { return pass })
	if err != nil {
		t.Fatal(err)
	}
	seg := "000000010000000000000007"
	content := bytes.Repeat([]byte{0xAB}, 10000)
	pr, pw := io.Pipe()
	go func() {
		sw, err := key.Seal(pw, "app/wal/"+seg)
		if err == nil {
			_, err = sw.Write(content)
		}
		if err == nil {
			err = sw.Close()
		}
		pw.CloseWithError(err)
	}()
	if _, _, err := repo.Put(context.Background(), "app/wal/"+seg, pr); err != nil {
		t.Fatal(err)
	}
	env := []string{backup.KeyEnv + "=" + pass}
	out := filepath.Join(dir, "RECOVERYXLOG")

	if code, _, stderr := runBin(t, bin, env, "wal-fetch", "--config", cfgPath, seg, out); code != 0 {
		t.Fatalf("wal-fetch of an archived segment: exit %d: %s", code, stderr)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("fetched %d bytes, %v", len(got), err)
	}
	if code, _, stderr := runBin(t, bin, env, "wal-fetch", "--config", cfgPath, "00000002.history", out); code != 1 || stderr != "" {
		t.Fatalf("wal-fetch of a missing file: exit %d, %q", code, stderr)
	}
	if code, _, stderr := runBin(t, bin, []string{backup.KeyEnv + "=another passphrase"}, "wal-fetch", "--config", cfgPath, seg, out); code != walFetchFatal || !strings.Contains(stderr, "key") {
		t.Fatalf("wal-fetch with another key: exit %d, %q", code, stderr)
	}
	if code, _, stderr := runBin(t, bin, []string{backup.KeyEnv + "="}, "wal-fetch", "--config", cfgPath, seg, out); code != walFetchFatal || !strings.Contains(stderr, backup.KeyEnv) {
		t.Fatalf("wal-fetch without a key: exit %d, %q", code, stderr)
	}
	if code, stdout, stderr := runBin(t, bin, env, "wal-fetch", "--config", cfgPath, "--check"); code != 0 || !strings.Contains(stdout, "1 archived WAL files") {
		t.Fatalf("wal-fetch --check: exit %d, %q %q", code, stdout, stderr)
	}
	for _, args := range [][]string{{"wal-fetch", "--config", cfgPath}, {"wal-fetch", "--config", cfgPath, seg}, {"wal-fetch", "--nope"}} {
		if code, _, _ := runBin(t, bin, env, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	if code, _, _ := runBin(t, bin, env, "restore", "--config", cfgPath); code != 2 {
		t.Errorf("restore without --into: exit %d, want 2", code)
	}
}

// TestRestoreCommand: `pgshield restore` from a repository alone (no
// running pgshield): a full backup with archived WAL after it, restored
// LATEST and started; its restore_command is the binary itself.
func TestRestoreCommand(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	if err := pg.CreateDatabase(ctx, "app", pg.User); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "app", "CREATE TABLE t (id int PRIMARY KEY, tag text)"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfgPath, repoDir := backupConfig(t, dir, pg.Addr())
	const pass = "a passphrase for the restore test"
	key, err := backup.KeyFrom(func(string) string { return pass })
	if err != nil {
		t.Fatal(err)
	}
	repo, err := backup.NewLocal(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	bindir, err := pgcluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	m, err := backup.NewManager(backup.Config{Repo: repo, Key: key, PGBin: bindir, Cluster: "app",
		StagingDir: filepath.Join(dir, "staging"),
		Source: func(context.Context) (backup.Source, error) {
			return backup.Source{Host: pg.Host, Port: pg.Port, User: pg.User, Password: pg.Password, DBName: "app"}, nil
		}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	walCtx, stopWAL := context.WithCancel(ctx)
	walDone := make(chan error, 1)
	go func() { walDone <- m.RunWAL(walCtx) }()
	defer func() {
		stopWAL()
		<-walDone
	}()
	if err := pg.Exec(ctx, "app", "INSERT INTO t VALUES (1, 'before')"); err != nil {
		t.Fatal(err)
	}
	full, err := m.BackupFull(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "app", "INSERT INTO t VALUES (2, 'after')"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SwitchWAL(ctx); err != nil {
		t.Fatal(err)
	}
	stopWAL()
	if err := <-walDone; err != nil {
		t.Fatal(err)
	}
	walDone <- nil
	shareWithPostgres(t, dir)
	shareWithPostgres(t, filepath.Dir(bin))

	into := filepath.Join(dir, "restored")
	port := loopbackPort(t)
	defer pgCtlStop(t, into)
	code, stdout, stderr := runBin(t, bin, []string{backup.KeyEnv + "=" + pass},
		"restore", "--config", cfgPath, "--into", into, "--port", strconv.Itoa(port))
	if code != 0 {
		t.Fatalf("pgshield restore: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "restored backup "+full.ID) || !strings.Contains(stdout, fmt.Sprintf("running on 127.0.0.1:%d", port)) {
		t.Fatalf("pgshield restore said:\n%s", stdout)
	}
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/app?sslmode=disable", pg.User, pg.Password, port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM t WHERE tag IN ('before', 'after')").Scan(&n); err != nil || n != 2 {
		t.Fatalf("the restored cluster has %d of the 2 rows: %v", n, err)
	}
	// A second restore into the same directory is refused.
	if code, _, stderr := runBin(t, bin, []string{backup.KeyEnv + "=" + pass}, "restore", "--config", cfgPath, "--into", into); code != 1 || !strings.Contains(stderr, "not empty") {
		t.Fatalf("a restore into a used directory: exit %d, %s", code, stderr)
	}
}
