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
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgshield/pgshield/admin"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/metrics"
	"github.com/pgshield/pgshield/poolmgr"
	"github.com/pgshield/pgshield/proxy"
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
	log, err := newLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, cfg, func() (*config.File, error) { return config.Load(*path) }, log, nil)
}

// serve runs the proxy until ctx ends, reloading on SIGHUP. ready, when
// set, is called with the proxy's address once it accepts clients.
func serve(ctx context.Context, cfg *config.File, reload func() (*config.File, error), log *zap.Logger, ready func(addr string)) error {
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
	alerter := metrics.NewAlerter(m, metrics.AlertConfig{}, nil)
	go alerter.Run(ctx, 15*time.Second)

	// SIGHUP and the console's RELOAD apply the file one at a time.
	var reloadMu sync.Mutex
	doReload := func() error {
		reloadMu.Lock()
		defer reloadMu.Unlock()
		next, err := reload()
		if err == nil {
			err = applyReload(next, pools, srv)
		}
		return err
	}
	live := admin.NewLive(srv, pools, topo, alerter, doReload, versionString(),
		[][2]string{{"admin_listen", aln.Addr().String()}, {"metrics_listen", mln.Addr().String()}})
	console := admin.NewConsole(srv.AcceptAdmin, live, log.Named("admin"))
	go func() {
		if err := console.Serve(aln); err != nil {
			log.Error("admin listener", zap.Error(err))
		}
	}()
	log.Info("admin console", zap.String("listen", aln.Addr().String()))
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
			if err := doReload(); err != nil {
				log.Error("configuration reload refused; the previous configuration stays", zap.Error(err))
				continue
			}
			log.Info("configuration reloaded")
		case err := <-served:
			return err
		case <-ctx.Done():
			log.Info("shutting down", zap.Duration("timeout", cfg.Proxy.ShutdownTimeout))
			sctx, cancel := context.WithTimeout(context.Background(), cfg.Proxy.ShutdownTimeout)
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

// applyReload swaps in a configuration that has already been validated as
// a whole by config.Load.
func applyReload(next *config.File, pools *poolmgr.Manager, srv *proxy.Server) error {
	if err := pools.Update(next.Pools); err != nil {
		return err
	}
	return srv.Reload(next.Proxy)
}

func newLogger(c config.Log) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.Set(c.Level); err != nil {
		return nil, err
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
		return nil, errors.Join(errors.New("building logger"), err)
	}
	return log, nil
}
