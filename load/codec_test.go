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
// decodes to the request it was given, whether or not the names' encoding
// was kept, and that a new list of names is encoded anew.
func TestProxyCodecRoundTrip(t *testing.T) {
	c := newProxyCodec()
	info := node.Info{Namespace: "ns", Workload: "w", ServiceAccount: "sa", Kind: node.Envoy}
	long, other := names("eds", 1000), names("eds", 1000)
	other[500] = "changed"
	reqs := []*discoveryv3.DiscoveryRequest{
		{TypeUrl: "t", ResourceNames: names("short", 3), Node: info.Node()},
		{TypeUrl: "t", VersionInfo: "v1", ResponseNonce: "1", ResourceNames: long, Node: info.Node()},
		{TypeUrl: "t", VersionInfo: "v2", ResponseNonce: "2", ResourceNames: long},
		{TypeUrl: "t", VersionInfo: "v2", ResponseNonce: "3", ResourceNames: other,
			ErrorDetail: &status.Status{Code: 3, Message: "rejected"}},
		{TypeUrl: "t", ResponseNonce: "4", ResourceNames: long[:999]},
		{TypeUrl: "t"},
		{},
	}
	for i, req := range reqs {
		data, err := c.Marshal(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got := &discoveryv3.DiscoveryRequest{}
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
