package cache

import "sync"

// maxRecent bounds the entries the recent-selection table holds (counted
// once per selection and entry). It holds a few hundred selections of a
// thousand names: enough for the selections clients currently hold, which
// are few and shared (every proxy of a kind subscribed to the same names
// holds the same one).
const maxRecent = 1 << 18

// recentSelections remembers the entries of the state-of-the-world
// selections recently sent, by type and set version. A response's
// ReturnedResources names only its selection's version (see sotwMarker);
// the table turns that back into the resources and versions the client was
// sent when a decision needs them. A version it no longer holds costs a
// whole-selection response, never a wrong one.
//
// It keeps two generations: lookups find an entry in either and move it to
// the current one; when the current one is full it becomes the previous
// one, and the old previous one is dropped. Selections in use stay; the
// table never holds more than twice maxRecent entries.
type recentSelections struct {
	mu        sync.Mutex
	cur, prev map[recentKey][]*entry
	size      int // entries in cur
}

type recentKey struct {
	t       typ
	version string
}

// add remembers a selection's entries under its version.
func (r *recentSelections) add(t typ, sel *selection) {
	if len(sel.entries) == 0 {
		return
	}
	k := recentKey{t: t, version: sel.version}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.cur[k]; ok {
		return
	}
	r.putLocked(k, sel.entries)
}

// get returns the entries of the selection sent at version, sorted by
// name, or nil if the table no longer holds it.
func (r *recentSelections) get(t typ, version string) []*entry {
	k := recentKey{t: t, version: version}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.cur[k]; ok {
		return e
	}
	e, ok := r.prev[k]
	if !ok {
		return nil
	}
	delete(r.prev, k)
	r.putLocked(k, e)
	return e
}

func (r *recentSelections) putLocked(k recentKey, entries []*entry) {
	if r.cur == nil || r.size+len(entries) > maxRecent {
		r.prev, r.cur, r.size = r.cur, map[recentKey][]*entry{}, 0
	}
	r.cur[k] = entries
	r.size += len(entries)
}
