package server

import (
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Field numbers the codec looks for.
const (
	resourceNamesField = 3 // DiscoveryRequest.resource_names
	requestNodeField   = 2 // DiscoveryRequest.node
	deltaNodeField     = 1 // DeltaDiscoveryRequest.node
)

// minSharedNames is the shortest list of names worth looking up among the
// shared lists instead of decoding it.
const minSharedNames = 16

// codec is gRPC's proto codec with two shortcuts, for the messages the
// control plane receives most. A state-of-the-world Envoy names every
// resource it subscribes to (a thousand load assignments) in every ACK,
// and decoding them costs a thousand strings, each validated as UTF-8,
// that the stream loop then only compares with the list it already holds.
// When a request's resource_names are, byte for byte, the names of a list
// some stream has already sent (sharedLists), the request gets that list's
// read-only slice instead. And an Envoy sends its node in every request by
// default, which the stream only compares with the node it pinned: when a
// request's node is, byte for byte, one seen before (sharedNodes), the
// request gets that read-only node, the very one its stream pinned, so the
// comparison is one of pointers. Only the request's other fields are
// decoded. Every other message, and every request neither shortcut
// applies to, is decoded as gRPC would.
type codec struct {
	encoding.CodecV2
}

func newCodec() codec {
	return codec{CodecV2: encoding.GetCodecV2(protocodec.Name)}
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch v.(type) {
	case *discoveryv3.DiscoveryRequest, *discoveryv3.DeltaDiscoveryRequest:
	default:
		return c.CodecV2.Unmarshal(data, v)
	}
	req := v.(proto.Message)
	if len(data) == 1 {
		return unmarshalRequest(data[0].ReadOnlyData(), req)
	}
	// A request of a thousand names spans several HTTP/2 frames, so it
	// must be joined first. gRPC's buffer pool clears every buffer it
	// hands out, which cost more than the decoding spared here; this pool
	// does not, since the whole buffer is overwritten, and decoding keeps
	// nothing of it (protobuf copies every string it decodes).
	n := data.Len()
	bp := joinBuffers.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, n)
	}
	b := (*bp)[:n]
	data.CopyTo(b)
	err := unmarshalRequest(b, req)
	if cap(b) <= maxJoinBuffer {
		joinBuffers.Put(bp)
	}
	return err
}

// maxJoinBuffer is the largest buffer joinBuffers keeps: a request naming
// several thousand resources.
const maxJoinBuffer = 1 << 20

var joinBuffers = sync.Pool{New: func() any { return new([]byte) }}

func unmarshalRequest(b []byte, req proto.Message) error {
	if unmarshalShared(b, req) {
		return nil
	}
	return proto.Unmarshal(b, req)
}

// span is a field's bytes in an encoded message, from its tag.
type span struct{ start, end int }

// unmarshalShared decodes b into req (a DiscoveryRequest or a
// DeltaDiscoveryRequest) if its node is a shared node or, for a
// DiscoveryRequest, its resource_names, all in one run as every encoder
// writes them, are a shared list's. Those are looked up, not decoded, and
// the rest of the message is decoded around them, in order. A message
// with the node more than once (which protobuf merges) is left to
// protobuf.
func unmarshalShared(b []byte, req proto.Message) bool {
	sotw, isSotw := req.(*discoveryv3.DiscoveryRequest)
	nodeField := protowire.Number(deltaNodeField)
	if isSotw {
		nodeField = requestNodeField
	}
	node, names := span{-1, -1}, span{-1, -1}
	var l *nameList
	var rawNode []byte
	for off := 0; off < len(b); {
		num, typ, tl := protowire.ConsumeTag(b[off:])
		if tl < 0 {
			return false
		}
		switch {
		case num == nodeField && typ == protowire.BytesType:
			if node.start != -1 {
				return false // merged by protobuf
			}
			v, vl := protowire.ConsumeBytes(b[off+tl:])
			if vl < 0 {
				return false
			}
			rawNode = v
			node = span{off, off + tl + vl}
			off = node.end
		case isSotw && num == resourceNamesField && typ == protowire.BytesType:
			if l != nil {
				return false // more names after a shared run: not one run
			}
			v, vl := protowire.ConsumeBytes(b[off+tl:])
			if vl < 0 {
				return false
			}
			// Only the first name can start a shared run: names before
			// it would be part of the list protobuf decodes. The table
			// recognises a run by its bytes, without walking its names.
			if names.start == -1 {
				names.start = off
				if c := sharedLists.prefixOf(v, b[off:]); c != nil {
					l, names = c, span{off, off + len(c.raw)}
					off = names.end
					continue
				}
			}
			off += tl + vl
		default:
			vl := protowire.ConsumeFieldValue(num, typ, b[off+tl:])
			if vl < 0 {
				return false
			}
			off += tl + vl
		}
	}
	var shared *corev3.Node
	if rawNode != nil {
		shared = sharedNodes.node(rawNode)
	}
	if l == nil && shared == nil {
		return false
	}
	var spans [2]span
	skip := spans[:0]
	if shared != nil {
		skip = append(skip, node)
	}
	if l != nil {
		skip = append(skip, names)
		if shared != nil && names.start < node.start {
			skip[0], skip[1] = skip[1], skip[0]
		}
	}
	proto.Reset(req)
	merge := proto.UnmarshalOptions{Merge: true}
	off := 0
	for _, s := range skip {
		if err := merge.Unmarshal(b[off:s.start], req); err != nil {
			return false
		}
		off = s.end
	}
	if err := merge.Unmarshal(b[off:], req); err != nil {
		return false
	}
	if isSotw {
		if shared != nil {
			sotw.Node = shared
		}
		if l != nil {
			sotw.ResourceNames = l.names
		}
	} else {
		req.(*discoveryv3.DeltaDiscoveryRequest).Node = shared
	}
	return true
}

// encodeNames is names as a request encodes them: what a request naming
// them carries, byte for byte, in its run of resource_names.
func encodeNames(names []string) []byte {
	size := 0
	for _, s := range names {
		size += protowire.SizeTag(resourceNamesField) + protowire.SizeBytes(len(s))
	}
	b := make([]byte, 0, size)
	for _, s := range names {
		b = protowire.AppendTag(b, resourceNamesField, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	return b
}
