package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/rest"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/watcher"
)

// KubeOptions are what Kubernetes mode adds to a Config.
type KubeOptions struct {
	// REST reaches the API server (from a kubeconfig or the pod's
	// in-cluster config).
	REST *rest.Config
	// NamespaceSelector selects the meshed namespaces; empty means
	// watcher.DefaultNamespaceSelector.
	NamespaceSelector string
	// LeaderElect makes replicas elect, on a Lease in the mesh namespace,
	// the one that writes status. Without it this replica always writes:
	// run a single replica then.
	LeaderElect bool
	// Leader tunes the election (its Namespace and Log are set from the
	// Config); zero values take the watcher's defaults.
	Leader watcher.LeaderOptions
	// CAIssuer is CAIssuerBuiltin (the default: Fjord's own CA, kept in
	// Secret fjord-ca of the mesh namespace) or CAIssuerCertManager (the
	// signing intermediate is a cert-manager Certificate issued by
	// CAIssuerRef, Issuer/NAME or ClusterIssuer/NAME). Ignored when
	// identity is off, or when Config.Identity already sets a CA.
	CAIssuer    string
	CAIssuerRef string
	// TokenAudience is the audience workload tokens must be minted for;
	// empty means watcher.DefaultTokenAudience. Ignored when
	// Config.Identity already sets an Authenticator.
	TokenAudience string
}

// CA issuers of KubeOptions.CAIssuer.
const (
	CAIssuerBuiltin     = "builtin"
	CAIssuerCertManager = "cert-manager"
)

// RunKube runs the control plane in Kubernetes mode until ctx ends: the
// informer caches are the config source, every replica serves xDS from its
// own caches, and the elected leader writes the policies' and routes'
// status and, with identity on, keeps ConfigMap fjord-root-ca in every
// meshed namespace. On shutdown the xDS and monitoring servers stop first,
// then the status writer and the publisher, and the Lease is released last
// so that another replica takes over at once.
func RunKube(ctx context.Context, cfg Config, ko KubeOptions) error {
	if ko.REST == nil {
		return errors.New("kubernetes mode: no API server config")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	meshNS := cfg.MeshNamespace
	if meshNS == "" {
		meshNS = policy.DefaultMeshNamespace
	}
	src, err := watcher.NewKubeSource(ko.REST, watcher.KubeOptions{
		NamespaceSelector: ko.NamespaceSelector,
		MeshNamespace:     meshNS,
		HoldOff:           cfg.HoldOff, EndpointHoldOff: cfg.EndpointHoldOff, MaxDelay: cfg.MaxDelay,
		Log: cfg.Log.With("component", "kube-source"),
	})
	if err != nil {
		return err
	}
	var (
		elector watcher.Elector = watcher.AlwaysLeader{}
		leader  *watcher.Leader
	)
	if ko.LeaderElect {
		lo := ko.Leader
		lo.Namespace = meshNS
		lo.Log = cfg.Log.With("component", "leader-election")
		if leader, err = watcher.NewLeader(ko.REST, lo); err != nil {
			return err
		}
		elector = leader
	}
	status := watcher.NewStatusWriter(src, elector, cfg.Log.With("component", "status"))
	cfg.Source, cfg.Status, cfg.SourceOfTruth = src, status, true

	// The election, the writer and the publisher outlive the servers: they
	// end after cp.Run has returned, the writers first, so a replica being
	// replaced keeps its Lease until it has stopped serving and writing,
	// then hands it over.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		sideErr error
	)
	runSide := func(name string, run func(context.Context) error) (stop func()) {
		ctx, stopCtx := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := run(ctx); err != nil {
				mu.Lock()
				sideErr = errors.Join(sideErr, fmt.Errorf("%s: %w", name, err))
				mu.Unlock()
				cancel() // a replica that cannot take part stops
			}
		}()
		return func() { stopCtx(); <-done }
	}
	// The cert-manager intermediate is watched from the start: New waits
	// for its first version.
	stopIssuer := func() {}
	if cfg.Identity.SecureAddress != "" {
		var intermediate func(context.Context) error
		if intermediate, err = kubeIdentity(&cfg, ko, meshNS); err != nil {
			return err
		}
		if intermediate != nil {
			stopIssuer = runSide("cert-manager intermediate", intermediate)
			cfg.Log.Info("waiting for cert-manager to issue the signing intermediate",
				"certificate", meshNS+"/"+watcher.IntermediateName, "issuer", ko.CAIssuerRef)
			// New waits too, but cannot see the watch fail.
			t := time.NewTimer(caLoadTimeout)
			defer t.Stop()
			select {
			case <-cfg.Identity.Issuer.Loaded():
			case <-t.C:
				stopIssuer()
				return errNotIssued(meshNS)
			case <-runCtx.Done():
				stopIssuer()
				mu.Lock()
				defer mu.Unlock()
				return sideErr
			}
		}
	}
	cp, err := New(cfg)
	if err != nil {
		stopIssuer()
		mu.Lock()
		defer mu.Unlock()
		return errors.Join(err, sideErr)
	}
	stopPublisher := func() {}
	if bundle := cp.TrustBundle(); bundle != nil {
		pub, err := watcher.NewRootCAPublisher(ko.REST, bundle, watcher.RootCAOptions{
			NamespaceSelector: ko.NamespaceSelector, Log: cfg.Log.With("component", "root-ca-publisher"),
		})
		if err != nil {
			cp.release()
			stopIssuer()
			return err
		}
		stopPublisher = runSide("root CA publisher", func(ctx context.Context) error { return publishWhileLeading(ctx, elector, pub.Run) })
	}
	stopLeader := func() {}
	if leader != nil {
		stopLeader = runSide("leader election", leader.Run)
	}
	stopWriter := runSide("status writer", status.Run)

	err = cp.Run(runCtx)
	stopWriter()
	stopPublisher()
	stopIssuer()
	stopLeader()
	if leader != nil {
		cfg.Log.Info("leader election stopped; the Lease was released if this replica held it")
	}
	mu.Lock()
	defer mu.Unlock()
	return errors.Join(err, sideErr)
}

// kubeIdentity fills in what Kubernetes mode keeps in the API server: the
// built-in CA in Secret fjord-ca, or in cert-manager mode an issuer fed by
// the Certificate cert-manager issues, with its overlap state in Secret
// fjord-intermediate-state (whose restore and watch it returns, to be run
// before New); and TokenReview for workload tokens.
func kubeIdentity(cfg *Config, ko KubeOptions, meshNS string) (intermediate func(context.Context) error, err error) {
	id := &cfg.Identity
	if id.Authenticator == nil {
		if id.Authenticator, err = watcher.NewTokenReviewAuthenticator(ko.REST, watcher.TokenReviewOptions{
			Audience: ko.TokenAudience, Log: cfg.Log.With("component", "token-review"),
		}); err != nil {
			return nil, err
		}
	}
	if id.CAStorage != nil || id.Issuer != nil {
		return nil, nil
	}
	switch ko.CAIssuer {
	case "", CAIssuerBuiltin:
		if ko.CAIssuerRef != "" {
			return nil, fmt.Errorf("CA issuer ref %q: only for CA issuer %s", ko.CAIssuerRef, CAIssuerCertManager)
		}
		id.CAStorage, err = watcher.NewSecretStorage(ko.REST, meshNS)
		return nil, err
	case CAIssuerCertManager:
		state, err := watcher.NewIntermediateStateStorage(ko.REST, meshNS)
		if err != nil {
			return nil, err
		}
		ext := certs.NewExternalIssuer(certs.ExternalOptions{
			LeafTTL: id.LeafTTL, Skew: id.Skew, Storage: state, Log: cfg.Log.With("component", "ca"),
		})
		m, err := watcher.NewCertManagerIntermediate(ko.REST, ext, watcher.CertManagerOptions{
			Namespace: meshNS, IssuerRef: ko.CAIssuerRef, Log: cfg.Log.With("component", "cert-manager-intermediate"),
		})
		if err != nil {
			return nil, err
		}
		id.Issuer = ext
		// The overlap state a previous run stored is restored before the
		// first issued Secret is loaded on top of it.
		return func(ctx context.Context) error {
			rctx, cancel := context.WithTimeout(ctx, caLoadTimeout)
			err := ext.Restore(rctx)
			cancel()
			if err != nil {
				return fmt.Errorf("secret %s/%s: %w", meshNS, watcher.IntermediateStateName, err)
			}
			return m.Run(ctx)
		}, nil
	}
	return nil, fmt.Errorf("CA issuer %q: want %s or %s", ko.CAIssuer, CAIssuerBuiltin, CAIssuerCertManager)
}

// publishWhileLeading runs the publisher during each term of leadership, so
// that replicas whose bundles differ for a moment during a rotation do not
// take turns writing.
func publishWhileLeading(ctx context.Context, elector watcher.Elector, publish func(context.Context) error) error {
	for {
		// Await returns a live term even when ctx has ended.
		term, err := elector.Await(ctx)
		if err != nil || ctx.Err() != nil {
			return nil
		}
		lctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(term, cancel)
		err = publish(lctx)
		stop()
		cancel()
		if err != nil {
			return err
		}
	}
}
