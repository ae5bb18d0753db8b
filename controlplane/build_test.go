package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"github.com/google/go-cmp/cmp"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

var servedTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

func newBuilder(opts translate.Options) *builder {
	return &builder{
		cache:  cache.New(slog.New(slog.NewTextHandler(io.Discard, nil))),
		meshNS: "fjord-system",
		opts:   opts,
	}
}

// servedTo are the namespaces whose proxies served compares: those of the
// generated mesh, which may be in views of their own, and one in none.
var servedTo = []string{"ns-a", "ns-b", "fjord-system", "elsewhere"}

// served is everything c serves, by namespace, kind and type: name ->
// marshalled bytes.
func served(t *testing.T, c *cache.Cache) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, ns := range servedTo {
		for _, kind := range node.Kinds {
			for _, typeURL := range servedTypes {
				servedOf(t, c, out, ns, kind, typeURL)
			}
		}
	}
	return out
}

func servedOf(t *testing.T, c *cache.Cache, out map[string]map[string]string, ns string, kind node.Kind, typeURL string) {
	t.Helper()
	resp, err := c.Fetch(context.Background(), &discoveryv3.DiscoveryRequest{
		Node:    node.Info{Namespace: ns, Workload: "client", ServiceAccount: "default", Kind: kind}.Node(),
		TypeUrl: typeURL,
	})
	if err != nil {
		t.Fatalf("Fetch %s %s %s: %v", ns, kind, typeURL, err)
	}
	dr, _ := resp.GetDiscoveryResponse()
	got := map[string]string{}
	for name, version := range resp.GetReturnedResources() {
		got[name] = version
	}
	if len(got) != len(dr.GetResources()) {
		t.Fatalf("Fetch %s %s %s: %d names for %d resources", ns, kind, typeURL, len(got), len(dr.GetResources()))
	}
	// Versions are content hashes of the marshalled bytes; keep the bytes
	// too, so a difference shows what differs.
	for i, a := range dr.GetResources() {
		got[fmt.Sprintf("#%d", i)] = string(a.GetValue())
	}
	out[ns+" "+string(kind)+" "+typeURL] = got
}

// snapshotGen makes random but seeded snapshot changes over a small mesh in
// which addresses, ports and service accounts repeat across Services, so
// that shared server listeners, slices moving between Services and
// duplicate endpoints all happen.
type snapshotGen struct {
	r *rand.Rand
}

var (
	genNamespaces = []string{"ns-a", "ns-b", "fjord-system"}
	genServices   = []string{"alpha", "beta", "gamma", "ghost"} // ghost never exists as a Service
	genAddresses  = []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.10", "fd00::1"}
	genZones      = []string{"", "z1", "z2"}
	genAccounts   = []string{"", "sa-1", "sa-2"}
	genPorts      = []model.EndpointPort{{Name: "http", Port: 8080}, {Name: "grpc", Port: 9090}, {Name: "", Port: 8080}, {Name: "http", Port: 9090}}
)

func (g *snapshotGen) pick(n int) int { return g.r.IntN(n) }

func (g *snapshotGen) endpoint() model.Endpoint {
	return model.Endpoint{
		Address:        genAddresses[g.pick(len(genAddresses))],
		Ready:          g.pick(4) != 0,
		Zone:           genZones[g.pick(len(genZones))],
		ServiceAccount: genAccounts[g.pick(len(genAccounts))],
	}
}

func (g *snapshotGen) slice(ns string, i int) model.EndpointSlice {
	s := model.EndpointSlice{
		Key:     model.Key{Namespace: ns, Name: fmt.Sprintf("slice-%d", i)},
		Service: genServices[g.pick(len(genServices))],
		Ports:   []model.EndpointPort{genPorts[g.pick(len(genPorts))]},
	}
	for range 1 + g.pick(4) {
		s.Endpoints = append(s.Endpoints, g.endpoint())
	}
	return s
}

func (g *snapshotGen) service(ns, name string) model.Service {
	s := model.Service{Key: model.Key{Namespace: ns, Name: name}}
	switch g.pick(3) {
	case 0:
		s.Ports = []model.ServicePort{{Port: 80}}
	case 1:
		s.Ports = []model.ServicePort{{Name: "http", Port: 80, AppProtocol: "http"}}
	default:
		s.Ports = []model.ServicePort{{Name: "http", Port: 80, AppProtocol: "http"}, {Name: "grpc", Port: 9000, AppProtocol: "grpc"}}
	}
	if g.pick(2) == 0 {
		s.ServiceAccounts = []string{"declared"}
	}
	// Some Services are visible to a few namespaces only, so that views
	// come and go and the fast path patches some views and not others.
	switch g.pick(6) {
	case 0:
		s.ExportTo = []string{ns}
	case 1:
		s.ExportTo = model.NormaliseExportTo([]string{model.ExportOwn, "ns-b"}, ns)
	case 2:
		s.ExportTo = []string{model.ExportAll}
	}
	return s
}

func (g *snapshotGen) policy(ns string, i int) model.Policy {
	p := model.Policy{
		Key:               model.Key{Namespace: ns, Name: fmt.Sprintf("policy-%d", i)},
		Generation:        int64(1 + g.pick(3)),
		CreationTimestamp: time.Date(2026, 1, 1+g.pick(3), 0, 0, 0, 0, time.UTC),
	}
	n := int32(1 + g.pick(5))
	p.Spec.OutlierDetection = &fjordv1a1.OutlierDetection{Consecutive5xxErrors: &n}
	if g.pick(2) == 0 {
		p.Spec.TargetRefs = []fjordv1a1.TargetRef{{Kind: "Service", Name: genServices[g.pick(len(genServices))]}}
	}
	if g.pick(5) == 0 {
		bad := int32(-1)
		p.Spec.OutlierDetection.Consecutive5xxErrors = &bad // invalid: status says so, the last accepted stays
	}
	return p
}

func (g *snapshotGen) route(ns string) model.Route {
	return model.Route{
		Key:               model.Key{Namespace: ns, Name: "split"},
		Kind:              model.KindHTTPRoute,
		Generation:        1,
		CreationTimestamp: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		ParentRefs:        []model.ParentRef{{Kind: "Service", Name: "alpha"}},
		Rules: []model.RouteRule{{
			Matches: []model.RouteMatch{{Path: &model.PathMatch{Type: model.MatchPathPrefix, Value: "/v2"}}},
			BackendRefs: []model.BackendRef{
				{ObjectRef: model.ObjectRef{Kind: "Service", Name: "beta", Port: 80}, Weight: 1},
				{ObjectRef: model.ObjectRef{Kind: "Service", Name: "alpha", Port: 80}, Weight: 3},
			},
		}},
	}
}

func (g *snapshotGen) initial() *model.Snapshot {
	s := &model.Snapshot{}
	for _, ns := range genNamespaces {
		for _, name := range genServices[:3] {
			s.Services = append(s.Services, g.service(ns, name))
		}
		for i := range 4 {
			s.EndpointSlices = append(s.EndpointSlices, g.slice(ns, i))
		}
	}
	s.Policies = append(s.Policies, g.policy("ns-a", 0), g.policy("fjord-system", 0))
	s.Routes = append(s.Routes, g.route("ns-a"))
	s.Sort()
	return s
}

// next returns a changed copy of s (s is not modified) and what changed.
// Most steps change only endpoints, as in a running mesh.
func (g *snapshotGen) next(t *testing.T, s *model.Snapshot) (*model.Snapshot, string) {
	t.Helper()
	n := cloneSnapshot(t, s)
	var what string
	for range 1 + g.pick(2) {
		what += g.change(n) + "; "
	}
	n.Sort()
	return n, what
}

func (g *snapshotGen) change(n *model.Snapshot) string {
	ns := genNamespaces[g.pick(len(genNamespaces))]
	randomSlice := func() *model.EndpointSlice {
		if len(n.EndpointSlices) == 0 {
			n.EndpointSlices = append(n.EndpointSlices, g.slice(ns, 0))
		}
		return &n.EndpointSlices[g.pick(len(n.EndpointSlices))]
	}
	switch k := g.pick(20); {
	case k < 5:
		s := randomSlice()
		if len(s.Endpoints) == 0 {
			s.Endpoints = append(s.Endpoints, g.endpoint())
			return "endpoint added to empty " + s.Key.String()
		}
		e := &s.Endpoints[g.pick(len(s.Endpoints))]
		e.Ready = !e.Ready
		return "readiness flipped in " + s.Key.String()
	case k < 7:
		s := randomSlice()
		s.Endpoints = append(s.Endpoints, g.endpoint())
		return "endpoint added to " + s.Key.String()
	case k < 9:
		s := randomSlice()
		if len(s.Endpoints) > 0 {
			i := g.pick(len(s.Endpoints))
			s.Endpoints = slices.Delete(s.Endpoints, i, i+1)
		}
		return "endpoint removed from " + s.Key.String()
	case k < 11:
		s := randomSlice()
		s.Service = genServices[g.pick(len(genServices))]
		return s.Key.String() + " moved to " + s.Service
	case k < 12:
		s := randomSlice()
		s.Ports = []model.EndpointPort{genPorts[g.pick(len(genPorts))]}
		return "port changed in " + s.Key.String()
	case k < 13:
		s := randomSlice()
		if len(s.Endpoints) > 0 {
			e := &s.Endpoints[g.pick(len(s.Endpoints))]
			e.Zone, e.ServiceAccount = genZones[g.pick(len(genZones))], genAccounts[g.pick(len(genAccounts))]
		}
		return "zone and account changed in " + s.Key.String()
	case k < 14:
		n.EndpointSlices = append(n.EndpointSlices, g.slice(ns, 4+g.pick(3)))
		n.EndpointSlices = dedupSlices(n.EndpointSlices)
		return "slice added"
	case k < 15:
		if len(n.EndpointSlices) > 0 {
			i := g.pick(len(n.EndpointSlices))
			n.EndpointSlices = slices.Delete(n.EndpointSlices, i, i+1)
		}
		return "slice deleted"
	case k < 16 && len(n.Services) > 0:
		i := g.pick(len(n.Services))
		n.Services[i] = g.service(n.Services[i].Namespace, n.Services[i].Name)
		return "service " + n.Services[i].Key.String() + " rewritten"
	case k < 17:
		if len(n.Services) > 0 && g.pick(2) == 0 {
			i := g.pick(len(n.Services))
			n.Services = slices.Delete(n.Services, i, i+1)
			return "service deleted"
		}
		svc := g.service(ns, genServices[g.pick(3)])
		if !slices.ContainsFunc(n.Services, func(s model.Service) bool { return s.Key == svc.Key }) {
			n.Services = append(n.Services, svc)
		}
		return "service added"
	case k < 19:
		p := g.policy(ns, g.pick(2))
		i := slices.IndexFunc(n.Policies, func(q model.Policy) bool { return q.Key == p.Key })
		switch {
		case i >= 0 && g.pick(3) == 0:
			n.Policies = slices.Delete(n.Policies, i, i+1)
			return "policy deleted"
		case i >= 0:
			n.Policies[i] = p
		default:
			n.Policies = append(n.Policies, p)
		}
		return "policy " + p.Key.String() + " set"
	default:
		if len(n.Routes) > 0 {
			n.Routes = nil
			return "route deleted"
		}
		n.Routes = []model.Route{g.route("ns-a")}
		return "route added"
	}
}

func dedupSlices(ss []model.EndpointSlice) []model.EndpointSlice {
	seen := map[model.Key]bool{}
	var out []model.EndpointSlice
	for _, s := range ss {
		if !seen[s.Key] {
			seen[s.Key] = true
			out = append(out, s)
		}
	}
	return out
}

func cloneSnapshot(t *testing.T, s *model.Snapshot) *model.Snapshot {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var out model.Snapshot
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// TestIncrementalBuildEqualsFullBuild runs random sequences of snapshot
// changes through the builder (which takes the endpoint fast path whenever
// it can) and, after every step, compares everything its cache serves, and
// the mesh it built, with a builder that always takes the full path.
func TestIncrementalBuildEqualsFullBuild(t *testing.T) {
	for _, mtls := range []bool{false, true} {
		for seed := range uint64(8) {
			t.Run(fmt.Sprintf("mtls=%v/seed=%d", mtls, seed), func(t *testing.T) {
				opts := translate.Options{MTLS: mtls}
				g := &snapshotGen{r: rand.New(rand.NewPCG(seed, 42))}
				inc, full := newBuilder(opts), newBuilder(opts)
				snap := g.initial()
				fast, fastViews := 0, 0
				for step := range 150 {
					what := "initial"
					if step > 0 {
						snap, what = g.next(t, snap)
					}
					got, err := inc.build(snap)
					if err != nil {
						t.Fatalf("step %d (%s): incremental build: %v", step, what, err)
					}
					full.reset()
					want, err := full.build(snap)
					if err != nil {
						t.Fatalf("step %d (%s): full build: %v", step, what, err)
					}
					if got.fast {
						fast++
						if len(inc.views.Names()) > 1 {
							fastViews++
						}
					}
					if !reflect.DeepEqual(got.mesh, want.mesh) {
						t.Fatalf("step %d (%s, fast path %v): mesh differs from a full build (-full +incremental):\n%s",
							step, what, got.fast, cmp.Diff(jsonOf(t, want.mesh), jsonOf(t, got.mesh)))
					}
					if diff := cmp.Diff(served(t, full.cache), served(t, inc.cache)); diff != "" {
						t.Fatalf("step %d (%s, fast path %v): served config differs from a full build (-full +incremental):\n%s",
							step, what, got.fast, diff)
					}
				}
				// The fast path must have been exercised, or this test
				// proves nothing about it.
				if fast < 50 {
					t.Errorf("only %d of 150 steps took the fast path", fast)
				}
				if fastViews < 10 {
					t.Errorf("only %d of 150 steps took the fast path with views", fastViews)
				}
			})
		}
	}
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sotwWatch is one state-of-the-world watch as an xDS server opens it:
// the client holds what it was last sent.
type sotwWatch struct {
	t       *testing.T
	c       *cache.Cache
	typeURL string
	names   []string
	kind    node.Kind
	sub     stream.Subscription
	ch      chan cachev3.Response
	cancel  func()
}

func openWatch(t *testing.T, c *cache.Cache, kind node.Kind, typeURL string, names ...string) *sotwWatch {
	w := &sotwWatch{t: t, c: c, typeURL: typeURL, names: names, kind: kind, sub: stream.NewSotwSubscription(names, false)}
	t.Cleanup(func() {
		if w.cancel != nil {
			w.cancel()
		}
	})
	w.request("")
	w.request(w.receive().GetVersionInfo())
	return w
}

func (w *sotwWatch) request(version string) {
	w.t.Helper()
	if w.cancel != nil {
		w.cancel()
	}
	w.ch = make(chan cachev3.Response, 1)
	cancel, err := w.c.CreateWatch(&discoveryv3.DiscoveryRequest{
		Node:    node.Info{Namespace: "ns-a", Workload: "client", ServiceAccount: "default", Kind: w.kind}.Node(),
		TypeUrl: w.typeURL, ResourceNames: w.names, VersionInfo: version,
	}, w.sub, w.ch)
	if err != nil {
		w.t.Fatalf("CreateWatch: %v", err)
	}
	w.cancel = cancel
}

func (w *sotwWatch) receive() *discoveryv3.DiscoveryResponse {
	w.t.Helper()
	select {
	case r := <-w.ch:
		out, _ := r.GetDiscoveryResponse()
		w.sub.SetReturnedResources(r.GetReturnedResources())
		return out
	default:
		w.t.Fatalf("%s watch on %v: expected a response, got none", w.typeURL, w.names)
		return nil
	}
}

// woken says whether the watch has a response, and takes it.
func (w *sotwWatch) woken() bool {
	select {
	case r := <-w.ch:
		w.sub.SetReturnedResources(r.GetReturnedResources())
		return true
	default:
		return false
	}
}

// TestEndpointChangeWakesOnlyItsWatches: an endpoint that turns ready at a
// new address wakes the watches on its Service's load assignment and on the
// server listener of that address, and no other.
func TestEndpointChangeWakesOnlyItsWatches(t *testing.T) {
	b := newBuilder(translate.Options{})
	snap := &model.Snapshot{}
	for _, name := range []string{"a", "b"} {
		snap.Services = append(snap.Services, model.Service{Key: model.Key{Namespace: "ns-a", Name: name}, Ports: []model.ServicePort{{Name: "grpc", Port: 9000}}})
		snap.EndpointSlices = append(snap.EndpointSlices, model.EndpointSlice{
			Key: model.Key{Namespace: "ns-a", Name: name + "-1"}, Service: name,
			Ports: []model.EndpointPort{{Name: "grpc", Port: 9090}},
			// 10.0.0.1:9090 backs both Services.
			Endpoints: []model.Endpoint{{Address: "10.0.0.1", Ready: true}, {Address: "10.0.0." + map[string]string{"a": "2", "b": "3"}[name], Ready: true}},
		})
	}
	if _, err := b.build(snap); err != nil {
		t.Fatal(err)
	}
	svcA, svcB := model.Key{Namespace: "ns-a", Name: "a"}, model.Key{Namespace: "ns-a", Name: "b"}
	watches := map[string]*sotwWatch{
		"grpc cla a":           openWatch(t, b.cache, node.GRPC, resourcev3.EndpointType, translate.ClusterName(svcA, 9000)),
		"envoy cla a":          openWatch(t, b.cache, node.Envoy, resourcev3.EndpointType, translate.ClusterName(svcA, 9000)),
		"grpc server new":      openWatch(t, b.cache, node.GRPC, resourcev3.ListenerType, translate.ServerListenerName("10.0.0.9", 9090)),
		"grpc cla b":           openWatch(t, b.cache, node.GRPC, resourcev3.EndpointType, translate.ClusterName(svcB, 9000)),
		"envoy cla b":          openWatch(t, b.cache, node.Envoy, resourcev3.EndpointType, translate.ClusterName(svcB, 9000)),
		"grpc cluster a":       openWatch(t, b.cache, node.GRPC, resourcev3.ClusterType, translate.ClusterName(svcA, 9000)),
		"grpc api listener a":  openWatch(t, b.cache, node.GRPC, resourcev3.ListenerType, translate.ListenerName(node.GRPC, svcA, 9000)),
		"grpc route a":         openWatch(t, b.cache, node.GRPC, resourcev3.RouteType, translate.RouteName(node.GRPC, svcA, 9000)),
		"grpc server shared":   openWatch(t, b.cache, node.GRPC, resourcev3.ListenerType, translate.ServerListenerName("10.0.0.1", 9090)),
		"grpc server wildcard": openWatch(t, b.cache, node.GRPC, resourcev3.ListenerType, translate.ServerListenerName("0.0.0.0", 9090)),
		"envoy listeners":      openWatch(t, b.cache, node.Envoy, resourcev3.ListenerType, translate.ListenerName(node.Envoy, svcA, 9000)),
	}
	wantWoken := map[string]bool{"grpc cla a": true, "envoy cla a": true, "grpc server new": true}

	next := cloneSnapshot(t, snap)
	// a gains 10.0.0.9, and loses 10.0.0.1, which b still has: the shared
	// server listener stays as it is.
	next.EndpointSlices[0].Endpoints = []model.Endpoint{{Address: "10.0.0.2", Ready: true}, {Address: "10.0.0.9", Ready: true}}
	res, err := b.build(next)
	if err != nil {
		t.Fatal(err)
	}
	if !res.fast {
		t.Fatalf("an endpoint-only change took the full path")
	}
	for name, w := range watches {
		if got := w.woken(); got != wantWoken[name] {
			t.Errorf("watch %s woken = %v, want %v", name, got, wantWoken[name])
		}
	}
	if want := (cache.Stats{Changed: 3}); res.stats != want {
		t.Errorf("stats = %+v, want %+v (the load assignment of a for both kinds, one server listener)", res.stats, want)
	}
}

// benchSnapshot is a mesh of services Services of one gRPC port (five port
// numbers in all) with 10 ready endpoints each, in 20 namespaces, under a
// mesh-wide default policy and a per-namespace one.
func benchSnapshot(b *testing.B, services int) *model.Snapshot {
	s := &model.Snapshot{}
	portNumbers := []int32{80, 3000, 8080, 9090, 50051}
	for i := range services {
		key := model.Key{Namespace: fmt.Sprintf("ns-%d", i%20), Name: fmt.Sprintf("svc-%d", i)}
		s.Services = append(s.Services, model.Service{Key: key, Ports: []model.ServicePort{{Name: "grpc", Port: portNumbers[i%len(portNumbers)], AppProtocol: "grpc"}}})
		slice := model.EndpointSlice{Key: model.Key{Namespace: key.Namespace, Name: key.Name + "-abcde"}, Service: key.Name, Ports: []model.EndpointPort{{Name: "grpc", Port: 9090}}}
		for j := range 10 {
			slice.Endpoints = append(slice.Endpoints, model.Endpoint{
				Address: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1), Ready: true,
				Zone: fmt.Sprintf("zone-%d", j%3), Workload: fmt.Sprintf("%s-%d", key.Name, j), ServiceAccount: key.Name,
			})
		}
		s.EndpointSlices = append(s.EndpointSlices, slice)
	}
	five, attempts := int32(5), int32(2)
	interval := fjordv1a1.Duration("10s")
	for i, ns := range []string{"fjord-system", "ns-1", "ns-2"} {
		s.Policies = append(s.Policies, model.Policy{
			Key:               model.Key{Namespace: ns, Name: "default"},
			Generation:        1,
			CreationTimestamp: time.Date(2026, 1, 1+i, 0, 0, 0, 0, time.UTC),
			Spec: fjordv1a1.ResiliencePolicySpec{
				OutlierDetection: &fjordv1a1.OutlierDetection{Consecutive5xxErrors: &five, Interval: &interval},
				Retry:            &fjordv1a1.Retry{Attempts: &attempts},
			},
		})
	}
	s.Sort()
	return s
}

// BenchmarkEndpointFlip builds one endpoint's readiness flip at 1,000
// Services × 10 endpoints, alternating between two snapshots that differ
// in that one endpoint, as the source publishes them (separately built
// values): through the full path (resolution, translation and a cache
// update of everything, per kind) and through the endpoint fast path.
func BenchmarkEndpointFlip(b *testing.B) {
	for _, mtls := range []bool{false, true} {
		on := benchSnapshot(b, 1000)
		off := benchSnapshot(b, 1000)
		off.EndpointSlices[500].Endpoints[3].Ready = false
		for _, path := range []string{"full", "fast"} {
			b.Run(fmt.Sprintf("%s/mtls=%v", path, mtls), func(b *testing.B) {
				bl := newBuilder(translate.Options{MTLS: mtls})
				if _, err := bl.build(on); err != nil {
					b.Fatal(err)
				}
				snaps := [2]*model.Snapshot{off, on}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if path == "full" {
						bl.reset()
					}
					res, err := bl.build(snaps[i%2])
					if err != nil {
						b.Fatal(err)
					}
					if res.fast != (path == "fast") || res.stats.Changed == 0 {
						b.Fatalf("build took fast path %v and changed %d resources", res.fast, res.stats.Changed)
					}
					i++
				}
			})
		}
	}
}
