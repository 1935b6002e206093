package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/devcert"
)

// TLS clients: pgshield and PgBouncer with client TLS required, pgbench
// with sslmode=require, 50 clients in every mode. TLS sessions stay on
// goroutines (a parked TLS connection could hold decrypted bytes of its
// own), so they are measured apart.

const (
	tShieldTLS  = "pgshield/tls"
	tBouncerTLS = "pgbouncer/tls"
)

// tlsRounds starts a pgshield and a PgBouncer that require TLS from
// clients, with a certificate made for the run, and runs pgbench -S
// through both, rounds rounds alternating.
func (e *env) tlsRounds(res *results, pgshieldBin string, d time.Duration, rounds int) error {
	certDir := filepath.Join(e.dir, "tls")
	f, err := devcert.Generate(certDir)
	if err != nil {
		return fmt.Errorf("certificate for the TLS runs: %w", err)
	}
	// PgBouncer runs as postgres when the bench runs as root: it must read
	// the key.
	for _, p := range []string{certDir, f.KeyFile, f.CertFile} {
		_ = os.Chmod(p, 0o755)
	}
	_ = os.Chmod(f.KeyFile, 0o644)
	shield, err := startPgshield(e.dir, "tls", pgshieldBin, e.pg, shieldOptions{
		config: fmt.Sprintf("tls: {cert_file: %q, key_file: %q, client: require}\n", f.CertFile, f.KeyFile)})
	if err != nil {
		return fmt.Errorf("pgshield with TLS: %w", err)
	}
	defer shield.stop()
	bouncer, err := startPgbouncerWith(e.dir, "pgbouncer-tls", e.pg, "", fmt.Sprintf("client_tls_sslmode = require\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\n", f.CertFile, f.KeyFile))
	if err != nil {
		return fmt.Errorf("pgbouncer with TLS: %w", err)
	}
	defer bouncer.stop()
	say("pgbench -S through TLS, 50 clients, %d rounds of %s", rounds, d)
	targets := []string{tShieldTLS, tBouncerTLS}
	for r := 0; r < rounds; r++ {
		for _, mode := range []string{"simple", "extended", "prepared"} {
			for _, name := range roundOrder(targets, r) {
				p := shield
				if name == tBouncerTLS {
					p = bouncer
				}
				m := p.cpuDuring(func() measure { return parsePgbench(e.pgbenchTLSCmd(p.port, mode, 50, d).CombinedOutput()) })
				say("round %d %-9s %-15s tps %8.0f  cpu %.2f µs/tx  failed %d %s", r+1, mode, name, m.tps, m.cpuPerTx(), m.failed, m.note)
				res.add(name, mode, m)
			}
		}
	}
	return nil
}

// pgbenchTLSCmd is pgbench -S through TLS (sslmode=require).
func (e *env) pgbenchTLSCmd(port int, mode string, clients int, d time.Duration) *exec.Cmd {
	cmd := e.pgbenchCmd(port, "-n", "-S", "-M", mode, "-c", strconv.Itoa(clients), "-j", "2", "-T", strconv.Itoa(int(d.Seconds())))
	cmd.Env = append(cmd.Env, "PGSSLMODE=require") // the last of a duplicate key wins
	return cmd
}

// tlsMarkdown is the TLS section.
func (r *results) tlsMarkdown() string {
	if len(r.runs[tShieldTLS+" simple"]) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n## TLS clients\n\n")
	b.WriteString("Both poolers require TLS from clients (a certificate made for the run, `sslmode=require` in pgbench); servers are reached without TLS. TLS sessions are not parked and stay on goroutines (docs/design-io.md). `pgbench -S -c 50 -j 2`, medians of the rounds.\n\n")
	b.WriteString("| mode | pgshield tps | PgBouncer tps | pgshield/PgBouncer tps | pgshield CPU µs/tx | PgBouncer CPU µs/tx | pgshield/PgBouncer CPU | failed (pgshield / PgBouncer) |\n|---|---|---|---|---|---|---|---|\n")
	for _, mode := range []string{"simple", "extended", "prepared"} {
		s, p := r.med(tShieldTLS, mode), r.med(tBouncerTLS, mode)
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %s | %s | %s | %s | %s / %s |\n", mode, s.tps, p.tps, ratio(s.tps, p.tps), cpuCell(s.cpu), cpuCell(p.cpu), cpuRatio(s.cpu, p.cpu), failures(s.failed, s.note), failures(p.failed, p.note))
	}
	return b.String()
}

// onlyTLS runs the TLS section alone and prints it.
func onlyTLS(duration time.Duration, rounds int, pgshieldBin string) error {
	e, err := newEnv(context.Background())
	if err != nil {
		return err
	}
	defer e.close()
	res := &results{duration: duration, rounds: rounds}
	if err := e.tlsRounds(res, pgshieldBin, duration, rounds); err != nil {
		return err
	}
	fmt.Println(res.tlsMarkdown())
	return nil
}
