package cache_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

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
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

// watchRecorder is the cache as the server sees it, noting each
// state-of-the-world load-assignment watch once the cache holds it, so a
// test knows when an ACK has been taken in.
type watchRecorder struct {
	*cache.Cache
	mu      sync.Mutex
	opened  []string // version_info of each EDS watch opened
	changed *sync.Cond
}

func (r *watchRecorder) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	cancel, err := r.Cache.CreateWatch(req, sub, ch)
	if req.GetTypeUrl() == resourcev3.EndpointType {
		r.mu.Lock()
		r.opened = append(r.opened, req.GetVersionInfo())
		r.changed.Broadcast()
		r.mu.Unlock()
	}
	return cancel, err
}

// waitOpened waits for an EDS watch whose request acknowledged version.
func (r *watchRecorder) waitOpened(t *testing.T, version string) {
	t.Helper()
	deadline := time.AfterFunc(time.Minute, func() {
		r.mu.Lock()
		r.changed.Broadcast()
		r.mu.Unlock()
	})
	defer deadline.Stop()
	start := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for !slices.Contains(r.opened, version) {
		if time.Since(start) >= time.Minute {
			t.Fatalf("no EDS watch acknowledging %s; opened %v", version, r.opened)
		}
		r.changed.Wait()
	}
}

func startHealthBackend(t *testing.T, ip string) string {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	healthpb.RegisterHealthServer(g, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-done
	})
	return lis.Addr().String()
}

// splitService is what a grpc-go client needs to reach target through two
// clusters, half of the calls each: one listener and route, two clusters,
// two load assignments (cluster name -> backend address).
func splitService(t *testing.T, target string, backends map[string]string) *translate.Resources {
	t.Helper()
	ads := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		t.Fatal(err)
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix:     "split",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: ads, RouteConfigName: "split"}},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &translate.Resources{
		Listeners: []*listenerv3.Listener{{Name: target, ApiListener: &listenerv3.ApiListener{ApiListener: hcm}}},
		Routes: []*routev3.RouteConfiguration{{Name: "split", VirtualHosts: []*routev3.VirtualHost{{
			Name: "split", Domains: []string{target},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
					WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
						{Name: "a", Weight: wrapperspb.UInt32(1)},
						{Name: "b", Weight: wrapperspb.UInt32(1)},
					}},
				}}},
			}},
		}}}},
	}
	for _, name := range []string{"a", "b"} {
		host, portStr, err := net.SplitHostPort(backends[name])
		if err != nil {
			t.Fatal(err)
		}
		port, err := strconv.ParseUint(portStr, 10, 32)
		if err != nil {
			t.Fatal(err)
		}
		r.Clusters = append(r.Clusters, &clusterv3.Cluster{
			Name:                 name,
			ConnectTimeout:       durationpb.New(time.Second),
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads},
		})
		r.Endpoints = append(r.Endpoints, &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				Locality:            &corev3.Locality{Region: "local"},
				LoadBalancingWeight: wrapperspb.UInt32(1),
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
					}}},
				}}}},
			}},
		})
	}
	return r
}

// TestGRPCClientMergesPartialEndpoints runs a real grpc-go xDS client whose
// channel routes to two clusters over one ADS stream. When one cluster's
// endpoints move, the state-of-the-world response carries only that load
// assignment, and the client keeps routing to the other cluster: grpc-go
// does not take a load assignment missing from a response as removed.
func TestGRPCClientMergesPartialEndpoints(t *testing.T) {
	const target = "split.demo.svc.cluster.local:8080"
	c := cache.New(discardLogger())
	rec := &watchRecorder{Cache: c}
	rec.changed = sync.NewCond(&rec.mu)

	var (
		mu  sync.Mutex
		eds []*discoveryv3.DiscoveryResponse
	)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	xdsServer := serverv3.NewServer(ctx, rec, serverv3.CallbackFuncs{
		StreamResponseFunc: func(_ context.Context, _ int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
			if resp.GetTypeUrl() == resourcev3.EndpointType {
				mu.Lock()
				eds = append(eds, resp)
				mu.Unlock()
			}
		},
	})
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, xdsServer)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve(lis) }()
	defer func() {
		stop()
		g.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("xDS server: %v", err)
		}
	}()

	backendA := startHealthBackend(t, "127.0.0.1")
	backendB := startHealthBackend(t, "127.0.0.2")
	movedB := startHealthBackend(t, "127.0.0.3")
	mustUpdate(t, c, node.GRPC, splitService(t, target, map[string]string{"a": backendA, "b": backendB}))

	n, err := protojson.Marshal(proxy(node.GRPC))
	if err != nil {
		t.Fatal(err)
	}
	rb, err := xds.NewXDSResolverWithConfigForTesting([]byte(`{
		"xds_servers": [{"server_uri": "` + lis.Addr().String() + `", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": ` + string(n) + `}`))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := healthpb.NewHealthClient(cc)
	call := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var p peer.Peer
		if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true), grpc.Peer(&p)); err != nil {
			t.Fatalf("RPC: %v", err)
		}
		return p.Addr.String()
	}
	// reachAll calls until every backend in want has answered, and fails on
	// an answer from any other.
	reachAll := func(want ...string) {
		t.Helper()
		seen := map[string]bool{}
		for len(seen) < len(want) {
			got := call()
			if !slices.Contains(want, got) {
				t.Fatalf("RPC reached %s, want one of %v", got, want)
			}
			seen[got] = true
		}
	}
	reachAll(backendA, backendB)

	mu.Lock()
	if len(eds) == 0 {
		mu.Unlock()
		t.Fatal("RPCs succeeded without a load assignment response")
	}
	held := eds[len(eds)-1].GetVersionInfo()
	mu.Unlock()
	rec.waitOpened(t, held)

	mustUpdate(t, c, node.GRPC, splitService(t, target, map[string]string{"a": backendA, "b": movedB}))
	// Once the old backend of b stops answering, both clusters must still
	// be served: b by its new backend, a by its unchanged one.
	for deadline := time.Now().Add(time.Minute); call() != movedB; {
		if time.Now().After(deadline) {
			t.Fatalf("b's new backend %s never answered", movedB)
		}
	}
	reachAll(backendA, movedB)

	mu.Lock()
	defer mu.Unlock()
	last := eds[len(eds)-1]
	if diff := cmp.Diff([]string{"b"}, names(last, claName)); diff != "" {
		t.Errorf("EDS response after b moved (-want +got):\n%s", diff)
	}
}
