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
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// adminConsole is psql on a running pgshield's admin port.
type adminConsole struct {
	t          *testing.T
	psql, addr string
}

// run runs one command and returns psql's unaligned output: a header line
// and the rows, fields separated by '|'.
func (a adminConsole) run(user, pw, cmd string) (string, error) {
	host, port, _ := net.SplitHostPort(a.addr)
	c := exec.Command(a.psql, "-X", "-A", "-F", "|", "-P", "footer=off", "-h", host, "-p", port, "-U", user, "-d", "pgshield", "-c", cmd)
	c.Env = append(os.Environ(), "PGPASSWORD="+pw, "PGCONNECT_TIMEOUT=10")
	out, err := c.CombinedOutput()
	return string(out), err
}

// table runs cmd as the admin and returns its rows as maps by column.
func (a adminConsole) table(cmd string) []map[string]string {
	a.t.Helper()
	out, err := a.run("admin", "secret", cmd)
	if err != nil {
		a.t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	var rows []map[string]string
	var header []string
	for _, l := range lines {
		if strings.HasPrefix(l, "NOTICE:") {
			continue
		}
		if header == nil {
			header = strings.Split(l, "|")
			continue
		}
		vals := strings.Split(l, "|")
		row := map[string]string{}
		for i, h := range header {
			if i < len(vals) {
				row[h] = vals[i]
			}
		}
		rows = append(rows, row)
	}
	if header == nil {
		a.t.Fatalf("%s: no header in %q", cmd, out)
	}
	return rows
}

// The admin console of the binary, on real PostgreSQL with psql: every
// command answers a table, values follow the load, slow queries, long
// transactions, blocking and alerts show up, and the control commands act.
func TestAdminConsoleEndToEnd(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql is not installed")
	}
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	bin := buildBinary(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pgshield.yaml")
	addr, adminAddr := freeAddr(t), freeAddr(t)
	cfg := fmt.Sprintf(`listen: %s
admin_listen: %s
metrics_listen: 127.0.0.1:0
slow_query_threshold: 200ms
long_transaction_threshold: 1s
users:
  - {name: app, password: one}
  - {name: admin, password: secret, admin: true}
databases:
  app: {primary: %s, dbname: postgres, user: %s, password: %s, server_tls: {mode: disable}}
services:
  api: {max_connections: 4, min_connections: 1}
`, addr, adminAddr, pg.Addr(), pg.User, pg.Password)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startServe(t, bin, cfgPath)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	waitFor(t, "the proxy to listen", func() bool { return query(ctx, addr, "app", "one") == nil })
	a := adminConsole{t: t, psql: psql, addr: adminAddr}

	// Every command prints a table with its first columns.
	for cmd, first := range map[string]string{
		"SHOW POOLS": "service|database|backend|mode|cl_active", "show clients;": "id|user|database",
		"SHOW SERVERS": "service|database|backend|pid|state", "SHOW BACKENDS": "database|backend|role",
		"SHOW STATS": "service|database|queries|transactions", "SHOW CONFIG": "key|value", "SHOW VERSION": "version",
		"SHOW QUERIES": "fingerprint|calls|rows", "SHOW SLOW_QUERIES": "at|duration_ms", "SHOW TRANSACTIONS": "client_id|user",
		"SHOW PINNED": "client_id|user", "SHOW HEALTH": "database|total|active", "SHOW LOCKS": "database|blocked_pid",
		"SHOW TABLES": "database|schema|table|seq_scan", "SHOW INDEXES": "database|schema|table|index", "SHOW ALERTS": "severity|alert|subject",
		"SHOW HELP": "command|description",
	} {
		out, err := a.run("admin", "secret", cmd)
		if err != nil || !strings.Contains(out, first) {
			t.Errorf("%s: %v\n%s\nwant a header starting %s", cmd, err, out, first)
		}
	}
	if out, err := a.run("admin", "secret", "SHOW NONSENSE"); err == nil || !strings.Contains(out, "unknown SHOW item") {
		t.Errorf("SHOW NONSENSE: %v %s", err, out)
	}
	if out, err := a.run("app", "one", "SHOW POOLS"); err == nil || !strings.Contains(out, "not a pgshield admin") {
		t.Errorf("non-admin: %v %s", err, out)
	}

	// SHOW CONFIG shows the values in force, defaults filled in.
	config := map[string]string{}
	for _, r := range a.table("SHOW CONFIG") {
		config[r["key"]] = r["value"]
	}
	for k, want := range map[string]string{
		"parse_cache_size": "10000", "query_stats_size": "5000", "max_retries": "3", "pool.wait_timeout": "30s",
		"routing.max_replica_lag": "10s", "routing.failover": "none", "services.analytics.min_connections": "2",
		"services.analytics.min_on_demand": "true", "services.api.min_on_demand": "false",
	} {
		if config[k] != want {
			t.Errorf("SHOW CONFIG %s = %q, want %q (the value in force)", k, config[k], want)
		}
	}
	// READMIT of a backend that is in service is refused with 55000.
	host, port, _ := net.SplitHostPort(adminAddr)
	ac, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=admin password=secret dbname=pgshield sslmode=disable", host, port))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ac.Exec(ctx, "READMIT app "+pg.Addr()).ReadAll()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "55000" {
		t.Errorf("READMIT of a backend that is not fenced: %v, want SQLSTATE 55000", err)
	}
	_ = ac.Close(ctx)

	conn := func() *pgx.Conn { return connectApp(ctx, t, addr) }
	apiStat := func(col string) int {
		for _, r := range a.table("SHOW STATS") {
			if r["service"] == "api" {
				n, _ := strconv.Atoi(r[col])
				return n
			}
		}
		return 0
	}
	before := apiStat("queries")
	w := conn()
	for _, sql := range []string{"drop table if exists acct", "create table acct (id int primary key, v int)", "insert into acct values (1, 0)", "select pg_sleep(0.3)"} {
		if _, err := w.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if after := apiStat("queries"); after < before+4 {
		t.Errorf("SHOW STATS queries went from %d to %d after 4 statements", before, after)
	}
	slow := a.table("SHOW SLOW_QUERIES")
	if len(slow) == 0 || !strings.Contains(slow[0]["query"], "pg_sleep($1)") {
		t.Errorf("SHOW SLOW_QUERIES: %v", slow)
	}

	// A transaction holding a row lock, and a client blocked on it.
	if _, err := w.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Exec(ctx, "update acct set v = 1 where id = 1"); err != nil {
		t.Fatal(err)
	}
	activeServers := func() int {
		n := 0
		for _, r := range a.table("SHOW POOLS") {
			if r["service"] == "api" {
				v, _ := strconv.Atoi(r["sv_active"])
				n += v
			}
		}
		return n
	}
	if n := activeServers(); n != 1 {
		t.Errorf("SHOW POOLS sv_active = %d with one transaction open, want 1", n)
	}
	blocked := conn()
	done := make(chan error, 1)
	go func() {
		_, err := blocked.Exec(ctx, "update acct set v = 2 where id = 1")
		done <- err
	}()
	waitFor(t, "SHOW LOCKS to show the blocked update", func() bool {
		for _, r := range a.table("SHOW LOCKS") {
			if strings.Contains(r["blocked_statement"], "update acct") && strings.Contains(r["blocking_statement"], "update acct") {
				return true
			}
		}
		return false
	})
	waitFor(t, "SHOW TRANSACTIONS to flag the transaction", func() bool {
		for _, r := range a.table("SHOW TRANSACTIONS") {
			if r["tables"] == "acct" && r["long"] == "t" && r["rows"] == "1" {
				return true
			}
		}
		return false
	})
	waitFor(t, "SHOW ALERTS to report it", func() bool {
		for _, r := range a.table("SHOW ALERTS") {
			if r["alert"] == "DatabaseLongTransactions" {
				return true
			}
		}
		return false
	})
	if _, err := w.Exec(ctx, "commit"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the servers to go back", func() bool { return activeServers() == 0 })

	// Control: SET, KILL, PAUSE and RESUME.
	a.table("SET slow_query_threshold = '2s'")
	found := false
	for _, r := range a.table("SHOW CONFIG") {
		if r["key"] == "slow_query_threshold" {
			found = r["value"] == "2s"
		}
	}
	if !found {
		t.Error("SET slow_query_threshold did not show in SHOW CONFIG")
	}
	// disable_stats at run time: statements are no longer counted.
	a.table("SET disable_stats = on")
	before = apiStat("queries")
	for i := 0; i < 3; i++ {
		if _, err := w.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	if after := apiStat("queries"); after != before {
		t.Errorf("with SET disable_stats = on, SHOW STATS queries went from %d to %d", before, after)
	}
	a.table("SET disable_stats = off")
	if _, err := w.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "statements counted again after SET disable_stats = off", func() bool { return apiStat("queries") > before })
	var victim string
	for _, r := range a.table("SHOW CLIENTS") {
		victim = r["id"]
	}
	a.table("KILL " + victim)
	if _, err := blocked.Exec(ctx, "select 1"); err == nil {
		t.Error("the killed client still runs statements")
	}
	a.table("PAUSE app")
	held := make(chan error, 1)
	go func() { _, err := w.Exec(ctx, "select 1"); held <- err }()
	select {
	case err := <-held:
		t.Fatalf("a statement ran while paused: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	a.table("RESUME")
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	a.table("RELOAD")
}
