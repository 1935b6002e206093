package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/internal/example"
	"github.com/pgshield/pgshield/internal/pgcluster"
)

// reencryptRows is how many leads the kill test re-encrypts.
const reencryptRows = 100_000

// ROTATE KEY, then REENCRYPT leads over 100,000 rows with pgshield killed
// (SIGKILL) halfway and started again: the job resumes where it was, not
// from the start, and completes; every row decrypts through pgshield; no
// row is left under the old keys; RETIRE KEY then succeeds.
func TestReencryptSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("writes and re-encrypts 100,000 rows")
	}
	pg := pgcluster.StartForTest(t, pgcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	if err := pg.CreateDatabase(ctx, "encapp", pg.User); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "encapp", example.Schema()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Setenv(crypto.EnvKey, "the master key of the kill test")
	t.Setenv(crypto.EnvSalt, "its salt")
	ks, err := crypto.EnvKeySourceFrom(os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.Save(ctx, filepath.Join(dir, "keys.json"), ks); err != nil {
		t.Fatal(err)
	}
	old := keys.Keys()
	addr, admin := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(dir, "pgshield.yaml")
	cfg := appConfigHead(addr, admin, "app", "encapp", pg) + `encryption:
  keyset_file: keys.json
  reencrypt: {batch_rows: 1000, pause: 100ms}
  columns:
    app:
      leads:
        email: {deterministic: true}
        ssn: {}
`
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t)
	cmd, logs, exited := startServe(t, bin, cfgPath)
	waitFor(t, "the proxy to listen", func() bool { return query(ctx, addr, "app", "app") == nil })

	// The leads, written through pgshield (a binary COPY), encrypted
	// under the first keys.
	app := connectAs(ctx, t, addr, "app", "app", "app")
	rows := make([][]any, reencryptRows)
	for i := range rows {
		rows[i] = []any{fmt.Sprintf("lead%06d@example.com", i), fmt.Sprintf("%03d-%02d-%04d", i%1000, i%100, i%10000)}
	}
	if n, err := app.CopyFrom(ctx, pgx.Identifier{"leads"}, []string{"email", "ssn"}, pgx.CopyFromRows(rows)); err != nil || n != reencryptRows {
		t.Fatalf("COPY of the leads: %d, %v", n, err)
	}
	_ = app.Close(ctx)

	con := connectAs(ctx, t, admin, "admin", "admin", "pgshield")
	if _, err := con.Exec(ctx, "ROTATE KEY", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("ROTATE KEY: %v", err)
	}
	if _, err := con.Exec(ctx, "REENCRYPT leads", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("REENCRYPT leads: %v", err)
	}
	direct, err := pgx.Connect(ctx, pg.ConnString("encapp"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	var runID int64 // the run progress reads
	progress := func() (lastPK, done int64, finished bool) {
		err := direct.QueryRow(ctx, "SELECT id, coalesce(last_pk, 0), rows_done, finished_at IS NOT NULL FROM pgshield_reencrypt ORDER BY id DESC LIMIT 1").
			Scan(&runID, &lastPK, &done, &finished)
		if err != nil {
			return 0, 0, false
		}
		return lastPK, done, finished
	}
	waitForLong(t, 4*time.Minute, "the re-encryption to reach half", func() bool {
		_, done, _ := progress()
		return done >= reencryptRows/2
	})
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	exited <- nil
	_ = con.Close(context.Background())
	lastPK, doneAtKill, finished := progress()
	killedRun := runID
	if finished || doneAtKill >= reencryptRows {
		t.Fatalf("the job finished before the kill (%d rows): the test proves nothing; slow it down", doneAtKill)
	}
	t.Logf("killed at %d rows done (last pk %d)", doneAtKill, lastPK)

	// Started again, pgshield resumes the job by itself.
	_, logs2, _ := startServe(t, bin, cfgPath)
	waitFor(t, "the restarted proxy to listen", func() bool { return query(ctx, addr, "app", "app") == nil })
	con = connectAs(ctx, t, admin, "admin", "admin", "pgshield")
	waitForLong(t, 5*time.Minute, "the resumed re-encryption to finish", func() bool {
		_, done, fin := progress()
		return fin && done == reencryptRows
	})
	// The run that finished is the one killed, carried on from its last
	// batch: the rows it rewrote after the restart are the rest.
	var rewritten int64
	if err := direct.QueryRow(ctx, "SELECT rows_rewritten FROM pgshield_reencrypt WHERE id = $1", killedRun).Scan(&rewritten); err != nil {
		t.Fatal(err)
	}
	if runID != killedRun || rewritten != reencryptRows {
		t.Errorf("the run that finished is %d (killed: %d), with %d rows rewritten: want the killed run resumed, %d rows in all",
			runID, killedRun, rewritten, reencryptRows)
	}
	// Every row decrypts through pgshield, under its original values.
	app = connectAs(ctx, t, addr, "app", "app", "app")
	var n int
	var bad int
	r, err := app.Query(ctx, "SELECT email, ssn FROM leads")
	if err != nil {
		t.Fatal(err)
	}
	for r.Next() {
		var email, ssn string
		if err := r.Scan(&email, &ssn); err != nil {
			t.Fatal(err)
		}
		var i int
		if _, err := fmt.Sscanf(email, "lead%06d@example.com", &i); err != nil || ssn != fmt.Sprintf("%03d-%02d-%04d", i%1000, i%100, i%10000) {
			bad++
		}
		n++
	}
	if err := r.Err(); err != nil {
		t.Fatalf("reading every lead through pgshield: %v", err)
	}
	if n != reencryptRows || bad != 0 {
		t.Errorf("%d leads read, %d with other values than written", n, bad)
	}
	// No row is under the old keys; they can be retired.
	for _, k := range old {
		var rowsUnder *int64
		kr, err := con.Query(ctx, "SHOW KEYS", pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			t.Fatal(err)
		}
		for kr.Next() {
			v, err := kr.Values()
			if err != nil {
				t.Fatal(err)
			}
			if id, ok := v[0].(int64); ok && uint32(id) == k.ID {
				if c, ok := v[5].(int64); ok {
					rowsUnder = &c
				}
			}
		}
		kr.Close()
		if rowsUnder == nil || *rowsUnder != 0 {
			t.Errorf("SHOW KEYS: key %d has %v rows, want 0", k.ID, rowsUnder)
		}
		if _, err := con.Exec(ctx, fmt.Sprintf("RETIRE KEY %d", k.ID), pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Errorf("RETIRE KEY %d: %v", k.ID, err)
		}
	}
	if strings.Contains(logs.String()+logs2.String(), "@example.com") {
		t.Error("a value appeared in the logs")
	}
}

// connectAs opens a pgx connection to addr, closed when the test ends.
func connectAs(ctx context.Context, t *testing.T, addr, user, password, db string) *pgx.Conn {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable", host, port, user, password, db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// waitForLong is waitFor with a deadline of its own.
func waitForLong(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
