package devcert

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
)

func TestGenerateVerifies(t *testing.T) {
	dir := t.TempDir()
	f, err := Generate(dir, "db.internal")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("bad CA file")
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "localhost", "db.internal"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "other.example"}); err == nil {
		t.Error("verified for a host it was not made for")
	}
	st, err := os.Stat(f.KeyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v %v", st.Mode(), err)
	}
	again, err := Generate(dir)
	if err != nil || again != f {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(f.CertFile)
	if _, err := Generate(dir); err != nil {
		t.Fatal(err)
	}
	b2, _ := os.ReadFile(f.CertFile)
	if string(b1) != string(b2) {
		t.Error("valid files were not reused")
	}
}
