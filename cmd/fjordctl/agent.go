package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/fjordmesh/fjord/agent"
	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/xds/node"
)

func newAgent() *cobra.Command {
	var (
		cfg                   agent.Config
		identity, trustDomain string
		tokenPath, caPath     string
		sdsSocket, outDir     string
		sdsUIDs               []int
		workload, xdsAddress  string
		refresh               time.Duration
		logLevel              slog.Level
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the pod-local identity agent",
		Long: `Run the identity agent for one workload. It makes the workload's private key
in memory, has it certified through the control plane's certificate API
(authenticated by --token-file, the control plane verified with --ca-file),
renews at 2/3 of the certificate's lifetime, and hands the result to the
local data plane:

  --sds-socket PATH  Envoy: SDS on a Unix socket (mode 0600; only the user ids
                     of --sds-allow-uid may connect), secrets "default"
                     (certificate and key) and "ROOTCA" (trust bundle)
  --out-dir DIR      proxyless gRPC: key.pem (0600), cert.pem, ca.pem, kept
                     current, and bootstrap.json, a gRPC xDS bootstrap whose
                     file_watcher certificate provider "default" reads them
                     and whose channel to --xds-address (authenticated xDS)
                     presents them

The key never leaves this process, except to the local data plane.`,
		Example: "  fjordctl agent --identity demo/client --token-file /run/fjord/token --ca-file /run/fjord/ca.pem \\\n" +
			"      --out-dir /run/fjord/certs --name client",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if sdsSocket == "" && outDir == "" {
				return errors.New("nothing to deliver to: set --sds-socket, --out-dir or both")
			}
			sa, err := certs.ParseServiceAccount(identity)
			if err != nil {
				return err
			}
			if cfg.Identity, err = certs.NewIdentity(trustDomain, sa); err != nil {
				return err
			}
			cfg.Token = func() (string, error) {
				b, err := os.ReadFile(tokenPath)
				if err != nil {
					return "", err
				}
				return strings.TrimSpace(string(b)), nil
			}
			if _, err := cfg.Token(); err != nil {
				return fmt.Errorf("--token-file: %w", err)
			}
			pemRoots, err := os.ReadFile(caPath)
			if err != nil {
				return fmt.Errorf("--ca-file: %w", err)
			}
			if cfg.Bundle, err = certs.ParseCerts(pemRoots); err != nil {
				return fmt.Errorf("--ca-file %s: %w", caPath, err)
			}
			cfg.Log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: logLevel}))
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runAgent(ctx, a, cfg.Log, agentDelivery{
				sdsSocket: sdsSocket, sdsUIDs: sdsUIDs, outDir: outDir, refresh: refresh,
				info:       node.Info{Namespace: sa.Namespace, Workload: workload, ServiceAccount: sa.Name, Kind: node.GRPC},
				xdsAddress: xdsAddress,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Address, "address", "127.0.0.1:15012", "the control plane's certificate API (host:port; the host must be in its serving certificate)")
	f.StringVar(&identity, "identity", "", "NAMESPACE/SERVICE-ACCOUNT of the workload (required)")
	f.StringVar(&trustDomain, "trust-domain", certs.DefaultTrustDomain, "the mesh's trust domain")
	f.StringVar(&tokenPath, "token-file", "", "file holding the token, re-read for every request (required)")
	f.StringVar(&caPath, "ca-file", "", "PEM roots to verify the control plane with at first (required)")
	f.DurationVar(&cfg.TTL, "ttl", 0, "certificate lifetime to ask for (default: the control plane's)")
	f.StringVar(&sdsSocket, "sds-socket", "", "serve SDS for Envoy on this Unix socket")
	f.IntSliceVar(&sdsUIDs, "sds-allow-uid", []int{os.Getuid()}, "user ids allowed on the SDS socket (Envoy's)")
	f.StringVar(&outDir, "out-dir", "", "keep key.pem, cert.pem, ca.pem and bootstrap.json in this directory")
	f.StringVar(&workload, "name", "", "workload name for the node in bootstrap.json (with --out-dir; default: the service account)")
	f.StringVar(&xdsAddress, "xds-address", "127.0.0.1:15012", "control plane's authenticated xDS address for bootstrap.json (TLS with the workload's certificate)")
	f.DurationVar(&refresh, "refresh-interval", 0, "how often gRPC re-reads the files (bootstrap.json); default: a sixth of the certificate's lifetime, at most "+agent.DefaultRefreshInterval.String())
	f.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	for _, name := range []string{"identity", "token-file", "ca-file"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// agentDelivery is where the agent hands the credentials.
type agentDelivery struct {
	sdsSocket  string
	sdsUIDs    []int
	outDir     string
	refresh    time.Duration
	info       node.Info
	xdsAddress string
}

// runAgent renews until ctx ends and delivers: the bootstrap and files are
// written once the first certificate is there, so a gRPC process started
// after them never reads an empty directory.
func runAgent(ctx context.Context, a *agent.Agent, log *slog.Logger, d agentDelivery) error {
	var boot []byte
	if d.outDir != "" {
		if d.info.Workload == "" {
			d.info.Workload = d.info.ServiceAccount
		}
		if err := os.MkdirAll(d.outDir, 0o700); err != nil {
			return fmt.Errorf("--out-dir: %w", err)
		}
		if d.refresh != 0 {
			var err error
			if boot, err = agent.GRPCBootstrap(d.info, d.xdsAddress, d.outDir, d.refresh); err != nil {
				return err
			}
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	if d.sdsSocket != "" {
		lis, err := agent.ListenSDS(d.sdsSocket, d.sdsUIDs, log)
		if err != nil {
			return err
		}
		log.Info("serving SDS", "socket", d.sdsSocket, "allowed_uids", d.sdsUIDs)
		g.Go(func() error { return a.ServeSDS(ctx, lis) })
	}
	g.Go(func() error { return a.Run(ctx) })
	if d.outDir != "" {
		g.Go(func() error {
			if _, err := a.WaitReady(ctx); err != nil {
				return nil // stopped before the first certificate
			}
			if err := agent.WriteFiles(d.outDir, a.Current()); err != nil {
				return err
			}
			if boot == nil {
				var err error
				refresh := agent.RefreshFor(a.Current().Leaf())
				if boot, err = agent.GRPCBootstrap(d.info, d.xdsAddress, d.outDir, refresh); err != nil {
					return err
				}
			}
			if err := agent.WriteFileAtomic(filepath.Join(d.outDir, agent.BootstrapFile), boot, 0o644); err != nil {
				return err
			}
			log.Info("wrote credentials and gRPC bootstrap", "dir", d.outDir)
			return a.WriteOnChange(ctx, d.outDir)
		})
	}
	return g.Wait()
}
