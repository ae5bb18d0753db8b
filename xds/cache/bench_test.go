package cache_test

import (
	"fmt"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

const benchServices = 1000

func svcName(i int) string { return fmt.Sprintf("svc-%04d.demo.svc.cluster.local:8080", i) }

// mesh is benchServices services with a listener, route, cluster and load
// assignment each, shaped like proxyless gRPC resources.
func mesh(b *testing.B) *translate.Resources {
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		b.Fatal(err)
	}
	r := &translate.Resources{}
	for i := range benchServices {
		n := svcName(i)
		hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
			StatPrefix: n,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
				ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
				RouteConfigName: n,
			}},
			HttpFilters: []*hcmv3.HttpFilter{{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
		})
		if err != nil {
			b.Fatal(err)
		}
		r.Listeners = append(r.Listeners, &listenerv3.Listener{Name: n, ApiListener: &listenerv3.ApiListener{ApiListener: hcm}})
		r.Routes = append(r.Routes, &routev3.RouteConfiguration{Name: n, VirtualHosts: []*routev3.VirtualHost{{
			Name: n, Domains: []string{n},
			Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: n}}},
			}},
		}}})
		r.Clusters = append(r.Clusters, cluster(n))
		r.Endpoints = append(r.Endpoints, loadAssignment(n, fmt.Sprintf("10.%d.%d.1", i/256, i%256)))
	}
	return r
}

// fresh copies every resource, as a new translation would produce: the
// cache cannot assume unchanged pointers mean unchanged content.
func fresh(r *translate.Resources) *translate.Resources {
	out := &translate.Resources{}
	for _, m := range r.Clusters {
		out.Clusters = append(out.Clusters, proto.Clone(m).(*clusterv3.Cluster))
	}
	for _, m := range r.Endpoints {
		out.Endpoints = append(out.Endpoints, proto.Clone(m).(*endpointv3.ClusterLoadAssignment))
	}
	for _, m := range r.Listeners {
		out.Listeners = append(out.Listeners, proto.Clone(m).(*listenerv3.Listener))
	}
	for _, m := range r.Routes {
		out.Routes = append(out.Routes, proto.Clone(m).(*routev3.RouteConfiguration))
	}
	return out
}

// proxyClient is one simulated proxy's endpoint watch.
type proxyClient interface {
	// drain takes a pending response, if any, ACKs it and reports the
	// size of the response (0 if there was none).
	drain() int
}

type sotwProxy struct{ *sotwClient }

func (p sotwProxy) drain() int {
	select {
	case r := <-p.ch:
		out, _ := r.GetDiscoveryResponse()
		p.sent++
		p.nonce = fmt.Sprint(p.sent)
		p.sub.SetReturnedResources(r.GetReturnedResources())
		p.ack(out)
		return proto.Size(out)
	default:
		return 0
	}
}

type deltaProxy struct{ *deltaClient }

func (p deltaProxy) drain() int {
	select {
	case r := <-p.ch:
		out, _ := r.GetDeltaDiscoveryResponse()
		p.sent++
		p.nonce = fmt.Sprint(p.sent)
		p.sub.SetReturnedResources(r.GetReturnedResources())
		p.ack()
		return proto.Size(out)
	default:
		return 0
	}
}

// BenchmarkUpdateOneEndpoint measures one endpoint change reaching N
// connected proxies of one kind over 1,000 services: Update (validate,
// serialise and hash every resource, diff, build the responses of the
// affected watches) plus each affected proxy's ACK opening its next watch.
// B-sent/push is the mean size of a response, what each affected proxy is
// sent.
//
//   - grpc: state-of-the-world, each proxy watching the load assignments of
//     10 services (a proxyless client's handful of dependencies);
//   - envoy: delta, each proxy watching all 1,000 load assignments by name
//     (a sidecar without scoping);
//   - envoy-sotw: state-of-the-world, each proxy watching all 1,000 load
//     assignments by name, so every push and every ACK selects a large set.
func BenchmarkUpdateOneEndpoint(b *testing.B) {
	for _, mode := range []string{"grpc-sotw", "envoy-delta", "envoy-sotw"} {
		for _, n := range []int{100, 1000} {
			b.Run(fmt.Sprintf("%s/proxies=%d", mode, n), func(b *testing.B) {
				base := mesh(b)
				c := cache.New(discardLogger())
				mustUpdate(b, c, node.GRPC, fresh(base))
				clients := make([]proxyClient, n)
				for i := range clients {
					if mode == "grpc-sotw" {
						s := newSotwClient(b, c, node.GRPC, resourcev3.EndpointType, false)
						var names []string
						for k := range 10 {
							names = append(names, svcName((i*10+k)%benchServices))
						}
						s.request(names, "")
						s.ack(s.receive())
						clients[i] = sotwProxy{s}
						continue
					}
					if mode == "envoy-sotw" {
						s := newSotwClient(b, c, node.GRPC, resourcev3.EndpointType, false)
						var names []string
						for k := range benchServices {
							names = append(names, svcName(k))
						}
						s.request(names, "")
						s.ack(s.receive())
						clients[i] = sotwProxy{s}
						continue
					}
					d := newDeltaClient(b, c, node.GRPC, resourcev3.EndpointType, false)
					var names []string
					for k := range benchServices {
						names = append(names, svcName(k))
					}
					d.request(names, nil, nil, "")
					d.receive()
					d.ack()
					clients[i] = deltaProxy{d}
				}
				flip := [2]*translate.Resources{fresh(base), fresh(base)}
				flip[1].Endpoints[0] = loadAssignment(svcName(0), "10.255.255.1")

				pushes, sent := 0, 0
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					b.StopTimer()
					in := fresh(flip[(i+1)%2])
					b.StartTimer()
					mustUpdate(b, c, node.GRPC, in)
					for _, p := range clients {
						if n := p.drain(); n > 0 {
							pushes++
							sent += n
						}
					}
				}
				b.ReportMetric(float64(pushes)/float64(b.N), "pushes/op")
				if pushes > 0 {
					b.ReportMetric(float64(sent)/float64(pushes), "B-sent/push")
				}
			})
		}
	}
}

// BenchmarkUpdateIdentical is the floor under every Update of 1,000
// services: validating, serialising and hashing 4,000 resources that turn
// out unchanged.
func BenchmarkUpdateIdentical(b *testing.B) {
	base := mesh(b)
	c := cache.New(discardLogger())
	mustUpdate(b, c, node.GRPC, fresh(base))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		in := fresh(base)
		b.StartTimer()
		mustUpdate(b, c, node.GRPC, in)
	}
}

// sharedSub is a state-of-the-world subscription whose name set is shared
// with other streams, as xds/server shares the set of every stream that sent
// the same list of names.
type sharedSub struct {
	names    map[string]struct{}
	returned map[string]string
}

func (s *sharedSub) ReturnedResources() map[string]string     { return s.returned }
func (s *sharedSub) SubscribedResources() map[string]struct{} { return s.names }
func (s *sharedSub) IsWildcard() bool                         { return false }

// openShared opens a state-of-the-world watch on names with a subscription
// sharing set, takes its first response and opens the watch that ACKs it,
// which stays registered until a change concerns it.
func openShared(b *testing.B, c *cache.Cache, kind node.Kind, names []string, set map[string]struct{}) {
	b.Helper()
	sub := &sharedSub{names: set, returned: map[string]string{}}
	req := &discoveryv3.DiscoveryRequest{Node: proxy(kind), TypeUrl: resourcev3.EndpointType, ResourceNames: names}
	ch := make(chan cachev3.Response, 1)
	if _, err := c.CreateWatch(req, sub, ch); err != nil {
		b.Fatal(err)
	}
	r := <-ch
	out, err := r.GetDiscoveryResponse()
	if err != nil {
		b.Fatal(err)
	}
	sub.returned = r.GetReturnedResources()
	ack := &discoveryv3.DiscoveryRequest{
		Node: proxy(kind), TypeUrl: resourcev3.EndpointType, ResourceNames: names,
		VersionInfo: out.GetVersionInfo(), ResponseNonce: "1",
	}
	cancel, err := c.CreateWatch(ack, sub, make(chan cachev3.Response, 1))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cancel)
}

// BenchmarkPatchOneEndpoint measures the endpoint fast path: PatchView of
// one load assignment of 1,000, with watches registered that the change
// does not concern, so what is measured is building the next snapshot and
// finding the watches to wake, not answering them. With watches, 500
// state-of-the-world streams share one set of 999 names (every service but
// the one that flips), as Envoy sidecars of one namespace do.
func BenchmarkPatchOneEndpoint(b *testing.B) {
	for _, watches := range []int{0, 500} {
		b.Run(fmt.Sprintf("watches=%d", watches), func(b *testing.B) {
			c := cache.New(discardLogger())
			mustUpdate(b, c, node.Envoy, fresh(mesh(b)))
			var names []string
			set := map[string]struct{}{}
			for i := 1; i < benchServices; i++ {
				names = append(names, svcName(i))
				set[svcName(i)] = struct{}{}
			}
			for range watches {
				openShared(b, c, node.Envoy, names, set)
			}
			flip := [2]*endpointv3.ClusterLoadAssignment{
				loadAssignment(svcName(0), "10.255.255.1"),
				loadAssignment(svcName(0), "10.0.0.1"),
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				st, err := c.Patch(node.Envoy, &translate.Resources{Endpoints: flip[i%2 : i%2+1]}, cache.Names{})
				if err != nil || st.Changed != 1 {
					b.Fatalf("Patch = %+v, %v; want one change", st, err)
				}
				i++
			}
		})
	}
}

// serverListener is the listener an xDS-enabled gRPC server on ip asks
// for, as translate names it.
func serverListener(ip string) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name: translate.ServerListenerName(ip, 8080),
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address:       ip,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080},
		}}},
	}
}

// BenchmarkPatchServerListener measures what an endpoint flip costs the
// listeners of proxyless gRPC proxies: each of 10 endpoints of 1,000
// services has a server listener, so the type holds 11,000 listeners, and
// a flip adds one and removes another (one endpoint leaves, one comes).
// The replace case patches one listener in place, for comparison.
func BenchmarkPatchServerListener(b *testing.B) {
	base := mesh(b)
	for i := range benchServices * 10 {
		base.Listeners = append(base.Listeners, serverListener(fmt.Sprintf("10.%d.%d.%d", i/65536, i/256%256, i%256)))
	}
	a, z := serverListener("10.200.0.1"), serverListener("10.200.0.2")
	b.Run("add+remove", func(b *testing.B) {
		c := cache.New(discardLogger())
		mustUpdate(b, c, node.GRPC, fresh(base))
		if _, err := c.Patch(node.GRPC, &translate.Resources{Listeners: []*listenerv3.Listener{a}}, cache.Names{}); err != nil {
			b.Fatal(err)
		}
		flip := [2]*listenerv3.Listener{z, a}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			in, out := flip[i%2], flip[(i+1)%2]
			st, err := c.Patch(node.GRPC, &translate.Resources{Listeners: []*listenerv3.Listener{in}}, cache.Names{Listeners: []string{out.GetName()}})
			if err != nil || st != (cache.Stats{Changed: 1, Removed: 1}) {
				b.Fatalf("Patch = %+v, %v; want one added and one removed", st, err)
			}
			i++
		}
	})
	b.Run("replace", func(b *testing.B) {
		c := cache.New(discardLogger())
		mustUpdate(b, c, node.GRPC, fresh(base))
		moved := proto.Clone(base.Listeners[benchServices+5000]).(*listenerv3.Listener)
		moved.Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 9090}
		flip := [2]*listenerv3.Listener{moved, base.Listeners[benchServices+5000]}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			st, err := c.Patch(node.GRPC, &translate.Resources{Listeners: flip[i%2 : i%2+1]}, cache.Names{})
			if err != nil || st.Changed != 1 {
				b.Fatalf("Patch = %+v, %v; want one change", st, err)
			}
			i++
		}
	})
}
