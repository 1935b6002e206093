// Package admin serves operators: the admin SQL console (pgwire on the
// admin port: SHOW, PAUSE/RESUME, RELOAD, KILL, SET, READMIT and the
// statistics queries on the backends) and the HTTP endpoints for
// Prometheus and orchestrators (/metrics, /healthz, /readyz). It reads the
// rest of pgshield only through the small interfaces and functions it is
// given (Source, and Live, which joins a running proxy).
package admin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// HTTP serves /metrics, /healthz and /readyz.
type HTTP struct {
	srv *http.Server
	log *zap.Logger
}

// NewHTTP builds the handler: /metrics from reg; /healthz answers 200 while
// the process serves; /readyz answers 200 when ready reports nil (a healthy
// primary is reachable for every database), 503 with the reason otherwise.
func NewHTTP(reg *prometheus.Registry, ready func(context.Context) error, log *zap.Logger) *HTTP {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(log), Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return &HTTP{log: log, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
}

// Serve answers on ln until Shutdown.
func (h *HTTP) Serve(ln net.Listener) error {
	err := h.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits for requests in flight until ctx ends.
func (h *HTTP) Shutdown(ctx context.Context) error { return h.srv.Shutdown(ctx) }
