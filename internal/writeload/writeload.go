// Package writeload runs a write load that records every acknowledged
// commit, for failover tests and the failover benchmark: clients insert
// numbered rows, a fault is injected, and the result says when writes
// resumed and which rows must exist.
package writeload

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Options configure Run.
type Options struct {
	// URL is where the writers connect (through pgshield).
	URL string
	// Writers is the number of concurrent clients.
	Writers int
	// Table has an id bigint primary key and a text column after it.
	Table string
	// Before is how long the load runs before Fault.
	Before time.Duration
	// Fault injects the failure; it returns once the fault is in place.
	Fault func()
	// After is how long the load goes on once writes have resumed; the
	// whole run ends at Limit after the fault at the latest.
	After, Limit time.Duration
}

// Result is what the writers saw.
type Result struct {
	// Acked are the ids of every acknowledged insert.
	Acked []int64
	// AckedAfter counts acknowledged inserts begun after the fault.
	AckedAfter int
	// Recovery is the time from the start of the fault to the first
	// acknowledged insert begun after it; negative if there was none.
	Recovery time.Duration
	// Errors counts the errors clients saw, by SQLSTATE (or description).
	Errors map[string]int
}

// Run runs the load. Each writer keeps one connection, reconnecting after
// an error that closed it, and never reuses an id: an insert whose outcome
// is unknown (connection lost after it was sent) is neither acknowledged
// nor retried.
func Run(o Options) Result {
	var (
		mu      sync.Mutex
		res     = Result{Recovery: -1, Errors: map[string]int{}}
		faulted atomic.Int64 // unix nanos once the fault is in place
		resumed atomic.Int64 // unix nanos of the first insert acknowledged after it
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < o.Writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *pgx.Conn
			defer func() {
				if c != nil {
					_ = c.Close(context.Background())
				}
			}()
			sql := fmt.Sprintf("INSERT INTO %s VALUES ($1, 'writeload')", o.Table)
			for n := int64(0); ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
				if c == nil || c.IsClosed() {
					var err error
					if c, err = pgx.Connect(ctx, o.URL); err != nil {
						cancel()
						mu.Lock()
						res.Errors["connect: "+code(err)]++
						mu.Unlock()
						c = nil
						time.Sleep(20 * time.Millisecond)
						continue
					}
				}
				id := int64(w+1)*10_000_000 + n
				start := time.Now()
				_, err := c.Exec(ctx, sql, id)
				cancel()
				mu.Lock()
				if err != nil {
					res.Errors[code(err)]++
				} else {
					res.Acked = append(res.Acked, id)
					if f := faulted.Load(); f != 0 && start.UnixNano() > f {
						res.AckedAfter++
						resumed.CompareAndSwap(0, time.Now().UnixNano())
					}
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(o.Before)
	faultStart := time.Now()
	o.Fault()
	// Only inserts begun once the fault is in place count as resumed.
	faulted.Store(time.Now().UnixNano())
	deadline := faultStart.Add(o.Limit)
	for time.Now().Before(deadline) {
		if r := resumed.Load(); r != 0 && time.Since(time.Unix(0, r)) > o.After {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if r := resumed.Load(); r != 0 {
		res.Recovery = time.Duration(r - faultStart.UnixNano())
	}
	return res
}

// Missing returns how many acknowledged ids are not in the table on the
// server at url.
func Missing(ctx context.Context, url, table string, acked []int64) (int64, error) {
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer c.Close(ctx)
	var missing int64
	err = c.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM unnest($1::bigint[]) a(id) WHERE NOT EXISTS (SELECT 1 FROM %s t WHERE t.id = a.id)", table), acked).Scan(&missing)
	return missing, err
}

func code(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return "client error"
}
