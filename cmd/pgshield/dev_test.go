package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// devProcess is a running `pgshield dev`.
type devProcess struct {
	cmd    *exec.Cmd
	out    *syncBuffer // stdout and stderr
	exited chan error  // receives the exit once; put it back to let others see it
}

// startDev runs `pgshield dev` on dir and waits until it serves. The test's
// cleanup stops it with SIGTERM, so that it stops its clusters.
func startDev(t *testing.T, bin, dir, listen, admin, metrics string) *devProcess {
	t.Helper()
	p := &devProcess{out: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(bin, "dev", "--dir", dir, "--listen", listen, "--admin-listen", admin, "--metrics-listen", metrics)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.exited:
			p.exited <- err
		case <-time.After(90 * time.Second):
			_ = p.cmd.Process.Kill()
			t.Errorf("pgshield dev did not stop on SIGTERM\n%s", p.out.String())
			<-p.exited
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(p.out.String(), "DATABASE_URL=") {
		select {
		case err := <-p.exited:
			p.exited <- err
			t.Fatalf("pgshield dev exited with %v\n%s", err, p.out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgshield dev did not serve within 3 minutes\n%s", p.out.String())
		}
	}
	return p
}

// devQuery runs a query through the dev proxy at addr as app.
func devQuery(ctx context.Context, addr string) error {
	host, port, _ := net.SplitHostPort(addr)
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=app password=app dbname=app sslmode=prefer", host, port))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity").Scan(&n); err != nil {
		return err
	}
	return nil
}

// runDev runs a `pgshield dev` expected to refuse, bounded in time, and
// returns its output and exit code.
func runDev(ctx context.Context, t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"dev"}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("pgshield dev %v: %v\n%s", args, err, out)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// A second `pgshield dev` on a directory in use refuses before it touches
// anything, and the first keeps serving; one that only clashes on a listen
// address refuses before it starts any cluster.
func TestDevRefusesADirectoryInUse(t *testing.T) {
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	listen, admin, metrics := freeAddr(t), freeAddr(t), freeAddr(t)
	first := startDev(t, bin, dir, listen, admin, metrics)
	if err := devQuery(ctx, listen); err != nil {
		t.Fatalf("first pgshield dev: %v\n%s", err, first.out.String())
	}

	out, code := runDev(ctx, t, bin, "--dir", dir, "--listen", listen, "--admin-listen", admin, "--metrics-listen", metrics)
	want := fmt.Sprintf("directory %s is in use by pgshield pid %d", dir, first.cmd.Process.Pid)
	if code != 1 || !strings.Contains(out, want) {
		t.Fatalf("second pgshield dev on the same directory: exit %d, want 1 and %q in\n%s", code, want, out)
	}
	if strings.Contains(out, "PostgreSQL") {
		t.Errorf("the second pgshield dev touched PostgreSQL:\n%s", out)
	}
	// The first one's clusters still run: new server connections work.
	for i := range 3 {
		if err := devQuery(ctx, listen); err != nil {
			t.Fatalf("query %d through the first proxy after the second run: %v\n%s", i, err, first.out.String())
		}
	}
	if strings.Contains(first.out.String(), "stopping PostgreSQL") {
		t.Fatalf("the first pgshield dev's PostgreSQL was stopped:\n%s", first.out.String())
	}

	// Another directory, but the proxy address is taken: refused before
	// any cluster is made.
	dir2 := t.TempDir()
	out, code = runDev(ctx, t, bin, "--dir", dir2, "--listen", listen, "--admin-listen", freeAddr(t), "--metrics-listen", freeAddr(t))
	if code != 1 || !strings.Contains(out, "--listen "+listen+" is not free") {
		t.Fatalf("pgshield dev on a taken proxy address: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(dir2, "primary")); !os.IsNotExist(err) {
		t.Fatalf("a cluster was made before the address check: %v", err)
	}
	if err := devQuery(ctx, listen); err != nil {
		t.Fatalf("first proxy after the address clash: %v", err)
	}

	// The first one stops cleanly.
	_ = first.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-first.exited:
		first.exited <- err
		if err != nil {
			t.Fatalf("pgshield dev exited with %v after SIGTERM\n%s", err, first.out.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("pgshield dev did not exit after SIGTERM\n%s", first.out.String())
	}
}

// The lock of a dev directory: held while its file is open, naming the
// holder's pid; a lock file left by a process that died does not block.
func TestLockDir(t *testing.T) {
	dir := t.TempDir()
	// As left by a crashed run: a pid, no lock.
	if err := os.WriteFile(filepath.Join(dir, lockName), []byte("999999999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := lockDir(dir, "shown-dir")
	if err != nil {
		t.Fatalf("a stale lock file blocked: %v", err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, lockName))
	if got := strings.TrimSpace(string(data)); got != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q, want the pid %d", got, os.Getpid())
	}
	// flock locks belong to the open file, so a second open conflicts
	// within one process too.
	_, err = lockDir(dir, "shown-dir")
	want := fmt.Sprintf("directory shown-dir is in use by pgshield pid %d", os.Getpid())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("second lock: %v, want %q", err, want)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f, err = lockDir(dir, "shown-dir")
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	f.Close()
}
