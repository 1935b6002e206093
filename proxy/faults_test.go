package proxy_test

import (
	"testing"
	"time"
)

// poll retries cond for up to 10 s.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	pollFor(t, what, 10*time.Second, cond)
}

// pollFor retries cond every 50 ms until it holds or limit passes.
func pollFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
