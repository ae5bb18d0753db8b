package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"k8s.io/client-go/rest"

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
}

// RunKube runs the control plane in Kubernetes mode until ctx ends: the
// informer caches are the config source, every replica serves xDS from its
// own caches, and the elected leader writes the policies' and routes'
// status. On shutdown the xDS and monitoring servers stop first, then the
// status writer, and the Lease is released last so that another replica
// takes over status writes at once.
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
		HoldOff:           cfg.HoldOff, MaxDelay: cfg.MaxDelay,
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

	cp, err := New(cfg)
	if err != nil {
		return err
	}
	// The election and the writer outlive the servers: they end after
	// cp.Run has returned, the writer first, so a replica being replaced
	// keeps its Lease until it has stopped serving and writing, then hands
	// it over.
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
	stopLeader := func() {}
	if leader != nil {
		stopLeader = runSide("leader election", leader.Run)
	}
	stopWriter := runSide("status writer", status.Run)

	err = cp.Run(runCtx)
	stopWriter()
	stopLeader()
	if leader != nil {
		cfg.Log.Info("leader election stopped; the Lease was released if this replica held it")
	}
	mu.Lock()
	defer mu.Unlock()
	return errors.Join(err, sideErr)
}
