package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// rawClient is a minimal protocol client (trust authentication), so that
// thousands of them cost the bench process little.
type rawClient struct {
	nc net.Conn
	fe *pgproto3.Frontend
}

func dialRaw(port int) (*rawClient, error) {
	nc, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(60 * time.Second))
	c := &rawClient{nc: nc, fe: pgproto3.NewFrontend(bufio.NewReaderSize(nc, 1024), nc)}
	c.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "bench", "database": "bench"}})
	if err := c.fe.Flush(); err != nil {
		nc.Close()
		return nil, err
	}
	if err := c.untilReady(); err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

func (c *rawClient) untilReady() error {
	var firstErr error
	for {
		m, err := c.fe.Receive()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *pgproto3.ErrorResponse:
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %s", m.Code, m.Message)
			}
			if m.Severity == "FATAL" {
				return firstErr
			}
		case *pgproto3.ReadyForQuery:
			return firstErr
		}
	}
}

func (c *rawClient) query(sql string) error {
	_ = c.nc.SetDeadline(time.Now().Add(60 * time.Second))
	c.fe.Send(&pgproto3.Query{String: sql})
	if err := c.fe.Flush(); err != nil {
		return err
	}
	return c.untilReady()
}

func (c *rawClient) close() {
	c.fe.Send(&pgproto3.Terminate{})
	_ = c.fe.Flush()
	c.nc.Close()
}

// openMany logs n clients in, at most 200 at a time.
func openMany(port, n int) ([]*rawClient, int) {
	clients := make([]*rawClient, n)
	var failed atomic.Int64
	sem := make(chan struct{}, 200)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dialRaw(port)
			if err != nil {
				failed.Add(1)
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	out := clients[:0]
	for _, c := range clients {
		if c != nil {
			out = append(out, c)
		}
	}
	return out, int(failed.Load())
}

// idleResult is the memory cost of idle clients.
type idleResult struct {
	clients, failed   int
	beforeKB, afterKB int
	perClientBytes    float64
}

func idleMemory(p *proc, n int) (idleResult, error) {
	// Warm the process up first so the measure is of clients, not of
	// first-use allocations.
	warm, _ := openMany(p.port, 100)
	for _, c := range warm {
		_ = c.query("select 1")
		c.close()
	}
	time.Sleep(time.Second)
	before, err := p.rssKB()
	if err != nil {
		return idleResult{}, err
	}
	clients, failed := openMany(p.port, n)
	after, err := settledRSS(p)
	for _, c := range clients {
		c.close()
	}
	runtime.GC()
	if err != nil {
		return idleResult{}, err
	}
	r := idleResult{clients: len(clients), failed: failed, beforeKB: before, afterKB: after}
	if len(clients) > 0 {
		r.perClientBytes = float64(after-before) * 1024 / float64(len(clients))
	}
	time.Sleep(2 * time.Second) // let the closes settle before the next test
	return r, nil
}

// settledRSS waits until the pooler's RSS has stopped falling (an idle
// client may be parked, and what it used given back, a second or two
// after it logged in), sampling every second for at most 15 s, and
// returns the last sample.
func settledRSS(p *proc) (int, error) {
	var samples []int
	for i := 0; i < 15; i++ {
		time.Sleep(time.Second)
		kb, err := p.rssKB()
		if err != nil {
			return 0, err
		}
		samples = append(samples, kb)
		if n := len(samples); n >= 4 && samples[n-4]-kb <= samples[n-4]/100 {
			break
		}
	}
	say("%s RSS after the logins, a sample a second: %v KB", p.name, samples)
	return samples[len(samples)-1], nil
}

// manyResult is the outcome of the scale test.
type manyResult struct {
	clients, connectFailed, queries, queryFailed int
	elapsed                                      time.Duration
	firstErr                                     string
}

// manyClients connects n clients at once, then has every one of them run
// three queries concurrently, and counts what failed.
func manyClients(port, n int) manyResult {
	start := time.Now()
	clients, failed := openMany(port, n)
	r := manyResult{clients: len(clients), connectFailed: failed}
	var qFailed, qDone atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 3; i++ {
				if err := c.query("select 1"); err != nil {
					qFailed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					if err == io.EOF {
						return
					}
					continue
				}
				qDone.Add(1)
			}
		}()
	}
	wg.Wait()
	for _, c := range clients {
		c.close()
	}
	r.queries, r.queryFailed, r.elapsed = int(qDone.Load()), int(qFailed.Load()), time.Since(start)
	if v := firstErr.Load(); v != nil {
		r.firstErr = v.(string)
	}
	time.Sleep(2 * time.Second)
	return r
}
