package server

import (
	"bytes"
	"hash/maphash"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
)

// nodeGenBytes is how many encoded bytes of nodes one generation of the
// node table holds: the nodes of ten thousand proxies of the simulated
// kind (a few hundred bytes each), or of a thousand real Envoys, whose
// nodes list their extensions. Whatever clients send, the table holds at
// most 2 × nodeGenBytes of encoded nodes and their decoded copies.
const nodeGenBytes = 8 << 20

// nodeMaxLen is the longest encoded node shared; a longer one is decoded
// as gRPC would, every time.
const nodeMaxLen = 64 << 10

// sharedNodes is the table of recently seen nodes. An Envoy sends its node
// in every request unless told otherwise (set_node_on_first_message_only),
// and decoding it each time (a Struct of metadata, a few strings) makes
// garbage the stream then only compares with the node it pinned on the
// first request. The codec looks a request's encoded node up here instead:
// the same bytes give the same decoded node, so the stream sees its pinned
// pointer again and compares nothing. A node from the table is shared by
// every request that carried it and must never be written to.
//
// It is one per process, like sharedLists, and generational like it: a
// node stays while requests keep carrying it; one nobody has sent in two
// generations leaves the table (the streams that pinned it keep it).
var sharedNodes nodeTable

type nodeTable struct {
	mu        sync.Mutex
	cur, prev *nodeGen
}

// nodeGen is one generation of nodes, by the hash of their encoding.
type nodeGen struct {
	byRaw map[uint64][]*sharedNode
	size  int // encoded bytes
}

type sharedNode struct {
	raw  []byte
	node *corev3.Node
}

var nodeSeed = maphash.MakeSeed()

// node returns the shared node encoded as raw, decoding and adding it if
// it is new, or nil if raw is too long to share or is no valid node. The
// hash only narrows; nodes are told apart by their bytes.
func (t *nodeTable) node(raw []byte) *corev3.Node {
	if len(raw) > nodeMaxLen {
		return nil
	}
	key := maphash.Bytes(nodeSeed, raw)
	t.mu.Lock()
	if n := t.lookupLocked(key, raw); n != nil {
		t.mu.Unlock()
		return n
	}
	t.mu.Unlock()

	// Decoded outside the lock: after a restart every proxy reconnects.
	// protobuf copies what it decodes, so the node keeps nothing of the
	// request's buffer; raw is copied for the same reason.
	n := &corev3.Node{}
	if err := proto.Unmarshal(raw, n); err != nil {
		return nil
	}
	c := &sharedNode{raw: bytes.Clone(raw), node: n}
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := t.lookupLocked(key, raw); n != nil {
		return n // another stream added it meanwhile
	}
	t.putLocked(key, c)
	return c.node
}

// lookupLocked returns the node encoded as raw, moving it to the current
// generation if it was in the previous one, or nil.
func (t *nodeTable) lookupLocked(key uint64, raw []byte) *corev3.Node {
	for _, g := range []*nodeGen{t.cur, t.prev} {
		if g == nil {
			continue
		}
		for _, c := range g.byRaw[key] {
			if bytes.Equal(c.raw, raw) {
				if g == t.prev {
					t.putLocked(key, c)
				}
				return c.node
			}
		}
	}
	return nil
}

// putLocked adds c to the current generation, starting a new one when it
// is full.
func (t *nodeTable) putLocked(key uint64, c *sharedNode) {
	if t.cur == nil || t.cur.size+len(c.raw) > nodeGenBytes {
		t.prev, t.cur = t.cur, &nodeGen{byRaw: map[uint64][]*sharedNode{}}
	}
	t.cur.byRaw[key] = append(t.cur.byRaw[key], c)
	t.cur.size += len(c.raw)
}
