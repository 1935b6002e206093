package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// TestPrometheusScrape runs the binary and a real Prometheus (Debian's
// prometheus package) scraping it on loopback, and checks the exported
// metrics arrive with the right types; /healthz and /readyz answer.
func TestPrometheusScrape(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed (Debian: apt-get install prometheus; make test and .ci/run install it)")
	}
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	bin := buildBinary(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pgshield.yaml")
	addr, metricsAddr := freeAddr(t), freeAddr(t)
	writeConfigMetrics(t, cfgPath, addr, metricsAddr, pg, "  - {name: app, password: one}")
	startServe(t, bin, cfgPath)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	waitFor(t, "the proxy to listen", func() bool { return query(ctx, addr, "app", "one") == nil })
	for i := 0; i < 10; i++ {
		if err := query(ctx, addr, "app", "one"); err != nil {
			t.Fatal(err)
		}
	}

	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
		}
	}

	promAddr := freeAddr(t)
	promCfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promCfg, []byte(fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: pgshield
    static_configs: [{targets: [%q]}]
`, mustAbs(t, "../../monitoring/prometheus/database-alerts.yml"), metricsAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	prom := exec.CommandContext(ctx, promBin, "--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr)
	var promLogs syncBuffer
	prom.Stdout, prom.Stderr = &promLogs, &promLogs
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = prom.Process.Kill()
		_ = prom.Wait()
	})

	want := map[string]string{
		"database_connections_active":        "gauge",
		"database_connections_idle":          "gauge",
		"database_connections_waiting":       "gauge",
		"database_connections_max":           "gauge",
		"pgshield_backend_up":                "gauge",
		"pgshield_breaker_state":             "gauge",
		"pgshield_pinned_clients":            "gauge",
		"pgshield_parse_cache_lookups_total": "counter",
		"pgshield_long_transactions":         "gauge",
	}
	var got map[string]string
	deadline := time.Now().Add(60 * time.Second)
	for {
		got = promMetadata(t, promAddr)
		missing := 0
		for name := range want {
			if _, ok := got[name]; !ok {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus did not scrape every metric within 60 s; have %v\nprometheus log:\n%s", got, promLogs.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	for name, typ := range want {
		if got[name] != typ {
			t.Errorf("%s: type %q in Prometheus, want %q", name, got[name], typ)
		}
	}
}

// promMetadata asks Prometheus for the type of every metric it scraped
// from the pgshield job.
func promMetadata(t *testing.T, promAddr string) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + promAddr + `/api/v1/targets/metadata?match_target={job="pgshield"}`)
	if err != nil {
		return nil // not up yet
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string `json:"status"`
		Data   []struct {
			Metric string `json:"metric"`
			Type   string `json:"type"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil
	}
	out := map[string]string{}
	for _, d := range r.Data {
		out[d.Metric] = d.Type
	}
	return out
}

func mustAbs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
