package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgshield/pgshield/admin"
	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/crypto"
	"github.com/pgshield/pgshield/metrics"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
	"github.com/pgshield/pgshield/router"
)

func serveCmd(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := fs.String("config", "pgshield.yaml", "configuration `file`")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to `file` until shutdown (read it with go tool pprof)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	log, level, err := newLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, cfg, func() (*config.File, error) { return config.Load(*path) }, log, level, nil)
}

// serve runs the proxy until ctx ends, reloading on SIGHUP. load reads the
// configuration file again; level is the level of log, which a reload
// changes. ready, when set, is called with the proxy's address once it
// accepts clients.
func serve(ctx context.Context, cfg *config.File, load func() (*config.File, error), log *zap.Logger, level zap.AtomicLevel,
	ready func(addr string)) error {
	pools, err := poolmgr.New(cfg.Pools, log.Named("poolmgr"))
	if err != nil {
		return err
	}
	topo := proxy.NewTopology(cfg.Routing, pools, log.Named("router"))
	srv, err := proxy.New(cfg.Proxy, pools, topo, log.Named("proxy"))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Proxy.Listen)
	if err != nil {
		return err
	}
	mln, err := net.Listen("tcp", cfg.MetricsListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("metrics_listen: %w", err)
	}
	aln, err := net.Listen("tcp", cfg.AdminListen)
	if err != nil {
		ln.Close()
		mln.Close()
		return fmt.Errorf("admin_listen: %w", err)
	}
	pools.Start(ctx)
	topo.Start(ctx)
	defer topo.Close()
	m := metrics.New(proxy.MetricsSource(srv, pools, topo))
	srv.SetMetrics(m)
	// One count of what the policy judged serves every policy loaded in
	// turn (SHOW POLICY shows the counts of the one in force).
	counts := proxy.NewPolicyCounts(m)
	if cfg.Policy != nil {
		srv.SetPolicy(cfg.Policy, counts)
	}
	// Encrypted columns need their keyring: without it pgshield does not
	// start rather than hand out ciphertext or write plaintext.
	enc, err := cfg.LoadEncryption(ctx, os.Getenv)
	if err != nil {
		ln.Close()
		mln.Close()
		aln.Close()
		return err
	}
	srv.SetEncryption(enc, m)
	alerter := metrics.NewAlerter(m, metrics.AlertConfig{}, nil)
	go alerter.Run(ctx, 15*time.Second)

	// SIGHUP, the console's RELOAD, SET and RESET change the configuration
	// one at a time, each as a whole.
	run := newRunning(cfg, load, func(old, next *config.File) error {
		return applyConfig(ctx, old, next, pools, srv, topo, level, counts, m)
	}, log)
	live := admin.NewLive(srv, pools, topo, alerter, consoleSettings{run}, versionString(), func() [][2]string {
		cur := run.current()
		return [][2]string{{"admin_listen", aln.Addr().String()}, {"metrics_listen", mln.Addr().String()},
			{"log.level", cur.Log.Level}, {"log.format", cur.Log.Format}}
	})
	live.SetKeyConfig(func() admin.KeyConfig { return keyConfig(run.current()) })
	var jobOpts []admin.JobsOption
	if path := cfg.JobsPath(); path != "" {
		store, err := admin.OpenJobStore(path)
		if err != nil {
			return fmt.Errorf("jobs_file: %w", err)
		}
		jobOpts = append(jobOpts, admin.WithStore(store))
	}
	jobs := admin.NewJobs(log.Named("jobs"), nil, jobOpts...)
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = jobs.Close(sctx)
	}()
	console := admin.NewConsole(srv.AcceptAdmin, live, log.Named("admin"), admin.WithJobs(jobs))
	go func() {
		if err := console.Serve(aln); err != nil {
			log.Error("admin listener", zap.Error(err))
		}
	}()
	log.Info("admin console", zap.String("listen", aln.Addr().String()))
	// Re-encryptions a previous run left unfinished go on (it logs what
	// it resumes and what it cannot); serve does not return before it has.
	resumed := make(chan struct{})
	go func() {
		defer close(resumed)
		_, _ = console.ResumeJobs(ctx)
	}()
	defer func() { <-resumed }()
	waitBackups, err := startBackups(ctx, cfg, run.current, topo, jobs, live, m, log)
	if err != nil {
		return err
	}
	defer waitBackups()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = console.Shutdown(sctx)
	}()
	web := admin.NewHTTP(m.Registry, proxy.Ready(topo), log.Named("http"))
	go func() {
		if err := web.Serve(mln); err != nil {
			log.Error("metrics listener", zap.Error(err))
		}
	}()
	log.Info("metrics and health endpoints", zap.String("listen", mln.Addr().String()))
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = web.Shutdown(sctx)
	}()
	log.Info("pgshield listening", zap.String("listen", ln.Addr().String()))

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if ready != nil {
		ready(ln.Addr().String())
	}
	for {
		select {
		case <-hup:
			_ = run.reload("SIGHUP") // logged either way
		case err := <-served:
			return err
		case <-ctx.Done():
			timeout := run.current().Proxy.ShutdownTimeout
			log.Info("shutting down", zap.Duration("timeout", timeout))
			sctx, cancel := context.WithTimeout(context.Background(), timeout)
			err := srv.Shutdown(sctx)
			pools.Close(sctx)
			cancel()
			<-served
			if err != nil {
				return fmt.Errorf("shutdown: %w", err)
			}
			return nil
		}
	}
}

// applyConfig puts next, validated as a whole already, in force in every
// part: pools, proxy (with the parse cache), routing and the log level. A
// part that refuses it (what it checks passed validation, so only a
// change since, such as a certificate file gone, can) has the parts
// before it put back to old: all or nothing. The keys fixed at start are
// the same in both (running checks them). Databases added or removed
// reach the pools but not the topology, which keeps the hosts it started
// with. counts counts what the policy judges.
func applyConfig(ctx context.Context, old, next *config.File, pools *poolmgr.Manager, srv *proxy.Server, topo *router.Topology, level zap.AtomicLevel,
	counts *proxy.PolicyCounts, m *metrics.Metrics) error {
	lvl, err := zapcore.ParseLevel(next.Log.Level)
	if err != nil {
		return fmt.Errorf("log.level: %w", err)
	}
	// The keyring is read again (another pgshield may have rotated it);
	// one that does not load refuses the whole reload.
	enc, err := next.LoadEncryption(ctx, os.Getenv)
	if err != nil {
		return err
	}
	if err := pools.Update(next.Pools); err != nil {
		return err
	}
	if err := srv.Reload(next.Proxy); err != nil {
		_ = pools.Update(old.Pools)
		return err
	}
	if err := topo.Update(routingConfig(next)); err != nil {
		_ = srv.Reload(old.Proxy)
		_ = pools.Update(old.Pools)
		return err
	}
	level.SetLevel(lvl)
	if next.Policy != old.Policy {
		srv.SetPolicy(next.Policy, counts)
	}
	if enc != nil && enc.Keys != nil && olderKeyring(enc.Keys, srv.Keyring()) {
		// The file was read before a ROTATE KEY saved it: keep the
		// keyring in force, which has every key the file had and more.
		enc.Keys = srv.Keyring()
	}
	srv.SetEncryption(enc, m)
	return nil
}

// olderKeyring reports whether every key of read is in cur, which has
// more: read is an earlier state of the same keyring.
func olderKeyring(read, cur *crypto.Keyring) bool {
	if cur == nil {
		return false
	}
	have := map[uint32]bool{}
	for _, k := range cur.Keys() {
		have[k.ID] = k.Enabled
	}
	rk := read.Keys()
	if len(rk) >= len(have) {
		return false
	}
	for _, k := range rk {
		if _, ok := have[k.ID]; !ok {
			return false
		}
	}
	return true
}

// keyConfig is what the console's key commands (ROTATE KEY, RETIRE KEY,
// REENCRYPT) take from the configuration in force: the keyring file, the
// master key from the environment, as at start, and the encryption
// section's settings.
func keyConfig(f *config.File) admin.KeyConfig {
	return admin.KeyConfig{
		KeysetFile: f.KeysetPath(),
		KeySource:  func() (crypto.KeySource, error) { return crypto.EnvKeySourceFrom(os.Getenv) },
		KeepKeys:   f.Encryption.KeepKeys,
		BatchRows:  f.Encryption.Reencrypt.BatchRows,
		Pause:      f.Encryption.Reencrypt.Pause,
	}
}

// routingConfig is the topology's configuration: the routing section with
// the check intervals of the pool settings, as proxy.NewTopology fills
// them in.
func routingConfig(f *config.File) router.TopologyConfig {
	rc := f.Routing
	rc.HealthCheckInterval = f.Pools.Pool.HealthCheckInterval
	rc.CheckTimeout = f.Pools.Pool.ConnectTimeout
	return rc
}

// newLogger builds the logger of c; the level it returns changes its
// level at run time.
func newLogger(c config.Log) (*zap.Logger, zap.AtomicLevel, error) {
	lvl, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, zap.AtomicLevel{}, fmt.Errorf("log.level: %w", err)
	}
	zc := zap.NewProductionConfig()
	if c.Format == "console" {
		zc = zap.NewDevelopmentConfig()
		zc.DisableStacktrace = true
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.OutputPaths = []string{"stderr"}
	log, err := zc.Build()
	if err != nil {
		return nil, zap.AtomicLevel{}, errors.Join(errors.New("building logger"), err)
	}
	return log, zc.Level, nil
}
