package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/fjordmesh/fjord/controlplane"
	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/watcher"
)

// runControlPlane is `fjord-load controlplane`: the same pipeline as
// fjord-cp in standalone mode (controlplane.Run, the same flags), plus
// /debug/pprof on --pprof-address, so that profiles of the code under load
// are one flag away while fjord-cp itself serves none.
func runControlPlane(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("fjord-load controlplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg      controlplane.Config
		logLevel slog.Level
		pprofAt  string
	)
	fs.StringVar(&cfg.ConfigDir, "config-dir", "", "directory of Kubernetes YAML to serve (required)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for durable state (required)")
	fs.StringVar(&cfg.XDSAddress, "xds-address", "127.0.0.1:15010", "plaintext xDS listen address")
	fs.StringVar(&cfg.MonitoringAddress, "monitoring-address", "127.0.0.1:15014", "listen address of /healthz, /readyz, /metrics and /debug/")
	fs.StringVar(&cfg.MeshNamespace, "namespace", policy.DefaultMeshNamespace, "the control plane's namespace")
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.DurationVar(&cfg.HoldOff, "debounce", watcher.DefaultHoldOff, "how long config changes must be quiet before a rebuild")
	fs.DurationVar(&cfg.MaxDelay, "max-delay", watcher.DefaultMaxDelay, "longest a config change waits for a rebuild")
	fs.StringVar(&pprofAt, "pprof-address", "127.0.0.1:0", "listen address of /debug/pprof/")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if cfg.ConfigDir == "" || cfg.DataDir == "" {
		fmt.Fprintln(stderr, "fjord-load controlplane: --config-dir and --data-dir are required")
		return 2
	}
	if cfg.HoldOff <= 0 || cfg.MaxDelay < cfg.HoldOff {
		fmt.Fprintf(stderr, "fjord-load controlplane: want 0 < --debounce (%s) <= --max-delay (%s)\n", cfg.HoldOff, cfg.MaxDelay)
		return 2
	}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))

	lis, err := net.Listen("tcp", pprofAt)
	if err != nil {
		cfg.Log.Error("pprof address", "error", err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Close()
	cfg.Log.Info("pprof listening", "addr", lis.Addr().String())

	if err := controlplane.Run(ctx, cfg); err != nil {
		cfg.Log.Error("control plane failed", "error", err)
		return 1
	}
	cfg.Log.Info("stopped")
	return 0
}
