package server_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/fjordmesh/fjord/xds/node"
)

const target = "echo.demo.svc.cluster.local:8080"

var (
	grpcClient   = node.Info{Namespace: "demo", Workload: "client", ServiceAccount: "client", Kind: node.GRPC}
	envoySidecar = node.Info{Namespace: "demo", Workload: "web", ServiceAccount: "web", Kind: node.Envoy}
)

// startBackend serves the gRPC health service on ip, port chosen by the
// kernel, and returns its address.
func startBackend(t *testing.T, ip string) string {
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

// bootstrap is a grpc-go xDS bootstrap for the control plane at addr, with
// the node identity fjordctl bootstrap would write.
func bootstrap(t *testing.T, addr string, who node.Info) []byte {
	t.Helper()
	n, err := protojson.Marshal(who.Node())
	if err != nil {
		t.Fatal(err)
	}
	return []byte(`{
		"xds_servers": [{"server_uri": "` + addr + `", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": ` + string(n) + `
	}`)
}

func TestProxylessGRPCClientFollowsEndpoints(t *testing.T) {
	cp := startControlPlane(t)
	first := startBackend(t, "127.0.0.1")
	second := startBackend(t, "127.0.0.2")
	update(t, cp.cache, node.GRPC, proxylessService(t, target, first))

	rb, err := xds.NewXDSResolverWithConfigForTesting(bootstrap(t, cp.addr, grpcClient))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	client := healthpb.NewHealthClient(cc)
	call := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var p peer.Peer
		if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
			return "", err
		}
		return p.Addr.String(), nil
	}

	var lastErr error
	defer func() {
		if t.Failed() {
			t.Logf("last RPC error: %v\ncontrol plane log:\n%s", lastErr, cp.logs.String())
		}
	}()
	eventually(t, "an RPC through the xDS-configured channel", func() bool {
		var got string
		got, lastErr = call()
		if lastErr == nil && got != first {
			t.Fatalf("RPC reached %s, want %s", got, first)
		}
		return lastErr == nil
	})
	if got := cp.metric(t, "fjord_xds_connected_proxies", "kind", "grpc"); got != 1 {
		t.Errorf("connected grpc proxies = %v, want 1", got)
	}
	for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
		if got := cp.metric(t, "fjord_xds_pushes_total", "type", typ); got < 1 {
			t.Errorf("pushes of %s = %v, want at least 1", typ, got)
		}
	}

	update(t, cp.cache, node.GRPC, proxylessService(t, target, second))
	eventually(t, "RPCs to move to "+second, func() bool {
		got, err := call()
		return err == nil && got == second
	})
	for range 10 {
		got, err := call()
		if err != nil || got != second {
			t.Fatalf("after the move: RPC reached %q (err %v), want %s", got, err, second)
		}
	}
}

// deltaStream plays an Envoy sidecar on a delta ADS stream.
type deltaStream struct {
	t *testing.T
	s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func (d *deltaStream) send(req *discoveryv3.DeltaDiscoveryRequest) {
	d.t.Helper()
	if err := d.s.Send(req); err != nil {
		d.t.Fatalf("send %s: %v", req.GetTypeUrl(), err)
	}
}

func (d *deltaStream) recv() *discoveryv3.DeltaDiscoveryResponse {
	d.t.Helper()
	out, err := d.s.Recv()
	if err != nil {
		d.t.Fatalf("recv: %v", err)
	}
	return out
}

// expect receives the next response, checks its type and content, and ACKs
// it.
func (d *deltaStream) expect(typeURL string, resources, removed []string) {
	d.t.Helper()
	out := d.recv()
	var got []string
	for _, r := range out.GetResources() {
		got = append(got, r.GetName())
	}
	if out.GetTypeUrl() != typeURL {
		d.t.Fatalf("next response is %s %v (removed %v), want %s", out.GetTypeUrl(), got, out.GetRemovedResources(), typeURL)
	}
	if diff := cmp.Diff(resources, got); diff != "" {
		d.t.Errorf("%s resources (-want +got):\n%s", short(typeURL), diff)
	}
	if diff := cmp.Diff(removed, out.GetRemovedResources()); diff != "" {
		d.t.Errorf("%s removed (-want +got):\n%s", short(typeURL), diff)
	}
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: out.GetNonce()})
}

// expectAny receives a response of one of the types not seen yet, checks
// that it only removes the given names, and ACKs it.
func (d *deltaStream) expectAny(types map[string]bool, removed []string) {
	d.t.Helper()
	out := d.recv()
	if !types[out.GetTypeUrl()] {
		d.t.Fatalf("unexpected response of type %s (removed %v)", out.GetTypeUrl(), out.GetRemovedResources())
	}
	types[out.GetTypeUrl()] = false
	if len(out.GetResources()) != 0 {
		d.t.Errorf("%s: %d resources, want none", short(out.GetTypeUrl()), len(out.GetResources()))
	}
	if diff := cmp.Diff(removed, out.GetRemovedResources()); diff != "" {
		d.t.Errorf("%s removed (-want +got):\n%s", short(out.GetTypeUrl()), diff)
	}
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: out.GetTypeUrl(), ResponseNonce: out.GetNonce()})
}

func short(typeURL string) string { return typeURL[strings.LastIndex(typeURL, ".")+1:] }

func TestDeltaADSLikeEnvoy(t *testing.T) {
	cp := startControlPlane(t)
	eps := map[string]string{"a": "10.0.0.1:8080", "b": "10.0.0.2:8080"}
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b"))
	update(t, cp.cache, node.GRPC, proxylessService(t, target, "10.0.0.9:8080"))

	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cp.dial(t)).DeltaAggregatedResources(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	d := &deltaStream{t: t, s: s}
	// Envoy's order: clusters and listeners by wildcard, then what they
	// reference by name.
	d.send(&discoveryv3.DeltaDiscoveryRequest{Node: envoySidecar.Node(), TypeUrl: resourcev3.ClusterType})
	d.expect(resourcev3.ClusterType, []string{"a", "b"}, nil)
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType})
	d.expect(resourcev3.ListenerType, []string{"a", "b"}, nil)
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"a", "b"}})
	d.expect(resourcev3.EndpointType, []string{"a", "b"}, nil)
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNamesSubscribe: []string{"a-route"}})
	d.expect(resourcev3.RouteType, []string{"a-route"}, nil)

	// Changes this proxy does not subscribe to: the other proxy kind's
	// content, and a route it never asked for.
	update(t, cp.cache, node.GRPC, proxylessService(t, target, "10.0.0.10:8080"))
	unrelated := sidecarServices(t, eps, "a", "b")
	unrelated.Routes[1].VirtualHosts[0].Domains = []string{"b", "b.demo"}
	update(t, cp.cache, node.Envoy, unrelated)

	// A change it does subscribe to arrives as the very next response, so
	// nothing was pushed for the unrelated ones (the stream is ordered).
	eps["a"] = "10.0.0.11:8080"
	moved := sidecarServices(t, eps, "a", "b")
	moved.Routes[1] = unrelated.Routes[1]
	update(t, cp.cache, node.Envoy, moved)
	d.expect(resourcev3.EndpointType, []string{"a"}, nil)

	// b goes away: removals for the wildcard types and the subscribed load
	// assignment, nothing for the route it never subscribed to.
	// The three removals may come in any order: each type's watch is
	// re-armed when the server has read that type's ACK.
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a"))
	for range 3 {
		d.expectAny(map[string]bool{resourcev3.ClusterType: true, resourcev3.EndpointType: true, resourcev3.ListenerType: true}, []string{"b"})
	}
	eps["a"] = "10.0.0.12:8080"
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a"))
	d.expect(resourcev3.EndpointType, []string{"a"}, nil)

	if got := cp.metric(t, "fjord_xds_pushes_total", "type", "endpoint"); got != 4 {
		t.Errorf("endpoint pushes = %v, want 4", got)
	}
	if got := cp.metric(t, "fjord_xds_nacks_total", "type", "endpoint"); got != 0 {
		t.Errorf("endpoint NACKs = %v, want 0", got)
	}
}

func TestNACKIsAnsweredOnce(t *testing.T) {
	cp := startControlPlane(t)
	update(t, cp.cache, node.GRPC, proxylessService(t, target, "127.0.0.1:9001"))
	ctx := testContext(t)
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cp.dial(t)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: grpcClient.Node(), TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"echo-cluster"}}); err != nil {
		t.Fatal(err)
	}
	first, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	responses := make(chan *discoveryv3.DiscoveryResponse, 100)
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				return
			}
			select {
			case responses <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Reject it the way grpc-go does: the last accepted version (none) and
	// the nonce of the rejected response.
	if err := s.Send(&discoveryv3.DiscoveryRequest{
		TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"echo-cluster"},
		ResponseNonce: first.GetNonce(),
		ErrorDetail:   &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "endpoint rejected by test"},
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the NACK to be counted", func() bool {
		return cp.metric(t, "fjord_xds_nacks_total", "type", "endpoint") == 1
	})
	// A resend loop would show thousands of responses here.
	window := time.After(500 * time.Millisecond)
	resent := 0
	for wait := true; wait; {
		select {
		case <-responses:
			resent++
		case <-window:
			wait = false
		}
	}
	if resent != 0 {
		t.Fatalf("the rejected content was sent %d more times; want exactly one response", resent)
	}
	logs := cp.logs.String()
	for _, want := range []string{"xDS NACK", grpcClient.ID(), "type=endpoint", "nonce=" + first.GetNonce(), "endpoint rejected by test"} {
		if !strings.Contains(logs, want) {
			t.Errorf("NACK log lacks %q:\n%s", want, logs)
		}
	}

	// New content is sent.
	update(t, cp.cache, node.GRPC, proxylessService(t, target, "127.0.0.1:9002"))
	select {
	case next := <-responses:
		if next.GetVersionInfo() == first.GetVersionInfo() {
			t.Fatalf("resent the rejected version")
		}
		var cla endpointv3.ClusterLoadAssignment
		if err := next.GetResources()[0].UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		if got := cla.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); got != 9002 {
			t.Errorf("port after the fix = %d, want 9002", got)
		}
	case <-time.After(waitFor):
		t.Fatal("the changed content never came")
	}
}

func TestNodeIdentity(t *testing.T) {
	cp := startControlPlane(t)
	update(t, cp.cache, node.GRPC, proxylessService(t, target, "127.0.0.1:9001"))
	update(t, cp.cache, node.Envoy, sidecarServices(t, map[string]string{"a": "10.0.0.1:8080"}, "a"))
	other := grpcClient
	other.Workload = "intruder"
	otherSA := grpcClient
	otherSA.ServiceAccount = "admin"
	otherEnvoy := envoySidecar
	otherEnvoy.Namespace = "prod"

	tests := map[string]struct {
		delta         bool
		first, second *corev3.Node
		want          codes.Code
	}{
		"no node":                         {first: nil, want: codes.InvalidArgument},
		"no metadata":                     {first: &corev3.Node{Id: grpcClient.ID()}, want: codes.InvalidArgument},
		"delta no metadata":               {delta: true, first: &corev3.Node{Id: envoySidecar.ID()}, want: codes.InvalidArgument},
		"node switched":                   {first: grpcClient.Node(), second: other.Node(), want: codes.PermissionDenied},
		"metadata switched under same id": {first: grpcClient.Node(), second: otherSA.Node(), want: codes.PermissionDenied},
		"delta node switched":             {delta: true, first: envoySidecar.Node(), second: otherEnvoy.Node(), want: codes.PermissionDenied},
		"same node sent again":            {first: grpcClient.Node(), second: grpcClient.Node(), want: codes.OK},
		"delta same node sent again":      {delta: true, first: envoySidecar.Node(), second: envoySidecar.Node(), want: codes.OK},
		"node omitted on later requests":  {first: grpcClient.Node(), want: codes.OK},
		"delta node omitted later":        {delta: true, first: envoySidecar.Node(), want: codes.OK},
	}
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cp.dial(t))
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			var got error
			if tc.delta {
				got = deltaIdentity(ctx, t, ads, tc.first, tc.second)
			} else {
				got = sotwIdentity(ctx, t, ads, tc.first, tc.second)
			}
			if status.Code(got) != tc.want {
				t.Errorf("stream ended with %v, want code %v", got, tc.want)
			}
		})
	}
	eventually(t, "every stream to be counted out", func() bool {
		return cp.metric(t, "fjord_xds_connected_proxies", "kind", "grpc") == 0 &&
			cp.metric(t, "fjord_xds_connected_proxies", "kind", "envoy") == 0
	})
}

// sotwIdentity opens a stream with first as the node of its first request;
// if that is answered, it ACKs with second as node and returns the stream's
// error, or nil if the stream stays open (a later change is still pushed).
func sotwIdentity(ctx context.Context, t *testing.T, ads discoveryv3.AggregatedDiscoveryServiceClient, first, second *corev3.Node) error {
	s, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A stream refused at once (unauthenticated) fails the send with io.EOF;
	// Recv then returns its status.
	_ = s.Send(&discoveryv3.DiscoveryRequest{Node: first, TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"echo-cluster"}})
	out, err := s.Recv()
	if err != nil {
		return err
	}
	// A refused stream makes these sends fail with io.EOF; its status comes
	// from Recv.
	_ = s.Send(&discoveryv3.DiscoveryRequest{
		Node: clone(second), TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"echo-cluster"},
		VersionInfo: out.GetVersionInfo(), ResponseNonce: out.GetNonce(),
	})
	// Subscribing to another type gets an answer only if the stream lives.
	_ = s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"echo-cluster"}})
	if _, err := s.Recv(); err != nil {
		return err
	}
	return s.CloseSend()
}

func deltaIdentity(ctx context.Context, t *testing.T, ads discoveryv3.AggregatedDiscoveryServiceClient, first, second *corev3.Node) error {
	s, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: first, TypeUrl: resourcev3.ClusterType})
	out, err := s.Recv()
	if err != nil {
		return err
	}
	_ = s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: clone(second), TypeUrl: resourcev3.ClusterType, ResponseNonce: out.GetNonce()})
	_ = s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"a"}})
	if _, err := s.Recv(); err != nil {
		return err
	}
	return s.CloseSend()
}

func clone(n *corev3.Node) *corev3.Node {
	if n == nil {
		return nil
	}
	return proto.Clone(n).(*corev3.Node)
}

func TestPerTypeService(t *testing.T) {
	cp := startControlPlane(t)
	update(t, cp.cache, node.GRPC, proxylessService(t, target, "127.0.0.1:9001"))
	s, err := clusterservice.NewClusterDiscoveryServiceClient(cp.dial(t)).StreamClusters(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: grpcClient.Node(), ResourceNames: []string{"echo-cluster"}}); err != nil {
		t.Fatal(err)
	}
	out, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if out.GetTypeUrl() != resourcev3.ClusterType || len(out.GetResources()) != 1 {
		t.Errorf("CDS answered %s with %d resources, want one cluster", out.GetTypeUrl(), len(out.GetResources()))
	}

	// The unary fetch checks identity too.
	cds := clusterservice.NewClusterDiscoveryServiceClient(cp.dial(t))
	got, err := cds.FetchClusters(testContext(t), &discoveryv3.DiscoveryRequest{Node: grpcClient.Node(), ResourceNames: []string{"echo-cluster"}})
	if err != nil {
		t.Fatalf("FetchClusters: %v", err)
	}
	if got.GetVersionInfo() != out.GetVersionInfo() {
		t.Errorf("fetched version %s, streamed %s", got.GetVersionInfo(), out.GetVersionInfo())
	}
	_, err = cds.FetchClusters(testContext(t), &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "anonymous"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchClusters without identity: %v, want InvalidArgument", err)
	}
}
