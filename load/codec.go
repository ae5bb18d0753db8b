package load

import (
	"fmt"
	"math/bits"
	"sync"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// proxyCodec is the simulated proxies' gRPC codec: protobuf, as gRPC's
// own, with messages marshalled into and read from a reusePool rather than
// gRPC's default pool (which the default codec uses whatever pool the
// connection is given), and with the encoded resource names of
// state-of-the-world requests kept per list (see namesWire) and each
// proxy's encoded node kept (see nodesWire).
type proxyCodec struct {
	pool  *reusePool
	names *namesWire
	nodes *nodesWire
}

var _ encoding.CodecV2 = proxyCodec{}

func newProxyCodec() proxyCodec {
	return proxyCodec{pool: &reusePool{}, names: &namesWire{m: map[namesKey][]byte{}}, nodes: &nodesWire{m: map[*corev3.Node][]byte{}}}
}

func (proxyCodec) Name() string { return "proto" }

func (c proxyCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("proxy codec: cannot marshal %T", v)
	}
	// The kept encodings go after the rest: fields may come in any order
	// on the wire, and a repeated field's elements keep theirs.
	var names, node []byte
	var err error
	switch req := m.(type) {
	case *discoveryv3.DiscoveryRequest:
		bigList := len(req.GetResourceNames()) >= minWireNames
		if bigList || req.GetNode() != nil {
			if bigList {
				names = c.names.of(req.GetResourceNames())
			}
			if node, err = c.nodes.of(req.GetNode(), requestNodeField); err != nil {
				return nil, err
			}
			short := &discoveryv3.DiscoveryRequest{
				VersionInfo:      req.GetVersionInfo(),
				ResourceLocators: req.GetResourceLocators(),
				TypeUrl:          req.GetTypeUrl(),
				ResponseNonce:    req.GetResponseNonce(),
				ErrorDetail:      req.GetErrorDetail(),
			}
			if !bigList {
				short.ResourceNames = req.GetResourceNames()
			}
			m = short
		}
	case *discoveryv3.DeltaDiscoveryRequest:
		if req.GetNode() != nil {
			if node, err = c.nodes.of(req.GetNode(), deltaNodeField); err != nil {
				return nil, err
			}
			m = &discoveryv3.DeltaDiscoveryRequest{
				TypeUrl:                     req.GetTypeUrl(),
				ResourceNamesSubscribe:      req.GetResourceNamesSubscribe(),
				ResourceNamesUnsubscribe:    req.GetResourceNamesUnsubscribe(),
				ResourceLocatorsSubscribe:   req.GetResourceLocatorsSubscribe(),
				ResourceLocatorsUnsubscribe: req.GetResourceLocatorsUnsubscribe(),
				InitialResourceVersions:     req.GetInitialResourceVersions(),
				ResponseNonce:               req.GetResponseNonce(),
				ErrorDetail:                 req.GetErrorDetail(),
			}
		}
	}
	size := proto.Size(m)
	buf := c.pool.Get(size + len(names) + len(node))
	b, err := (proto.MarshalOptions{UseCachedSize: true, Deterministic: true}).MarshalAppend((*buf)[:0], m)
	if err != nil {
		c.pool.Put(buf)
		return nil, err
	}
	b = append(b, node...)
	*buf = append(b, names...)
	return mem.BufferSlice{mem.NewBuffer(buf, c.pool)}, nil
}

// Node field numbers of DiscoveryRequest and DeltaDiscoveryRequest.
const (
	requestNodeField = 2
	deltaNodeField   = 1
)

// nodesWire keeps each proxy's node encoded as a request's node field. An
// Envoy-like proxy sends its node in every request unless told otherwise,
// and marshalling it again on each ACK (its metadata a map, sorted for a
// deterministic encoding, as Envoy's is) was about a sixth of the harness's
// CPU in a flip. A proxy's node is built once and never changed, so nodes
// are keyed by pointer.
type nodesWire struct {
	mu sync.Mutex
	m  map[*corev3.Node][]byte
}

// of returns n encoded as field num of a request (a proxy speaks one
// protocol, so one field number per node), nil for a nil n.
func (w *nodesWire) of(n *corev3.Node, num protowire.Number) ([]byte, error) {
	if n == nil {
		return nil, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if b, ok := w.m[n]; ok {
		if got, _, _ := protowire.ConsumeTag(b); got == num {
			return b, nil
		}
	}
	// Deterministic: Envoy encodes the same node the same bytes every
	// time, where Go's protobuf would write the metadata's map in a new
	// order on each request.
	v, err := (proto.MarshalOptions{Deterministic: true}).Marshal(n)
	if err != nil {
		return nil, err
	}
	b := protowire.AppendTag(nil, num, protowire.BytesType)
	b = protowire.AppendBytes(b, v)
	if len(w.m) >= maxWireLists {
		clear(w.m)
	}
	w.m[n] = b
	return b, nil
}

// minWireNames is the length from which a list's encoding is kept.
const minWireNames = 64

// namesWire keeps the wire encoding (field resource_names, repeated) of
// the lists of names state-of-the-world requests carry. An Envoy-like
// proxy's every ACK names every load assignment it holds, and encoding a
// thousand names again on each push was a fifth of the harness's CPU in a
// flip. Lists are keyed by their backing array: a proxy builds a new list
// whenever its subscription changes (typeState.sortedNames) and never
// writes to one it has sent.
type namesWire struct {
	mu sync.Mutex
	m  map[namesKey][]byte
}

type namesKey struct {
	first *string
	n     int
}

// maxWireLists bounds namesWire: past it, the kept encodings are dropped
// and built again as needed.
const maxWireLists = 1 << 14

func (w *namesWire) of(names []string) []byte {
	k := namesKey{unsafe.SliceData(names), len(names)}
	w.mu.Lock()
	defer w.mu.Unlock()
	if b, ok := w.m[k]; ok {
		return b
	}
	var b []byte
	for _, n := range names {
		b = protowire.AppendTag(b, resourceNamesField, protowire.BytesType)
		b = protowire.AppendString(b, n)
	}
	if len(w.m) >= maxWireLists {
		clear(w.m)
	}
	w.m[k] = b
	return b
}

// resourceNamesField is DiscoveryRequest's field number of resource_names.
const resourceNamesField = 3

func (c proxyCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("proxy codec: cannot unmarshal into %T", v)
	}
	buf := data.MaterializeToBuffer(c.pool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// reusePool is the buffer pool the simulated proxies' connections and
// codec use: it hands out buffers without zeroing them. gRPC's default pool clears every
// buffer it hands out, and a state-of-the-world Envoy-like proxy marshals
// an ACK naming every load assignment (about 40 KB at 1,000 Services) on
// each push, so clearing was a fifth of the harness's CPU in a flip. The
// harness shares the control plane's cores and stands in for proxies that
// would run elsewhere, so what it spends is taken from the measurement.
// Every byte of a buffer it hands out is written before it is read: by the
// marshaller or by the frame being received.
type reusePool struct {
	// tiers[i] holds buffers of capacity 1<<i.
	tiers [maxTier + 1]sync.Pool
}

// maxTier is the largest pooled capacity, 1<<maxTier bytes; larger buffers
// are allocated and dropped.
const maxTier = 22

var _ mem.BufferPool = (*reusePool)(nil)

// tier is the smallest i with 1<<i >= n.
func tier(n int) int {
	if n <= 1 {
		return 0
	}
	return bits.Len(uint(n - 1))
}

func (p *reusePool) Get(n int) *[]byte {
	t := tier(n)
	if t > maxTier {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.tiers[t].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<t)
	return &b
}

func (p *reusePool) Put(b *[]byte) {
	c := cap(*b)
	if c == 0 || c&(c-1) != 0 || tier(c) > maxTier {
		return
	}
	p.tiers[tier(c)].Put(b)
}
