package load

import (
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fjordmesh/fjord/xds/node"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func edsCluster(name string, maxReq uint32) *clusterv3.Cluster {
	c := &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
	if maxReq > 0 {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRequests: wrapperspb.UInt32(maxReq)}}}
	}
	return c
}

func loadAssignment(name string, addrs ...string) *endpointv3.ClusterLoadAssignment {
	var eps []*endpointv3.LbEndpoint
	for _, a := range addrs {
		eps = append(eps, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: a}}},
		}}})
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}}
}

func hcm(t *testing.T, route string) *anypb.Any {
	return mustAny(t, &hcmv3.HttpConnectionManager{RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: route}}})
}

func routeTo(name string, clusters ...string) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: name}
	for _, c := range clusters {
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{Name: c, Routes: []*routev3.Route{{
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c}}},
		}}})
	}
	return rc
}

func sotwResponse(t *testing.T, ty typ, version, nonce string, ms ...proto.Message) *discoveryv3.DiscoveryResponse {
	r := &discoveryv3.DiscoveryResponse{TypeUrl: typeURLs[ty], VersionInfo: version, Nonce: nonce}
	for _, m := range ms {
		r.Resources = append(r.Resources, mustAny(t, m))
	}
	return r
}

func deltaResponse(t *testing.T, ty typ, nonce string, removed []string, ms ...proto.Message) *discoveryv3.DeltaDiscoveryResponse {
	r := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typeURLs[ty], Nonce: nonce, RemovedResources: removed}
	for i, m := range ms {
		d, err := decode(ty, mustAny(t, m).GetValue())
		if err != nil {
			t.Fatal(err)
		}
		r.Resources = append(r.Resources, &discoveryv3.Resource{Name: d.name, Version: string(rune('a' + i)), Resource: mustAny(t, m)})
	}
	return r
}

func testProxy(spec ProxySpec) *proxy {
	f := NewFleet("127.0.0.1:1", []ProxySpec{spec}, time.Second)
	p := newProxy(0, spec, f)
	f.proxies = append(f.proxies, p)
	return p
}

var envoyInfo = node.Info{Namespace: "ns", Workload: "w", ServiceAccount: "sa", Kind: node.Envoy}

// TestSotwEnvoyLike follows an Envoy-like proxy through the
// state-of-the-world exchange: wildcard clusters, then the load assignments
// of what it got, ACKs carrying version and nonce, a removed cluster
// recorded as a shrink, and a NACK for content it cannot decode.
func TestSotwEnvoyLike(t *testing.T) {
	p := testProxy(ProxySpec{Pattern: EnvoyLike, Info: envoyInfo})
	if got := p.startStream(); !cmp.Equal(got, []typ{clusterType, listenerType}) {
		t.Fatalf("initial types %v, want cluster and listener", got)
	}
	passthrough := &clusterv3.Cluster{Name: "passthrough", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}}
	steps := []struct {
		name string
		resp *discoveryv3.DiscoveryResponse
		want []*discoveryv3.DiscoveryRequest
	}{{
		name: "clusters",
		resp: sotwResponse(t, clusterType, "c1", "n1", edsCluster("a", 0), edsCluster("b", 0), passthrough),
		want: []*discoveryv3.DiscoveryRequest{
			{Node: p.node, TypeUrl: typeURLs[clusterType], VersionInfo: "c1", ResponseNonce: "n1"},
			{Node: p.node, TypeUrl: typeURLs[endpointType], ResourceNames: []string{"a", "b"}},
		},
	}, {
		name: "listeners",
		resp: sotwResponse(t, listenerType, "l1", "n2", &listenerv3.Listener{Name: "0.0.0.0_80", FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm(t, "80")}}},
		}}}),
		want: []*discoveryv3.DiscoveryRequest{
			{Node: p.node, TypeUrl: typeURLs[listenerType], VersionInfo: "l1", ResponseNonce: "n2"},
			{Node: p.node, TypeUrl: typeURLs[routeType], ResourceNames: []string{"80"}},
		},
	}, {
		name: "one load assignment merges",
		resp: sotwResponse(t, endpointType, "e1", "n3", loadAssignment("a", "127.0.0.1")),
		want: []*discoveryv3.DiscoveryRequest{
			{Node: p.node, TypeUrl: typeURLs[endpointType], VersionInfo: "e1", ResponseNonce: "n3", ResourceNames: []string{"a", "b"}},
		},
	}, {
		name: "cluster b removed",
		resp: sotwResponse(t, clusterType, "c2", "n4", edsCluster("a", 7), passthrough),
		want: []*discoveryv3.DiscoveryRequest{
			{Node: p.node, TypeUrl: typeURLs[clusterType], VersionInfo: "c2", ResponseNonce: "n4"},
			{Node: p.node, TypeUrl: typeURLs[endpointType], VersionInfo: "e1", ResponseNonce: "n3", ResourceNames: []string{"a"}},
		},
	}}
	for _, st := range steps {
		p.mu.Lock()
		got, _ := p.applySotw(st.resp, time.Now())
		p.mu.Unlock()
		if diff := cmp.Diff(st.want, got, protocmp.Transform()); diff != "" {
			t.Errorf("%s: requests (-want +got):\n%s", st.name, diff)
		}
	}
	if d, ok := p.holds(clusterType, "a"); !ok || d.limits[maxRequests] != 7 {
		t.Errorf("cluster a: held %v with maxRequests %v, want 7", ok, d)
	}
	if _, ok := p.holds(endpointType, "a"); !ok {
		t.Error("load assignment a is not held")
	}
	if len(p.shrinks) != 1 || p.shrinks[0].Type != "cluster" || p.shrinks[0].Before != 3 || p.shrinks[0].After != 2 {
		t.Errorf("shrinks %+v, want one cluster 3 -> 2", p.shrinks)
	}

	bad := &discoveryv3.DiscoveryResponse{TypeUrl: typeURLs[clusterType], VersionInfo: "c3", Nonce: "n5",
		Resources: []*anypb.Any{{TypeUrl: typeURLs[clusterType], Value: []byte{0xff, 0xff}}}}
	p.mu.Lock()
	got, _ := p.applySotw(bad, time.Now())
	p.mu.Unlock()
	if len(got) != 1 || got[0].GetErrorDetail() == nil || got[0].GetVersionInfo() != "c2" || got[0].GetResponseNonce() != "n5" {
		t.Errorf("undecodable response answered with %v, want a NACK of nonce n5 keeping version c2", got)
	}
	if p.nacks.Load() != 1 {
		t.Errorf("nacks = %d, want 1", p.nacks.Load())
	}
	if _, ok := p.holds(clusterType, "a"); !ok {
		t.Error("a NACK dropped the clusters held")
	}
}

// TestSotwPartialResponses: the control plane sends state-of-the-world
// load assignments and route configurations that changed, alone. The proxy
// merges them into what it holds, as Envoy and grpc-go do, so such a
// response is no shrink; clusters and listeners stay the whole state.
func TestSotwPartialResponses(t *testing.T) {
	p := testProxy(ProxySpec{Pattern: EnvoyLike, Info: envoyInfo})
	p.startStream()
	listener := func(name, route string) *listenerv3.Listener {
		return &listenerv3.Listener{Name: name, FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm(t, route)}}},
		}}}
	}
	apply := func(resp *discoveryv3.DiscoveryResponse) {
		t.Helper()
		p.mu.Lock()
		defer p.mu.Unlock()
		if reqs, _ := p.applySotw(resp, time.Now()); reqs[0].GetErrorDetail() != nil {
			t.Fatalf("%s response NACKed: %v", resp.GetTypeUrl(), reqs[0].GetErrorDetail())
		}
	}
	apply(sotwResponse(t, clusterType, "c1", "n1", edsCluster("a", 0), edsCluster("b", 0)))
	apply(sotwResponse(t, listenerType, "l1", "n2", listener("l80", "80"), listener("l81", "81")))
	apply(sotwResponse(t, endpointType, "e1", "n3", loadAssignment("a", "10.0.0.1"), loadAssignment("b", "10.0.0.2")))
	apply(sotwResponse(t, routeType, "r1", "n4", routeTo("80", "a"), routeTo("81", "b")))

	apply(sotwResponse(t, endpointType, "e2", "n5", loadAssignment("b", "10.0.0.22")))
	apply(sotwResponse(t, routeType, "r2", "n6", routeTo("81", "a")))
	want := map[typ]map[string]bool{
		endpointType: {"a": true, "b": true},
		routeType:    {"80": true, "81": true},
	}
	for ty, names := range want {
		for name := range names {
			if _, ok := p.holds(ty, name); !ok {
				t.Errorf("%s %s dropped by a response that did not carry it", typeNames[ty], name)
			}
		}
	}
	if d, _ := p.holds(routeType, "81"); d == nil || !cmp.Equal(d.routeClusters, []string{"a"}) {
		t.Errorf("route 81 not updated: %+v", d)
	}
	if len(p.shrinks) != 0 {
		t.Errorf("partial responses recorded as shrinks: %+v", p.shrinks)
	}

	apply(sotwResponse(t, clusterType, "c2", "n7", edsCluster("a", 0)))
	if _, ok := p.holds(clusterType, "b"); ok {
		t.Error("cluster b, missing from a cluster response, is still held")
	}
	if len(p.shrinks) != 1 || p.shrinks[0].Type != "cluster" {
		t.Errorf("shrinks %+v, want the one of clusters", p.shrinks)
	}
}

// TestDeltaGRPCLike follows a gRPC-like proxy through the incremental
// exchange: listener, route, cluster, load assignment, each subscribed when
// the previous names it, the node sent once per stream, and a removal
// recorded as a shrink and unsubscribed.
func TestDeltaGRPCLike(t *testing.T) {
	info := node.Info{Namespace: "ns", Workload: "g", ServiceAccount: "sa", Kind: node.GRPC}
	p := testProxy(ProxySpec{Pattern: GRPCLike, Delta: true, Info: info, Services: []int{0}, Listeners: []string{"svc.ns.svc.cluster.local:80"}})
	if got := p.startStream(); !cmp.Equal(got, []typ{listenerType}) {
		t.Fatalf("initial types %v, want listener", got)
	}
	p.mu.Lock()
	first := p.withNode(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURLs[listenerType]})
	p.mu.Unlock()
	if first.GetNode() == nil {
		t.Fatal("the stream's first request carries no node")
	}
	steps := []struct {
		name string
		resp *discoveryv3.DeltaDiscoveryResponse
		want []*discoveryv3.DeltaDiscoveryRequest
	}{{
		name: "listener",
		resp: deltaResponse(t, listenerType, "n1", nil, &listenerv3.Listener{Name: "svc.ns.svc.cluster.local:80", ApiListener: &listenerv3.ApiListener{ApiListener: hcm(t, "route")}}),
		want: []*discoveryv3.DeltaDiscoveryRequest{
			{TypeUrl: typeURLs[listenerType], ResponseNonce: "n1"},
			{TypeUrl: typeURLs[routeType], ResourceNamesSubscribe: []string{"route"}},
		},
	}, {
		name: "route",
		resp: deltaResponse(t, routeType, "n2", nil, routeTo("route", "c")),
		want: []*discoveryv3.DeltaDiscoveryRequest{
			{TypeUrl: typeURLs[routeType], ResponseNonce: "n2"},
			{TypeUrl: typeURLs[clusterType], ResourceNamesSubscribe: []string{"c"}},
		},
	}, {
		name: "cluster",
		resp: deltaResponse(t, clusterType, "n3", nil, edsCluster("c", 0)),
		want: []*discoveryv3.DeltaDiscoveryRequest{
			{TypeUrl: typeURLs[clusterType], ResponseNonce: "n3"},
			{TypeUrl: typeURLs[endpointType], ResourceNamesSubscribe: []string{"c"}},
		},
	}, {
		name: "load assignment",
		resp: deltaResponse(t, endpointType, "n4", nil, loadAssignment("c", "127.0.0.9")),
		want: []*discoveryv3.DeltaDiscoveryRequest{{TypeUrl: typeURLs[endpointType], ResponseNonce: "n4"}},
	}, {
		name: "cluster removed",
		resp: deltaResponse(t, clusterType, "n5", []string{"c"}),
		want: []*discoveryv3.DeltaDiscoveryRequest{
			{TypeUrl: typeURLs[clusterType], ResponseNonce: "n5"},
			{TypeUrl: typeURLs[endpointType], ResourceNamesUnsubscribe: []string{"c"}},
		},
	}}
	for _, st := range steps {
		p.mu.Lock()
		got, _ := p.applyDelta(st.resp, time.Now())
		p.mu.Unlock()
		if diff := cmp.Diff(st.want, got, protocmp.Transform()); diff != "" {
			t.Errorf("%s: requests (-want +got):\n%s", st.name, diff)
		}
	}
	if len(p.shrinks) != 1 || p.shrinks[0].Type != "cluster" {
		t.Errorf("shrinks %+v, want one of clusters", p.shrinks)
	}
	if _, ok := p.holds(endpointType, "c"); ok {
		t.Error("the load assignment of a cluster no longer held is still held")
	}
}

// TestTracker checks that a change is stamped when an affected proxy holds
// it, and never on a proxy it does not concern.
func TestTracker(t *testing.T) {
	specs := []ProxySpec{
		{Pattern: GRPCLike, Info: envoyInfo, Services: []int{1}},
		{Pattern: GRPCLike, Info: envoyInfo, Services: []int{2}},
	}
	f := NewFleet("127.0.0.1:1", specs, time.Second)
	f.prepare(2)
	p, other := f.proxies[0], f.proxies[1]
	for _, x := range f.proxies {
		x.mu.Lock()
		x.applyDelta(deltaResponse(t, clusterType, "n0", nil, edsCluster("c", 0)), time.Now())
		x.mu.Unlock()
	}
	c := &Change{What: "remove", probe: &endpointProbe{svc: 1, cluster: "c", addr: "127.0.0.2", present: false}}
	pc := f.tracker.watch(c, f.proxies, len(specs))
	if pc.count != 1 || !pc.affected[0] || pc.affected[1] {
		t.Fatalf("affected %v (%d), want only proxy 0", pc.affected, pc.count)
	}
	start := time.Now()
	apply := func(x *proxy, nonce string, addrs ...string) {
		x.mu.Lock()
		_, done := x.applyDelta(deltaResponse(t, endpointType, nonce, nil, loadAssignment("c", addrs...)), time.Now())
		x.mu.Unlock()
		f.tracker.converged(x, done, time.Now())
	}
	apply(p, "n1", "127.0.0.1", "127.0.0.2")
	apply(other, "n1", "127.0.0.1")
	select {
	case <-pc.done:
		t.Fatal("converged before the proxy held the change")
	default:
	}
	apply(p, "n2", "127.0.0.1")
	select {
	case <-pc.done:
	default:
		t.Fatal("not converged after the proxy held the change")
	}
	lat, missing := pc.latencies(start)
	if len(lat) != 1 || missing != 0 || lat[0] < 0 {
		t.Errorf("latencies %v, %d missing; want one non-negative", lat, missing)
	}
	f.tracker.forget(pc)
	if got := f.tracker.active.Load(); got == nil || len(*got) != 0 {
		t.Errorf("forgotten change still watched: %v", got)
	}
}

// TestNodeOnce: an Envoy-like proxy sends its node in every request unless
// it models fjordctl bootstrap's Envoys (NodeOnce), which send it in the
// first request of each stream only, as gRPC-like proxies always do.
func TestNodeOnce(t *testing.T) {
	grpcInfo := node.Info{Namespace: "ns", Workload: "g", ServiceAccount: "sa", Kind: node.GRPC}
	tests := map[string]struct {
		spec ProxySpec
		want []bool // whether each of three requests of a stream carries the node
	}{
		"Envoy-like, default":    {spec: ProxySpec{Pattern: EnvoyLike, Info: envoyInfo}, want: []bool{true, true, true}},
		"Envoy-like, once":       {spec: ProxySpec{Pattern: EnvoyLike, Info: envoyInfo, NodeOnce: true}, want: []bool{true, false, false}},
		"Envoy-like delta":       {spec: ProxySpec{Pattern: EnvoyLike, Delta: true, Info: envoyInfo}, want: []bool{true, true, true}},
		"Envoy-like delta, once": {spec: ProxySpec{Pattern: EnvoyLike, Delta: true, Info: envoyInfo, NodeOnce: true}, want: []bool{true, false, false}},
		"gRPC-like":              {spec: ProxySpec{Pattern: GRPCLike, Info: grpcInfo, Services: []int{0}, Listeners: []string{"l:80"}}, want: []bool{true, false, false}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := testProxy(tc.spec)
			for stream := range 2 {
				p.startStream()
				var got []bool
				p.mu.Lock()
				for range tc.want {
					if tc.spec.Delta {
						got = append(got, p.withNode(&discoveryv3.DeltaDiscoveryRequest{}).GetNode() != nil)
					} else {
						got = append(got, p.sotwRequest(clusterType).GetNode() != nil)
					}
				}
				p.mu.Unlock()
				if !cmp.Equal(got, tc.want) {
					t.Errorf("stream %d: node carried %v, want %v", stream, got, tc.want)
				}
			}
		})
	}
}
