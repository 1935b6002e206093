package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/internal/pgcluster"
	"github.com/pgshield/pgshield/policy"
)

// firewallPolicy is the policy file of TestFirewallLearnSaveEnforce in
// mode (learn, enforce).
func firewallPolicy(mode string) string {
	return fmt.Sprintf(`databases:
  app:
    tables:
      fw_items:
        columns:
          code: {pattern: '^[a-z]+$', max_length: 10}
firewall:
  api: {mode: %s, allow_file: allow-api.txt, deny: [DROP]}
`, mode)
}

// The firewall from the operator's side, with the binary, PostgreSQL and
// psql: the api service learns its statements, SHOW FIREWALL lists them
// normalized, FIREWALL SAVE writes them to the allow_file, and after the
// policy says mode enforce and RELOAD a learned statement runs (with other
// literals) and an unseen one is refused with 42501. SHOW POLICY counts
// the rows judged and a refusal.
func TestFirewallLearnSaveEnforce(t *testing.T) {
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("psql is not installed")
	}
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	bin := buildBinary(t)
	dir := t.TempDir()
	cfgPath, policyPath, allowPath := filepath.Join(dir, "pgshield.yaml"), filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "allow-api.txt")
	addr, adminAddr := freeAddr(t), freeAddr(t)
	cfg := fmt.Sprintf(`listen: %s
admin_listen: %s
metrics_listen: 127.0.0.1:0
users:
  - {name: app, password: one, service: api}
  - {name: owner, password: two, service: analytics}
  - {name: admin, password: secret, admin: true}
databases:
  app: {primary: %s, dbname: postgres, user: %s, password: %s, server_tls: {mode: disable}}
services:
  api: {max_connections: 4, min_connections: 1}
policy_file: policy.yaml
`, addr, adminAddr, pg.Addr(), pg.User, pg.Password)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(policyPath, []byte(firewallPolicy("learn")), 0o600); err != nil {
		t.Fatal(err)
	}
	startServe(t, bin, cfgPath)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	waitFor(t, "the proxy to listen", func() bool { return query(ctx, addr, "owner", "two") == nil })
	a := adminConsole{t: t, psql: psql, addr: adminAddr}

	// The table, created by a service the firewall leaves alone.
	host, port, _ := net.SplitHostPort(addr)
	owner, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=owner password=two dbname=app sslmode=disable", host, port))
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(ctx)
	if _, err := owner.Exec(ctx, "drop table if exists fw_items; create table fw_items (id int primary key, code text)"); err != nil {
		t.Fatal(err)
	}

	api := connectApp(ctx, t, addr)
	learned := []string{
		"insert into fw_items (id, code) values (1, 'abc')",
		"select code from fw_items where id = 1",
		"update fw_items set code = 'xyz' where id = 1",
	}
	for _, sql := range learned {
		if _, err := api.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// A row the column rule refuses (the same statement shape as the
	// learned insert).
	_, err = api.Exec(ctx, "insert into fw_items (id, code) values (2, 'NOT OK')")
	if code := pgCodeOf(err); code != "23514" || !strings.Contains(err.Error(), "fw_items_code_pattern") {
		t.Fatalf("a bad code: %v, want 23514 naming fw_items_code_pattern", err)
	}

	policyRows := map[string]map[string]string{}
	for _, r := range a.table("SHOW POLICY") {
		policyRows[r["rule"]] = r
	}
	if r := policyRows["fw_items_code_pattern"]; r == nil || r["database"] != "app" || r["table"] != "fw_items" || r["column"] != "code" ||
		r["kind"] != "pattern" || r["services"] != "" || r["refusals"] != "1" {
		t.Errorf("SHOW POLICY fw_items_code_pattern: %v, want one refusal", r)
	} else if n, _ := strconv.Atoi(r["checks"]); n < 3 {
		t.Errorf("SHOW POLICY checks = %s after 3 rows written, want at least 3", r["checks"])
	}
	if r := policyRows["fw_items_code_length"]; r == nil || r["kind"] != "length" || r["refusals"] != "0" {
		t.Errorf("SHOW POLICY fw_items_code_length: %v, want no refusal", r)
	}

	// SHOW FIREWALL: the learned statements, normalized.
	fw := a.table("SHOW FIREWALL")
	var queries []string
	for _, r := range fw {
		if r["service"] != "api" || r["mode"] != "learn" || r["source"] != "learned" || len(r["fingerprint"]) != 16 || r["rules"] != "deny: DROP" {
			t.Errorf("SHOW FIREWALL row %v", r)
		}
		for _, literal := range []string{"abc", "xyz", "NOT OK"} {
			if strings.Contains(r["query"], literal) {
				t.Errorf("SHOW FIREWALL shows a literal: %q", r["query"])
			}
		}
		queries = append(queries, r["query"])
	}
	for _, want := range []string{
		"insert into fw_items (id, code) values ($1, $2)",
		"select code from fw_items where id = $1",
		"update fw_items set code = $1 where id = $2",
	} {
		if !slices.Contains(queries, want) {
			t.Errorf("SHOW FIREWALL has no query %q: %q", want, queries)
		}
	}

	// FIREWALL SAVE writes them, each under its normalized text.
	out, err := a.run("admin", "secret", "FIREWALL SAVE api")
	if err != nil || !strings.Contains(out, "3 fingerprints written to "+allowPath) || !strings.Contains(out, "mode: enforce") {
		t.Fatalf("FIREWALL SAVE api: %v\n%s", err, out)
	}
	saved, err := os.ReadFile(allowPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the allow file:\n%s", saved)
	lines := strings.Split(string(saved), "\n")
	fps := 0
	for i, l := range lines {
		if len(l) == 16 && !strings.HasPrefix(l, "#") {
			fps++
			if i == 0 || !strings.HasPrefix(lines[i-1], "# ") || !strings.Contains(lines[i-1], "$1") {
				t.Errorf("fingerprint %s without its normalized text above it", l)
			}
		}
	}
	if fps != 3 || strings.Contains(string(saved), "abc") {
		t.Errorf("the allow file lists %d fingerprints, want 3 and no literal:\n%s", fps, saved)
	}
	// Config, policy, allow list and the jobs file: the temporary file was
	// renamed.
	if entries, _ := os.ReadDir(dir); len(entries) != 4 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("files beside the allow list: %q", names)
	}

	// Mode enforce: the allow list alone runs.
	if err := os.WriteFile(policyPath, []byte(firewallPolicy("enforce")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := a.run("admin", "secret", "RELOAD"); err != nil {
		t.Fatalf("RELOAD: %v\n%s", err, out)
	}
	waitFor(t, "SHOW FIREWALL to show mode enforce", func() bool {
		rows := a.table("SHOW FIREWALL")
		return len(rows) == 3 && rows[0]["mode"] == "enforce" && rows[0]["source"] == "allowed"
	})
	var code string
	if err := api.QueryRow(ctx, "select code from fw_items where id = 2").Scan(&code); err != nil && err != pgx.ErrNoRows {
		t.Errorf("a learned statement with another literal: %v", err)
	}
	if _, err := api.Exec(ctx, "update fw_items set code = 'def' where id = 1"); err != nil {
		t.Errorf("a learned update: %v", err)
	}
	_, err = api.Exec(ctx, "select count(*) from fw_items")
	if code := pgCodeOf(err); code != "42501" || !strings.Contains(err.Error(), "allow") {
		t.Errorf("an unseen statement: %v, want 42501 from the allow list", err)
	}

	// FIREWALL SAVE now: not in learn mode; of a service nobody has.
	c := dialConsole(ctx, t, adminAddr)
	for cmd, want := range map[string]string{"FIREWALL SAVE api": "55000", "FIREWALL SAVE nope": "22023", "FIREWALL SAVE": "55000"} {
		if code, msg := consoleErr(c.exec(ctx, cmd)); code != want {
			t.Errorf("%s: %s %s, want SQLSTATE %s", cmd, code, msg, want)
		}
	}
}

// The allow_file of a firewall: read when the policy loads (relative to
// the policy file), an error when missing in mode enforce, merged when
// FIREWALL SAVE writes it again.
func TestAllowFileLoadAndSave(t *testing.T) {
	dir := t.TempDir()
	policyPath := filepath.Join(dir, "policy.yaml")
	write := func(path, text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(policyPath, "firewall:\n  api: {mode: learn, allow_file: allow-api.txt}\n")
	p, err := config.LoadPolicy(policyPath)
	if err != nil {
		t.Fatalf("learn mode, no allow file yet: %v", err)
	}
	if got := p.Firewall().Services()[0].AllowFile; got != filepath.Join(dir, "allow-api.txt") {
		t.Errorf("AllowFile = %q, want it beside the policy file", got)
	}

	write(policyPath, "firewall:\n  api: {mode: enforce, allow_file: allow-api.txt}\n")
	if _, err := config.LoadPolicy(policyPath); err == nil || !strings.Contains(err.Error(), "firewall.api.allow_file") ||
		!strings.Contains(err.Error(), "FIREWALL SAVE") {
		t.Errorf("mode enforce without its allow file: %v", err)
	}

	allowPath := filepath.Join(dir, "allow-api.txt")
	write(allowPath, "# header\n\n# SELECT $1\n00000000000000AA\nnot-a-fingerprint\n")
	if _, err := config.LoadPolicy(policyPath); err == nil || !strings.Contains(err.Error(), "allow-api.txt:5:") {
		t.Errorf("a bad line: %v, want its line number", err)
	}

	write(allowPath, "# header\n\n# SELECT $1\n00000000000000AA\n")
	total, err := config.SaveAllowFile(allowPath, "api", []policy.FingerprintInfo{
		{Fingerprint: "00000000000000aa", Query: "SELECT $2"},
		{Fingerprint: "00000000000000bb", Query: "SELECT *\n  FROM t WHERE id = $1"},
		{Fingerprint: "00000000000000cc"},
	})
	if err != nil || total != 3 {
		t.Fatalf("SaveAllowFile: %d, %v; want 3", total, err)
	}
	entries, err := config.ReadAllowFile(allowPath)
	if err != nil {
		t.Fatal(err)
	}
	want := []policy.FingerprintInfo{
		{Fingerprint: "00000000000000aa", Query: "SELECT $1", Allowed: true},
		{Fingerprint: "00000000000000bb", Query: "SELECT * FROM t WHERE id = $1", Allowed: true},
		{Fingerprint: "00000000000000cc", Allowed: true},
	}
	if !slices.Equal(entries, want) {
		t.Errorf("after a save:\n got %+v\nwant %+v", entries, want)
	}
	// A text learned later replaces "not known".
	if _, err := config.SaveAllowFile(allowPath, "api", []policy.FingerprintInfo{{Fingerprint: "00000000000000cc", Query: "SELECT 1"}}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := config.ReadAllowFile(allowPath); len(entries) != 3 || entries[2].Query != "SELECT 1" {
		t.Errorf("after a second save: %+v", entries)
	}
	p, err = config.LoadPolicy(policyPath)
	if err != nil {
		t.Fatalf("mode enforce with its allow file: %v", err)
	}
	if got := p.Firewall().Services()[0].Allowed; got != 3 {
		t.Errorf("%d fingerprints allowed, want the file's 3", got)
	}
}
