// Command fjord-cp is the Fjord control plane. In standalone mode it serves
// the Kubernetes YAML of a directory (--config-dir) and keeps its state in
// --data-dir; this file only turns flags into a controlplane.Config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/fjordmesh/fjord/controlplane"
	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/watcher"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// run returns the exit code: 0 after a clean shutdown, 1 when the control
// plane fails, 2 for bad flags.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("fjord-cp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg      controlplane.Config
		logLevel slog.Level
	)
	fs.StringVar(&cfg.ConfigDir, "config-dir", "", "directory of Kubernetes YAML to serve (standalone mode; required)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for durable state, DATA/fjord.db (required)")
	fs.StringVar(&cfg.XDSAddress, "xds-address", "127.0.0.1:15010", "plaintext xDS listen address")
	fs.StringVar(&cfg.MonitoringAddress, "monitoring-address", "127.0.0.1:15014", "listen address of /healthz, /readyz, /metrics and /debug/")
	fs.StringVar(&cfg.MeshNamespace, "namespace", policy.DefaultMeshNamespace, "the control plane's namespace: policies there without targetRefs are mesh-wide defaults")
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.DurationVar(&cfg.HoldOff, "debounce", watcher.DefaultHoldOff, "how long config changes must be quiet before a rebuild")
	fs.DurationVar(&cfg.MaxDelay, "max-delay", watcher.DefaultMaxDelay, "longest a config change waits for a rebuild under a stream of changes")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: fjord-cp --config-dir CONF --data-dir DATA [flags]\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fjord-cp: unexpected arguments %q\n", fs.Args())
		return 2
	}
	for _, req := range []struct{ flag, v string }{{"config-dir", cfg.ConfigDir}, {"data-dir", cfg.DataDir}} {
		if req.v == "" {
			fmt.Fprintf(stderr, "fjord-cp: --%s is required\n", req.flag)
			fs.Usage()
			return 2
		}
	}
	if cfg.HoldOff <= 0 || cfg.MaxDelay < cfg.HoldOff {
		fmt.Fprintf(stderr, "fjord-cp: want 0 < --debounce (%s) <= --max-delay (%s)\n", cfg.HoldOff, cfg.MaxDelay)
		return 2
	}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))
	if err := controlplane.Run(ctx, cfg); err != nil {
		cfg.Log.Error("fjord-cp failed", "error", err)
		return 1
	}
	cfg.Log.Info("stopped")
	return 0
}
