package backup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// VerifyResult is the outcome of a Verify: pg_verifybackup, then
// pg_amcheck on every database of a restored scratch copy.
type VerifyResult struct {
	At     time.Time `json:"at"`
	OK     bool      `json:"ok"`
	Detail string    `json:"detail"`
}

// maxVerifyDetail bounds the detail recorded in the manifest.
const maxVerifyDetail = 4000

// Verify restores the backup id ("" or LATEST: the newest) into a scratch
// directory under Config.ScratchDir, runs pg_verifybackup against
// PostgreSQL's backup_manifest before anything is started, then starts
// the copy on a free loopback port (crash recovery from backup_label over
// the backup's WAL and its incremental chain's, no restore_command, the
// copy reachable by trust on loopback only) and runs pg_amcheck on every
// database. It records the result in the backup's manifest (Verified) and
// removes the scratch directory. A failed check returns the result (OK
// false) and an error; a cancelled Verify records nothing.
func (m *Manager) Verify(ctx context.Context, id string, p Progress) (VerifyResult, error) {
	cat, err := m.catalog(ctx)
	if err != nil {
		return VerifyResult{}, err
	}
	b, err := pickBackup(cat, RestoreOptions{ID: id})
	if err != nil {
		return VerifyResult{}, fmt.Errorf("backup: verify: %w", err)
	}
	chain, err := chainOf(cat, b)
	if err != nil {
		return VerifyResult{}, fmt.Errorf("backup: verify: %w", err)
	}
	for _, c := range chain {
		defer m.use(c.ID)()
	}
	log := m.log.With(zap.String("backup", b.ID))
	log.Info("verify started")
	detail, err := m.verify(ctx, chain, p)
	if ctx.Err() != nil {
		return VerifyResult{}, fmt.Errorf("backup: verifying %s: %w", b.ID, withCtx(ctx, err))
	}
	res := VerifyResult{At: m.now(), OK: err == nil, Detail: detail}
	if err != nil {
		res.Detail = strings.TrimSpace(strings.Join([]string{detail, err.Error()}, "\n"))
	}
	if len(res.Detail) > maxVerifyDetail {
		res.Detail = res.Detail[:maxVerifyDetail] + " …"
	}
	if rerr := m.recordVerified(ctx, b.ID, res); rerr != nil {
		log.Warn("verify: recording the result", zap.Error(rerr))
		err = errors.Join(err, rerr)
	}
	if err != nil {
		log.Error("verify failed", zap.Error(err))
		return res, fmt.Errorf("backup: verifying %s: %w", b.ID, err)
	}
	log.Info("verify passed", zap.String("detail", res.Detail))
	return res, nil
}

func (m *Manager) verify(ctx context.Context, chain []Manifest, p Progress) (string, error) {
	base := m.cfg.ScratchDir
	if base == "" {
		base = os.TempDir()
	}
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", fmt.Errorf("scratch directory: %w", err)
	}
	scratch, err := os.MkdirTemp(base, "pgshield-verify-")
	if err != nil {
		return "", fmt.Errorf("scratch directory: %w", err)
	}
	defer os.RemoveAll(scratch)
	port, err := freePort()
	if err != nil {
		return "", err
	}
	r := &restorer{repo: m.cfg.Repo, key: m.cfg.Key, cluster: m.cfg.Cluster, pgbin: m.cfg.PGBin, as: m.as, log: m.log}
	dir, err := r.prepareDir(filepath.Join(scratch, "data"))
	if err != nil {
		return "", err
	}
	var details []string
	j := &job{
		chain: chain, dir: dir, port: port,
		hba: "# pgshield verify: a scratch copy on loopback\nlocal all all trust\nhost all all 127.0.0.1/32 trust\n",
		settings: []setting{
			{"port", strconv.Itoa(port)}, {"listen_addresses", "127.0.0.1"}, {"unix_socket_directories", ""},
			{"ssl", "off"}, {"archive_mode", "off"}, {"synchronous_standby_names", ""},
		},
		afterBase: func(ctx context.Context, bin string) error {
			out, err := m.as.run(ctx, "", program(bin, "pg_verifybackup"), nil, dir)
			if err != nil {
				return fmt.Errorf("pg_verifybackup: %w", err)
			}
			details = append(details, "pg_verifybackup: "+strings.TrimSpace(out))
			return nil
		},
	}
	bin := r.binFor(chain[0])
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := stopServer(sctx, m.as, bin, dir); err != nil {
			m.log.Warn("verify: stopping the scratch server", zap.Error(err))
		}
	}()
	if err := r.run(ctx, j, p); err != nil {
		return strings.Join(details, "\n"), err
	}
	p.report(0, 0, "pg_amcheck")
	super, dbs, err := m.scratchSuperuser(ctx, port)
	if err != nil {
		return strings.Join(details, "\n"), err
	}
	out, err := m.as.run(ctx, "", program(bin, "pg_amcheck"), nil,
		"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", super, "--no-password", "--all", "--install-missing")
	if err != nil {
		return strings.Join(details, "\n"), fmt.Errorf("pg_amcheck: %w", err)
	}
	line := fmt.Sprintf("pg_amcheck: no corruption in %d databases", dbs)
	if out = strings.TrimSpace(out); out != "" {
		line += ": " + out
	}
	details = append(details, line)
	return strings.Join(details, "\n"), nil
}

// scratchSuperuser finds the scratch copy's bootstrap superuser, which
// pg_amcheck runs as, and counts its databases. Any role can log in
// (trust); the source's role and postgres are the likely ones.
func (m *Manager) scratchSuperuser(ctx context.Context, port int) (string, int, error) {
	var candidates []string
	if m.cfg.Source != nil {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if src, err := m.cfg.Source(sctx); err == nil && src.User != "" {
			candidates = append(candidates, src.User)
		}
		cancel()
	}
	candidates = append(candidates, "postgres")
	if m.as != nil {
		candidates = append(candidates, m.as.name)
	} else if name := os.Getenv("USER"); name != "" {
		candidates = append(candidates, name)
	}
	var last error
	for _, user := range candidates {
		src := Source{Host: "127.0.0.1", Port: port, User: user, DBName: "template1", Params: map[string]string{"sslmode": "disable"}}
		conn, err := pgx.Connect(ctx, src.conninfo(false))
		if err != nil {
			last = err
			continue
		}
		var super string
		var dbs int
		err = conn.QueryRow(ctx, "SELECT (SELECT rolname FROM pg_roles WHERE oid = 10), (SELECT count(*) FROM pg_database WHERE datallowconn)").Scan(&super, &dbs)
		conn.Close(context.Background())
		if err != nil {
			return "", 0, fmt.Errorf("reading the scratch copy's roles: %w", err)
		}
		return super, dbs, nil
	}
	return "", 0, fmt.Errorf("logging in to the scratch copy as any of %v: %w", candidates, last)
}

// recordVerified rewrites the backup's manifest with res, unless the
// backup was deleted meanwhile.
func (m *Manager) recordVerified(ctx context.Context, id string, res VerifyResult) error {
	m.catalogMu.Lock()
	defer m.catalogMu.Unlock()
	man, err := readManifest(ctx, m.cfg.Repo, m.cfg.Cluster, id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	man.Verified = &res
	return writeManifest(ctx, m.cfg.Repo, man)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
