package server

import (
	"hash/maphash"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// resourceNamesField is the number of DiscoveryRequest.resource_names.
const resourceNamesField = 3

// minSharedNames is the shortest list of names worth looking up among the
// shared lists instead of decoding it.
const minSharedNames = 16

// codec is gRPC's proto codec with one shortcut, for the message the
// control plane receives most: a state-of-the-world Envoy names every
// resource it subscribes to (a thousand load assignments) in every ACK,
// and decoding them costs a thousand strings, each validated as UTF-8,
// that the stream loop then only compares with the list it already holds.
// When a request's resource_names are, byte for byte, the names of a list
// some stream has already sent (sharedLists), the request gets that list's
// read-only slice instead, and only its other fields are decoded. Every
// other message, and every request whose names match no shared list, is
// decoded as gRPC would.
type codec struct {
	encoding.CodecV2
}

func newCodec() codec {
	return codec{CodecV2: encoding.GetCodecV2(protocodec.Name)}
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*discoveryv3.DiscoveryRequest)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
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

func unmarshalRequest(b []byte, req *discoveryv3.DiscoveryRequest) error {
	if unmarshalShared(b, req) {
		return nil
	}
	return proto.Unmarshal(b, req)
}

// unmarshalShared decodes b into req if its resource_names, all in one run
// as every encoder writes them, are a shared list's. The names are
// compared, not copied, and the rest of the message (version, nonce, type,
// node, error detail) is decoded around them.
func unmarshalShared(b []byte, req *discoveryv3.DiscoveryRequest) bool {
	start, end, n := -1, -1, 0
	var first, last []byte
	for off := 0; off < len(b); {
		num, typ, tl := protowire.ConsumeTag(b[off:])
		if tl < 0 {
			return false
		}
		if num == resourceNamesField && typ == protowire.BytesType {
			if end != -1 && end != off {
				return false // not one run
			}
			v, vl := protowire.ConsumeBytes(b[off+tl:])
			if vl < 0 {
				return false
			}
			if start == -1 {
				start, first = off, v
			}
			last = v
			n++
			off += tl + vl
			end = off
			continue
		}
		vl := protowire.ConsumeFieldValue(num, typ, b[off+tl:])
		if vl < 0 {
			return false
		}
		off += tl + vl
	}
	if n < minSharedNames {
		return false
	}
	l := sharedLists.byRaw(rawKey(n, end-start, first, last), b[start:end])
	if l == nil {
		return false
	}
	if err := proto.Unmarshal(b[:start], req); err != nil {
		return false
	}
	if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(b[end:], req); err != nil {
		return false
	}
	req.ResourceNames = l.names
	return true
}

var rawSeed = maphash.MakeSeed()

// rawKey narrows the shared lists an encoded run of names can be: their
// count, the run's length, the first and the last name.
func rawKey(n, size int, first, last []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(rawSeed)
	maphash.WriteComparable(&h, n)
	maphash.WriteComparable(&h, size)
	h.Write(first)
	h.WriteByte(0)
	h.Write(last)
	return h.Sum64()
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

// rawKeyOf is rawKey of a list's encoded names.
func rawKeyOf(c *nameList) uint64 {
	return rawKey(len(c.names), len(c.raw), []byte(c.names[0]), []byte(c.names[len(c.names)-1]))
}
