// Command fjord-cp is the Fjord control plane. In standalone mode it serves
// the Kubernetes YAML of a directory (--config-dir) and keeps its state in
// --data-dir; without --config-dir it runs in Kubernetes mode, on the API
// server of --kubeconfig or, in a pod, its in-cluster config. This file only
// turns flags into a controlplane.Config.
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
	"slices"
	"strings"
	"syscall"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/controlplane"
	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/watcher"
	"github.com/fjordmesh/fjord/watcher/model"
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
		kube     controlplane.KubeOptions
		kubecfg  string
		logLevel slog.Level
	)
	fs.StringVar(&cfg.ConfigDir, "config-dir", "", "directory of Kubernetes YAML to serve (standalone mode); without it, Kubernetes mode")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for durable state, DATA/fjord.db (required in standalone mode)")
	fs.StringVar(&kubecfg, "kubeconfig", "", "kubeconfig of the API server (Kubernetes mode); default: the in-cluster config")
	fs.StringVar(&kube.NamespaceSelector, "namespace-selector", watcher.DefaultNamespaceSelector, "label selector of the meshed namespaces (Kubernetes mode)")
	fs.BoolVar(&kube.LeaderElect, "leader-elect", true, "elect the replica that writes status on a Lease in --namespace (Kubernetes mode)")
	fs.StringVar(&kube.CAIssuer, "ca-issuer", controlplane.CAIssuerBuiltin, `the CA (Kubernetes mode): "builtin" (Fjord's own, in Secret fjord-ca of --namespace) or "cert-manager" (the signing intermediate is a cert-manager Certificate issued by --ca-issuer-ref)`)
	fs.StringVar(&kube.CAIssuerRef, "ca-issuer-ref", "", "Issuer/NAME (in --namespace) or ClusterIssuer/NAME that issues the signing intermediate (with --ca-issuer cert-manager)")
	fs.StringVar(&kube.TokenAudience, "token-audience", watcher.DefaultTokenAudience, "audience the workloads' projected service-account tokens must be minted for (Kubernetes mode)")
	fs.StringVar(&cfg.XDSAddress, "xds-address", "127.0.0.1:15010", `plaintext (development) xDS listen address; "" turns it off (the default in Kubernetes mode)`)
	fs.StringVar(&cfg.Identity.SecureAddress, "secure-address", "127.0.0.1:15012", `TLS listen address of the certificate API and authenticated xDS; "" turns identity off`)
	fs.StringVar(&cfg.Identity.TrustDomain, "trust-domain", certs.DefaultTrustDomain, "trust domain of the mesh's SPIFFE IDs")
	fs.DurationVar(&cfg.Identity.LeafTTL, "leaf-ttl", certs.DefaultLeafTTL, "lifetime of workload certificates")
	fs.DurationVar(&cfg.Identity.Skew, "ca-skew", certs.DefaultSkew, "clock skew between the control plane and workloads that the built-in CA allows for: added to each root rotation phase (which lasts --leaf-ttl plus this)")
	fs.StringVar(&cfg.Identity.ServiceAccount, "service-account", controlplane.DefaultServiceAccount, "the control plane's service account (in --namespace): its own SPIFFE ID")
	fs.StringVar(&cfg.MonitoringAddress, "monitoring-address", "127.0.0.1:15014", "listen address of /healthz, /readyz, /metrics and /debug/")
	fs.StringVar(&cfg.MeshNamespace, "namespace", policy.DefaultMeshNamespace, "the control plane's namespace: policies there without targetRefs are mesh-wide defaults")
	fs.Var((*exportToFlag)(&cfg.DefaultExportTo), "default-export-to", `which namespaces' proxies may see a Service without the fjord.dev/export-to annotation, comma-separated: "*" (every namespace), "." (the Service's own) or namespace names; "." makes Services private to their namespace unless they say otherwise`)
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.DurationVar(&cfg.HoldOff, "debounce", watcher.DefaultHoldOff, "how long config changes must be quiet before a rebuild")
	fs.DurationVar(&cfg.EndpointHoldOff, "endpoint-debounce", watcher.DefaultEndpointHoldOff, "how long changes to endpoints only (EndpointSlices, pods) must be quiet before a rebuild; default capped at --debounce")
	fs.BoolVar(&cfg.Translate.MTLS, "mtls", false, "serve clusters and gRPC server listeners with mutual TLS through the workloads' identity agents")
	fs.DurationVar(&cfg.MaxDelay, "max-delay", watcher.DefaultMaxDelay, "longest a config change waits for a rebuild under a stream of changes")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: fjord-cp --config-dir CONF --data-dir DATA [flags]   (standalone)\n"+
			"       fjord-cp [--kubeconfig FILE] [flags]                  (Kubernetes)\n\nFlags:\n")
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
	// Clients expect the SPIFFE IDs of the trust domain the CA issues in.
	cfg.Translate.TrustDomain = cfg.Identity.TrustDomain
	if code := checkMode(fs, cfg, stderr); code != 0 {
		return code
	}
	if err := checkCAIssuer(kube); err != nil {
		fmt.Fprintf(stderr, "fjord-cp: %v\n", err)
		return 2
	}
	if err := checkDebounce(fs, &cfg); err != nil {
		fmt.Fprintf(stderr, "fjord-cp: %v\n", err)
		return 2
	}
	cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))
	run := controlplane.Run
	if cfg.ConfigDir == "" {
		var err error
		if kube.REST, err = restConfig(kubecfg, cfg.Log); err != nil {
			fmt.Fprintf(stderr, "fjord-cp: %v\n", err)
			return 1
		}
		if !set(fs, "xds-address") {
			cfg.XDSAddress = ""
		}
		run = func(ctx context.Context, cfg controlplane.Config) error { return controlplane.RunKube(ctx, cfg, kube) }
	}
	if err := run(ctx, cfg); err != nil {
		cfg.Log.Error("fjord-cp failed", "error", err)
		return 1
	}
	cfg.Log.Info("stopped")
	return 0
}

// exportToFlag is --default-export-to: a list in model.ParseExportTo's
// form, nil for every namespace (the default, "*").
type exportToFlag []string

func (f *exportToFlag) String() string {
	if f == nil || len(*f) == 0 {
		return model.ExportAll
	}
	return strings.Join(*f, ",")
}

func (f *exportToFlag) Set(v string) error {
	list, err := model.ParseExportTo(v)
	if err != nil {
		return err
	}
	if slices.Contains(list, model.ExportAll) {
		list = nil
	}
	*f = list
	return nil
}

// checkMode checks that the flags make one mode: --config-dir with
// --data-dir (standalone), or Kubernetes mode, whose flags mean nothing to
// standalone mode. It returns 0 or the exit code.
func checkMode(fs *flag.FlagSet, cfg controlplane.Config, stderr io.Writer) int {
	if cfg.ConfigDir != "" {
		for _, name := range []string{"kubeconfig", "namespace-selector", "leader-elect", "ca-issuer", "ca-issuer-ref", "token-audience"} {
			if set(fs, name) {
				fmt.Fprintf(stderr, "fjord-cp: --%s is for Kubernetes mode; it cannot be used with --config-dir\n", name)
				return 2
			}
		}
		if cfg.DataDir == "" {
			fmt.Fprintf(stderr, "fjord-cp: --data-dir is required with --config-dir\n")
			fs.Usage()
			return 2
		}
	}
	return 0
}

// checkCAIssuer checks --ca-issuer and --ca-issuer-ref, which go together.
func checkCAIssuer(kube controlplane.KubeOptions) error {
	switch kube.CAIssuer {
	case controlplane.CAIssuerBuiltin:
		if kube.CAIssuerRef != "" {
			return fmt.Errorf("--ca-issuer-ref is for --ca-issuer %s", controlplane.CAIssuerCertManager)
		}
	case controlplane.CAIssuerCertManager:
		if kube.CAIssuerRef == "" {
			return errors.New("--ca-issuer cert-manager needs --ca-issuer-ref Issuer/NAME or ClusterIssuer/NAME")
		}
		if _, err := watcher.ParseIssuerRef(kube.CAIssuerRef); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--ca-issuer %q: want %s or %s", kube.CAIssuer, controlplane.CAIssuerBuiltin, controlplane.CAIssuerCertManager)
	}
	return nil
}

// checkDebounce checks the coalescing windows. An --endpoint-debounce left
// at its default follows a shorter --debounce down, so that lowering
// --debounce alone still works.
func checkDebounce(fs *flag.FlagSet, cfg *controlplane.Config) error {
	if cfg.HoldOff <= 0 || cfg.MaxDelay < cfg.HoldOff {
		return fmt.Errorf("want 0 < --debounce (%s) <= --max-delay (%s)", cfg.HoldOff, cfg.MaxDelay)
	}
	if !set(fs, "endpoint-debounce") {
		cfg.EndpointHoldOff = min(cfg.EndpointHoldOff, cfg.HoldOff)
	}
	if cfg.EndpointHoldOff <= 0 || cfg.EndpointHoldOff > cfg.HoldOff {
		return fmt.Errorf("want 0 < --endpoint-debounce (%s) <= --debounce (%s)", cfg.EndpointHoldOff, cfg.HoldOff)
	}
	return nil
}

// set says whether a flag was given.
func set(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

// restConfig reads the kubeconfig, or the in-cluster config when there is
// none, and sends client-go's and controller-runtime's own logs (klog and
// the global logr) to log.
func restConfig(kubeconfig string, log *slog.Logger) (*rest.Config, error) {
	klog.SetSlogLogger(log.With("component", "client-go"))
	ctrllog.SetLogger(logr.FromSlogHandler(log.With("component", "controller-runtime").Handler()))
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no --config-dir and no --kubeconfig, and not in a cluster: %w", err)
	}
	return c, nil
}
