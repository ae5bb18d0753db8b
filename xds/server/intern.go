package server

import (
	"bytes"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
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
// A stream keeps the names of its subscription as the keys of its
// subscription set, and the cache's watch holds the latest request until
// the next one. Each request arrives as freshly decoded strings, so without
// interning every proxy would keep its own copy of every name it subscribes
// to; replacing them with the table's copy before the stream keeps them
// lets the decoded ones go. State-of-the-world lists of names are shared
// whole on top of that (see sharedLists).
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
// version) with interned keys and values. The stream adopts that map as
// its subscription's first ReturnedResources, and the cache copies its
// strings into every later one, so it is rebuilt rather than kept. The map is built
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

// listLimit is how many names one generation of the list table holds, over
// all its lists: a few hundred distinct subscriptions of a thousand names.
const listLimit = 1 << 18

// nameList is a state-of-the-world request's resource_names as every
// stream sending the same list shares it: the interned names in the
// request's order, their set without "*", and whether "*" is among them.
// All of it is read-only.
type nameList struct {
	names    []string
	set      map[string]struct{}
	wildcard bool
	// raw is names as a request encodes them (see encodeNames), for a list
	// of at least minSharedNames names once it is in the table: what the
	// codec compares a request's names with.
	raw []byte
}

var emptyList = &nameList{set: emptyNames}

// sharedLists is the table of shared name lists. Every Envoy of one kind
// subscribed to the same thousand load assignments holds one list and one
// set of them, not a thousand names of its own; a stream that sends a list
// another has sent builds no set; and the codec hands a request naming a
// list in the table that list instead of decoding its names. It is one per
// process, because gRPC's codec is chosen with the server options, before
// any Server exists; lists are compared by content wherever they come
// from, so servers sharing it cannot mix up theirs.
var sharedLists lists

// lists is generational like the string table: a list stays while streams
// keep sending it, and the table holds at most 2 × listLimit names
// whatever clients send.
type lists struct {
	mu        sync.Mutex
	cur, prev *listGen
}

// listGen is one generation of lists, indexed three ways: by the addresses
// of their interned names (list), by their first name (the codec, which
// then compares a request's bytes with the list's encoding), and by the
// address of their slice (a request the codec already gave a shared list).
type listGen struct {
	byAddr  map[uint64][]*nameList
	byFirst map[string][]*nameList
	byData  map[*string]*nameList
	size    int // names
}

func newListGen() *listGen {
	return &listGen{byAddr: map[uint64][]*nameList{}, byFirst: map[string][]*nameList{}, byData: map[*string]*nameList{}}
}

// list returns the shared list equal to s, adding it, its names interned,
// if new. Lists are keyed by the interned strings'
// addresses: equal lists of interned names hold the same strings, and an
// uninterned (overlong) name only makes a list that matches no other.
func (t *interner) list(s []string) *nameList {
	if len(s) == 0 {
		return emptyList
	}
	l := &sharedLists
	l.mu.Lock()
	if c := l.byDataLocked(s); c != nil {
		l.mu.Unlock()
		return c
	}
	l.mu.Unlock()

	// Interned in a copy: s may be a list the codec shared that has left
	// the table since, which nobody may write to.
	names := slices.Clone(s)
	t.strings(names)
	key := addrKey(names)

	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range []*listGen{l.cur, l.prev} {
		if g == nil {
			continue
		}
		for _, c := range g.byAddr[key] {
			if sameStrings(c.names, names) {
				if g == l.prev {
					l.putLocked(key, c)
				}
				return c
			}
		}
	}
	c := &nameList{names: names, set: make(map[string]struct{}, len(names))}
	for _, v := range c.names {
		if v == wildcardName {
			c.wildcard = true
		} else {
			c.set[v] = struct{}{}
		}
	}
	l.putLocked(key, c)
	return c
}

// byDataLocked returns the list whose slice s is, if any.
func (l *lists) byDataLocked(s []string) *nameList {
	p := unsafe.SliceData(s)
	for _, g := range []*listGen{l.cur, l.prev} {
		if g == nil {
			continue
		}
		if c := g.byData[p]; c != nil && len(c.names) == len(s) {
			return c
		}
	}
	return nil
}

// prefixOf returns the list whose encoded names b starts with, followed by
// no further name, given first, the first name b encodes; or nil. It lets
// the codec recognise a request's run of names by comparing bytes, without
// walking the run's thousand fields to find where it ends.
func (l *lists) prefixOf(first, b []byte) *nameList {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range []*listGen{l.cur, l.prev} {
		if g == nil {
			continue
		}
		for _, c := range g.byFirst[string(first)] {
			if !bytes.HasPrefix(b, c.raw) {
				continue
			}
			if rest := b[len(c.raw):]; len(rest) > 0 {
				if num, _, n := protowire.ConsumeTag(rest); n < 0 || num == resourceNamesField {
					continue
				}
			}
			if g == l.prev {
				l.putLocked(addrKey(c.names), c)
			}
			return c
		}
	}
	return nil
}

// putLocked adds c, under its address key, to the current generation,
// starting a new one when it is full.
func (l *lists) putLocked(key uint64, c *nameList) {
	if l.cur == nil || l.cur.size+len(c.names) > listLimit {
		l.prev, l.cur = l.cur, newListGen()
	}
	g := l.cur
	g.byAddr[key] = append(g.byAddr[key], c)
	if len(c.names) >= minSharedNames {
		if c.raw == nil {
			c.raw = encodeNames(c.names)
		}
		g.byFirst[c.names[0]] = append(g.byFirst[c.names[0]], c)
	}
	g.byData[unsafe.SliceData(c.names)] = c
	g.size += len(c.names)
}

var listSeed = maphash.MakeSeed()

// addrKey is the key of a list of interned names: a hash of their
// addresses and lengths.
func addrKey(s []string) uint64 {
	var h maphash.Hash
	h.SetSeed(listSeed)
	for _, v := range s {
		maphash.WriteComparable(&h, unsafe.StringData(v))
		maphash.WriteComparable(&h, len(v))
	}
	return h.Sum64()
}

// sameStrings reports whether a and b hold the same strings, by address.
func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) || unsafe.StringData(a[i]) != unsafe.StringData(b[i]) {
			return false
		}
	}
	return true
}
