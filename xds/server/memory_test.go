package server_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/xds/node"
)

// BenchmarkSecureStreamMemory reports what an open, authenticated ADS
// stream costs the process in heap and goroutine stacks once it holds its
// configuration: the cost of one connected proxy on the port real proxies
// use. Client and server share the process; the client's share is the same
// whatever the server's options, so a change to them shows as a change in
// the per-stream figures.
func BenchmarkSecureStreamMemory(b *testing.B) {
	const streams = 100
	cp := startSecureControlPlane(b)
	update(b, cp.cache, node.Envoy, sidecarServices(b, map[string]string{"a": "10.0.0.1:8080"}, "a"))
	web := leaf(b, cp.ca, identity(certs.DefaultTrustDomain, "demo", "web"))

	var heap, stack float64
	for b.Loop() {
		before := settled()
		ctx, cancel := context.WithCancel(context.Background())
		var open []func() error
		for range streams {
			cc := cp.dialTLS(b, web)
			open = append(open, cc.Close)
			s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Send(&discoveryv3.DiscoveryRequest{Node: envoySidecar.Node(), TypeUrl: resourcev3.ClusterType}); err != nil {
				b.Fatal(err)
			}
			if _, err := s.Recv(); err != nil {
				b.Fatal(err)
			}
		}
		after := settled()
		heap += float64(after.HeapInuse) - float64(before.HeapInuse)
		stack += float64(after.StackInuse) - float64(before.StackInuse)

		cancel()
		for _, closeConn := range open {
			closeConn()
		}
		eventually(b, "every stream to close", func() bool {
			return cp.metric(b, "fjord_xds_connected_proxies", "kind", string(node.Envoy)) == 0
		})
	}
	b.ReportMetric(heap/float64(b.N*streams), "heap-B/stream")
	b.ReportMetric(stack/float64(b.N*streams), "stack-B/stream")
}

// BenchmarkDeltaReconnectMemory reports what a delta sidecar costs once it
// has reconnected holding all of 1,000 clusters, the state after a control
// plane restart: its initial_resource_versions become the versions the
// server keeps for it.
func BenchmarkDeltaReconnectMemory(b *testing.B) {
	const streams = 100
	cp := startControlPlane(b)
	eps := map[string]string{}
	var names []string
	for i := range 1000 {
		n := fmt.Sprintf("svc-%04d.ns-%02d.svc.cluster.local", i, i%20)
		names = append(names, n)
		eps[n] = "10.0.0.1:8080"
	}
	update(b, cp.cache, node.Envoy, sidecarServices(b, eps, names...))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	held := map[string]string{}
	first := dialDelta(ctx, b, cp, nil)
	for _, r := range first.GetResources() {
		held[r.GetName()] = r.GetVersion()
	}
	if len(held) != len(names) {
		b.Fatalf("first sidecar received %d clusters, want %d", len(held), len(names))
	}

	var heap float64
	for b.Loop() {
		before := settled()
		streamCtx, cancelStreams := context.WithCancel(ctx)
		for range streams {
			dialDelta(streamCtx, b, cp, held)
		}
		after := settled()
		heap += float64(after.HeapInuse) - float64(before.HeapInuse)
		cancelStreams()
		eventually(b, "every reconnected stream to close", func() bool {
			return cp.metric(b, "fjord_xds_connected_proxies", "kind", string(node.Envoy)) == 1
		})
	}
	b.ReportMetric(heap/float64(b.N*streams), "heap-B/stream")
}

// dialDelta opens a delta ADS stream on its own connection that subscribes
// to every cluster holding held, receives the first response and ACKs it.
// The stream lives until ctx ends.
func dialDelta(ctx context.Context, b *testing.B, cp *controlPlane, held map[string]string) *discoveryv3.DeltaDiscoveryResponse {
	b.Helper()
	d, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cp.dial(b)).DeltaAggregatedResources(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Send(&discoveryv3.DeltaDiscoveryRequest{Node: envoySidecar.Node(), TypeUrl: resourcev3.ClusterType, InitialResourceVersions: held}); err != nil {
		b.Fatal(err)
	}
	resp, err := d.Recv()
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce()}); err != nil {
		b.Fatal(err)
	}
	return resp
}

// settled is the memory in use after two collections (the second frees
// what the first's finalizers released).
func settled() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}
