package minio

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Version is the MinIO server module that is built into bin/minio (the
// Makefile's MINIO_VERSION must match; a test checks it). MinIO's release
// tags are not semantic versions, so this is the module proxy's
// pseudo-version of a commit; pinning it keeps every machine on the same
// server rather than whatever @latest is on the day of a fresh build.
const Version = "v0.0.0-20260212201848-7aac2a2c5b7c"

// Module is the MinIO server's module path.
const Module = "github.com/minio/minio"

// Server is a running MinIO server.
type Server struct {
	// Endpoint is host:port, on loopback, plain http.
	Endpoint string
	// AccessKey and SecretKey are the root credentials, made up for this
	// server.
	AccessKey string
	SecretKey string
	// Dir holds the server's data (data/), its certs directory and its
	// log (minio.log).
	Dir string
}

// Config is a bucket of the server, with the fields of backup.S3Config in
// its order, so that backup.S3Config(srv.Config("b")) converts it (this
// package cannot import admin/backup: its own tests import this one).
type Config struct {
	Endpoint, Bucket, Prefix, Region, AccessKey, SecretKey string
	Secure                                                 bool
}

// Config is the configuration of bucket on this server (Start makes no
// bucket; the repository creates it).
func (s *Server) Config(bucket string) Config {
	return Config{Endpoint: s.Endpoint, Bucket: bucket, AccessKey: s.AccessKey, SecretKey: s.SecretKey}
}

// Start starts a MinIO server for the test, building the binary first if
// need be, and stops it (and removes its data) when the test ends. It
// fails the test when the server cannot be had.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary(t.Context(), t.Logf)
	if err != nil {
		t.Fatalf("minio: %v", err)
	}
	dir := t.TempDir()
	var last error
	// A free port can be taken between our probe and the server's bind;
	// then try other ports.
	for range 3 {
		srv, stop, err := start(t.Context(), bin, dir)
		if err == nil {
			t.Cleanup(func() {
				if err := stop(); err != nil {
					t.Errorf("minio: stopping the server: %v", err)
				}
				if t.Failed() {
					t.Logf("minio: server log:\n%s", tail(filepath.Join(dir, "minio.log"), 4000))
				}
			})
			return srv
		}
		last = err
	}
	t.Fatalf("minio: %v\nserver log:\n%s", last, tail(filepath.Join(dir, "minio.log"), 4000))
	return nil
}

// start runs one server in dir and waits until it is live.
func start(ctx context.Context, bin, dir string) (*Server, func() error, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, nil, err
	}
	consoleAddr, err := freeAddr()
	if err != nil {
		return nil, nil, err
	}
	srv := &Server{Endpoint: addr, AccessKey: "pgshield-" + randomHex(6), SecretKey: randomHex(20), Dir: dir}
	for _, d := range []string{"data", "certs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, nil, err
		}
	}
	logf, err := os.OpenFile(filepath.Join(dir, "minio.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, err
	}
	defer logf.Close() // the child has its own descriptor

	// The console would listen on all interfaces on a random port unless
	// told otherwise; it is off, and bound to loopback all the same.
	cmd := exec.Command(bin, "server",
		"--address", addr, "--console-address", consoleAddr,
		"--certs-dir", filepath.Join(dir, "certs"),
		filepath.Join(dir, "data"))
	cmd.Env = append(environWithout("MINIO_"),
		"MINIO_ROOT_USER="+srv.AccessKey,
		"MINIO_ROOT_PASSWORD="+srv.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			return nil
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			return errors.New("did not stop on SIGTERM within 30s; killed")
		}
	}

	// Live is not ready: until its storage is initialized the server
	// answers S3 requests with 503 (XMinioServerNotInitialized). Ready
	// is /minio/health/ready answering 200 and an S3 request anything
	// but 503.
	live := "http://" + addr + "/minio/health/ready"
	deadline := time.Now().Add(2 * time.Minute)
	client := &http.Client{Timeout: 5 * time.Second}
	status := func(url string) int {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for {
		if status(live) == http.StatusOK {
			if st := status("http://" + addr + "/"); st != 0 && st != http.StatusServiceUnavailable {
				return srv, stop, nil
			}
		}
		select {
		case err := <-exited:
			return nil, nil, fmt.Errorf("server exited before it was live: %v", err)
		case <-ctx.Done():
			stop()
			return nil, nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, nil, fmt.Errorf("server not live at %s after 2 minutes", live)
		}
	}
}

// Binary returns the path of bin/minio under the repository root,
// building it with go install when it is missing or does not run. logf
// reports a build (it takes minutes).
func Binary(ctx context.Context, logf func(format string, args ...any)) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	binDir := filepath.Join(root, "bin")
	bin := filepath.Join(binDir, "minio")
	if runs(ctx, bin) {
		return bin, nil
	}
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lock(filepath.Join(binDir, ".minio.lock"), logf)
	if err != nil {
		return "", err
	}
	defer unlock()
	if runs(ctx, bin) { // built by whoever held the lock
		return bin, nil
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building bin/minio: %w", err)
	}
	logf("minio: building bin/minio (go install %s@%s): the first build downloads and compiles MinIO, a few minutes", Module, Version)
	began := time.Now()
	cmd := exec.CommandContext(ctx, goTool, "install", Module+"@"+Version)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOBIN="+binDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s@%s: %w\n%s", Module, Version, err, lastBytes(out, 4000))
	}
	logf("minio: built bin/minio in %s", time.Since(began).Round(time.Second))
	if !runs(ctx, bin) {
		return "", fmt.Errorf("%s was built but does not run (%s --version)", bin, bin)
	}
	return bin, nil
}

// runs reports whether bin is a MinIO binary that starts.
func runs(ctx context.Context, bin string) bool {
	if _, err := os.Stat(bin); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	return err == nil && bytes.Contains(out, []byte("minio version"))
}

// lock takes an exclusive flock on path, waiting for whoever holds it.
func lock(path string, logf func(string, ...any)) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		logf("minio: waiting for another process building bin/minio")
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// repoRoot is the nearest directory at or above the working directory
// that holds go.mod (tests run in their package's directory).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod at or above the working directory: cannot find bin/")
		}
		dir = parent
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// environWithout is the environment less the variables starting with
// prefix (a developer's MINIO_* settings must not change the server).
func environWithout(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return string(lastBytes(b, n))
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
