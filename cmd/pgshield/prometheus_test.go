package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	replica, err := pg.AddReplica(ctx, pgcluster.ReplicaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pgshield.yaml")
	addr, metricsAddr := freeAddr(t), freeAddr(t)
	adminAddr := freeAddr(t)
	pgBin, err := pgcluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("BACKUP_ENCRYPTION_KEY", "the backup key of the scrape test")
	cfg := fmt.Sprintf(`listen: %s
metrics_listen: %s
admin_listen: %s
slow_query_threshold: 100ms
users:
  - {name: app, password: one}
  - {name: admin, password: admin, admin: true}
databases:
  app: {primary: %s, replicas: [%s], dbname: postgres, user: %s, password: %s, server_tls: {mode: disable}}
services:
  api: {max_connections: 4, min_connections: 1}
routing: {lag_check_interval: 200ms}
max_retries: -1
backup:
  repository: {dir: backups}
  pg_bin: %q
  schedule: {full: "off", incremental: "off", verify: "off", retention: "off"}
`, addr, metricsAddr, adminAddr, pg.Addr(), replica.Addr(), pg.User, pg.Password, pgBin)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startServe(t, bin, cfgPath)
	waitFor(t, "the proxy to listen", func() bool { return query(ctx, addr, "app", "one") == nil })
	statementLoad(ctx, t, addr)
	// A backup, so that the backup metrics have values.
	con := connectAs(ctx, t, adminAddr, "admin", "admin", "pgshield")
	var job int64
	if err := con.QueryRow(ctx, "BACKUP FULL", pgx.QueryExecModeSimpleProtocol).Scan(&job); err != nil {
		t.Fatalf("BACKUP FULL: %v", err)
	}
	waitForLong(t, 2*time.Minute, "the backup", func() bool {
		var state string
		if err := con.QueryRow(ctx, fmt.Sprintf("SHOW JOB %d", job), pgx.QueryExecModeSimpleProtocol).
			Scan(nil, nil, nil, &state, nil, nil, nil, nil, nil, nil, nil, nil, nil); err != nil {
			t.Fatalf("SHOW JOB: %v", err)
		}
		if state == "failed" {
			t.Fatalf("the backup failed")
		}
		return state == "succeeded"
	})

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
		"database_query_duration_seconds":                "histogram",
		"database_transaction_duration_seconds":          "histogram",
		"database_query_errors_total":                    "counter",
		"database_slow_queries_total":                    "counter",
		"database_deadlocks_total":                       "counter",
		"database_transactions_total":                    "counter",
		"pgshield_pool_wait_seconds":                     "histogram",
		"pgshield_replica_lag_seconds":                   "gauge",
		"pgshield_replica_lag_bytes":                     "gauge",
		"database_cache_hit_ratio":                       "gauge",
		"database_blocks_hit_total":                      "counter",
		"database_blocks_read_total":                     "counter",
		"database_connections_active":                    "gauge",
		"database_connections_idle":                      "gauge",
		"database_connections_waiting":                   "gauge",
		"database_connections_max":                       "gauge",
		"pgshield_backend_up":                            "gauge",
		"pgshield_breaker_state":                         "gauge",
		"pgshield_pinned_clients":                        "gauge",
		"pgshield_parse_cache_lookups_total":             "counter",
		"pgshield_long_transactions":                     "gauge",
		"pgshield_backup_last_success_timestamp_seconds": "gauge",
		"pgshield_backup_size_bytes":                     "gauge",
		"pgshield_backup_duration_seconds":               "gauge",
		"pgshield_backup_failures_total":                 "counter",
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

// statementLoad runs through the proxy at addr what every per-statement
// metric records: statements, a transaction, a slow query, an error and a
// deadlock between two transactions.
func statementLoad(ctx context.Context, t *testing.T, addr string) {
	t.Helper()
	conn := func() *pgx.Conn { return connectApp(ctx, t, addr) }
	a, b := conn(), conn()
	for _, sql := range []string{
		"drop table if exists dl", "create table dl (id int primary key, v int)", "insert into dl values (1, 0), (2, 0)",
		"begin", "update dl set v = 1 where id = 1", "commit", "select pg_sleep(0.2)",
	} {
		if _, err := a.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if _, err := a.Exec(ctx, "select 1/0"); err == nil {
		t.Fatal("division by zero succeeded")
	}
	// A deadlock: a locks 1 then 2, b locks 2 then 1.
	for _, c := range []struct {
		conn *pgx.Conn
		id   int
	}{{a, 1}, {b, 2}} {
		if _, err := c.conn.Exec(ctx, "begin"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.conn.Exec(ctx, "update dl set v = v + 1 where id = $1", c.id); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, 2)
	go func() { _, err := a.Exec(ctx, "update dl set v = v + 1 where id = 2"); errs <- err }()
	time.Sleep(200 * time.Millisecond)
	go func() { _, err := b.Exec(ctx, "update dl set v = v + 1 where id = 1"); errs <- err }()
	e1, e2 := <-errs, <-errs
	var pe *pgconn.PgError
	if !(errors.As(e1, &pe) && pe.Code == "40P01") && !(errors.As(e2, &pe) && pe.Code == "40P01") {
		t.Fatalf("no deadlock: %v, %v", e1, e2)
	}
	for _, c := range []*pgx.Conn{a, b} {
		if _, err := c.Exec(ctx, "rollback"); err != nil {
			t.Fatal(err)
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
