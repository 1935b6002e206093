package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	miniogo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/pgshield/pgshield/internal/minio"
	"github.com/pgshield/pgshield/internal/pgcluster"
)

// Backups to MinIO, driven from the console of the real binary: BACKUP
// FULL; rows A, a timestamp, rows B; RESTORE LATEST TO TIMESTAMP gives a
// cluster with A and not B, RESTORE LATEST one with both; the stored
// objects are neither zstd nor tar. Then pgshield is killed during a
// full backup: after the restart the job shows failed, the partial
// backup is not listed, and the next backup succeeds and restores.
func TestBackupsToMinIO(t *testing.T) {
	if testing.Short() {
		t.Skip("runs MinIO, backups and restores")
	}
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	s3 := minio.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := pg.CreateDatabase(ctx, "shop", pg.User); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "shop", "CREATE TABLE t (id int primary key, what text)"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BACKUP_ENCRYPTION_KEY", "the backup key of the test")
	pgBin, err := pgcluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	// restore_command runs pgshield wal-fetch as the server's OS user,
	// which reads the configuration and runs the binary: both must be
	// within its reach.
	dir := t.TempDir()
	openUp(t, dir)
	addr, admin := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(dir, "pgshield.yaml")
	cfg := appConfigHead(addr, admin, "shop", "shop", pg) + fmt.Sprintf(`backup:
  repository:
    s3: {endpoint: %s, bucket: backups, access_key: %s, secret_key: %s}
  wal: true
  pg_bin: %s
  schedule: {full: "off", incremental: "off", verify: "off", retention: "off"}
`, s3.Endpoint, s3.AccessKey, s3.SecretKey, pgBin)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t)
	openUp(t, filepath.Dir(bin))
	cmd, logs, exited := startServe(t, bin, cfgPath)
	waitForLong(t, time.Minute, "the proxy to listen", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("pgshield exited: %v\n%s", err, logs.String())
		default:
		}
		return queryDB(ctx, addr, "app", "app", "shop") == nil
	})
	con := connectAs(ctx, t, admin, "admin", "admin", "pgshield")
	simple := pgx.QueryExecModeSimpleProtocol

	jobDone := func(c *pgx.Conn, id int64) (state, errText string) {
		t.Helper()
		waitForLong(t, 5*time.Minute, fmt.Sprintf("job %d", id), func() bool {
			var e *string
			if err := c.QueryRow(ctx, fmt.Sprintf("SHOW JOB %d", id), simple).Scan(nil, nil, nil, &state, nil, nil, nil, nil, nil, nil, nil, nil, &e); err != nil {
				t.Fatalf("SHOW JOB %d: %v", id, err)
			}
			if e != nil {
				errText = *e
			}
			return state != "running" && state != "queued"
		})
		return state, errText
	}
	backupFull := func(c *pgx.Conn) int64 {
		t.Helper()
		var id int64
		if err := c.QueryRow(ctx, "BACKUP FULL", simple).Scan(&id); err != nil {
			t.Fatalf("BACKUP FULL: %v\n%s", err, logs.String())
		}
		return id
	}
	if state, e := jobDone(con, backupFull(con)); state != "succeeded" {
		t.Fatalf("the full backup: %s %s\n%s", state, e, logs.String())
	}
	if err := pg.Exec(ctx, "shop", "INSERT INTO t VALUES (1, 'A')"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the timestamp between A and B is a clock reading, not a race
	var between time.Time
	direct, err := pgx.Connect(ctx, pg.ConnString("shop"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	if err := direct.QueryRow(ctx, "SELECT now()").Scan(&between); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := pg.Exec(ctx, "shop", "INSERT INTO t VALUES (2, 'B')"); err != nil {
		t.Fatal(err)
	}
	// The WAL of B reaches the repository.
	if _, err := direct.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
		t.Fatal(err)
	}
	waitForLong(t, 2*time.Minute, "the switched segment to be archived", func() bool {
		var lag *string
		var running bool
		if err := con.QueryRow(ctx, "SHOW WAL", simple).Scan(&running, nil, nil, &lag, nil); err != nil {
			t.Fatalf("SHOW WAL: %v", err)
		}
		return running && lag != nil && (*lag == "0s" || strings.HasSuffix(*lag, "ms"))
	})

	restored := func(name, target string) []string {
		t.Helper()
		into := filepath.Join(t.TempDir(), name)
		port := freePort(t)
		sql := fmt.Sprintf("RESTORE LATEST %s INTO '%s' PORT %d", target, into, port)
		if _, err := con.Exec(ctx, sql, simple); err != nil {
			t.Fatalf("%s: %v\n%s", sql, err, logs.String())
		}
		c, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=shop sslmode=disable", port, pg.User, pg.Password))
		if err != nil {
			t.Fatalf("the restored cluster: %v", err)
		}
		defer c.Close(context.Background())
		defer stopRestored(t, into)
		var what []string
		rows, err := c.Query(ctx, "SELECT what FROM t ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var w string
			if err := rows.Scan(&w); err != nil {
				t.Fatal(err)
			}
			what = append(what, w)
		}
		return what
	}
	if got := restored("pitr", "TO TIMESTAMP '"+between.UTC().Format("2006-01-02 15:04:05.999999+00")+"'"); strings.Join(got, ",") != "A" {
		t.Errorf("restored to the timestamp between A and B: %v, want [A]", got)
	}
	if got := restored("latest", ""); strings.Join(got, ",") != "A,B" {
		t.Errorf("restored LATEST: %v, want [A B]", got)
	}

	// The objects in the bucket are neither zstd nor tar without the key.
	mc, err := miniogo.New(s3.Endpoint, &miniogo.Options{Creds: credentials.NewStaticV4(s3.AccessKey, s3.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for obj := range mc.ListObjects(ctx, "backups", miniogo.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		o, err := mc.GetObject(ctx, "backups", obj.Key, miniogo.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		head := make([]byte, 512)
		k, _ := io.ReadFull(o, head)
		o.Close()
		head = head[:k]
		if bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}) || (len(head) >= 262 && string(head[257:262]) == "ustar") || bytes.Contains(head, []byte("PostgreSQL")) {
			t.Errorf("object %s is readable without the key", obj.Key)
		}
		n++
	}
	if n < 3 {
		t.Errorf("%d objects in the bucket", n)
	}

	// Killed during a full backup: the job shows failed after the restart,
	// the partial backup is not listed, the next backup restores.
	if err := pg.Exec(ctx, "shop", "CREATE TABLE filler AS SELECT g, md5(g::text) || repeat('x', 200) AS pad FROM generate_series(1, 400000) g"); err != nil {
		t.Fatal(err)
	}
	before := countRows(ctx, t, con, "SHOW BACKUPS")
	killed := backupFull(con)
	waitForLong(t, 2*time.Minute, "the backup to be under way", func() bool {
		var done *int64
		if err := con.QueryRow(ctx, fmt.Sprintf("SHOW JOB %d", killed), simple).Scan(nil, nil, nil, nil, &done, nil, nil, nil, nil, nil, nil, nil, nil); err != nil {
			return false
		}
		return done != nil && *done > 1<<20
	})
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	exited <- nil
	_, logs2, _ := startServe(t, bin, cfgPath)
	waitFor(t, "the restarted proxy to listen", func() bool { return queryDB(ctx, addr, "app", "app", "shop") == nil })
	con = connectAs(ctx, t, admin, "admin", "admin", "pgshield")
	var state string
	var e *string
	if err := con.QueryRow(ctx, fmt.Sprintf("SHOW JOB %d", killed), simple).Scan(nil, nil, nil, &state, nil, nil, nil, nil, nil, nil, nil, nil, &e); err != nil {
		t.Fatalf("SHOW JOB %d after the restart: %v", killed, err)
	}
	if state != "failed" || e == nil || !strings.Contains(*e, "stopped") {
		t.Errorf("the killed backup's job: %s %v, want failed", state, e)
	}
	if after := countRows(ctx, t, con, "SHOW BACKUPS"); after != before {
		t.Errorf("%d backups listed after the killed one, want %d", after, before)
	}
	if st, e := jobDone(con, backupFull(con)); st != "succeeded" {
		t.Fatalf("the backup after the kill: %s %s\n%s", st, e, logs2.String())
	}
	if got := restored("after-kill", ""); strings.Join(got, ",") != "A,B" {
		t.Errorf("restored the backup after the kill: %v, want [A B]", got)
	}
}

// countRows counts what a console command answers.
func countRows(ctx context.Context, t *testing.T, c *pgx.Conn, sql string) int {
	t.Helper()
	rows, err := c.Query(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// freePort is a free loopback port.
func freePort(t *testing.T) int {
	t.Helper()
	a := freeAddr(t)
	var port int
	if _, err := fmt.Sscanf(a[strings.LastIndexByte(a, ':')+1:], "%d", &port); err != nil {
		t.Fatal(err)
	}
	return port
}

// stopRestored stops a cluster RESTORE started in dir.
func stopRestored(t *testing.T, dir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pgcluster.StopDataDir(ctx, dir); err != nil {
		t.Logf("stopping the restored cluster: %v", err)
	}
}

// openUp lets every user reach dir: it and its parents up to the
// temporary directory become traversable and readable.
func openUp(t *testing.T, dir string) {
	t.Helper()
	for d := dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}
