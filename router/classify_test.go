package router

import (
	"bufio"
	"os"
	"strings"
	"testing"
)

// TestGolden runs the cases in testdata/classify.txt: one query per line,
// "query ==> expected summary".
func TestGolden(t *testing.T) {
	f, err := os.Open("testdata/classify.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := New(Config{})
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		q, want, ok := strings.Cut(line, " ==> ")
		if !ok {
			t.Fatalf("bad line %q", line)
		}
		got := Summary(c.Classify([]byte(q)))
		if got != want {
			t.Errorf("%s\n  got  %s\n  want %s", q, got, want)
		}
		// The cached answer is the same.
		if again := Summary(c.Classify([]byte(q))); again != got {
			t.Errorf("cache changed the answer for %s", q)
		}
		n++
	}
	if n < 30 {
		t.Fatalf("only %d cases", n)
	}
}

func TestCacheHitDoesNotAllocate(t *testing.T) {
	c := New(Config{})
	q := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = $1")
	c.Classify(q)
	if n := testing.AllocsPerRun(100, func() { c.Classify(q) }); n != 0 {
		t.Fatalf("cache hit allocates %.1f times", n)
	}
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{"select 1", "set search_path = a, b", "listen x; unlisten *", "select pg_advisory_lock(1)", "with x as (delete from t returning *) select * from x", "explain analyze select 1", "'"} {
		f.Add(s)
	}
	c := New(Config{ParseCacheSize: 100})
	f.Fuzz(func(t *testing.T, q string) {
		cl := c.Classify([]byte(q))
		if cl.SyntaxError != "" && (cl.ReadOnly || cl.Pins != 0 || len(cl.Effects) != 0) {
			t.Fatalf("unparseable text classified: %+v", cl)
		}
	})
}
