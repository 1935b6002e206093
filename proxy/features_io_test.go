package proxy_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/pgcluster"
)

// A cancel reaches the server running the client's query, in both pool
// modes, and nothing else; the client goes on afterwards.
func TestCancelRequest(t *testing.T) {
	e := startProxy(t, nil)
	for _, user := range []string{"app", "sess"} {
		t.Run(user, func(t *testing.T) {
			c := e.connect(t, user, "")
			other := e.connect(t, user, "")
			go func() {
				time.Sleep(300 * time.Millisecond)
				// pgx's context cancellation closes the socket; a driver's
				// CancelRequest is what psql and libpq send.
				_ = c.PgConn().CancelRequest(context.Background())
			}()
			start := time.Now()
			_, err := c.Exec(ctxT(t), "select pg_sleep(30)")
			if pgCode(err) != "57014" || time.Since(start) > 10*time.Second {
				t.Fatalf("query not cancelled: %v after %s", err, time.Since(start))
			}
			var v int
			if err := other.QueryRow(ctxT(t), "select 1").Scan(&v); err != nil {
				t.Fatalf("other client: %v", err)
			}
			if err := c.QueryRow(ctxT(t), "select 2").Scan(&v); err != nil || v != 2 {
				t.Fatalf("cancelled client unusable: %v", err)
			}
		})
	}
	// A CancelRequest with the wrong key cancels nothing.
	c := e.connect(t, "sess", "")
	pid := c.PgConn().PID()
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), "select pg_sleep(1)")
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	nc, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	pkt := binary.BigEndian.AppendUint32(nil, 16)
	pkt = binary.BigEndian.AppendUint32(pkt, 80877102)
	pkt = binary.BigEndian.AppendUint32(pkt, pid)
	pkt = binary.BigEndian.AppendUint32(pkt, 12345)
	_, _ = nc.Write(pkt)
	nc.Close()
	if err := <-done; err != nil {
		t.Fatalf("a cancel with a wrong key cancelled the query: %v", err)
	}
}

// COPY in both directions, in both pool modes, including a failing COPY.
func TestCopyBothWays(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	for _, user := range []string{"app", "sess"} {
		t.Run(user, func(t *testing.T) {
			c := e.connect(t, user, "")
			table := "copy_" + user
			if _, err := c.Exec(ctx, fmt.Sprintf("drop table if exists %s; create table %s (id int, v text)", table, table)); err != nil {
				t.Fatal(err)
			}
			rows := make([][]any, 10000)
			for i := range rows {
				rows[i] = []any{i, fmt.Sprintf("row %d", i)}
			}
			n, err := c.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "v"}, pgx.CopyFromRows(rows))
			if err != nil || n != 10000 {
				t.Fatalf("CopyFrom: %d %v", n, err)
			}
			var buf bytes.Buffer
			tag, err := c.PgConn().CopyTo(ctx, &buf, fmt.Sprintf("COPY (select * from %s order by id) TO STDOUT", table))
			if err != nil || tag.RowsAffected() != 10000 || !strings.HasPrefix(buf.String(), "0\trow 0\n") {
				t.Fatalf("CopyTo: %v %v %q", tag, err, buf.String()[:20])
			}
			_, err = c.PgConn().CopyFrom(ctx, strings.NewReader("1\tok\nnot-a-number\tbad\n"), fmt.Sprintf("COPY %s FROM STDIN", table))
			if pgCode(err) != "22P02" {
				t.Fatalf("bad COPY row: want 22P02, got %v", err)
			}
			var count int
			if err := c.QueryRow(ctx, "select count(*) from "+table).Scan(&count); err != nil || count != 10000 {
				t.Fatalf("after failed COPY: %d %v", count, err)
			}
		})
	}
}

// LISTEN/NOTIFY in session mode: notifications reach the listener whether
// or not it is running a query.
func TestListenNotifySessionMode(t *testing.T) {
	e := startProxy(t, nil)
	ctx := ctxT(t)
	l := e.connect(t, "sess", "")
	if _, err := l.Exec(ctx, "listen jobs"); err != nil {
		t.Fatal(err)
	}
	n := e.connect(t, "app", "")
	if _, err := n.Exec(ctx, "notify jobs, 'hello'"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Exec(ctx, "select pg_notify('jobs', 'world')"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"hello", "world"} {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		note, err := l.WaitForNotification(wctx)
		cancel()
		if err != nil || note.Payload != want || note.Channel != "jobs" {
			t.Fatalf("want %q, got %+v %v", want, note, err)
		}
	}
}

// psql and pgbench, as processes, through the proxy in transaction mode.
func TestPsqlAndPgbench(t *testing.T) {
	bin, err := pgcluster.BinDir()
	if err != nil {
		t.Skip("no PostgreSQL binaries:", err)
	}
	tool := func(name string) string {
		if p := filepath.Join(bin, name); fileExists(p) {
			return p
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		t.Skipf("%s not found", name)
		return ""
	}
	psql, pgbench := tool("psql"), tool("pgbench")
	e := startProxy(t, nil)
	host, port, _ := net.SplitHostPort(e.addr)
	run := func(name string, args ...string) string {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "PGPASSWORD=app-secret", "PGHOST="+host, "PGPORT="+port, "PGUSER=app", "PGDATABASE=app", "PGSSLMODE=disable")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", filepath.Base(name), args, err, out)
		}
		return string(out)
	}
	if out := run(psql, "-Atc", "select 40 + 2"); strings.TrimSpace(out) != "42" {
		t.Fatalf("psql: %q", out)
	}
	run(pgbench, "-i", "-s", "1", "-q")
	for _, mode := range []string{"simple", "extended"} {
		out := run(pgbench, "-c", "8", "-j", "2", "-T", "4", "-M", mode)
		if !strings.Contains(out, "number of failed transactions: 0 ") {
			t.Fatalf("pgbench -M %s:\n%s", mode, out)
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
