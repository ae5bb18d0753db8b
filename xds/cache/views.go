package cache

import (
	"maps"

	"github.com/fjordmesh/fjord/xds/node"
)

// DefaultView is the view of every namespace SetViews puts in no other:
// with no views set, the one view of each kind, and all Update and Patch
// change.
const DefaultView = ""

// viewKey names what one set of proxies is served: those of one kind whose
// namespace is in one view.
type viewKey struct {
	kind node.Kind
	view string
}

// String names the proxies a view serves, for errors and logs.
func (k viewKey) String() string {
	if k.view == DefaultView {
		return string(k.kind) + " proxies"
	}
	return string(k.kind) + " proxies of view " + k.view
}

// viewKeyLocked is the view that serves the node. c.mu must be held.
func (c *Cache) viewKeyLocked(info node.Info) viewKey {
	return viewKey{kind: info.Kind, view: c.viewOf[info.Namespace]}
}

// SetViews says which view serves the proxies of each namespace: of maps a
// namespace to its view, and every namespace it does not name is in
// DefaultView. Views let proxies be served only what their namespace may
// see (the controlplane gives each group of namespaces that see the same
// Services a view): a view is filled with UpdateView, for every kind,
// before any namespace is put in it (or in the same Publish).
//
// The open watches of a namespace whose view changed move to its new view
// and are answered as if they had just been opened against it: a
// state-of-the-world client is sent its selection there unless it already
// holds that version, a delta client exactly the resources it lacks or
// holds at another version, and the removal of those it holds that the new
// view does not have. (A delta client's record names its snapshot by a
// generation unique across views, and carries that snapshot's names and
// versions, so it reads the same in any view.) No stream is closed. Views
// that no namespace is in any more, other than DefaultView, are dropped.
// With of unchanged, SetViews does nothing.
func (c *Cache) SetViews(of map[string]string) {
	// With no update, publish cannot fail.
	_, _ = c.publish(nil, &of)
}

// moveLocked sets the views and moves the registered watches of every
// namespace whose view changed to their new view, returning them. c.mu and
// updateMu must be held: no Update answers a watch while its view and
// history change.
func (c *Cache) moveLocked(of map[string]string) map[*watch]bool {
	if maps.Equal(c.viewOf, of) {
		return nil
	}
	c.viewOf = maps.Clone(of)
	moved := map[*watch]bool{}
	for _, ks := range c.views {
		for t := range numTypes {
			ks.watches[t].each(func(w *watch) {
				key := viewKey{kind: w.kind, view: c.viewOf[w.ns]}
				if key == ks.key {
					return
				}
				to := c.viewLocked(key)
				ks.watches[t].remove(w)
				to.watches[t].add(w)
				w.home = to
				w.mu.Lock()
				w.hist = &to.history[t]
				w.mu.Unlock()
				moved[w] = true
			})
		}
	}
	return moved
}

// dropUnusedLocked forgets the views no namespace is in, but DefaultView,
// and returns how many it dropped. After moveLocked no watch is in one.
// c.mu must be held.
func (c *Cache) dropUnusedLocked() int {
	used := map[string]bool{DefaultView: true}
	for _, v := range c.viewOf {
		used[v] = true
	}
	dropped := 0
	for key := range c.views {
		if !used[key.view] {
			delete(c.views, key)
			dropped++
		}
	}
	return dropped
}
