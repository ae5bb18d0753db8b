package server

import (
	"fmt"
	"slices"
	"testing"

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
	var data mem.BufferSlice
	for len(b) > 16<<10 {
		data = append(data, mem.SliceBuffer(b[:16<<10]))
		b = b[16<<10:]
	}
	data = append(data, mem.SliceBuffer(b))
	req := &discoveryv3.DiscoveryRequest{}
	err := newCodec().Unmarshal(data, req)
	return req, err
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

// FuzzCodec: whatever the bytes, the codec decodes a DiscoveryRequest as
// protobuf does, or fails where it fails.
func FuzzCodec(f *testing.F) {
	in := newInterner(internLimit)
	names := loadAssignmentNames(minSharedNames)
	in.list(append([]string(nil), names...))
	for _, req := range []*discoveryv3.DiscoveryRequest{
		{ResourceNames: names, VersionInfo: "v", ResponseNonce: "1"},
		{ResourceNames: names[:2], TypeUrl: resourcev3.ClusterType},
		{Node: node.Info{Namespace: "demo", Workload: "web", ServiceAccount: "web", Kind: node.Envoy}.Node(), ResourceNames: names},
	} {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want := &discoveryv3.DiscoveryRequest{}
		wantErr := proto.Unmarshal(b, want)
		got, err := decode(t, b)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("codec error %v, protobuf's %v", err, wantErr)
		}
		if err == nil && !proto.Equal(want, got) {
			t.Fatalf("codec decoded %v, protobuf %v", got, want)
		}
	})
}

// BenchmarkDecodeACK is the decoding of a state-of-the-world ACK naming
// 1,000 load assignments: by protobuf, and by the codec when another
// stream has sent the list.
func BenchmarkDecodeACK(b *testing.B) {
	names := loadAssignmentNames(1000)
	newInterner(internLimit).list(append([]string(nil), names...))
	raw, err := proto.Marshal(&discoveryv3.DiscoveryRequest{VersionInfo: "0123456789abcdef", ResourceNames: names, TypeUrl: resourcev3.EndpointType, ResponseNonce: "12345"})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("protobuf", func(b *testing.B) {
		b.ReportAllocs()
		// As gRPC's codec: join the frames, then decode.
		for b.Loop() {
			if err := proto.Unmarshal(slices.Clone(raw), &discoveryv3.DiscoveryRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("codec", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decode(b, raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}
