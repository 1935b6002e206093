package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/pgshield/pgshield/internal/pgcluster"
	"github.com/pgshield/pgshield/internal/writeload"
)

// failoverResult is one failover run.
type failoverResult struct {
	writers    int
	recovery   time.Duration
	acked      int
	ackedAfter int
	missing    int64
	errors     map[string]int
	err        error
}

// failover measures the time from pg_ctl stop -m immediate on the primary
// to the first acknowledged write through pgshield, with failover: promote
// and every other routing and pool setting at its default, under 20
// writers; then checks that every acknowledged row is on the new primary.
func failover(dir, bin string) failoverResult {
	res := failoverResult{writers: 20}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	primary, err := pgcluster.Start(ctx, pgcluster.Options{Dir: filepath.Join(dir, "fo-primary")})
	if err != nil {
		res.err = err
		return res
	}
	defer primary.Remove()
	err = primary.CreateDatabase(ctx, "app", "postgres")
	if err == nil {
		err = primary.Exec(ctx, "app", "CREATE TABLE acked (id bigint PRIMARY KEY, v text)")
	}
	if err != nil {
		res.err = err
		return res
	}
	replica, err := primary.AddReplica(ctx, pgcluster.ReplicaOptions{Sync: true})
	if err != nil {
		res.err = err
		return res
	}
	p, err := launchPgshield(dir, "failover", bin, fmt.Sprintf(`auth_type: trust
users:
  - {name: app, password: app, service: api}
databases:
  app: {primary: %s, replicas: [%s], user: %s, password: %s, server_tls: {mode: disable}}
routing: {failover: promote}
log: {level: warn, format: json}
`, primary.Addr(), replica.Addr(), primary.User, primary.Password))
	if err != nil {
		res.err = err
		return res
	}
	defer p.stop()
	url := fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=app sslmode=disable", p.port)
	wl := writeload.Run(writeload.Options{URL: url, Writers: res.writers, Table: "acked",
		Before: 2 * time.Second, After: 2 * time.Second, Limit: time.Minute,
		Fault: func() {
			if err := primary.Stop(ctx, "immediate"); err != nil {
				res.err = err
			}
		}})
	res.recovery, res.acked, res.ackedAfter, res.errors = wl.Recovery, len(wl.Acked), wl.AckedAfter, wl.Errors
	if res.err == nil {
		res.missing, res.err = writeload.Missing(ctx, replica.ConnString("app"), "acked", wl.Acked)
	}
	return res
}

func (f failoverResult) markdown() string {
	if f.err != nil {
		return fmt.Sprintf("\n## Failover\n\nThe failover scenario failed: %v\n", f.err)
	}
	rec := "no write resumed within a minute"
	if f.recovery >= 0 {
		rec = f.recovery.Round(10 * time.Millisecond).String()
	}
	return fmt.Sprintf(`
## Failover

Primary and synchronous streaming replica, pgshield with `+"`routing: {failover: promote}`"+` and all other settings at their defaults (lag checks every 1 s, failover after 3 s of failed checks). %d clients insert numbered rows through pgshield and record every acknowledged commit; the primary is stopped with `+"`pg_ctl stop -m immediate`"+`.

| kill to first acknowledged write | rows acknowledged | of which after the kill | acknowledged rows missing on the new primary | errors clients saw |
|---|---|---|---|---|
| %s | %d | %d | %d | %v |
`, f.writers, rec, f.acked, f.ackedAfter, f.missing, f.errors)
}
