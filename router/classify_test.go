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

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;":  "SELECT abalance FROM pgbench_accounts WHERE aid = ?;",
		"select 'it''s', E'a\\'b', 1.5e-3, x1, t2.c3, $1, $$body$$": "select ?, ?, ?, x1, t2.c3, $1, ?",
		`select "we""ird" from t -- 'comment'` + "\n where a = 'x'": `select "we""ird" from t ` + "\n where a = ?",
		"select /* 'x' /* nested */ */ 1":                           "select  ?",
		"select $tag$ a 'b' $tag$":                                  "select ?",
	} {
		got, ok := normalize(nil, []byte(in))
		if !ok || string(got) != want {
			t.Errorf("normalize(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, bad := range []string{"select 'open", `select "open`, "select /* open", "select $a$ open"} {
		if _, ok := normalize(nil, []byte(bad)); ok {
			t.Errorf("normalize(%q) claimed success", bad)
		}
	}
}

// Texts differing only in literals share a class when, and only when, the
// class cannot depend on literals.
func TestLiteralSharing(t *testing.T) {
	c := New(Config{})
	a := c.Classify([]byte("select * from t where id = 1"))
	b := c.Classify([]byte("select * from t where id = 2"))
	if a != b || c.Len() != 2 {
		t.Fatalf("literal variants not shared: %p %p, %d cached", a, b, c.Len())
	}
	local := c.Classify([]byte("select set_config('x', 'y', true)"))
	session := c.Classify([]byte("select set_config('x', 'y', false)"))
	if local.Pins != 0 || session.Pins != PinSetConfig {
		t.Fatalf("set_config classes mixed up: %v %v", local.Pins, session.Pins)
	}
	s1 := c.Classify([]byte("set work_mem = '1MB'"))
	s2 := c.Classify([]byte("set work_mem = '2MB'"))
	if s1.Effects[0].SQL == s2.Effects[0].SQL {
		t.Fatal("SET values shared between texts")
	}
	q := []byte("select * from t where id = 3")
	if raceEnabled {
		return // sync.Pool drops items on purpose under the race detector
	}
	if n := testing.AllocsPerRun(100, func() { c.Classify(q) }); n != 0 {
		t.Fatalf("a literal variant allocates %.1f times", n)
	}
}

// BenchmarkClassifyHitParallel measures a cache hit from every P at once,
// as clients classify concurrently (shared cache and lookup counters).
func BenchmarkClassifyHitParallel(b *testing.B) {
	c := New(Config{})
	q := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = $1")
	c.Classify(q)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Classify(q)
		}
	})
}

// TestInsight covers what query statistics and SHOW TRANSACTIONS read from a
// class: the tables written, the isolation level, and a fingerprint and
// normalized text that hold no literal and are shared by literal variants.
func TestInsight(t *testing.T) {
	c := New(Config{})
	for _, tc := range []struct {
		q, writes, iso string
	}{
		{"BEGIN ISOLATION LEVEL SERIALIZABLE", "", "serializable"},
		{"START TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY", "", "read committed"},
		{"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "", "repeatable read"},
		{"with x as (insert into a.b values (1) returning *) update c set v = 2 where id in (select * from x)", "c,a.b", ""},
		{"truncate t1, s.t2", "t1,s.t2", ""},
		{"copy t from stdin", "t", ""},
		{"copy t to stdout", "", ""},
		{"delete from t where id = 'x'; insert into u values (1)", "t,u", ""},
		{"merge into m using s on m.id = s.id when matched then delete", "m", ""},
		{"select * from t for update", "", ""},
	} {
		cl := c.Classify([]byte(tc.q))
		if got := strings.Join(cl.Writes, ","); got != tc.writes {
			t.Errorf("%s: writes %q, want %q", tc.q, got, tc.writes)
		}
		if cl.Isolation != tc.iso {
			t.Errorf("%s: isolation %q, want %q", tc.q, cl.Isolation, tc.iso)
		}
	}
	for _, tc := range []struct{ q, tables string }{
		{"select l.ssn from leads l join s.agents a on a.id = l.id where l.id in (select lead_id from lead_assignments)", "leads,s.agents,lead_assignments"},
		{"with x as (select * from leads) select * from x", "x,leads"},
		{"insert into leads (email) values ('a')", "leads"},
		{"select 1", ""},
	} {
		if got := strings.Join(c.Classify([]byte(tc.q)).Tables, ","); got != tc.tables {
			t.Errorf("%s: tables %q, want %q", tc.q, got, tc.tables)
		}
	}
	a := c.Classify([]byte("SELECT * FROM users WHERE email = 'alice@example.com'"))
	b := c.Classify([]byte("SELECT * FROM users WHERE email = 'bob@example.com'"))
	if a.Fingerprint == "" || a.Fingerprint != b.Fingerprint {
		t.Errorf("fingerprints %q and %q: want equal and set", a.Fingerprint, b.Fingerprint)
	}
	if strings.Contains(a.Normalized, "alice") || !strings.Contains(a.Normalized, "$1") {
		t.Errorf("normalized %q keeps a literal", a.Normalized)
	}
	if bad := c.Classify([]byte("SELEC 'secret'")); bad.Fingerprint != "" || bad.Normalized != "" {
		t.Errorf("a syntax error has fingerprint %q, normalized %q", bad.Fingerprint, bad.Normalized)
	}
}

// Resize shrinks the cache at once and lets it grow again.
func TestClassifierResize(t *testing.T) {
	c := New(Config{ParseCacheSize: 100})
	for i := range 50 {
		c.Classify([]byte("SELECT a FROM t" + strings.Repeat("x", i)))
	}
	if n := c.Len(); n < 50 {
		t.Fatalf("%d texts cached, want at least 50", n)
	}
	c.Resize(5)
	if n := c.Len(); n != 5 {
		t.Errorf("%d texts cached after Resize(5), want 5", n)
	}
	c.Resize(0) // the default
	for i := range 50 {
		c.Classify([]byte("SELECT b FROM t" + strings.Repeat("x", i)))
	}
	if n := c.Len(); n < 50 {
		t.Errorf("%d texts cached after Resize(0), want the default size", n)
	}
}
