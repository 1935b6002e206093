package devcert

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
)

func caPool(t *testing.T, f Files) *x509.CertPool {
	t.Helper()
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA file holds no certificate")
	}
	return pool
}

func leafOf(t *testing.T, f Files) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func TestGenerateVerifies(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "yet")
	f, err := Generate(dir, "db.internal", "10.1.2.3", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	want := Files{
		CAFile:   filepath.Join(dir, "ca.crt"),
		CertFile: filepath.Join(dir, "server.crt"),
		KeyFile:  filepath.Join(dir, "server.key"),
	}
	if f != want {
		t.Fatalf("files %+v, want %+v", f, want)
	}
	pool := caPool(t, f)
	leaf := leafOf(t, f)
	for _, host := range []string{"127.0.0.1", "localhost", "::1", "db.internal", "10.1.2.3"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "other.example"}); err == nil {
		t.Error("verified for a host it was not made for")
	}
	if len(leaf.DNSNames) != 2 || len(leaf.IPAddresses) != 3 {
		t.Errorf("SANs: DNS %v, IP %v", leaf.DNSNames, leaf.IPAddresses)
	}
	st, err := os.Stat(f.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

func TestGenerateReuses(t *testing.T) {
	dir := t.TempDir()
	f, err := Generate(dir, "db.internal")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(f.CertFile)

	// Same hosts, or a subset of them: reused as they are.
	for _, hosts := range [][]string{{"db.internal"}, nil} {
		again, err := Generate(dir, hosts...)
		if err != nil {
			t.Fatal(err)
		}
		if again != f {
			t.Fatalf("files %+v, want %+v", again, f)
		}
		if after, _ := os.ReadFile(f.CertFile); !bytes.Equal(before, after) {
			t.Fatalf("Generate(%q) did not reuse valid files", hosts)
		}
	}

	// A new host: a new certificate that covers it.
	if _, err := Generate(dir, "other.internal"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(f.CertFile); bytes.Equal(before, after) {
		t.Fatal("a certificate without the new host was reused")
	}
	if _, err := leafOf(t, f).Verify(x509.VerifyOptions{Roots: caPool(t, f), DNSName: "other.internal"}); err != nil {
		t.Fatal(err)
	}

	// A broken file: everything is made again.
	if err := os.WriteFile(f.KeyFile, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := leafOf(t, f).Verify(x509.VerifyOptions{Roots: caPool(t, f), DNSName: "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
}
