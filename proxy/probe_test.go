package proxy_test

import (
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// pg_isready's refused logins are logged at debug, every other refused
// login at info: a readiness probe every few seconds must not fill the log.
func TestReadinessProbeRefusalsAtDebug(t *testing.T) {
	bin, err := exec.LookPath("pg_isready")
	if err != nil {
		t.Fatal("pg_isready is not installed")
	}
	e := startProxy(t, nil)
	host, port, _ := net.SplitHostPort(e.addr)
	// pg_isready logs in as a user pgshield does not know; it reports the
	// server as accepting connections all the same.
	if out, err := exec.Command(bin, "-h", host, "-p", port, "-U", "nobody-here", "-d", "app", "-t", "5").CombinedOutput(); err != nil {
		t.Fatalf("pg_isready: %v\n%s", err, out)
	}
	if _, err := pgx.Connect(ctxT(t), "host="+host+" port="+port+" user=nobody-here password=x dbname=app sslmode=disable"); err == nil {
		t.Fatal("an unknown user logged in")
	}
	pollFor(t, "both refusals logged", 5*time.Second, func() bool {
		probe, other := false, false
		for _, l := range e.logs.FilterMessage("client refused").All() {
			if l.ContextMap()["probe"] == true {
				if l.Level != zap.DebugLevel {
					t.Fatalf("pg_isready's refusal logged at %s", l.Level)
				}
				probe = true
			} else {
				if l.Level != zap.InfoLevel {
					t.Fatalf("a client's refusal logged at %s", l.Level)
				}
				other = true
			}
		}
		return probe && other
	})
}
