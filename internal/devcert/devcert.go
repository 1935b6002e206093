package devcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files are the paths of the files Generate wrote or reused.
type Files struct{ CAFile, CertFile, KeyFile string }

const (
	validFor = 365 * 24 * time.Hour
	// minRemaining is how long existing files must stay valid to be reused.
	minRemaining = 24 * time.Hour
)

// Generate writes ca.crt, server.crt and server.key (mode 0600) into dir,
// which is created if missing, and returns their paths. The server
// certificate names 127.0.0.1, ::1, localhost and the given hosts (IP
// addresses become IP SANs, anything else DNS SANs).
//
// If the three files already exist, belong together, cover the hosts and
// stay valid for more than a day, they are reused as they are.
func Generate(dir string, hosts ...string) (Files, error) {
	f := Files{
		CAFile:   filepath.Join(dir, "ca.crt"),
		CertFile: filepath.Join(dir, "server.crt"),
		KeyFile:  filepath.Join(dir, "server.key"),
	}
	all := sanHosts(hosts)
	if reusable(f, all) {
		return f, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Files{}, fmt.Errorf("devcert: %w", err)
	}
	caPEM, certPEM, keyPEM, err := create(all, time.Now())
	if err != nil {
		return Files{}, fmt.Errorf("devcert: %w", err)
	}
	// The key first: a cert without its key is never left behind as valid.
	if err := writeFile(f.KeyFile, keyPEM, 0o600); err != nil {
		return Files{}, err
	}
	if err := writeFile(f.CertFile, certPEM, 0o644); err != nil {
		return Files{}, err
	}
	if err := writeFile(f.CAFile, caPEM, 0o644); err != nil {
		return Files{}, err
	}
	return f, nil
}

// sanHosts is 127.0.0.1, ::1 and localhost followed by hosts, without
// duplicates or empty names.
func sanHosts(hosts []string) []string {
	all := make([]string, 0, 3+len(hosts))
	seen := make(map[string]bool, cap(all))
	for _, h := range append([]string{"127.0.0.1", "::1", "localhost"}, hosts...) {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		all = append(all, h)
	}
	return all
}

// create makes a CA and a server certificate for hosts, PEM-encoded.
func create(hosts []string, now time.Time) (caPEM, certPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generating the CA key: %w", err)
	}
	caSerial, err := serial()
	if err != nil {
		return nil, nil, nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               pkix.Name{CommonName: "pgshield development CA", Organization: []string{"pgshield"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("signing the CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("parsing the CA certificate: %w", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generating the server key: %w", err)
	}
	srvSerial, err := serial()
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: srvSerial,
		Subject:      pkix.Name{CommonName: "localhost", Organization: []string{"pgshield"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validFor),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("signing the server certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("encoding the server key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		nil
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// writeFile replaces path with data through a temporary file in the same
// directory, so that the file is never seen half-written nor, for the key,
// with a wider mode than asked.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("devcert: writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("devcert: writing %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("devcert: writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("devcert: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("devcert: writing %s: %w", path, err)
	}
	return nil
}

// reusable reports whether the files exist, the key matches the
// certificate, the CA signed it for every host, and both certificates stay
// valid for more than minRemaining.
func reusable(f Files, hosts []string) bool {
	pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return false
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return false
	}
	ca, err := readCert(f.CAFile)
	if err != nil {
		return false
	}
	later := time.Now().Add(minRemaining)
	if later.After(leaf.NotAfter) || later.After(ca.NotAfter) {
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, h := range hosts {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: h, CurrentTime: later}); err != nil {
			return false
		}
	}
	return true
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}
