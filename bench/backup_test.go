package main

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
)

// The scenario's pgshield configuration loads, as serve reads it and as
// wal-fetch does (the backup section only), with what the scenario needs:
// a local repository, WAL archiving, no schedule, the superuser as the
// backup user.
func TestBackupShieldConfig(t *testing.T) {
	dir := t.TempDir()
	repo, staging, pgBin := filepath.Join(dir, "repo"), filepath.Join(dir, "staging"), filepath.Join(dir, "pg bin")
	path := filepath.Join(dir, "pgshield.yaml")
	if err := os.WriteFile(path, []byte(withListeners(7001, 7002, 7003, shieldBackupBody("127.0.0.1:5432", repo, staging, pgBin))), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	bk := f.Backup
	if !bk.Enabled() || bk.Repository.Dir != repo || bk.Repository.S3 != nil || !bk.WAL || bk.PGBin != pgBin || bk.User != "postgres" || bk.Password != "postgres" {
		t.Errorf("backup section %+v", bk)
	}
	if s := bk.Schedule; s.Full != "off" || s.Incremental != "off" || s.Verify != "off" || s.Retention != "off" {
		t.Errorf("schedule %+v, want all off", s)
	}
	if got := f.BackupStagingDir(); got != staging {
		t.Errorf("staging directory %s, want %s", got, staging)
	}
	if db := f.BackupDatabase(); db != bkStanza {
		t.Errorf("backed-up database %q, want %q (the cluster's name in the repository)", db, bkStanza)
	}
	if _, err := config.LoadBackup(path); err != nil {
		t.Errorf("wal-fetch's reading: %v", err)
	}
}

// pgBackRest's configuration: every key once, in its section, with the
// settings the comparison rests on.
func TestBackRestConfig(t *testing.T) {
	c := backRestConfig{repo: "/b/repo", log: "/b/log", lock: "/b/lock", dataDir: "/p/data", socketDir: "/p", port: 5433, processMax: 2, passphrase: "pass"}
	want := map[string]map[string]string{
		"global": {
			"repo1-path": "/b/repo", "repo1-cipher-type": "aes-256-cbc", "repo1-cipher-pass": "pass", "repo1-retention-full": "100",
			"compress-type": "zst", "compress-level": "3", "process-max": "2", "start-fast": "y",
			"log-path": "/b/log", "lock-path": "/b/lock", "log-level-console": "warn", "log-level-file": "info",
		},
		bkStanza: {"pg1-path": "/p/data", "pg1-port": "5433", "pg1-socket-path": "/p", "pg1-user": "postgres"},
	}
	got := map[string]map[string]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(c.text()))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			got[section] = map[string]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("line %q", line)
			}
			if _, dup := got[section][k]; dup {
				t.Errorf("[%s] %s twice", section, k)
			}
			got[section][k] = v
		}
	}
	for s, kv := range want {
		for k, v := range kv {
			if got[s][k] != v {
				t.Errorf("[%s] %s = %q, want %q", s, k, got[s][k], v)
			}
		}
		if len(got[s]) != len(kv) {
			t.Errorf("[%s] has %v, want %v", s, got[s], kv)
		}
	}
	if len(got) != len(want) {
		t.Errorf("sections %v", got)
	}
}

func TestArchiveCommand(t *testing.T) {
	if got, want := archiveCommand("/usr/bin/pgbackrest", "/b/pgbackrest.conf"), `'/usr/bin/pgbackrest' --config='/b/pgbackrest.conf' --stanza=bench archive-push %p`; got != want {
		t.Errorf("archive_command %s, want %s", got, want)
	}
	if got, want := archiveCommand("pgbackrest", "/it's/a.conf"), `'pgbackrest' --config='/it'\''s/a.conf' --stanza=bench archive-push %p`; got != want {
		t.Errorf("archive_command %s, want %s", got, want)
	}
	if got, want := sqlQuote("a 'b' %p"), `'a ''b'' %p'`; got != want {
		t.Errorf("sqlQuote %s, want %s", got, want)
	}
}

// Lines as pg_waldump -r Transaction writes them with TZ=UTC.
func TestParseWALCommit(t *testing.T) {
	line := "rmgr: Transaction len (rec/tot):     66/    66, tx:        723, lsn: 0/015006D0, prev 0/01500630, desc: COMMIT 2026-12-03 13:18:34.423701 UTC; inval msgs: snapshot 2396"
	got, ok := parseWALCommit(line)
	if want := time.Date(2026, 12, 3, 13, 18, 34, 423701000, time.UTC); !ok || !got.Equal(want) {
		t.Errorf("parseWALCommit = %v %v, want %v", got, ok, want)
	}
	for _, l := range []string{
		"rmgr: Transaction len (rec/tot):     34/    34, tx:        724, lsn: 0/01500710, prev 0/015006D0, desc: ABORT 2026-12-03 13:18:34.5 UTC",
		"pg_waldump: error: error in WAL record at 0/15165D8: invalid record length at 0/1516770: wanted 24, got 0",
	} {
		if _, ok := parseWALCommit(l); ok {
			t.Errorf("parseWALCommit(%q) found a commit", l)
		}
	}
}

func TestCopySettings(t *testing.T) {
	s := copySettings(6001)
	for _, want := range []string{"\nport = 6001\n", "\nlisten_addresses = '127.0.0.1'\n", "\nunix_socket_directories = ''\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("copy settings lack %q:\n%s", want, s)
		}
	}
	if !strings.HasPrefix(s, "\n") {
		t.Error("the settings must start on a line of their own")
	}
}

// fakeBackups is a result with made-up figures.
func fakeBackups(rounds int) backupResult {
	kill := time.Date(2026, 5, 1, 12, 0, 20, 0, time.UTC)
	s := time.Second
	r := backupResult{
		opts: backupOptions{scale: 50, rounds: rounds, load: 20 * s}, pgVersion: "15.18", backRestVersion: "pgBackRest 2.45", processMax: 2,
		dbBytes: 760e6, pgBytes: 900e6, dir: "/scratch/bench-123",
		tools: []*bkTool{
			{name: toolShield, backups: []time.Duration{20 * s}, restores: []time.Duration{30 * s}, repoBytes: 120e6, backupBytes: 100e6},
			{name: toolBackRest, backups: []time.Duration{40 * s}, restores: []time.Duration{20 * s}, repoBytes: 150e6, backupBytes: 125e6},
		},
		acked: 600000, loadStart: kill.Add(-20 * s), killAt: kill, lastCommit: kill.Add(5 * time.Millisecond), lastFromWAL: true,
		archived: "00000001000000000000002A", partial: "00000001000000000000002B.partial",
		rpo: []bkRPO{
			{tool: toolShield, restore: 31 * s, missing: 12000, lastPresent: kill.Add(-1495 * time.Millisecond)},
			{tool: toolBackRest, restore: 21 * s, missing: 0, lastPresent: kill},
		},
	}
	return r
}

func TestBackupMarkdown(t *testing.T) {
	md := fakeBackups(1).markdown()
	for _, want := range []string{
		"## Backups: pgshield and pgBackRest",
		"| tool | full backup s | restore s | repository MB | of which the backup MB |",
		"| pgshield | 20.0 | 30.0 | 120.0 | 100.0 |",
		"| pgBackRest | 40.0 | 20.0 | 150.0 | 125.0 |",
		"| pgshield/pgBackRest | 0.50 | 1.50 | 0.80 | 0.80 |",
		"`pgbench -i -s 50`", "760.0 MB in its databases", "the databases are 8 times pgshield's backup", "repo1-cipher-type=aes-256-cbc", "pgBackRest 2.45", "process-max=2",
		"| pgshield | 600000 | 12000 | 1.50 | 31.0 |",
		"| pgBackRest | 600000 | 0 | 0 | 21.0 |",
		"it was 5ms after the kill began",
		"00000001000000000000002B.partial", "archive_interval` (10 s by default)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "Failures") {
		t.Errorf("failures without one:\n%s", md)
	}
}

// Several rounds give the median and the range; a tool that failed has
// n/a and its failure listed, without the bench's directory; a restore
// with none of the load's rows says so.
func TestBackupMarkdownFailuresAndRounds(t *testing.T) {
	r := fakeBackups(3)
	s := time.Second
	r.tools[0].backups = []time.Duration{22 * s, 20 * s, 30 * s}
	r.tools[0].restores = []time.Duration{30 * s, 31 * s, 29 * s}
	r.tools[1] = &bkTool{name: toolBackRest, err: errors.New("pgBackRest: not installed (Debian: apt-get install pgbackrest)")}
	r.rpo = []bkRPO{
		{tool: toolShield, restore: 31 * s, missing: 600000},
		{tool: toolBackRest, err: errors.New("pgBackRest: restore into /scratch/bench-123/restores/copy-4:\nfailed")},
	}
	r.lastFromWAL, r.walNote, r.lastCommit = false, "pg_waldump found no commit", r.killAt
	md := r.markdown()
	for _, want := range []string{
		"| pgshield | 22.0 (20.0–30.0) | 30.0 (29.0–31.0) | 120.0 | 100.0 |",
		"| pgBackRest | n/a | n/a | n/a | n/a |",
		"| pgshield/pgBackRest | n/a | n/a | n/a | n/a |",
		"| pgshield | 600000 | 600000 | ≥ 20.0 (none of the load's commits) | 31.0 |",
		"| pgBackRest | 600000 | failed | failed | n/a |",
		"the time the kill began stands for the last commit",
		"Failures:",
		"- pgBackRest: not installed (Debian: apt-get install pgbackrest)",
		"- pgBackRest: restore into <bench dir>/restores/copy-4: failed",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, r.dir) {
		t.Errorf("the bench's directory in the section:\n%s", md)
	}
	if err := r.failed(); err == nil {
		t.Error("failed() = nil with failures")
	}
}

func TestBackupMarkdownBeforeAnyBackup(t *testing.T) {
	r := backupResult{dir: "/scratch/d", err: errors.New("pgbench -i: /scratch/d/x: exit status 1")}
	md := r.markdown()
	if !strings.Contains(md, "The backup scenario failed before any backup: pgbench -i: <bench dir>/x: exit status 1") || strings.Contains(md, "| tool |") {
		t.Errorf("markdown:\n%s", md)
	}
}

func TestNewestDirBytes(t *testing.T) {
	dir := t.TempDir()
	for name, size := range map[string]int{"20260501-120000F/a": 10, "20260501-130000F/b/c": 7, "20260501-130000F/d": 3, "backup.history/x": 100} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := newestDirBytes(dir); got != 10 {
		t.Errorf("newest backup %d bytes, want 10", got)
	}
	if got := dirBytes(dir); got != 120 {
		t.Errorf("all %d bytes, want 120", got)
	}
	if got := newestDirBytes(filepath.Join(dir, "none")); got != 0 {
		t.Errorf("no directory: %d", got)
	}
}
