package server

import (
	"strings"
	"sync"
)

// internLimit is how many strings one generation of the intern table holds:
// far more than the resource names and versions of a mesh of 10,000
// Services (about four names and versions per Service port), so a real mesh
// never turns the table over because it is full, while a client inventing
// names can make it hold at most 2 × internLimit strings of at most
// internMaxLen bytes (about 40 MB).
const internLimit = 1 << 16

// internMaxLen is the longest string interned: resource names are DNS names
// (at most 253 bytes) with a port and a direction, versions are hashes.
// Longer strings are left as they are.
const internMaxLen = 256

// interner holds one canonical copy of every resource name and version that
// requests carry, so that the thousand sidecars subscribing to the same
// thousand load assignments share one copy of each name.
//
// go-control-plane keeps the names of a stream's latest request twice: as
// the keys of the subscription set, and in the request itself, which the
// cache's watch holds until the next one. Each request arrives as freshly
// decoded strings, so without interning every proxy keeps its own copy of
// every name it subscribes to; replacing them with the table's copy before
// go-control-plane sees the request lets the decoded ones go.
//
// The table is generational rather than unique.Make: a unique.Handle's
// canonical copy lives only as long as some Handle to it does (the strings
// taken from it do not keep it), so without a Handle per name per stream,
// which is itself 8 bytes per name per proxy, every collection would start
// a new copy. Here a name stays in the table while requests keep naming it:
// when the current generation fills up it becomes the previous one, still
// consulted, and a name found there moves to the new one. A name nobody has
// asked for in two generations leaves the table (the streams that hold it
// keep their copy), so the table is bounded whatever clients send.
type interner struct {
	mu    sync.RWMutex
	cur   map[string]string
	prev  map[string]string
	limit int
}

func newInterner(limit int) *interner {
	return &interner{cur: map[string]string{}, limit: limit}
}

// strings replaces every element of s with the table's copy. Most requests
// are ACKs naming what the table already holds, so it first tries under the
// read lock alone.
func (t *interner) strings(s []string) {
	if len(s) == 0 {
		return
	}
	missed := false
	t.mu.RLock()
	for i, v := range s {
		if c, ok := t.cur[v]; ok {
			s[i] = c
		} else {
			missed = true
		}
	}
	t.mu.RUnlock()
	if !missed {
		return
	}
	t.mu.Lock()
	for i, v := range s {
		s[i] = t.internLocked(v)
	}
	t.mu.Unlock()
}

// versions returns m (a delta client's initial_resource_versions, name to
// version) with interned keys and values. go-control-plane adopts that map
// as the stream's first ReturnedResources, and the cache copies its strings
// into every later one, so it is rebuilt rather than kept. The map is built
// outside the lock: after a restart every proxy reconnects with one.
func (t *interner) versions(m map[string]string) map[string]string {
	if len(m) == 0 {
		return m
	}
	kv := make([]string, 0, 2*len(m))
	for k, v := range m {
		kv = append(kv, k, v)
	}
	t.strings(kv)
	out := make(map[string]string, len(m))
	for i := 0; i < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func (t *interner) internLocked(v string) string {
	if len(v) > internMaxLen {
		return v
	}
	if c, ok := t.cur[v]; ok {
		return c
	}
	c, ok := t.prev[v]
	if !ok {
		// The table must not keep alive whatever buffer v was decoded
		// from, however it was decoded.
		c = strings.Clone(v)
	}
	if len(t.cur) >= t.limit {
		t.prev, t.cur = t.cur, map[string]string{}
	}
	t.cur[c] = c
	return c
}
