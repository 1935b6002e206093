package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/internal/example"
)

func benchEncryptionSection(t *testing.T) []byte {
	t.Helper()
	section, err := encryptionSection([]byte(example.Encryption()), exampleEncDatabase, benchDatabase, encKeysFile)
	if err != nil {
		t.Fatal(err)
	}
	return section
}

func TestEncryptionSection(t *testing.T) {
	section := benchEncryptionSection(t)
	f, err := config.ParseEncryption(section)
	if err != nil {
		t.Fatalf("the section does not parse: %v\n%s", err, section)
	}
	if f.Encryption.KeysetFile != encKeysFile {
		t.Errorf("keyset_file %q, want %q", f.Encryption.KeysetFile, encKeysFile)
	}
	if len(f.Masking) != 0 {
		t.Errorf("masking kept: %v", f.Masking)
	}
	if _, ok := f.Encryption.Columns[exampleEncDatabase]; ok || len(f.Encryption.Columns) != 1 {
		t.Errorf("databases %v, want %s alone", f.Encryption.Columns, benchDatabase)
	}
	// The example's columns, all of them, under the bench's database.
	ex, err := config.ParseEncryption([]byte(example.Encryption()))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint(ex.Encryption.Columns[exampleEncDatabase])
	if got := fmt.Sprint(f.Encryption.Columns[benchDatabase]); got != want {
		t.Errorf("columns of %s:\n%s\nwant the example's:\n%s", benchDatabase, got, want)
	}
	// The workloads' columns are encrypted, randomized, of text.
	leads := f.Encryption.Columns[benchDatabase]["leads"]
	for _, c := range encColumns() { // the read workload's two among them
		if spec, ok := leads[c]; !ok || spec.Deterministic || (spec.Type != "" && spec.Type != "text") {
			t.Errorf("leads.%s: %+v (encrypted %v), want randomized text", c, spec, ok)
		}
	}
	for _, want := range []string{"deterministic: true", "keyset_file: \"" + encKeysFile + "\"", "database app renamed bench"} {
		if !strings.Contains(string(section), want) {
			t.Errorf("the section lacks %q:\n%s", want, section)
		}
	}

	for _, src := range []string{
		"masking: {}",
		"encryption: {columns: {other: {}}}",
		"encryption: {columns: {app: {}, bench: {}}}",
		"encryption: {keyset_file: k.json}",
		"encryption: [app]",
		"- a list",
	} {
		if out, err := encryptionSection([]byte(src), exampleEncDatabase, benchDatabase, encKeysFile); err == nil {
			t.Errorf("%q: no error, got\n%s", src, out)
		}
	}
	// Without keyset_file, the section gets one.
	out, err := encryptionSection([]byte("encryption: {columns: {app: {leads: {ssn: {}}}}}"), exampleEncDatabase, benchDatabase, encKeysFile)
	if err != nil {
		t.Fatal(err)
	}
	if f, err := config.ParseEncryption(out); err != nil || f.Encryption.KeysetFile != encKeysFile {
		t.Errorf("%s: %v", out, err)
	}
}

// The configuration of the instance with encryption loads its keyring
// from beside itself with the master key of the environment the bench
// gives it; the one without encrypts nothing.
func TestEncryptionConfigLoads(t *testing.T) {
	dir := t.TempDir()
	ks := encMasterKey()
	if ks.Key == "" || ks.Salt == "" || ks == encMasterKey() {
		t.Fatal("the made-up master key is empty, or the same every time")
	}
	keys, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.Save(context.Background(), filepath.Join(dir, encKeysFile), ks); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, kv := range encEnv(ks) {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	getenv := func(k string) string { return vars[k] }
	for _, opts := range []shieldOptions{{config: string(benchEncryptionSection(t)), env: encEnv(ks)}, {}} {
		path := filepath.Join(dir, "pgshield.yaml")
		if err := os.WriteFile(path, []byte(withListeners(7001, 7002, 7003, shieldBody("127.0.0.1:5432", opts))), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := config.Load(path)
		if err != nil {
			t.Fatalf("%+v: %v", opts.config, err)
		}
		enc, err := f.LoadEncryption(context.Background(), getenv)
		if err != nil {
			t.Fatal(err)
		}
		if opts.config == "" {
			if enc != nil {
				t.Error("encryption without an encryption section")
			}
			continue
		}
		if enc == nil || enc.Keys == nil {
			t.Fatal("no encryption loaded")
		}
		if enc.Keys.Primary(crypto.Randomized) != keys.Primary(crypto.Randomized) {
			t.Error("another keyring loaded")
		}
		if _, ok := enc.Columns[benchDatabase]["leads"]["ssn"]; !ok {
			t.Errorf("leads.ssn not encrypted: %v", enc.Columns)
		}
	}
}

func TestEncWorkloads(t *testing.T) {
	if !strings.Contains(encReadQuery, "LIMIT "+strconv.Itoa(encReadRows)) || !strings.Contains(encReadQuery, "ORDER BY id ") {
		t.Errorf("read query %q: want ORDER BY id and LIMIT %d", encReadQuery, encReadRows)
	}
	for _, tc := range []struct{ mode, values string }{
		{"prepared", "VALUES (:ssn, :card, :bank)\n"},
		{"simple", "VALUES (':ssn', ':card', ':bank')\n"},
	} {
		s := encInsertScript(tc.mode)
		for _, want := range []string{
			"INSERT INTO leads (ssn, credit_card, bank_account) " + tc.values,
			"\\set ssn random(100000000, 999999999)\n",
			"\\set card random(4000000000000000, 4999999999999999)\n",
			"\\set bank random(100000000000, 999999999999)\n",
		} {
			if !strings.Contains(s, want) {
				t.Errorf("%s script lacks %q:\n%s", tc.mode, want, s)
			}
		}
	}
	// The filled rows have the values' shape, and differ.
	first, last := encFillRow(0), encFillRow(encReadRows-1)
	if first == last || len(first[0]) != 9 || len(first[1]) != 16 || len(last[2]) != 12 {
		t.Errorf("rows %v and %v", first, last)
	}
	ws := encWorkloads()
	if len(ws) != 3 || ws[0].values != 0 || ws[0].script != nil || ws[1].values != 2*encReadRows || !ws[1].fill || ws[2].values != len(encColumns()) {
		t.Errorf("workloads: %+v", ws)
	}
}

func TestStoredAs(t *testing.T) {
	keys, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	other, err := crypto.NewKeyring(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	written := []string{"a", "b", "c"}
	enc := func(k *crypto.Keyring, cols ...string) [][]byte {
		var out [][]byte
		for i, c := range cols {
			v, err := k.Encrypt("leads."+c, []byte(written[i]), nil)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, v)
		}
		return out
	}
	mixed := enc(keys, encColumns()...)
	mixed[1] = []byte("b")
	for _, tc := range []struct {
		got  [][]byte
		want string
	}{
		{[][]byte{[]byte("a"), []byte("b"), []byte("c")}, "as written"},
		{enc(keys, encColumns()...), "ciphertext"},
		{enc(keys, "credit_card", "ssn", "bank_account"), "other"}, // bound to other columns
		{enc(other, encColumns()...), "other"},
		{mixed, "other"},
		{[][]byte{[]byte("a"), []byte("b")}, "other"},
		{[][]byte{[]byte("a"), []byte("b"), []byte("d")}, "other"},
	} {
		if got := storedAs(written, tc.got, keys); got != tc.want {
			t.Errorf("%q: %s, want %s", tc.got, got, tc.want)
		}
	}
}

func TestEncCheck(t *testing.T) {
	for _, tc := range []struct {
		c  encCheck
		ok bool
	}{
		{encCheck{target: tEncOn, stored: "ciphertext", read: "as written"}, true},
		{encCheck{target: tEncOn, stored: "as written", read: "as written"}, false},
		{encCheck{target: tEncOn, stored: "ciphertext", read: "ciphertext"}, false},
		{encCheck{target: tEncOff, stored: "as written", read: "as written"}, true},
		{encCheck{target: tEncOff, stored: "ciphertext", read: "as written"}, false},
	} {
		if tc.c.ok() != tc.ok {
			t.Errorf("%+v: ok %v", tc.c, !tc.ok)
		}
	}
}

func encResults() *encResult {
	r := &encResult{duration: 8 * time.Second, rounds: 2, checks: []encCheck{
		{tEncOn, "literal", "ciphertext", "as written"}, {tEncOn, "parameter", "ciphertext", "as written"},
		{tEncOff, "literal", "as written", "as written"}, {tEncOff, "parameter", "as written", "as written"},
	}}
	run := func(tps, latency float64, txns, cpuMs int) measure {
		return measure{tps: tps, latency: latency, txns: txns, cpu: time.Duration(cpuMs) * time.Millisecond, cpuRead: true}
	}
	// select-only prepared: 0.998 and 0.992, met in every round; CPU 20
	// µs/tx with and without.
	r.runs.add("select-only", "prepared", tEncOn, run(9980, 5, 80000, 1600))
	r.runs.add("select-only", "prepared", tEncOn, run(9920, 5, 80000, 1600))
	r.runs.add("select-only", "prepared", tEncOff, run(10000, 5, 80000, 1600))
	r.runs.add("select-only", "prepared", tEncOff, run(10000, 5, 80000, 1600))
	// select-only simple: 0.98 and 0.99, missed.
	r.runs.add("select-only", "simple", tEncOn, run(9800, 5, 80000, 1600))
	r.runs.add("select-only", "simple", tEncOn, run(9900, 5, 80000, 1600))
	r.runs.add("select-only", "simple", tEncOff, run(10000, 5, 80000, 1600))
	r.runs.add("select-only", "simple", tEncOff, run(10000, 5, 80000, 1600))
	// leads read prepared: 3000 and 3200 µs/tx against 1000, 2000 values:
	// 1.0 and 1.1 µs per value; latency 4 and 4.4 ms against 2: 1.0 and
	// 1.2 µs per value.
	r.runs.add("leads read", "prepared", tEncOn, run(500, 4, 1000, 3000))
	r.runs.add("leads read", "prepared", tEncOn, run(450, 4.4, 1000, 3200))
	r.runs.add("leads read", "prepared", tEncOff, run(1000, 2, 1000, 1000))
	r.runs.add("leads read", "prepared", tEncOff, run(1000, 2, 1000, 1000))
	// leads insert prepared: 60 and 63 µs/tx against 54, 3 values: 2 and 3
	// µs per value; latency 5.3 against 5.0 ms: 100 µs per value.
	r.runs.add("leads insert", "prepared", tEncOn, run(9000, 5.3, 10000, 600))
	r.runs.add("leads insert", "prepared", tEncOn, run(9000, 5.3, 10000, 630))
	r.runs.add("leads insert", "prepared", tEncOff, run(10000, 5.0, 10000, 540))
	r.runs.add("leads insert", "prepared", tEncOff, run(10000, 5.0, 10000, 540))
	return r
}

func TestEncryptionMarkdown(t *testing.T) {
	md := encResults().markdown()
	for _, want := range []string{
		"## Column encryption cost",
		"its database key `app` renamed to the bench's `bench`",
		"`pgbench -M <mode> -j 2 -T 8`, 2 rounds",
		"| encryption-on | literals | ciphertext | as written |",
		"| encryption-off | parameters | as written | as written |",
		"Goal (issue): TPS with encryption at least 0.99 × without it.",
		"- **select-only**: `pgbench -S -c 50` (select-only on pgbench_accounts).",
		"| select-only | prepared | 9950 | 10000 | 0.995 | 0.99–1.00 | 20.00 | 20.00 | 1.000 | 1.00–1.00 | met in every round | 0 / 0 |",
		"| select-only | simple | 9850 | 10000 | 0.985 | 0.98–0.99 | 20.00 | 20.00 | 1.000 | 1.00–1.00 | missed | 0 / 0 |",
		"- **leads read**: `SELECT id, ssn, credit_card FROM leads ORDER BY id LIMIT 1000` with `-c 8`: 2000 values decrypted per transaction.",
		"| leads read | prepared | 2000 | 475 | 1000 | 3100.00 | 1000.00 | 1.050 | 1.000–1.100 | 4.200 | 2.000 | 1.100 | 1.000–1.200 | 0 / 0 |",
		"| leads insert | prepared | 3 | 9000 | 10000 | 61.50 | 54.00 | 2.500 | 2.000–3.000 | 5.300 | 5.000 | 100.000 | 100.000–100.000 | 0 / 0 |",
		"| leads insert | simple | 3 | 0 | 0 | n/a | n/a | n/a | n/a | 0.000 | 0.000 | n/a | n/a | 0 / 0 |",
		"CPU per value = (pgshield CPU µs per transaction with encryption − without) / values per transaction",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "stopped early") {
		t.Errorf("markdown:\n%s", md)
	}
	r := encResults()
	r.runs.add("leads insert", "simple", tEncOn, measure{note: "pgbench: client 3 aborted"})
	r.err = fmt.Errorf("pgbench went away")
	md = r.markdown()
	for _, want := range []string{"leads insert, simple mode, with encryption: pgbench: client 3 aborted.", "The scenario stopped early: pgbench went away"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestEncGoalMet(t *testing.T) {
	for _, tc := range []struct {
		tps  []float64
		want string
	}{
		{nil, "n/a"},
		{[]float64{0.995, 0.999, 1.01}, "met in every round"},
		{[]float64{0.98, 0.995, 1.0}, "met by the median; not in every round (lowest 0.980)"},
		{[]float64{0.97, 0.98, 1.0}, "missed"},
	} {
		if got := encGoalMet(tc.tps); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.tps, got, tc.want)
		}
	}
}

func TestPerValue(t *testing.T) {
	on := []measure{{txns: 10, cpu: 100 * time.Microsecond, cpuRead: true, latency: 1}, {txns: 10, latency: 2}}
	off := []measure{{txns: 10, cpu: 40 * time.Microsecond, cpuRead: true, latency: 0.5}, {txns: 10, cpu: time.Millisecond, cpuRead: true}}
	cpu, lat := perValue(on, off, 3)
	// (10 − 4) / 3 µs; (1 − 0.5) ms / 3. The second round has no CPU
	// reading with encryption and no latency without.
	if len(cpu) != 1 || fmt.Sprintf("%.3f", cpu[0]) != "2.000" || len(lat) != 1 || fmt.Sprintf("%.3f", lat[0]) != "166.667" {
		t.Errorf("cpu %v, latency %v", cpu, lat)
	}
	if cpu, lat := perValue(on, off, 0); cpu != nil || lat != nil {
		t.Errorf("no values: %v %v", cpu, lat)
	}
}

// A failed scenario says why instead of tables.
func TestEncryptionMarkdownFailed(t *testing.T) {
	md := encResult{err: fmt.Errorf("no pgbench")}.markdown()
	if !strings.Contains(md, "The encryption scenario failed: no pgbench") || strings.Contains(md, "| workload |") {
		t.Errorf("markdown:\n%s", md)
	}
	// A check that failed is shown with the reason.
	r := encResult{checks: []encCheck{{tEncOn, "literal", "as written", "as written"}}, err: fmt.Errorf("a row written as literals through encryption-on was stored as written")}
	if md := r.markdown(); !strings.Contains(md, "| encryption-on | literals | as written | as written |") || !strings.Contains(md, "stopped early: a row written") {
		t.Errorf("markdown:\n%s", md)
	}
}
