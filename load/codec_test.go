package load

import (
	"fmt"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fjordmesh/fjord/xds/node"
)

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

// TestProxyCodecRoundTrip checks that what the harness's codec sends
// decodes to the request it was given, whether or not the names' and the
// node's encodings were kept, and that a new list of names is encoded anew.
func TestProxyCodecRoundTrip(t *testing.T) {
	c := newProxyCodec()
	info := node.Info{Namespace: "ns", Workload: "w", ServiceAccount: "sa", Kind: node.Envoy}
	nd := info.Node()
	long, other := names("eds", 1000), names("eds", 1000)
	other[500] = "changed"
	reqs := []proto.Message{
		&discoveryv3.DiscoveryRequest{TypeUrl: "t", ResourceNames: names("short", 3), Node: nd},
		&discoveryv3.DiscoveryRequest{TypeUrl: "t", VersionInfo: "v1", ResponseNonce: "1", ResourceNames: long, Node: nd},
		&discoveryv3.DiscoveryRequest{TypeUrl: "t", VersionInfo: "v1", ResponseNonce: "2", ResourceNames: long, Node: info.Node()},
		&discoveryv3.DiscoveryRequest{TypeUrl: "t", VersionInfo: "v2", ResponseNonce: "2", ResourceNames: long},
		&discoveryv3.DiscoveryRequest{TypeUrl: "t", VersionInfo: "v2", ResponseNonce: "3", ResourceNames: other,
			ErrorDetail: &status.Status{Code: 3, Message: "rejected"}},
		&discoveryv3.DiscoveryRequest{TypeUrl: "t", ResponseNonce: "4", ResourceNames: long[:999]},
		&discoveryv3.DiscoveryRequest{TypeUrl: "t"},
		&discoveryv3.DiscoveryRequest{},
		// The same node in a delta request is the other field number.
		&discoveryv3.DeltaDiscoveryRequest{TypeUrl: "t", Node: nd, ResourceNamesSubscribe: names("s", 2),
			InitialResourceVersions: map[string]string{"a": "1", "b": "2"}},
		&discoveryv3.DeltaDiscoveryRequest{TypeUrl: "t", Node: nd, ResponseNonce: "5"},
		&discoveryv3.DeltaDiscoveryRequest{TypeUrl: "t", Node: nd, ResponseNonce: "6", ResourceNamesUnsubscribe: names("s", 1),
			ErrorDetail: &status.Status{Code: 3, Message: "rejected"}},
		&discoveryv3.DeltaDiscoveryRequest{TypeUrl: "t", ResponseNonce: "7"},
	}
	for i, req := range reqs {
		data, err := c.Marshal(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got := req.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(data.Materialize(), got); err != nil {
			t.Fatalf("request %d: unmarshal: %v", i, err)
		}
		data.Free()
		if !proto.Equal(got, req) {
			t.Errorf("request %d: decoded %v, want %v", i, got, req)
		}
	}
	if n := len(c.names.m); n != 3 {
		t.Errorf("kept encodings of %d lists, want 3 (the two long lists and the prefix of one)", n)
	}
	if n := len(c.nodes.m); n != 2 {
		t.Errorf("kept encodings of %d nodes, want 2", n)
	}

	// Other messages go through plain protobuf.
	n := info.Node()
	data, err := c.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	got := &corev3.Node{}
	if err := c.Unmarshal(data, got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, n) {
		t.Errorf("node decoded as %v, want %v", got, n)
	}
}

func TestReusePoolTiers(t *testing.T) {
	p := &reusePool{}
	for _, n := range []int{0, 1, 2, 3, 1000, 1024, 1025, 40_000, 1 << 22, 1<<22 + 1} {
		b := p.Get(n)
		if len(*b) != n {
			t.Errorf("Get(%d) has length %d", n, len(*b))
		}
		if c := cap(*b); c < n || (n > 1 && n <= 1<<maxTier && c != 1<<tier(n)) {
			t.Errorf("Get(%d) has capacity %d", n, c)
		}
		p.Put(b)
	}
}

// BenchmarkProxyCodecACK is the marshalling of an Envoy-like proxy's ACK
// carrying its node (as Envoy sends it unless told otherwise): a delta
// ACK, and a state-of-the-world one naming 1,000 load assignments.
func BenchmarkProxyCodecACK(b *testing.B) {
	c := newProxyCodec()
	nd := node.Info{Namespace: "ns", Workload: "w", ServiceAccount: "sa", Kind: node.Envoy}.Node()
	for name, req := range map[string]proto.Message{
		"delta": &discoveryv3.DeltaDiscoveryRequest{TypeUrl: "t", Node: nd, ResponseNonce: "12345"},
		"sotw":  &discoveryv3.DiscoveryRequest{TypeUrl: "t", Node: nd, VersionInfo: "0123456789abcdef", ResponseNonce: "12345", ResourceNames: names("eds", 1000)},
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				data, err := c.Marshal(req)
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}
