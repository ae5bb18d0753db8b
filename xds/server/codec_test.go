package server

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/fjordmesh/fjord/xds/node"
)

func loadAssignmentNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("outbound|8080||svc-%04d.ns-%02d.svc.cluster.local", i, i%20)
	}
	return names
}

// decode runs b through the codec, in buffers of at most 16 KB as gRPC
// hands over a message received in HTTP/2 frames of that size.
func decode(t testing.TB, b []byte) (*discoveryv3.DiscoveryRequest, error) {
	t.Helper()
	req := &discoveryv3.DiscoveryRequest{}
	return req, decodeInto(b, req)
}

func decodeDelta(t testing.TB, b []byte) (*discoveryv3.DeltaDiscoveryRequest, error) {
	t.Helper()
	req := &discoveryv3.DeltaDiscoveryRequest{}
	return req, decodeInto(b, req)
}

func decodeInto(b []byte, req proto.Message) error {
	var data mem.BufferSlice
	for len(b) > 16<<10 {
		data = append(data, mem.SliceBuffer(b[:16<<10]))
		b = b[16<<10:]
	}
	data = append(data, mem.SliceBuffer(b))
	return newCodec().Unmarshal(data, req)
}

// isSharedNode reports whether n is a node of the process's table.
func isSharedNode(n *corev3.Node) bool {
	sharedNodes.mu.Lock()
	defer sharedNodes.mu.Unlock()
	for _, g := range []*nodeGen{sharedNodes.cur, sharedNodes.prev} {
		if g == nil {
			continue
		}
		for _, cs := range g.byRaw {
			for _, c := range cs {
				if c.node == n {
					return true
				}
			}
		}
	}
	return false
}

// marshal encodes m as Envoy does: the same bytes every time.
func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testNode(workload string) *corev3.Node {
	return node.Info{Namespace: "demo", Workload: workload, ServiceAccount: workload, Kind: node.Envoy}.Node()
}

// TestCodecSharesNodes: a request decodes as protobuf decodes it, with or
// without a node, in both protocols; a node sent before, byte for byte, is
// the same shared node, together with a shared list of names; another node
// is not that one.
func TestCodecSharesNodes(t *testing.T) {
	names := loadAssignmentNames(100)
	newInterner(internLimit).list(slices.Clone(names))
	web, api := testNode("codec-web"), testNode("codec-api")
	sotw := map[string]*discoveryv3.DiscoveryRequest{
		"no node":         {VersionInfo: "v1", TypeUrl: resourcev3.ClusterType, ResponseNonce: "1"},
		"node":            {Node: web, VersionInfo: "v1", TypeUrl: resourcev3.ClusterType, ResponseNonce: "1"},
		"node and names":  {Node: web, VersionInfo: "v2", ResourceNames: names, TypeUrl: resourcev3.EndpointType, ResponseNonce: "2", ErrorDetail: &statuspb.Status{Code: 3, Message: "rejected"}},
		"other node":      {Node: api, VersionInfo: "v1", TypeUrl: resourcev3.ClusterType},
		"names, no node":  {ResourceNames: names, TypeUrl: resourcev3.EndpointType},
		"node, few names": {Node: web, ResourceNames: names[:3], TypeUrl: resourcev3.EndpointType},
	}
	for name, req := range sotw {
		t.Run("sotw "+name, func(t *testing.T) {
			b := marshal(t, req)
			var first *corev3.Node
			for i := range 2 {
				got, err := decode(t, b)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(req, got, protocmp.Transform()); diff != "" {
					t.Fatalf("decoded request (-want +got):\n%s", diff)
				}
				if req.Node == nil {
					continue
				}
				if !isSharedNode(got.Node) {
					t.Errorf("request %d: node not shared", i)
				}
				if i == 0 {
					first = got.Node
				} else if got.Node != first {
					t.Error("the same node decoded twice is two nodes")
				}
				if len(req.ResourceNames) >= minSharedNames {
					sharedLists.mu.Lock()
					isShared := sharedLists.byDataLocked(got.ResourceNames) != nil
					sharedLists.mu.Unlock()
					if !isShared {
						t.Error("names not shared alongside the node")
					}
				}
			}
		})
	}
	delta := map[string]*discoveryv3.DeltaDiscoveryRequest{
		"no node":    {TypeUrl: resourcev3.EndpointType, ResponseNonce: "1", ResourceNamesSubscribe: names[:2]},
		"node":       {Node: web, TypeUrl: resourcev3.EndpointType, ResponseNonce: "1", ResourceNamesSubscribe: names[:2], InitialResourceVersions: map[string]string{"a": "1"}},
		"other node": {Node: api, TypeUrl: resourcev3.EndpointType, ResourceNamesUnsubscribe: names[:1]},
	}
	for name, req := range delta {
		t.Run("delta "+name, func(t *testing.T) {
			b := marshal(t, req)
			var first *corev3.Node
			for i := range 2 {
				got, err := decodeDelta(t, b)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(req, got, protocmp.Transform()); diff != "" {
					t.Fatalf("decoded request (-want +got):\n%s", diff)
				}
				if req.Node == nil {
					continue
				}
				if i == 0 {
					first = got.Node
				} else if got.Node != first || !isSharedNode(got.Node) {
					t.Error("the same node decoded twice is not one shared node")
				}
			}
		})
	}
	// The same node in either protocol is one node; another is another.
	a, err := decode(t, marshal(t, &discoveryv3.DiscoveryRequest{Node: web}))
	if err != nil {
		t.Fatal(err)
	}
	b, err := decodeDelta(t, marshal(t, &discoveryv3.DeltaDiscoveryRequest{Node: web}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := decode(t, marshal(t, &discoveryv3.DiscoveryRequest{Node: api}))
	if err != nil {
		t.Fatal(err)
	}
	if a.Node != b.Node {
		t.Error("one node in both protocols is two nodes")
	}
	if a.Node == c.Node {
		t.Error("two different nodes share one decoded node")
	}
}

// TestCodecNodeTwice: a node given twice, which protobuf merges, and an
// invalid node are decoded (or refused) as protobuf does.
func TestCodecNodeTwice(t *testing.T) {
	one := marshal(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "a", Cluster: "c"}})
	two := marshal(t, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "b"}, TypeUrl: resourcev3.ClusterType})
	for name, b := range map[string][]byte{
		"merged": append(slices.Clone(one), two...),
		// A node whose id is not valid UTF-8.
		"invalid": protowire.AppendBytes(protowire.AppendTag(nil, requestNodeField, protowire.BytesType),
			protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "\xff")),
	} {
		t.Run(name, func(t *testing.T) {
			want := &discoveryv3.DiscoveryRequest{}
			wantErr := proto.Unmarshal(b, want)
			got, err := decode(t, b)
			if (err != nil) != (wantErr != nil) {
				t.Fatalf("codec error %v, protobuf's %v", err, wantErr)
			}
			if err == nil && !proto.Equal(want, got) {
				t.Errorf("codec decoded %v, protobuf %v", got, want)
			}
		})
	}
}

// TestNodeTableBounded: the table holds at most two generations of
// nodeGenBytes, whatever clients send, and a node nobody sends again
// leaves it while one still sent stays.
func TestNodeTableBounded(t *testing.T) {
	var tb nodeTable
	pad := strings.Repeat("x", 4000)
	raw := func(i int) []byte {
		return marshal(t, &corev3.Node{Id: fmt.Sprintf("node-%d", i), Cluster: pad})
	}
	first, kept := tb.node(raw(0)), tb.node(raw(1))
	if first == nil || kept == nil {
		t.Fatal("no node")
	}
	for i := 2; i < 3*nodeGenBytes/4000; i++ {
		if tb.node(raw(i)) == nil {
			t.Fatal("no node")
		}
		if i%100 == 0 && tb.node(raw(1)) != kept {
			t.Fatal("a node still sent left the table")
		}
	}
	size := 0
	for _, g := range []*nodeGen{tb.cur, tb.prev} {
		for _, cs := range g.byRaw {
			for _, c := range cs {
				size += len(c.raw)
			}
		}
	}
	if size > 2*nodeGenBytes {
		t.Errorf("table holds %d bytes of nodes, more than %d", size, 2*nodeGenBytes)
	}
	if tb.node(raw(0)) == first {
		t.Error("a node nobody sent for two generations is still in the table")
	}
	if long := marshal(t, &corev3.Node{Id: strings.Repeat("y", nodeMaxLen)}); tb.node(long) != nil {
		t.Error("a node longer than nodeMaxLen was shared")
	}
}

func TestCodecSharesKnownLists(t *testing.T) {
	in := newInterner(internLimit)
	names := loadAssignmentNames(100)
	in.list(append([]string(nil), names...))

	ack := &discoveryv3.DiscoveryRequest{
		Node:        node.Info{Namespace: "demo", Workload: "web", ServiceAccount: "web", Kind: node.Envoy}.Node(),
		VersionInfo: "v1", ResourceNames: names, TypeUrl: resourcev3.EndpointType, ResponseNonce: "7",
		ErrorDetail: &statuspb.Status{Code: 3, Message: "rejected"},
	}
	other := append([]string(nil), names...)
	other[50] = other[50][:len(other[50])-1] + "X"
	tests := map[string]struct {
		req    *discoveryv3.DiscoveryRequest
		shared bool
	}{
		"a known list":              {req: ack, shared: true},
		"a known list, node absent": {req: &discoveryv3.DiscoveryRequest{ResourceNames: names, ResponseNonce: "8"}, shared: true},
		"one name differs":          {req: &discoveryv3.DiscoveryRequest{ResourceNames: other, ResponseNonce: "9"}},
		"a prefix of a known list":  {req: &discoveryv3.DiscoveryRequest{ResourceNames: names[:99]}},
		"too short to look up":      {req: &discoveryv3.DiscoveryRequest{ResourceNames: names[:3]}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := proto.Marshal(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decode(t, b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.req, got, protocmp.Transform()); diff != "" {
				t.Errorf("decoded request (-want +got):\n%s", diff)
			}
			// The table is the process's: an earlier test's server may
			// have put an equal list there first.
			sharedLists.mu.Lock()
			isShared := sharedLists.byDataLocked(got.ResourceNames) != nil
			sharedLists.mu.Unlock()
			if isShared != tc.shared {
				t.Errorf("names shared = %v, want %v", isShared, tc.shared)
			}
		})
	}
}

// TestCodecNamesNotInOneRun: names interleaved with other fields (legal,
// though no encoder writes them so) are decoded in full, in order.
func TestCodecNamesNotInOneRun(t *testing.T) {
	in := newInterner(internLimit)
	names := loadAssignmentNames(minSharedNames)
	in.list(append([]string(nil), names...))
	var b []byte
	for i, n := range names {
		b = protowire.AppendTag(b, resourceNamesField, protowire.BytesType)
		b = protowire.AppendString(b, n)
		if i == 0 {
			b = protowire.AppendTag(b, 4, protowire.BytesType)
			b = protowire.AppendString(b, resourcev3.EndpointType)
		}
	}
	got, err := decode(t, b)
	if err != nil {
		t.Fatal(err)
	}
	want := &discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: resourcev3.EndpointType}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("decoded request (-want +got):\n%s", diff)
	}
}

// TestCodecNamesExtendingASharedList: a request whose names start with a
// shared list's but go on is not given that list.
func TestCodecNamesExtendingASharedList(t *testing.T) {
	in := newInterner(internLimit)
	names := loadAssignmentNames(minSharedNames + 1)
	in.list(slices.Clone(names[:minSharedNames]))
	for _, req := range []*discoveryv3.DiscoveryRequest{
		{ResourceNames: names, TypeUrl: resourcev3.EndpointType},
		{ResourceNames: names[:minSharedNames], TypeUrl: resourcev3.EndpointType},
	} {
		got, err := decode(t, marshal(t, req))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(req, got, protocmp.Transform()); diff != "" {
			t.Errorf("decoded request (-want +got):\n%s", diff)
		}
	}
}

// FuzzCodec: whatever the bytes, the codec decodes a DiscoveryRequest and
// a DeltaDiscoveryRequest as protobuf does, or fails where it fails.
func FuzzCodec(f *testing.F) {
	in := newInterner(internLimit)
	names := loadAssignmentNames(minSharedNames)
	in.list(append([]string(nil), names...))
	for _, req := range []proto.Message{
		&discoveryv3.DiscoveryRequest{ResourceNames: names, VersionInfo: "v", ResponseNonce: "1"},
		&discoveryv3.DiscoveryRequest{ResourceNames: names[:2], TypeUrl: resourcev3.ClusterType},
		&discoveryv3.DiscoveryRequest{ResourceNames: append(slices.Clone(names), "extra"), ResponseNonce: "2"},
		&discoveryv3.DiscoveryRequest{Node: testNode("web"), ResourceNames: names},
		&discoveryv3.DiscoveryRequest{Node: testNode("web"), TypeUrl: resourcev3.ClusterType},
		&discoveryv3.DeltaDiscoveryRequest{Node: testNode("web"), ResourceNamesSubscribe: names[:2]},
	} {
		b := marshal(f, req)
		f.Add(b)
		f.Add(append(b, b...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, m := range []proto.Message{&discoveryv3.DiscoveryRequest{}, &discoveryv3.DeltaDiscoveryRequest{}} {
			want := m.ProtoReflect().New().Interface()
			wantErr := proto.Unmarshal(b, want)
			err := decodeInto(b, m)
			if (err != nil) != (wantErr != nil) {
				t.Fatalf("%T: codec error %v, protobuf's %v", m, err, wantErr)
			}
			if err == nil && !proto.Equal(want, m) {
				t.Fatalf("codec decoded %v, protobuf %v", m, want)
			}
		}
	})
}

// BenchmarkDecodeACK is the decoding of a state-of-the-world ACK naming
// 1,000 load assignments, without and with the node (as Envoy sends it
// unless told otherwise), and of a delta ACK with the node: by protobuf,
// and by the codec when another stream has sent the list and the node.
func BenchmarkDecodeACK(b *testing.B) {
	names := loadAssignmentNames(1000)
	newInterner(internLimit).list(append([]string(nil), names...))
	n := testNode("bench")
	for _, bc := range []struct {
		name string
		req  proto.Message
	}{
		{"sotw", &discoveryv3.DiscoveryRequest{VersionInfo: "0123456789abcdef", ResourceNames: names, TypeUrl: resourcev3.EndpointType, ResponseNonce: "12345"}},
		{"sotw-node", &discoveryv3.DiscoveryRequest{Node: n, VersionInfo: "0123456789abcdef", ResourceNames: names, TypeUrl: resourcev3.EndpointType, ResponseNonce: "12345"}},
		{"delta-node", &discoveryv3.DeltaDiscoveryRequest{Node: n, TypeUrl: resourcev3.EndpointType, ResponseNonce: "12345"}},
	} {
		raw := marshal(b, bc.req)
		b.Run(bc.name+"/protobuf", func(b *testing.B) {
			b.ReportAllocs()
			// As gRPC's codec: join the frames, then decode.
			for b.Loop() {
				if err := proto.Unmarshal(slices.Clone(raw), bc.req.ProtoReflect().New().Interface()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"/codec", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := decodeInto(raw, bc.req.ProtoReflect().New().Interface()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
