package cache

import (
	"slices"
	"strings"
	"sync"
)

// historyLen is how many recent snapshots of one kind and type the cache
// keeps the entries of, for reading delta clients' records (see
// deltaHeld). Each costs a slice of entry pointers (8 KB at 1,000
// resources) and keeps the entries it replaced alive.
const historyLen = 64

// history holds the sorted entries of the last historyLen snapshots of one
// kind and type, by generation. A delta client's record names the snapshot
// it was last sent a response from (see deltaHeld); the history answers
// lookups in it without reading the record's string, which a snapshot no
// longer held costs.
type history struct {
	mu   sync.Mutex
	gens [historyLen]string
	sets [historyLen][]*entry
	next int
}

// add records a published snapshot.
func (h *history) add(ts *typeSnapshot) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gens[h.next], h.sets[h.next] = ts.gen, ts.sorted
	h.next = (h.next + 1) % historyLen
}

// get returns the entries of generation gen, sorted by name, and whether
// it is still held.
func (h *history) get(gen string) ([]*entry, bool) {
	if gen == emptySnapshot.gen {
		return nil, true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, g := range h.gens {
		if g == gen && g != "" {
			return h.sets[i], true
		}
	}
	return nil, false
}

// sortByName sorts entries by name, the order snapshots, selections and
// responses keep them in.
func sortByName(entries []*entry) {
	slices.SortFunc(entries, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
}

// find returns the entry named name in entries sorted by name, or nil.
func find(entries []*entry, name string) *entry {
	i, ok := slices.BinarySearchFunc(entries, name, func(e *entry, n string) int { return strings.Compare(e.name, n) })
	if !ok {
		return nil
	}
	return entries[i]
}

// maxDiffs bounds the differences a snapshot memoises, one per older
// generation its delta clients' records name.
const maxDiffs = 64

// diffFrom lists, sorted, the names whose entry differs between base (the
// entries of generation gen) and ts: changed, added or removed. Every delta
// client whose record names gen differs from ts's content only there and on
// its record's exceptions, so an ACK or a record compares those names, not
// the whole subscription; the list is computed once per snapshot and
// generation.
func (ts *typeSnapshot) diffFrom(gen string, base []*entry) []string {
	ts.memoMu.Lock()
	if d, ok := ts.diffs[gen]; ok {
		ts.memoMu.Unlock()
		return d
	}
	ts.memoMu.Unlock()
	var d []string
	a, b := base, ts.sorted
	for len(a) > 0 || len(b) > 0 {
		switch {
		case len(b) == 0 || (len(a) > 0 && a[0].name < b[0].name):
			d = append(d, a[0].name)
			a = a[1:]
		case len(a) == 0 || b[0].name < a[0].name:
			d = append(d, b[0].name)
			b = b[1:]
		default:
			if a[0] != b[0] && a[0].version != b[0].version {
				d = append(d, a[0].name)
			}
			a, b = a[1:], b[1:]
		}
	}
	ts.memoMu.Lock()
	defer ts.memoMu.Unlock()
	if ts != emptySnapshot && len(ts.diffs) < maxDiffs {
		if ts.diffs == nil {
			ts.diffs = map[string][]string{}
		}
		ts.diffs[gen] = d
	}
	return d
}
