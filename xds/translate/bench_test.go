package translate

import (
	"fmt"
	"testing"

	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/xds/node"
)

// BenchmarkTranslate translates a mesh of 1,000 Services with 10 ready
// endpoints each, every port under the full policy of testdata/full.in.yaml,
// spread over five port numbers (so Envoy's route configurations hold 200
// virtual hosts each), with and without mTLS. Proxyless gRPC also gets one
// server listener per endpoint, 10,000 here.
func BenchmarkTranslate(b *testing.B) {
	full := &policy.Mesh{}
	if err := readMeshFile("full", full); err != nil {
		b.Fatal(err)
	}
	pol := full.Services[0].Ports[0].Policy
	portNumbers := []int32{80, 3000, 8080, 9090, 50051}
	m := &policy.Mesh{}
	for i := range 1000 {
		port := policy.Port{Name: "grpc", Port: portNumbers[i%len(portNumbers)], AppProtocol: "grpc", Policy: pol}
		for j := range 10 {
			port.Endpoints = append(port.Endpoints, policy.Endpoint{
				Address: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1), Port: 9090, Ready: true,
				Zone: fmt.Sprintf("zone-%d", j%3),
			})
		}
		svc := policy.Service{Ports: []policy.Port{port}}
		svc.Namespace, svc.Name = fmt.Sprintf("ns-%d", i%20), fmt.Sprintf("svc-%d", i)
		m.Services = append(m.Services, svc)
	}
	for _, kind := range node.Kinds {
		for name, opts := range map[string]Options{"plaintext": {}, "mtls": {MTLS: true}} {
			b.Run(string(kind)+"/"+name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					Translate(m, kind, opts)
				}
			})
		}
	}
}
