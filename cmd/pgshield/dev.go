package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/internal/devcert"
	"github.com/pgshield/pgshield/internal/example"
	"github.com/pgshield/pgshield/internal/pgcluster"
	"github.com/pgshield/pgshield/policy"
)

// devCmd starts a throwaway primary and synchronous replica under a
// directory (reused on the next run) and serves the proxy in front of them.
func devCmd(args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	dir := fs.String("dir", ".pgshield-dev", "`directory` for the clusters, certificates and configuration (reused, ports included)")
	listen := fs.String("listen", "127.0.0.1:6432", "proxy `address`")
	adminListen := fs.String("admin-listen", config.DefaultAdminListen, "admin console `address`")
	metricsListen := fs.String("metrics-listen", config.DefaultMetricsListen, "metrics and health `address`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return err
	}
	// Nothing may start or stop before these checks: the clusters of a
	// directory in use belong to the other pgshield dev.
	lock, err := lockDir(abs, *dir)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := checkListen([][2]string{{"--listen", *listen}, {"--admin-listen", *adminListen}, {"--metrics-listen", *metricsListen}}); err != nil {
		return err
	}
	say := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "pgshield dev: "+format+"\n", a...) }

	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	say("starting PostgreSQL primary in %s", filepath.Join(*dir, "primary"))
	primary, err := pgcluster.Start(startCtx, pgcluster.Options{Dir: filepath.Join(abs, "primary"), SSL: true})
	if err != nil {
		return fmt.Errorf("starting the primary: %w", err)
	}
	defer stopCluster(primary, say)
	sayMoved(primary, "primary", say)
	say("starting a synchronous streaming replica")
	replica, err := primary.AddReplica(startCtx, pgcluster.ReplicaOptions{Name: "replica1", Sync: true})
	if err != nil {
		return fmt.Errorf("starting the replica: %w", err)
	}
	defer stopCluster(replica, say)
	sayMoved(replica, "replica", say)
	if err := primary.CreateRole(startCtx, "app", "app", true); err != nil {
		return err
	}
	if err := primary.CreateDatabase(startCtx, "app", "app"); err != nil {
		return err
	}
	// pgshield connects as app, promotes the replica on failover, and
	// reads every session's statistics for the admin console's SHOW
	// HEALTH and SHOW LOCKS (pg_monitor).
	if err := primary.Exec(startCtx, "postgres", "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app; GRANT pg_monitor TO app"); err != nil {
		return err
	}
	// A function's privileges are per database: failover promotes
	// through a connection to app.
	if err := primary.Exec(startCtx, "app", "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app"); err != nil {
		return err
	}
	certs, err := devcert.Generate(filepath.Join(abs, "certs"))
	if err != nil {
		return err
	}
	// The example application: its schema, its policy (written once, so
	// that edits to it survive the next run) and the SQL the policy
	// compiles to, so that what bypasses pgshield keeps the rules too.
	policyPath := filepath.Join(abs, "policy.yaml")
	if _, err := os.Stat(policyPath); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(policyPath, []byte(example.Policy()), 0o644); err != nil {
			return err
		}
	}
	// The example's encrypted columns need a keyring and its master key:
	// made up once for this directory, unless the environment gives one.
	envPath, err := devKeys(startCtx, abs)
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(abs, "pgshield.yaml")
	pgBin, err := pgcluster.BinDir()
	if err != nil {
		return err
	}
	yaml := devConfig(*listen, *adminListen, *metricsListen, certs, primary, replica, pgBin) + example.Encryption()
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		return err
	}
	if err := shareWithServer(cfgPath, filepath.Join(abs, "backups")); err != nil {
		return err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	say("creating the example application's tables and applying its policy (%s)", filepath.Join(*dir, "policy.yaml"))
	if err := primary.Exec(startCtx, "app", "SET ROLE app;\n"+example.Schema()+"\n"+policy.SQLFor(cfg.Policy, "app", cfg.Encrypted("app"))); err != nil {
		return fmt.Errorf("the example application: %w", err)
	}
	log, level, err := newLogger(config.Log{Level: "info", Format: "console"})
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	ready := func(addr string) {
		host, port := splitAddr(addr)
		ahost, aport := splitAddr(*adminListen)
		fmt.Printf("\nDATABASE_URL=postgres://app:app@%s:%s/app\n", host, port)
		fmt.Printf("admin console: psql -h %s -p %s -U admin pgshield   (password admin; try SHOW HELP;)\n", ahost, aport)
		fmt.Printf("metrics: http://%s/metrics   health: /healthz, /readyz\n", *metricsListen)
		fmt.Printf("config: %s   primary %s, replica %s\n", cfgPath, primary.Addr(), replica.Addr())
		fmt.Printf("policy: %s; see a refusal: psql postgres://app:app@%s:%s/app -c \"INSERT INTO leads (email) VALUES ('not-an-email')\"\n",
			policyPath, host, port)
		fmt.Printf("encryption: leads.email (deterministic), ssn, credit_card, bank_account, date_of_birth, agents.license_number, carriers.api_key; keyring %s, its master key in %s; user analyst sees masks\n",
			filepath.Join(*dir, "keys.json"), envPath)
		fmt.Printf("backups: %s, WAL archived continuously; on the console: BACKUP FULL; SHOW BACKUPS; RESTORE LATEST INTO '<a new directory>' PORT 5499\n",
			filepath.Join(*dir, "backups"))
		fmt.Printf("Ctrl-C stops the proxy and both clusters.\n\n")
	}
	load := func() (*config.File, error) { return config.Load(cfgPath) }
	return serve(ctx, cfg, load, log.With(zap.String("mode", "dev")), level, ready)
}

// lockName is the lock file of a `pgshield dev` directory.
const lockName = "pgshield.lock"

// lockDir takes the lock of a `pgshield dev` directory (shown as shown in
// messages) for as long as the returned file stays open: an exclusive
// flock(2) on dir/pgshield.lock, which holds the owner's pid. The kernel
// drops the lock when its process ends, however it ends, so the file a
// crashed run leaves behind does not block the next.
func lockDir(dir, shown string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking directory %s: %w", shown, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("locking directory %s: %w", shown, err)
		}
		owner := "another pgshield"
		if pid := lockOwner(path); pid != "" {
			owner = "pgshield pid " + pid
		}
		return nil, fmt.Errorf("directory %s is in use by %s; stop it first or pass another --dir", shown, owner)
	}
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	return f, nil
}

// lockOwner is the pid in a lock file, "" if it has none (yet: the owner
// writes it just after taking the lock).
func lockOwner(path string) string {
	for range 5 {
		data, _ := os.ReadFile(path)
		if pid := strings.TrimSpace(string(data)); pid != "" {
			return pid
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ""
}

// checkListen fails when one of the addresses (flag, address) cannot be
// listened on, so that a clash is reported before any cluster starts.
func checkListen(addrs [][2]string) error {
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a[1])
		if err != nil {
			return fmt.Errorf("%s %s is not free: %w", a[0], a[1], err)
		}
		ln.Close()
	}
	return nil
}

// sayMoved warns when a reused cluster could not have its port of the last
// run back, since a configuration written against that port breaks.
func sayMoved(c *pgcluster.Cluster, what string, say func(string, ...any)) {
	if c.LastPort != 0 && c.LastPort != c.Port {
		say("port %d, the %s's on the last run, is taken: the %s is on %d now", c.LastPort, what, what, c.Port)
	}
}

func stopCluster(c *pgcluster.Cluster, say func(string, ...any)) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	say("stopping PostgreSQL on %s", c.Addr())
	if err := c.Stop(ctx, "fast"); err != nil {
		say("stopping %s: %v", c.Addr(), err)
	}
}

func splitAddr(addr string) (host, port string) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return addr, ""
	}
	return addr[:i], addr[i+1:]
}

// devConfig writes the configuration `pgshield dev` serves; it is a real
// configuration file a user can read and copy.
func devConfig(listen, admin, metrics string, certs devcert.Files, primary, replica *pgcluster.Cluster, pgBin string) string {
	return fmt.Sprintf(`# Written by pgshield dev; rewritten on every run.
listen: %s
admin_listen: %s
metrics_listen: %s
tls: {cert_file: %q, key_file: %q, client: prefer}
users:
  - {name: app, password: app, service: api}
  - {name: analyst, password: analyst, service: analytics}
  - {name: jobs, password: jobs, service: background-jobs}
  - {name: admin, password: admin, admin: true}
databases:
  app:
    primary: %s
    replicas: [%s]
    dbname: app
    user: app
    password: app
    server_tls: {mode: verify-full, ca_file: %q}
services:
  api: {max_connections: 20, min_connections: 5, pool_mode: transaction}
pool: {connect_timeout: 5s, idle_timeout: 30m, health_check_interval: 60s, wait_timeout: 30s}
# Reads proven read-only go to the replica; the replica is synchronous, so a
# promotion loses no acknowledged commit.
routing: {failover: promote, failover_after: 3s, max_replica_lag: 10s, read_your_writes: lsn}
log: {level: info, format: console}
# Validation rules and firewall of the example application (written once;
# edit it and RELOAD on the admin console). pgshield policy sql prints the
# SQL that enforces it inside PostgreSQL too.
policy_file: policy.yaml
# Backups of database app (docs/backups.md): a local repository, WAL
# archived continuously with pg_receivewal (as the cluster's superuser,
# which may replicate), encrypted with the key from BACKUP_ENCRYPTION_KEY
# (made up in encryption.env).
backup:
  repository: {dir: backups}
  user: %s
  password: %s
  wal: true
  pg_bin: %q
`, listen, admin, metrics, certs.CertFile, certs.KeyFile, primary.Addr(), replica.Addr(), primary.CAFile, primary.User, primary.Password, pgBin)
}

// devSecrets are the variables pgshield dev makes up once for its
// directory when the environment does not give them: the keyring's
// master key, and the backups' key.
func devSecrets() []devSecret {
	return []devSecret{{crypto.EnvKey, 32}, {crypto.EnvSalt, 16}, {backupKeyEnv, 32}}
}

// devSecret is a variable and how many random bytes make it up.
type devSecret struct {
	name  string
	bytes int
}

// backupKeyEnv is the variable the backups' key comes from.
const backupKeyEnv = "BACKUP_ENCRYPTION_KEY"

// devKeys makes sure dir has the example's keyring, keys.json, and that
// the environment has the secrets of devSecrets: as given, or else as
// dir/encryption.env holds them, made up on the first run. It returns
// what names their origin.
func devKeys(ctx context.Context, dir string) (string, error) {
	envPath := filepath.Join(dir, "encryption.env")
	vars, err := devKeyEnv(envPath)
	if err != nil {
		return "", err
	}
	given := 0
	for _, v := range devSecrets() {
		if os.Getenv(v.name) != "" {
			given++
			continue
		}
		if err := os.Setenv(v.name, vars[v.name]); err != nil {
			return "", err
		}
	}
	if given == len(devSecrets()) {
		envPath = "the environment"
	}
	keysPath := filepath.Join(dir, "keys.json")
	if _, err := os.Stat(keysPath); err == nil {
		return envPath, nil
	}
	ks, err := crypto.EnvKeySourceFrom(os.Getenv)
	if err != nil {
		return "", err
	}
	k, err := crypto.NewKeyring(time.Now())
	if err != nil {
		return "", err
	}
	return envPath, k.Save(ctx, keysPath, ks)
}

// devKeyEnv reads the secrets of a dev directory, making up (random,
// hex) those it does not hold yet.
func devKeyEnv(path string) (map[string]string, error) {
	vars := map[string]string{}
	if data, err := os.ReadFile(path); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(k, "#") {
				vars[k] = v
			}
		}
	}
	missing := false
	for _, v := range devSecrets() {
		if vars[v.name] != "" {
			continue
		}
		b := make([]byte, v.bytes)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		vars[v.name], missing = hex.EncodeToString(b), true
	}
	if !missing {
		return vars, nil
	}
	body := "# Made up by pgshield dev for this directory: the master key of keys.json and the\n" +
		"# key of the backups. Export these to run pgshield serve --config pgshield.yaml,\n# pgshield keys show or pgshield restore on this directory.\n"
	for _, v := range devSecrets() {
		body += v.name + "=" + vars[v.name] + "\n"
	}
	return vars, os.WriteFile(path, []byte(body), 0o600)
}

// shareWithServer lets the OS user PostgreSQL runs as read the
// configuration and the backup repository, when that user is not this
// one (pgshield dev as root runs the clusters as postgres): a restored
// cluster's restore_command, pgshield wal-fetch, runs as that user. Both
// stay out of others' reach: the file 0640 and the repository 02750,
// with the postgres group.
func shareWithServer(cfgPath, repoDir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil // no such user: pgcluster refuses to run as root anyway
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(repoDir, 0o750); err != nil {
		return err
	}
	for _, p := range []struct {
		path string
		mode os.FileMode
	}{{cfgPath, 0o640}, {repoDir, 0o750 | os.ModeSetgid}} {
		if err := os.Chown(p.path, 0, gid); err != nil {
			return err
		}
		if err := os.Chmod(p.path, p.mode); err != nil {
			return err
		}
	}
	return nil
}
