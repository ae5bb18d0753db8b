package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

// fresh is s in its own allocation, as a decoded request carries it.
func fresh(s string) string { return strings.Clone(s) }

func same(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }

func TestInternerSharesOneCopy(t *testing.T) {
	in := newInterner(internLimit)
	first := []string{fresh("outbound|8080||web.demo.svc.cluster.local"), fresh("echo")}
	second := []string{fresh("outbound|8080||web.demo.svc.cluster.local"), fresh("echo")}
	in.strings(first)
	in.strings(second)
	for i := range first {
		if first[i] != second[i] || !same(first[i], second[i]) {
			t.Errorf("%q: two requests keep two copies", first[i])
		}
	}

	versions := in.versions(map[string]string{fresh("echo"): fresh("v1")})
	again := in.versions(map[string]string{fresh("echo"): fresh("v1")})
	for k, v := range versions {
		if !same(k, first[1]) {
			t.Errorf("initial version key %q is not the name's copy", k)
		}
		for k2, v2 := range again {
			if k2 != k || !same(k2, k) || !same(v2, v) {
				t.Errorf("initial versions %q=%q and %q=%q are not shared", k, v, k2, v2)
			}
		}
	}
}

func TestInternerIsBounded(t *testing.T) {
	const limit = 2
	in := newInterner(limit)
	one := func(s string) string {
		n := []string{fresh(s)}
		in.strings(n)
		return n[0]
	}
	a, b := one("a"), one("b")
	one("c") // the first generation (a, b) is full: it becomes the previous one
	if got := one("a"); !same(got, a) {
		t.Error("a name of the previous generation was copied again instead of promoted")
	}
	one("d") // (c, a) becomes the previous generation; b, unused since, leaves
	if got := one("b"); same(got, b) {
		t.Error("a name unused for two generations is still in the table")
	}

	if long := strings.Repeat("x", internMaxLen+1); same(one(long), one(long)) {
		t.Error("a string longer than internMaxLen was interned")
	}
	for i := range 1000 {
		one(fmt.Sprintf("client-invented-%d", i))
		if n := len(in.cur) + len(in.prev); n > 2*limit {
			t.Fatalf("after %d names the table holds %d strings, more than %d", i+1, n, 2*limit)
		}
	}
}

// recorder is the cache as the server sees it: it records the string data
// of the names each request and subscription carries into the cache.
type recorder struct {
	cachev3.Cache

	mu   sync.Mutex
	seen map[string][]*byte
}

func (r *recorder) record(names ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range names {
		r.seen[n] = append(r.seen[n], unsafe.StringData(n))
	}
}

func (r *recorder) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	r.record(req.GetResourceNames()...)
	for name := range sub.SubscribedResources() {
		r.record(name)
	}
	return r.Cache.CreateWatch(req, sub, ch)
}

func (r *recorder) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	r.record(req.GetResourceNamesSubscribe()...)
	for name := range sub.ReturnedResources() {
		r.record(name)
	}
	return r.Cache.CreateDeltaWatch(req, sub, ch)
}

// endpointsOnly is a mesh of EDS clusters, one endpoint each.
func endpointsOnly(eps map[string]string) *translate.Resources {
	r := &translate.Resources{}
	for _, name := range []string{"web.demo", "echo.demo"} {
		r.Clusters = append(r.Clusters, &clusterv3.Cluster{
			Name:                 name,
			ConnectTimeout:       durationpb.New(time.Second),
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
				ResourceApiVersion:    corev3.ApiVersion_V3,
			}},
		})
		r.Endpoints = append(r.Endpoints, &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				Locality:            &corev3.Locality{Region: "local"},
				LoadBalancingWeight: wrapperspb.UInt32(1),
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address:       eps[name],
						PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080},
					}}},
				}}}},
			}},
		})
	}
	return r
}

// TestStreamsShareSubscribedNames subscribes two state-of-the-world streams
// and a delta stream, each on its own connection, to the same load
// assignments, and checks that every request hands the cache the
// same copy of each name while the subscriptions keep working.
func TestStreamsShareSubscribedNames(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	c := cache.New(log)
	eps := map[string]string{"web.demo": "10.0.0.1", "echo.demo": "10.0.0.2"}
	if _, err := c.Update(node.Envoy, endpointsOnly(eps)); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{Cache: c, seen: map[string][]*byte{}}
	s := newServer(rec, nil, log)
	g := grpc.NewServer(GRPCOptions()...)
	s.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Serve(lis) }()
	t.Cleanup(func() {
		s.Close()
		g.GracefulStop()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("xDS server: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ads := func() discoveryv3.AggregatedDiscoveryServiceClient {
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
	}
	sidecar := node.Info{Namespace: "demo", Workload: "web", ServiceAccount: "web", Kind: node.Envoy}.Node()
	subscribed := []string{"echo.demo", "web.demo"}

	// Two state-of-the-world sidecars: subscribe, receive, ACK (which names
	// the resources again).
	var sotw []discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	for range 2 {
		st, err := ads().StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: sidecar, TypeUrl: resourcev3.EndpointType, ResourceNames: subscribed}); err != nil {
			t.Fatal(err)
		}
		resp := recvSotw(t, st, subscribed)
		if err := st.Send(&discoveryv3.DiscoveryRequest{
			TypeUrl: resourcev3.EndpointType, ResourceNames: subscribed,
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(),
		}); err != nil {
			t.Fatal(err)
		}
		sotw = append(sotw, st)
	}

	// A delta sidecar reconnecting with what it held.
	d, err := ads().DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(&discoveryv3.DeltaDiscoveryRequest{
		Node: sidecar, TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: subscribed,
		InitialResourceVersions: map[string]string{"web.demo": "an older version"},
	}); err != nil {
		t.Fatal(err)
	}
	recvDelta(t, d, subscribed)

	// A change to one subscribed load assignment reaches every stream, so
	// each has had its requests read and its subscription applied.
	eps["web.demo"] = "10.0.0.3"
	if _, err := c.Update(node.Envoy, endpointsOnly(eps)); err != nil {
		t.Fatal(err)
	}
	for _, st := range sotw {
		if resp := recvSotw(t, st, nil); !slices.Contains(resourceNames(t, resp), "web.demo") {
			t.Errorf("state-of-the-world push after the change lacks web.demo")
		}
	}
	recvDelta(t, d, []string{"web.demo"})

	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, name := range subscribed {
		ptrs := rec.seen[name]
		// Two requests per state-of-the-world stream, one subscription
		// and (for web.demo) one initial version on the delta stream.
		if len(ptrs) < 5 {
			t.Fatalf("%s was in %d requests, want at least 5", name, len(ptrs))
		}
		for i, p := range ptrs {
			if p != ptrs[0] {
				t.Errorf("%s: request %d of %d keeps its own copy of the name", name, i+1, len(ptrs))
			}
		}
	}
}

func recvSotw(t *testing.T, st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, want []string) *discoveryv3.DiscoveryResponse {
	t.Helper()
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	if want != nil {
		if diff := cmp.Diff(want, resourceNames(t, resp)); diff != "" {
			t.Errorf("load assignments (-want +got):\n%s", diff)
		}
	}
	return resp
}

// resourceNames are the names of the load assignments in resp.
func resourceNames(t *testing.T, resp *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range resp.GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		out = append(out, cla.GetClusterName())
	}
	return out
}

func recvDelta(t *testing.T, d discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, want []string) {
	t.Helper()
	resp, err := d.Recv()
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	var got []string
	for _, r := range resp.GetResources() {
		got = append(got, r.GetName())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delta load assignments (-want +got):\n%s", diff)
	}
	if err := d.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkInternACK is the cost interning adds to a state-of-the-world ACK
// of a sidecar subscribed to 1,000 load assignments: every name is already
// in the table.
func BenchmarkInternACK(b *testing.B) {
	in := newInterner(internLimit)
	decoded := make([]string, 1000)
	for i := range decoded {
		decoded[i] = fmt.Sprintf("outbound|8080||svc-%04d.ns-%02d.svc.cluster.local", i, i%20)
	}
	in.strings(slices.Clone(decoded))
	req := make([]string, len(decoded))
	for b.Loop() {
		copy(req, decoded)
		in.strings(req)
	}
}

// BenchmarkInternInitialVersions is the cost interning adds to a delta
// sidecar reconnecting with the versions of 1,000 resources of one type.
func BenchmarkInternInitialVersions(b *testing.B) {
	in := newInterner(internLimit)
	held := make(map[string]string, 1000)
	for i := range 1000 {
		held[fmt.Sprintf("outbound|8080||svc-%04d.ns-%02d.svc.cluster.local", i, i%20)] = fmt.Sprintf("%016x", i)
	}
	in.versions(held)
	for b.Loop() {
		in.versions(held)
	}
}
