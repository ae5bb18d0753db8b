package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fjordmesh/fjord/policy"
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/store"
	"github.com/fjordmesh/fjord/watcher"
	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/server"
	"github.com/fjordmesh/fjord/xds/translate"
)

// DefaultShutdownGrace bounds how long a shutdown waits for the servers.
const DefaultShutdownGrace = 5 * time.Second

// Config is everything Run needs.
type Config struct {
	// ConfigDir is the directory of Kubernetes YAML served in standalone
	// mode. Ignored when Source is set.
	ConfigDir string
	// Source replaces the directory source (Kubernetes mode).
	Source watcher.Source
	// SourceOfTruth says the Source holds the whole config (the API server
	// in Kubernetes mode): it is neither persisted nor served from the data
	// directory, so nothing is served before the Source's first snapshot,
	// and DataDir is optional.
	SourceOfTruth bool
	// DataDir holds fjord.db. Required unless SourceOfTruth.
	DataDir string
	// Status, if set, receives the statuses of the builds the cache
	// accepted, whenever they may have changed (Kubernetes mode: the
	// status writer, which writes them to the API server on the leader).
	// It must not block.
	Status interface {
		Update([]policy.Status, []policy.RouteStatus)
	}
	// XDSAddress and MonitoringAddress are host:port to listen on; port 0
	// picks a free port (see XDSAddr, MonitoringAddr). An empty XDSAddress
	// turns the plaintext (development) xDS port off.
	XDSAddress        string
	MonitoringAddress string
	// MeshNamespace is the control plane's namespace, where policies without
	// targetRefs are mesh-wide defaults. Default policy.DefaultMeshNamespace.
	MeshNamespace string
	// DefaultExportTo is the export-to list (model.ParseExportTo's form)
	// of every Service without the fjord.dev/export-to annotation: which
	// namespaces' proxies may see it besides its own. Nil means every
	// namespace; []string{model.ExportOwn} makes Services private to their
	// namespace unless they say otherwise.
	DefaultExportTo []string
	// HoldOff and MaxDelay tune the coalescing of config changes; zero
	// means watcher.DefaultHoldOff and watcher.DefaultMaxDelay.
	// EndpointHoldOff replaces HoldOff for changes to endpoints only; zero
	// means watcher.DefaultEndpointHoldOff (at most HoldOff).
	HoldOff, EndpointHoldOff, MaxDelay time.Duration
	// ShutdownGrace bounds the wait for servers to stop. Default
	// DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// Translate are the mesh-wide translation settings (mTLS and its trust
	// domain).
	Translate translate.Options
	// Identity configures the CA and the secure port (identity.go); off
	// unless Identity.SecureAddress is set.
	Identity IdentityConfig
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// ControlPlane is a running pipeline with its servers' listeners bound.
type ControlPlane struct {
	cfg     Config
	log     *slog.Logger
	store   *store.Store
	cache   *cache.Cache
	xds     *server.Server
	reg     *prometheus.Registry
	metrics *metrics
	source  watcher.Source
	xdsLis  net.Listener
	monLis  net.Listener
	// identity is the CA and the secure port, nil if off.
	identity *identity

	// ready turns true when a complete build has reached the cache.
	ready atomic.Bool

	// Build state, touched only by builds (one at a time: the source
	// publishes from one goroutine, and the startup build runs before it).
	builder *builder
	logged  map[string]string // status key -> last logged status
	// statusesHanded says Config.Status has had the statuses of the last
	// full build.
	statusesHanded bool

	mu       sync.Mutex // guards snapshot and mesh, read by the debug handlers
	snapshot *model.Snapshot
	mesh     *policy.Mesh
}

// Run serves until ctx ends, then stops everything and returns nil, or
// returns an error if it cannot start or a server or the source fails.
func Run(ctx context.Context, cfg Config) error {
	cp, err := New(cfg)
	if err != nil {
		return err
	}
	return cp.Run(ctx)
}

// persistDelay is how long the config saved after a build waits, so that
// the saves of a burst of changes are one write. A crash loses at most this
// much, which the config source still has.
const persistDelay = 250 * time.Millisecond

// New opens the data directory, serves the config persisted there (if any)
// from the cache at once, and binds the listeners. Call Run to serve.
func New(cfg Config) (_ *ControlPlane, err error) {
	if cfg.Source == nil && cfg.ConfigDir == "" {
		return nil, errors.New("no config source: set a config directory")
	}
	if cfg.SourceOfTruth && cfg.Source == nil {
		return nil, errors.New("source of truth: no source set")
	}
	if cfg.DataDir == "" && !cfg.SourceOfTruth {
		return nil, errors.New("no data directory")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MeshNamespace == "" {
		cfg.MeshNamespace = policy.DefaultMeshNamespace
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = DefaultShutdownGrace
	}
	cp := &ControlPlane{cfg: cfg, log: cfg.Log, logged: map[string]string{}}
	defer func() {
		if err != nil {
			cp.closeListeners()
			if cp.store != nil {
				cp.store.Close()
			}
		}
	}()

	if cfg.DataDir != "" {
		if cp.store, err = store.Open(cfg.DataDir); err != nil {
			return nil, err
		}
		// Each save is the whole config, written after every build: deferred
		// and coalesced, it never competes with the push that build started.
		cp.store.Defer(persistDelay, func(err error) {
			cfg.Log.Error("cannot persist the config; a restart would serve an older one", "error", err)
		})
	}
	cp.reg = prometheus.NewRegistry()
	cp.metrics = newMetrics(cp.reg)
	cp.cache = cache.New(cfg.Log.With("component", "xds-cache"))
	cp.builder = &builder{cache: cp.cache, meshNS: cfg.MeshNamespace, opts: cfg.Translate, exportTo: cfg.DefaultExportTo}
	cp.xds = server.New(cp.cache, cp.reg, cfg.Log.With("component", "xds-server"))
	cp.source = cfg.Source
	if cp.source == nil {
		cp.source = &watcher.FileSource{
			Dir:     cfg.ConfigDir,
			HoldOff: cfg.HoldOff, EndpointHoldOff: cfg.EndpointHoldOff, MaxDelay: cfg.MaxDelay,
			Log:     cfg.Log.With("component", "file-source"),
			OnError: func(error) { cp.metrics.configErrors.Inc() },
			Memory:  cp.store,
		}
	}
	if !cfg.SourceOfTruth {
		if err := cp.servePersisted(); err != nil {
			return nil, err
		}
	}
	if cfg.XDSAddress != "" {
		if cp.xdsLis, err = net.Listen("tcp", cfg.XDSAddress); err != nil {
			return nil, fmt.Errorf("xds address: %w", err)
		}
		cp.log.Info("xds server listening", "addr", cp.xdsLis.Addr().String())
	}
	if cp.monLis, err = net.Listen("tcp", cfg.MonitoringAddress); err != nil {
		return nil, fmt.Errorf("monitoring address: %w", err)
	}
	cp.log.Info("monitoring server listening", "addr", cp.monLis.Addr().String())
	// Last, so nothing after it can fail and leave its listeners open.
	if cp.identity, err = cp.newIdentity(); err != nil {
		return nil, err
	}
	return cp, nil
}

// XDSAddr is the bound plaintext xDS address, nil if that port is off.
func (cp *ControlPlane) XDSAddr() net.Addr {
	if cp.xdsLis == nil {
		return nil
	}
	return cp.xdsLis.Addr()
}

// MonitoringAddr is the bound monitoring address.
func (cp *ControlPlane) MonitoringAddr() net.Addr { return cp.monLis.Addr() }

// servePersisted builds the config the last run served, so proxies get it
// before the source has loaded anything (or when it cannot).
func (cp *ControlPlane) servePersisted() error {
	accepted, err := cp.store.LoadAccepted()
	if err != nil {
		return err
	}
	cp.builder.lastAccepted = accepted
	snap, ok, err := cp.store.LoadConfig()
	if err != nil {
		return err
	}
	if !ok {
		cp.log.Info("no persisted config; waiting for the config source")
		return nil
	}
	cp.log.Info("serving the persisted config until the config source has loaded",
		"services", len(snap.Services), "policies", len(snap.Policies))
	cp.build(snap, false)
	return nil
}

// Run serves xDS and monitoring and feeds the source's snapshots through the
// pipeline until ctx ends or something fails; either way it stops the
// servers and the source and closes the store before returning.
func (cp *ControlPlane) Run(ctx context.Context) error {
	if cp.store != nil {
		defer cp.store.Close()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	g := grpc.NewServer(server.GRPCOptions()...)
	cp.xds.Register(g)
	mon := &http.Server{Handler: cp.monitoringHandler(), ReadHeaderTimeout: 10 * time.Second}

	// Room for every goroutine's error: none may block.
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		if cp.xdsLis == nil {
			return
		}
		if err := g.Serve(cp.xdsLis); err != nil {
			errs <- fmt.Errorf("xds server: %w", err)
		}
	}()
	if cp.identity != nil {
		cp.identity.run(ctx, &wg, errs)
	}
	go func() {
		defer wg.Done()
		if err := mon.Serve(cp.monLis); !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("monitoring server: %w", err)
		}
	}()
	sourceDone := make(chan struct{})
	go func() {
		defer wg.Done()
		defer close(sourceDone)
		if err := cp.source.Run(ctx, func(s *model.Snapshot) { cp.build(s, true) }); err != nil {
			errs <- fmt.Errorf("config source: %w", err)
		}
	}()

	var err error
	select {
	case <-ctx.Done():
		cp.log.Info("shutting down")
	case err = <-errs:
		cp.log.Error("stopping", "error", err)
	}
	cancel()
	<-sourceDone // no build after this point
	cp.shutdown(g, mon)
	wg.Wait()
	return err
}

// shutdown stops the servers within the grace period. xDS streams never
// end by themselves, so they are closed first; GracefulStop then only waits
// for unary calls in flight.
func (cp *ControlPlane) shutdown(g *grpc.Server, mon *http.Server) {
	grace := cp.cfg.ShutdownGrace
	cp.xds.Close()
	servers := map[string]*grpc.Server{"xds server": g}
	if cp.identity != nil {
		maps.Copy(servers, cp.identity.servers())
	}
	var wg sync.WaitGroup
	for name, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stopGRPC(cp.log, name, s, grace)
		}()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := mon.Shutdown(ctx); err != nil {
		cp.log.Warn("monitoring server did not stop in time; closing it", "error", err)
		mon.Close()
	}
}

// release frees what New acquired, for a ControlPlane that will not Run.
func (cp *ControlPlane) release() {
	cp.closeListeners()
	if cp.identity != nil {
		cp.identity.closeListeners()
	}
	if cp.store != nil {
		cp.store.Close()
	}
}

func (cp *ControlPlane) closeListeners() {
	for _, l := range []net.Listener{cp.xdsLis, cp.monLis} {
		if l != nil {
			l.Close()
		}
	}
}

// build runs one snapshot through resolution and translation into the
// cache. If the cache refuses the resources (a system fault: translation
// produced something invalid), the error is logged and counted, and what
// was served before stays served; persist is false for the startup build of
// the persisted config, which is already stored.
func (cp *ControlPlane) build(snap *model.Snapshot, persist bool) {
	start := time.Now()
	res, err := cp.builder.build(snap)
	if err != nil {
		cp.metrics.builds.WithLabelValues("error").Inc()
		cp.log.Error("build refused by the xds cache; the last good config stays served", "error", err)
		return
	}
	mesh := res.mesh
	if !res.fast {
		cp.logStatuses(mesh.Statuses, mesh.RouteStatuses)
	}
	changed, removed := res.stats.Changed, res.stats.Removed
	elapsed := time.Since(start)
	cp.metrics.buildSeconds.Observe(elapsed.Seconds())
	cp.metrics.builds.WithLabelValues("success").Inc()
	cp.mu.Lock()
	cp.snapshot, cp.mesh = snap, mesh
	cp.mu.Unlock()
	if !cp.ready.Swap(true) {
		cp.log.Info("ready: the first complete config is in the xds cache")
	}
	cp.log.Info("config built", "services", len(snap.Services), "endpointSlices", len(snap.EndpointSlices),
		"policies", len(snap.Policies), "changed", changed, "removed", removed, "endpointsOnly", res.fast, "duration", elapsed)
	if !persist {
		return
	}
	// An endpoint build keeps the statuses of the build before it (they
	// depend on Services, Policies and Routes alone): once those are handed
	// on, handing them on again would only make the writer go over every
	// policy and route once more.
	if cp.cfg.Status != nil && !(res.fast && cp.statusesHanded) {
		cp.cfg.Status.Update(mesh.Statuses, mesh.RouteStatuses)
		cp.statusesHanded = true
	}
	if cp.cfg.SourceOfTruth {
		return
	}
	if err := cp.store.SaveConfig(snap); err != nil {
		cp.log.Error("cannot persist the config; a restart would serve an older one", "error", err)
	}
	if err := cp.store.SaveAccepted(mesh.Accepted); err != nil {
		cp.log.Error("cannot persist the accepted policies", "error", err)
	}
}

// logStatuses logs every policy and route condition that is not Accepted,
// once per change: standalone mode has no API server to write status to, so
// the log (and /debug/status) is where users see it.
func (cp *ControlPlane) logStatuses(statuses []policy.Status, routes []policy.RouteStatus) {
	seen := map[string]string{}
	defer func() { cp.logged = seen }()
	for _, st := range routes {
		for _, p := range st.Parents {
			for _, c := range p.Conditions {
				if c.Status == metav1.ConditionTrue {
					continue
				}
				target := "Service " + p.ParentRef.Namespace + "/" + p.ParentRef.Name
				if p.ParentRef.SectionName != "" {
					target += " port " + p.ParentRef.SectionName
				}
				key := string(st.Kind) + " " + st.Key.String() + " " + target + " " + c.Type
				val := fmt.Sprintf("%d %s %s", st.Generation, c.Reason, c.Message)
				seen[key] = val
				if cp.logged[key] == val {
					continue
				}
				cp.log.Warn("route not accepted", "route", st.Key.String(), "kind", st.Kind, "generation", st.Generation,
					"parent", target, "condition", c.Type, "reason", c.Reason, "message", c.Message)
			}
		}
	}
	for _, st := range statuses {
		for _, a := range st.Ancestors {
			for _, c := range a.Conditions {
				if c.Type != fjordv1a1.ConditionAccepted || c.Reason == fjordv1a1.ReasonAccepted {
					continue
				}
				target := a.AncestorRef.Kind + " " + a.AncestorRef.Namespace + "/" + a.AncestorRef.Name
				if a.AncestorRef.Namespace == "" {
					target = a.AncestorRef.Kind + " " + a.AncestorRef.Name
				}
				if a.AncestorRef.SectionName != nil {
					target += " port " + *a.AncestorRef.SectionName
				}
				key := st.Key.String() + " " + target
				val := fmt.Sprintf("%d %s %s", st.Generation, c.Reason, c.Message)
				seen[key] = val
				if cp.logged[key] == val {
					continue
				}
				cp.log.Warn("policy not accepted", "policy", st.Key.String(), "generation", st.Generation,
					"target", target, "reason", c.Reason, "message", c.Message)
			}
		}
	}
}

// state returns the last built snapshot and mesh, nil before the first.
func (cp *ControlPlane) state() (*model.Snapshot, *policy.Mesh) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.snapshot, cp.mesh
}

var _ watcher.FileMemory = (*store.Store)(nil)
