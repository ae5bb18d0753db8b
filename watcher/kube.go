package watcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/cluster"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// What the Kubernetes source reads. `make rbac` turns these markers into
// manifests/rbac; the envtest suite runs the source under exactly that role.
//
// +kubebuilder:rbac:groups="",resources=services;pods;namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=fjord.dev,resources=resiliencepolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes;grpcroutes,verbs=get;list;watch

// DefaultNamespaceSelector selects every namespace but kube-system, whose
// Services are the cluster's own plumbing rather than meshed workloads. It
// relies on the kubernetes.io/metadata.name label, which the API server sets
// on every namespace; a selector of just "kubernetes.io/metadata.name"
// therefore selects all of them.
const DefaultNamespaceSelector = corev1.LabelMetadataName + "!=kube-system"

// KubeOptions configures a KubeSource. Zero values take the defaults.
type KubeOptions struct {
	// NamespaceSelector is a label selector over namespaces (the
	// --namespace-selector flag): only the objects of matching namespaces
	// reach the model. Empty means DefaultNamespaceSelector.
	NamespaceSelector string
	// MeshNamespace is the control plane's own namespace. Its
	// ResiliencePolicies are read whatever NamespaceSelector says, because
	// the mesh-wide defaults live there; its Services are not.
	MeshNamespace string
	// HoldOff and MaxDelay tune the coalescing of events; zero means the
	// defaults (DefaultHoldOff, DefaultMaxDelay). EndpointHoldOff replaces
	// HoldOff when only EndpointSlices and Pods changed; zero means
	// DefaultEndpointHoldOff.
	HoldOff, EndpointHoldOff, MaxDelay time.Duration
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// KubeSource is the Kubernetes-mode Source. It runs controller-runtime
// informer caches of Services, EndpointSlices, Pods, Namespaces,
// ResiliencePolicies and, when Gateway API is installed, HTTPRoutes and
// GRPCRoutes; every event triggers the coalescer (EndpointSlice and Pod
// events with its short endpoint hold-off, as they change nothing but
// endpoints), and every build lists the caches into a fresh model
// snapshot. Nothing is published before all caches have synced, so the
// proxies never see the partial view of a control plane that is still
// starting, and a build that changes nothing publishes nothing.
//
// Pods are read only to name the workload and service account behind each
// endpoint; the cache keeps a reduced copy of each pod (owner, labels,
// service account) so that a large cluster does not cost its full pod specs
// in memory.
//
// Every replica runs a KubeSource: each serves xDS from its own caches.
// The StatusWriter shares the source's caches, and writes only on the
// leader.
type KubeSource struct {
	cluster  cluster.Cluster
	selector labels.Selector
	meshNS   string
	coalesce CoalesceOptions
	log      *slog.Logger
	ran      atomic.Bool
}

// NewKubeSource connects to the API server described by cfg. It fails on an
// unparsable namespace selector; a missing CRD or missing permissions show
// up when Run starts watching.
func NewKubeSource(cfg *rest.Config, o KubeOptions) (*KubeSource, error) {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	sel, err := namespaceSelector(o.NamespaceSelector)
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("kubernetes scheme: %w", err)
	}
	if err := fjordv1a1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("%s scheme: %w", fjordv1a1.GroupVersion, err)
	}
	if err := gatewayv1.Install(scheme); err != nil {
		return nil, fmt.Errorf("%s scheme: %w", gatewayv1.GroupVersion, err)
	}
	cl, err := cluster.New(cfg, func(o *cluster.Options) {
		o.Scheme = scheme
		o.Logger = logr.FromSlogHandler(log.With("component", "controller-runtime").Handler())
		o.Cache = cache.Options{
			// A read of a kind that is not watched is a bug here, not a
			// reason to start a cluster-wide informer behind our back.
			ReaderFailOnMissingInformer: true,
			DefaultTransform:            cache.TransformStripManagedFields(),
			DefaultWatchErrorHandler:    watchErrorLogger(log),
			ByObject: map[client.Object]cache.ByObject{
				&corev1.Pod{}: {Transform: reducePod},
			},
		}
	})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client and caches for %s: %w", cfg.Host, err)
	}
	return &KubeSource{
		cluster: cl, selector: sel, meshNS: o.MeshNamespace,
		coalesce: CoalesceOptions{HoldOff: o.HoldOff, EndpointHoldOff: o.EndpointHoldOff, MaxDelay: o.MaxDelay},
		log:      log,
	}, nil
}

// namespaceSelector parses a --namespace-selector; empty means
// DefaultNamespaceSelector.
func namespaceSelector(s string) (labels.Selector, error) {
	if s == "" {
		s = DefaultNamespaceSelector
	}
	sel, err := labels.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("namespace selector %q: %w", s, err)
	}
	return sel, nil
}

// Client reads from the source's caches and writes to the API server.
func (s *KubeSource) Client() client.Client { return s.cluster.GetClient() }

// APIReader reads from the API server directly, bypassing the caches.
func (s *KubeSource) APIReader() client.Reader { return s.cluster.GetAPIReader() }

// required are the kinds the caches must hold.
func required() []client.Object {
	return []client.Object{
		&corev1.Namespace{}, &corev1.Service{}, &corev1.Pod{},
		&discoveryv1.EndpointSlice{}, &fjordv1a1.ResiliencePolicy{},
	}
}

// routeKinds are the Gateway API kinds the mesh reads when the cluster has
// their CRDs: a cluster without Gateway API still gets a working mesh,
// without routes.
var routeKinds = map[model.RouteKind]client.Object{
	model.KindHTTPRoute: &gatewayv1.HTTPRoute{},
	model.KindGRPCRoute: &gatewayv1.GRPCRoute{},
}

// installedRoutes returns the route kinds whose v1 CRDs are installed.
func (s *KubeSource) installedRoutes() (map[model.RouteKind]bool, error) {
	out := map[model.RouteKind]bool{}
	for kind := range routeKinds {
		gk := schema.GroupKind{Group: gatewayv1.GroupName, Kind: string(kind)}
		_, err := s.cluster.GetRESTMapper().RESTMapping(gk, gatewayv1.GroupVersion.Version)
		switch {
		case err == nil:
			out[kind] = true
		case meta.IsNoMatchError(err):
			s.log.Info("kubernetes source: Gateway API CRD not installed, its routes are not read; restart after installing it",
				"kind", kind, "apiVersion", gatewayv1.GroupVersion.String())
		default:
			return nil, fmt.Errorf("looking up %s %s: %w", gatewayv1.GroupVersion, kind, err)
		}
	}
	return out, nil
}

// Run implements Source. It may be called once. It returns an error at once
// when the API server cannot be asked what it serves or a kind cannot be
// watched (the ResiliencePolicy CRD is not installed, say); until the
// caches have synced (for instance while RBAC forbids a list) it publishes
// nothing and logs the watch errors.
func (s *KubeSource) Run(ctx context.Context, publish func(*model.Snapshot)) error {
	if !s.ran.CompareAndSwap(false, true) {
		return errors.New("kubernetes source: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	routes, err := s.installedRoutes()
	if err != nil {
		return fmt.Errorf("kubernetes source: %w", err)
	}
	b := newKubeBuild(s, ctx, publish, routes)
	co := NewCoalescer(func(Burst) { b.build() }, s.coalesce)
	defer co.Stop()
	watched := required()
	for kind := range routes {
		watched = append(watched, routeKinds[kind])
	}
	for _, obj := range watched {
		inf, err := s.cluster.GetCache().GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("watching %T: %w", obj, hintCRD(obj, err))
		}
		trigger := co.Trigger
		if endpointKind(obj) {
			trigger = co.TriggerEndpoints
		}
		if _, err := inf.AddEventHandler(changeHandler(trigger)); err != nil {
			return fmt.Errorf("watching %T: %w", obj, err)
		}
	}

	// A controller-runtime Cluster, not a Manager: the control plane
	// serves its own metrics and health endpoints, and a Manager stopped
	// before its caches sync never returns from Start (it spins on its
	// cancelled context), which would hang the shutdown of a control plane
	// that lacks RBAC.
	done := make(chan error, 1)
	go func() {
		done <- s.cluster.Start(ctx)
		cancel() // caches that fail also end the wait for them
	}()
	s.log.Info("kubernetes source: waiting for the caches to sync", "namespaceSelector", s.selector.String())
	if s.cluster.GetCache().WaitForCacheSync(ctx) {
		s.log.Info("kubernetes source: caches synced")
		co.MarkSynced()
		<-ctx.Done()
	}
	// Stop builds before the caches go away, so nothing is published once
	// Run has returned.
	co.Stop()
	cancel()
	if err := <-done; err != nil {
		return fmt.Errorf("kubernetes source: %w", err)
	}
	return nil
}

// endpointKind says whether the events of a kind can change nothing but the
// snapshot's EndpointSlices: the slices themselves, and the pods, which are
// read only to name the workload and service account behind each endpoint.
// Those events take the coalescer's short endpoint hold-off.
func endpointKind(obj client.Object) bool {
	switch obj.(type) {
	case *discoveryv1.EndpointSlice, *corev1.Pod:
		return true
	}
	return false
}

// hintCRD says what to do when ResiliencePolicies cannot be watched because
// their CRD is missing.
func hintCRD(obj client.Object, err error) error {
	if _, ok := obj.(*fjordv1a1.ResiliencePolicy); ok && meta.IsNoMatchError(err) {
		return fmt.Errorf("%w (install the CRD from manifests/crd)", err)
	}
	return err
}

// watchErrorLogger reports failing lists and watches (most often missing
// RBAC) through slog; the informer keeps retrying with backoff.
func watchErrorLogger(log *slog.Logger) toolscache.WatchErrorHandlerWithContext {
	return func(_ context.Context, r *toolscache.Reflector, err error) {
		switch {
		case errors.Is(err, io.EOF), apierrors.IsResourceExpired(err), apierrors.IsGone(err):
			log.Debug("kubernetes source: watch restarted", "type", r.TypeDescription(), "err", err)
		default:
			log.Warn("kubernetes source: list/watch failed, retrying", "type", r.TypeDescription(), "err", err)
		}
	}
}

// changeHandler triggers a build for every event that can change the model.
// Resyncs, which redeliver an unchanged object, and updates that touch only
// what the model ignores (a policy's status, which this control plane writes
// itself; a pod's status) do not.
func changeHandler(trigger func()) toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { trigger() },
		DeleteFunc: func(any) { trigger() },
		UpdateFunc: func(oldObj, newObj any) {
			if relevantUpdate(oldObj, newObj) {
				trigger()
			}
		},
	}
}

func relevantUpdate(oldObj, newObj any) bool {
	o, ok1 := oldObj.(client.Object)
	n, ok2 := newObj.(client.Object)
	if !ok1 || !ok2 {
		return true
	}
	if o.GetResourceVersion() == n.GetResourceVersion() {
		return false
	}
	switch n := n.(type) {
	case *fjordv1a1.ResiliencePolicy, *gatewayv1.HTTPRoute, *gatewayv1.GRPCRoute:
		return o.GetGeneration() != n.GetGeneration()
	case *corev1.Pod:
		return podIdentity(o.(*corev1.Pod)) != podIdentity(n)
	case *corev1.Service:
		// A rejected export-to list converts to none: the annotation itself
		// tells an edit from one bad value to another.
		old := o.(*corev1.Service)
		a, _ := ServiceFromK8s(old)
		b, _ := ServiceFromK8s(n)
		return !reflect.DeepEqual(a, b) || old.Annotations[AnnotationExportTo] != n.Annotations[AnnotationExportTo]
	case *corev1.Namespace:
		return !reflect.DeepEqual(o.GetLabels(), n.Labels)
	}
	return true
}

// reducePod is the pod cache's transform: it keeps what podIdentity reads.
func reducePod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a deletion tombstone
	}
	r := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID,
			ResourceVersion: p.ResourceVersion, OwnerReferences: p.OwnerReferences,
		},
		Spec: corev1.PodSpec{ServiceAccountName: p.Spec.ServiceAccountName},
	}
	if h, ok := p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]; ok {
		r.Labels = map[string]string{appsv1.DefaultDeploymentUniqueLabelKey: h}
	}
	return r, nil
}

// identity is who runs behind an endpoint.
type identity struct {
	workload, serviceAccount string
}

// podIdentity names a pod's workload the way people name it: the
// Deployment for a pod of a Deployment's ReplicaSet (the ReplicaSet's name
// minus the pod-template-hash suffix), otherwise the controlling owner
// (StatefulSet, DaemonSet, Job, ...), and the pod itself when it has none.
func podIdentity(p *corev1.Pod) identity {
	id := identity{workload: p.Name, serviceAccount: p.Spec.ServiceAccountName}
	if ref := metav1.GetControllerOf(p); ref != nil {
		id.workload = ref.Name
		if ref.Kind == "ReplicaSet" && strings.HasPrefix(ref.APIVersion, appsv1.GroupName+"/") {
			if h := p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]; h != "" {
				if d, ok := strings.CutSuffix(ref.Name, "-"+h); ok && d != "" {
					id.workload = d
				}
			}
		}
	}
	if id.serviceAccount == "" {
		id.serviceAccount = "default" // what the API server's admission assigns
	}
	return id
}

// kubeBuild is the state of one Run, touched only by builds, which the
// coalescer serialises.
type kubeBuild struct {
	src       *KubeSource
	ctx       context.Context
	publish   func(*model.Snapshot)
	published *model.Snapshot
	routes    map[model.RouteKind]bool // the route kinds watched
	// reported remembers, per EndpointSlice, the resourceVersion whose
	// conversion error was last logged, so a bad slice is logged once.
	reported map[model.Key]string
	// exportTo remembers, per Service, the last export-to list accepted and
	// the resourceVersion whose rejected list was last logged.
	exportTo map[model.Key]exportTo
	// The model objects of the last snapshot, per kind, each with the
	// version of the API object it came from (see kept). complete says
	// that snapshot listed every kind, so the kept objects are exactly
	// the ones of a snapshot equal to the published one.
	services   map[model.Key]kept[model.Service]
	slices     map[model.Key]keptSlice
	policies   map[model.Key]kept[model.Policy]
	keptRoutes map[routeKey]kept[model.Route]
	complete   bool
}

// newKubeBuild makes the state of one Run, with nothing published or
// kept yet.
func newKubeBuild(src *KubeSource, ctx context.Context, publish func(*model.Snapshot), routes map[model.RouteKind]bool) *kubeBuild {
	return &kubeBuild{src: src, ctx: ctx, publish: publish, routes: routes,
		reported: map[model.Key]string{}, exportTo: map[model.Key]exportTo{},
		services: map[model.Key]kept[model.Service]{}, slices: map[model.Key]keptSlice{},
		policies: map[model.Key]kept[model.Policy]{}, keptRoutes: map[routeKey]kept[model.Route]{}}
}

// kept is a model object converted from one API object. While the object
// stays at the same version, the next snapshot reuses it instead of
// converting it again: most builds follow a change to a few objects, and a
// reused object hands on the very lists (ports, endpoints, export-to...)
// the published snapshot holds, so the comparisons of the two snapshots
// here and in the control plane stop at those lists' identity. Nothing
// writes to a kept object: published snapshots hold them.
type kept[T any] struct {
	uid     types.UID
	version string
	model   T
}

// of says whether k was converted from obj as it is now.
func (k kept[T]) of(obj client.Object) bool {
	return k.uid == obj.GetUID() && k.version == obj.GetResourceVersion()
}

// keptSlice is a kept EndpointSlice with the pod identities its conversion
// gave its endpoints (by the slice's endpoint index, zero where none was
// found): a pod that appears, goes or changes its service account changes
// the model without changing the slice.
type keptSlice struct {
	kept[model.EndpointSlice]
	pods []identity
}

// routeKey names a route: an HTTPRoute and a GRPCRoute may share a name.
type routeKey struct {
	kind model.RouteKind
	model.Key
}

// handOn returns prev, the published snapshot's list of a kind, when next
// lists the same objects: every object of next was kept from the last
// snapshot (fresh is how many were converted anew) and the counts agree.
// The last snapshot was complete, so it equals the published one and its
// kept objects are the published objects. Otherwise it sorts next.
func handOn[T any](share bool, fresh int, prev, next []T, cmp func(a, b T) int) []T {
	if share && fresh == 0 && len(prev) == len(next) {
		return prev
	}
	slices.SortFunc(next, cmp)
	return next
}

// forget drops what m keeps for objects that were not listed.
func forget[K comparable, V any](m map[K]V, listed map[K]bool) {
	for k := range m {
		if !listed[k] {
			delete(m, k)
		}
	}
}

// exportTo is what kubeBuild remembers of one Service's export-to list.
type exportTo struct {
	accepted []string
	// known says accepted holds an accepted list (nil: the annotation
	// was absent), not just nothing yet.
	known    bool
	reported string
}

func (b *kubeBuild) build() {
	snap, err := b.snapshot()
	if err != nil {
		if b.ctx.Err() == nil {
			b.src.log.Error("kubernetes source: reading the caches", "err", err)
		}
		return
	}
	if b.published != nil && reflect.DeepEqual(snap, b.published) {
		return
	}
	b.published = snap
	b.publish(snap)
}

// snapshot lists the caches into a sorted model. Lists skip the deep copy:
// the converters copy what they keep and nothing here writes to a cached
// object. Objects unchanged since the last snapshot are reused (see kept),
// and a kind whose objects all were is handed on as the published
// snapshot's list itself.
func (b *kubeBuild) snapshot() (*model.Snapshot, error) {
	c, ctx, s := b.src.cluster.GetClient(), b.ctx, b.src
	nocopy := client.UnsafeDisableDeepCopy
	share := b.complete && b.published != nil
	b.complete = false
	var prev model.Snapshot
	if share {
		prev = *b.published
	}

	var nss corev1.NamespaceList
	if err := c.List(ctx, &nss, nocopy); err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	selected := map[string]bool{}
	for i := range nss.Items {
		if s.selector.Matches(labels.Set(nss.Items[i].Labels)) {
			selected[nss.Items[i].Name] = true
		}
	}

	var pods corev1.PodList
	if err := c.List(ctx, &pods, nocopy); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	ids := map[model.Key]identity{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if selected[p.Namespace] {
			ids[model.Key{Namespace: p.Namespace, Name: p.Name}] = podIdentity(p)
		}
	}

	snap := &model.Snapshot{}
	var svcs corev1.ServiceList
	if err := c.List(ctx, &svcs, nocopy); err != nil {
		return nil, fmt.Errorf("listing services: %w", err)
	}
	snap.Services = make([]model.Service, 0, len(svcs.Items))
	svcSeen := map[model.Key]bool{}
	fresh := 0
	for i := range svcs.Items {
		svc := &svcs.Items[i]
		if !selected[svc.Namespace] {
			continue
		}
		key := model.Key{Namespace: svc.Namespace, Name: svc.Name}
		k, ok := b.services[key]
		if !ok || !k.of(svc) {
			k = kept[model.Service]{uid: svc.UID, version: svc.ResourceVersion, model: b.service(svc)}
			k.model.SortInner()
			b.services[key] = k
			fresh++
		}
		snap.Services = append(snap.Services, k.model)
		svcSeen[key] = true
	}
	forget(b.exportTo, svcSeen)
	forget(b.services, svcSeen)
	snap.Services = handOn(share, fresh, prev.Services, snap.Services,
		func(x, y model.Service) int { return x.Key.Compare(y.Key) })

	var eps discoveryv1.EndpointSliceList
	if err := c.List(ctx, &eps, nocopy); err != nil {
		return nil, fmt.Errorf("listing endpointslices: %w", err)
	}
	snap.EndpointSlices = make([]model.EndpointSlice, 0, len(eps.Items))
	seen := map[model.Key]bool{}
	fresh = 0
	for i := range eps.Items {
		es := &eps.Items[i]
		if !selected[es.Namespace] {
			continue
		}
		key := model.Key{Namespace: es.Namespace, Name: es.Name}
		seen[key] = true
		if k, ok := b.slices[key]; ok && k.of(es) && samePods(es, ids, k.pods) {
			snap.EndpointSlices = append(snap.EndpointSlices, k.model)
			continue
		}
		// A slice left out is not counted: it is in neither snapshot.
		m, ok := b.endpointSlice(es, ids)
		if !ok {
			delete(b.slices, key)
			continue
		}
		m.SortInner()
		b.slices[key] = keptSlice{
			kept: kept[model.EndpointSlice]{uid: es.UID, version: es.ResourceVersion, model: m},
			pods: podsOf(es, ids),
		}
		snap.EndpointSlices = append(snap.EndpointSlices, m)
		fresh++
	}
	forget(b.reported, seen)
	forget(b.slices, seen)
	snap.EndpointSlices = handOn(share, fresh, prev.EndpointSlices, snap.EndpointSlices,
		func(x, y model.EndpointSlice) int { return x.Key.Compare(y.Key) })

	var rps fjordv1a1.ResiliencePolicyList
	if err := c.List(ctx, &rps, nocopy); err != nil {
		return nil, fmt.Errorf("listing resiliencepolicies: %w", err)
	}
	snap.Policies = make([]model.Policy, 0, len(rps.Items))
	polSeen := map[model.Key]bool{}
	fresh = 0
	for i := range rps.Items {
		p := &rps.Items[i]
		if !selected[p.Namespace] && (p.Namespace != s.meshNS || s.meshNS == "") {
			continue
		}
		key := model.Key{Namespace: p.Namespace, Name: p.Name}
		k, ok := b.policies[key]
		if !ok || !k.of(p) {
			k = kept[model.Policy]{uid: p.UID, version: p.ResourceVersion, model: PolicyFromK8s(p)}
			b.policies[key] = k
			fresh++
		}
		snap.Policies = append(snap.Policies, k.model)
		polSeen[key] = true
	}
	forget(b.policies, polSeen)
	snap.Policies = handOn(share, fresh, prev.Policies, snap.Policies,
		func(x, y model.Policy) int { return x.Key.Compare(y.Key) })

	routes, fresh, err := b.listRoutes(selected)
	if err != nil {
		return nil, err
	}
	snap.Routes = handOn(share, fresh, prev.Routes, routes, func(x, y model.Route) int { return x.Compare(&y) })
	b.complete = true
	return snap, nil
}

// listRoutes lists the HTTPRoutes and GRPCRoutes of the selected
// namespaces, unsorted, and says how many it converted anew.
func (b *kubeBuild) listRoutes(selected map[string]bool) ([]model.Route, int, error) {
	c, ctx, nocopy := b.src.cluster.GetClient(), b.ctx, client.UnsafeDisableDeepCopy
	out := []model.Route{}
	listed := map[routeKey]bool{}
	fresh := 0
	add := func(kind model.RouteKind, obj client.Object, convert func() model.Route) {
		if !selected[obj.GetNamespace()] {
			return
		}
		key := routeKey{kind: kind, Key: model.Key{Namespace: obj.GetNamespace(), Name: obj.GetName()}}
		k, ok := b.keptRoutes[key]
		if !ok || !k.of(obj) {
			k = kept[model.Route]{uid: obj.GetUID(), version: obj.GetResourceVersion(), model: convert()}
			b.keptRoutes[key] = k
			fresh++
		}
		out = append(out, k.model)
		listed[key] = true
	}
	if b.routes[model.KindHTTPRoute] {
		var rs gatewayv1.HTTPRouteList
		if err := c.List(ctx, &rs, nocopy); err != nil {
			return nil, 0, fmt.Errorf("listing httproutes: %w", err)
		}
		for i := range rs.Items {
			r := &rs.Items[i]
			add(model.KindHTTPRoute, r, func() model.Route { return HTTPRouteFromK8s(r) })
		}
	}
	if b.routes[model.KindGRPCRoute] {
		var rs gatewayv1.GRPCRouteList
		if err := c.List(ctx, &rs, nocopy); err != nil {
			return nil, 0, fmt.Errorf("listing grpcroutes: %w", err)
		}
		for i := range rs.Items {
			r := &rs.Items[i]
			add(model.KindGRPCRoute, r, func() model.Route { return GRPCRouteFromK8s(r) })
		}
	}
	forget(b.keptRoutes, listed)
	return out, fresh, nil
}

// service converts one Service. The API server has accepted it, so it is
// served whatever its annotations say; but an export-to list that does not
// parse must neither widen nor narrow what is served: the Service keeps the
// last list accepted for it, or, when none has been since this source
// started, is visible to its own namespace only (the narrowest choice, as a
// typo in a list meant to restrict must not publish the Service to the
// mesh). The rejection is logged once per version of the Service.
func (b *kubeBuild) service(svc *corev1.Service) model.Service {
	m, err := ServiceFromK8s(svc)
	st := b.exportTo[m.Key]
	if err == nil {
		b.exportTo[m.Key] = exportTo{accepted: m.ExportTo, known: true}
		return m
	}
	if st.known {
		m.ExportTo = st.accepted
	} else {
		m.ExportTo = []string{m.Namespace}
	}
	if st.reported != svc.ResourceVersion {
		st.reported = svc.ResourceVersion
		b.src.log.Error("kubernetes source: Service export-to rejected; it keeps its last accepted visibility",
			"service", m.Key.String(), "exportTo", m.ExportTo, "err", err)
	}
	b.exportTo[m.Key] = st
	return m
}

// endpointSlice converts one slice and names the pod behind each endpoint.
// A slice the mesh cannot use (no owning Service label, FQDN addresses) is
// left out and logged once per version.
func (b *kubeBuild) endpointSlice(es *discoveryv1.EndpointSlice, ids map[model.Key]identity) (model.EndpointSlice, bool) {
	key := model.Key{Namespace: es.Namespace, Name: es.Name}
	m, err := EndpointSliceFromK8s(es)
	if err != nil {
		if b.reported[key] != es.ResourceVersion {
			b.reported[key] = es.ResourceVersion
			b.src.log.Info("kubernetes source: EndpointSlice left out", "endpointSlice", key.String(), "err", err)
		}
		return model.EndpointSlice{Key: key}, false
	}
	delete(b.reported, key)
	// The converter keeps one model endpoint per slice endpoint, in order.
	for i := range es.Endpoints {
		if id, ok := endpointPod(es, i, ids); ok {
			m.Endpoints[i].Workload = id.workload
			m.Endpoints[i].ServiceAccount = id.serviceAccount
		}
	}
	return m, true
}

// endpointPod is the identity of the pod behind the slice's i-th endpoint,
// if the endpoint names a pod that is known.
func endpointPod(es *discoveryv1.EndpointSlice, i int, ids map[model.Key]identity) (identity, bool) {
	ref := es.Endpoints[i].TargetRef
	if ref == nil || ref.Kind != "Pod" {
		return identity{}, false
	}
	ns := ref.Namespace
	if ns == "" {
		ns = es.Namespace
	}
	id, ok := ids[model.Key{Namespace: ns, Name: ref.Name}]
	return id, ok
}

// podsOf lists the pod identities the slice's endpoints get, zero where
// none (podIdentity never returns the zero identity).
func podsOf(es *discoveryv1.EndpointSlice, ids map[model.Key]identity) []identity {
	out := make([]identity, len(es.Endpoints))
	for i := range es.Endpoints {
		out[i], _ = endpointPod(es, i, ids)
	}
	return out
}

// samePods says whether the slice's endpoints get the identities pods,
// as podsOf listed them.
func samePods(es *discoveryv1.EndpointSlice, ids map[model.Key]identity, pods []identity) bool {
	if len(pods) != len(es.Endpoints) {
		return false
	}
	for i := range es.Endpoints {
		if id, _ := endpointPod(es, i, ids); id != pods[i] {
			return false
		}
	}
	return true
}
