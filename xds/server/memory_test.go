package server_test

import (
	"context"
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

// settled is the memory in use after two collections (the second frees
// what the first's finalizers released).
func settled() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}
