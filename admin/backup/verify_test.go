package backup

import (
	"os"
	"strings"
	"testing"
)

// TestVerify: good backups (a full one, and an incremental one on top of
// it) pass pg_verifybackup and pg_amcheck; the result is in the catalog
// and the scratch directory is gone.
func TestVerify(t *testing.T) {
	t.Parallel()
	e, _ := newEnv(t, envOptions{})
	e.runWAL()
	e.exec("app", "CREATE INDEX ON t (tag)")
	e.insert(1, 1000, "A")
	full, err := e.m.BackupFull(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.insert(1001, 2000, "B")
	inc, err := e.m.BackupIncremental(e.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	res, err := e.m.Verify(e.ctx, full.ID, func(done, total int64, detail string) {
		if len(steps) == 0 || steps[len(steps)-1] != detail {
			steps = append(steps, detail)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK || !strings.Contains(res.Detail, "backup successfully verified") || !strings.Contains(res.Detail, "pg_amcheck: no corruption in") {
		t.Fatalf("verify: %+v", res)
	}
	t.Logf("verify %s: %s (steps %q)", full.ID, res.Detail, steps)
	res, err = e.m.Verify(e.ctx, inc.ID, nil)
	if err != nil || !res.OK {
		t.Fatalf("verify of the incremental backup: %+v, %v", res, err)
	}
	list, err := e.m.List(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range list {
		if b.Verified == nil || !b.Verified.OK || b.Verified.At.IsZero() {
			t.Fatalf("backup %s: verified %+v", b.ID, b.Verified)
		}
	}
	entries, err := os.ReadDir(e.m.cfg.ScratchDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("the scratch directory holds %v", entries)
	}
}
