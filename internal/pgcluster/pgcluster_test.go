package pgcluster

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestPrimaryReplicaAndStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := StartForTest(t, Options{})
	if err := c.CreateRole(ctx, "app", "app's pw", true); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateRole(ctx, "app", "app's pw", true); err != nil {
		t.Fatalf("CreateRole is not idempotent: %v", err)
	}
	if err := c.CreateDatabase(ctx, "appdb", "app"); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateDatabase(ctx, "appdb", "app"); err != nil {
		t.Fatalf("CreateDatabase is not idempotent: %v", err)
	}
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app:app's%%20pw@%s/appdb?sslmode=disable", c.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "create table t (id int); insert into t values (42)"); err != nil {
		t.Fatal(err)
	}

	r, err := c.AddReplica(ctx, ReplicaOptions{Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	if in, err := r.InRecovery(ctx); err != nil || !in {
		t.Fatalf("replica in recovery: %v %v", in, err)
	}
	if _, err := conn.Exec(ctx, "insert into t values (43)"); err != nil {
		t.Fatal(err)
	}
	// Synchronous replication: the commit above is on the replica (remote
	// flush); replay follows promptly.
	rc, err := pgx.Connect(ctx, r.ConnString("appdb"))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := rc.QueryRow(ctx, "select count(*) from t").Scan(&n); err == nil && n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("row never reached the replica")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx, "immediate"); err != nil {
		t.Fatalf("Stop is not idempotent: %v", err)
	}
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Fatalf("cluster directory left behind: %v", err)
	}
}

func TestSSLVerifyFull(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := StartForTest(t, Options{SSL: true})
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=verify-full sslrootcert=%s",
		c.Port, c.Password, c.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var ssl bool
	if err := conn.QueryRow(ctx, "select ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Fatalf("not over TLS: %v %v", ssl, err)
	}
}
