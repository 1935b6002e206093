package minio_test

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/pgshield/pgshield/internal/minio"
)

// The Makefile builds the same MinIO as the harness, so that the binary
// `make test` leaves in bin/ is the one the tests expect.
func TestMakefilePinsVersion(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^MINIO_VERSION\s*:?=\s*(\S+)\s*$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile: no MINIO_VERSION := line")
	}
	if got := string(m[1]); got != minio.Version {
		t.Fatalf("Makefile MINIO_VERSION = %s, internal/minio.Version = %s: keep them in step", got, minio.Version)
	}
}

func TestStart(t *testing.T) {
	srv := minio.Start(t)
	resp, err := http.Get("http://" + srv.Endpoint + "/minio/health/live")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("health/live: %s", resp.Status)
	}
	cfg := srv.Config("b")
	if cfg.Endpoint != srv.Endpoint || cfg.Bucket != "b" || cfg.AccessKey == "" || cfg.SecretKey == "" || cfg.Secure {
		t.Fatalf("Config = %+v", cfg)
	}
	// An anonymous request is refused: the server runs with the made-up
	// root credentials, not MinIO's well-known defaults.
	resp, err = http.Get("http://" + srv.Endpoint + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("anonymous ListBuckets: %s, want 403", resp.Status)
	}
}
