package cache

import (
	"reflect"
	"sync"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/fjordmesh/fjord/xds/node"
)

// watch is one open request of one stream for one type, state-of-the-world
// or delta. It fires at most once: the server opens a new watch with every
// request, so a fired watch is simply forgotten.
//
// The xDS server (xds/server) sizes its response channels so that one
// response per open watch always fits (one per type and stream), which is why
// delivering never blocks. Responses are built and sent holding mu, and
// cancel takes mu after unregistering the watch: so nothing is ever sent
// after cancel has returned (the delta server closes its channel right
// after cancelling), and the subscription, which the server changes once
// cancel has returned, is never read while it changes.
type watch struct {
	t typ
	// kind and ns are the node's proxy kind and namespace, which pick the
	// view the watch is answered from (see SetViews); home is the state it
	// is registered in, guarded by Cache.mu.
	kind node.Kind
	ns   string
	home *kindState

	// Exactly one of the two request/channel pairs is set.
	sotwReq  *cachev3.Request
	sotwCh   chan cachev3.Response
	deltaReq *cachev3.DeltaRequest
	deltaCh  chan cachev3.DeltaResponse

	// sub is the server's view of the client. It is immutable from watch
	// creation until cancel.
	sub cachev3.Subscription

	mu   sync.Mutex
	done bool

	// State of the world only, guarded by mu once the watch is registered.
	// current says the client holds exactly the selection the watch was
	// last checked against: the request, not a NACK, acknowledged that
	// selection's version. Every Update since has either left the selection
	// alone or been checked against it, so what the client lacks is exactly
	// what the waking Update changed (see sotwRespond). names is the memo
	// entry the subscription matched, to find its selection again cheaply.
	current bool
	names   *memoNames
	// reconciled says reconcile (subscribedAgain for delta) has run for
	// this watch's request; recent is the cache's table of the selections
	// sent, hist the history of the watch's view and type (set under
	// Cache.mu before the watch is first answered, and changed only by
	// SetViews, which holds updateMu, so no Update answers it meanwhile).
	reconciled bool
	recent     *recentSelections
	hist       *history

	// group and slot place the watch in its view's watchSet while it is
	// registered; Cache.mu guards them.
	group groupKey
	slot  int
}

// overlap reports whether two sets share a name, walking the smaller.
func overlap(a, b map[string]struct{}) bool {
	if len(b) < len(a) {
		a, b = b, a
	}
	for name := range a {
		if _, ok := b[name]; ok {
			return true
		}
	}
	return false
}

// watchSet is the registered watches of one type in one view, grouped by
// subscription: the wildcard watches in one group, the others by the
// identity of their set of names. xds/server gives every
// state-of-the-world stream that sent the same list of names the same set,
// so the hundreds of sidecars that subscribe alike form one group, and an
// Update checks each group's interest once (see publishLocked) instead of
// each watch's: what an endpoint change costs grows with the distinct
// subscriptions, not with the proxies. A registered watch's subscription
// does not change (see watch), so a group's set stands for all of its
// watches' subscriptions; and the group holds its set, so no other set can
// take its address while the group exists. Cache.mu guards it.
type watchSet map[groupKey]*watchGroup

// groupKey names a group: wildcard, or the address of a set of names.
type groupKey struct {
	wildcard bool
	names    uintptr
}

// watchGroup is the watches of one subscription. Most groups of delta
// streams, which own their sets, hold one watch, kept in one so that
// registering it costs one allocation.
type watchGroup struct {
	wildcard bool
	names    map[string]struct{}
	watches  []*watch
	one      [1]*watch
}

// interested reports whether a change to any of the names can concern the
// group's watches: they are wildcard, or subscribe to one of them.
func (g *watchGroup) interested(changed map[string]struct{}) bool {
	return g.wildcard || overlap(g.names, changed)
}

// add registers w in the group of its subscription.
func (s watchSet) add(w *watch) {
	k := groupKey{wildcard: w.sub.IsWildcard()}
	var names map[string]struct{}
	if !k.wildcard {
		names = w.sub.SubscribedResources()
		k.names = reflect.ValueOf(names).Pointer()
	}
	g := s[k]
	if g == nil {
		g = &watchGroup{wildcard: k.wildcard, names: names}
		g.watches = g.one[:0]
		s[k] = g
	}
	w.group, w.slot = k, len(g.watches)
	g.watches = append(g.watches, w)
}

// remove unregisters w, if it is registered.
func (s watchSet) remove(w *watch) {
	g := s[w.group]
	if g == nil || w.slot >= len(g.watches) || g.watches[w.slot] != w {
		return
	}
	last := len(g.watches) - 1
	g.watches[w.slot] = g.watches[last]
	g.watches[w.slot].slot = w.slot
	g.watches[last] = nil
	g.watches = g.watches[:last]
	if last == 0 {
		delete(s, w.group)
	}
}

// each calls f for every registered watch, in no particular order; f may
// remove the watch it is given.
func (s watchSet) each(f func(*watch)) {
	for _, g := range s {
		for i := len(g.watches) - 1; i >= 0; i-- {
			f(g.watches[i])
		}
	}
}

// respond builds the watch's response from a snapshot, or returns nil
// when the client already holds (or has rejected) exactly what it would
// receive. changed, if not nil, is what the Update that woke the watch
// changed. It runs under w.mu, or before the watch is registered.
func (w *watch) respond(ts *typeSnapshot, changed map[string]struct{}) (sotw cachev3.Response, delta cachev3.DeltaResponse) {
	if w.sotwReq != nil {
		return w.sotwRespond(ts, changed), nil
	}
	return nil, w.deltaRespond(ts, changed)
}

// fire answers a registered watch from the snapshot an Update published,
// unless it was cancelled or the client needs nothing; it reports whether a
// response was sent.
func (w *watch) fire(ts *typeSnapshot, changed map[string]struct{}) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return false
	}
	sotw, delta := w.respond(ts, changed)
	if sotw == nil && delta == nil {
		return false
	}
	w.done = true
	if sotw != nil {
		w.sotwCh <- sotw
	} else {
		w.deltaCh <- delta
	}
	return true
}

// watchLocked answers a new watch at once if there is something to send,
// and otherwise registers it until an Update concerns it. c.mu must be held;
// the returned send, if not nil, must be called after releasing it.
func (c *Cache) watchLocked(ks *kindState, w *watch) (cancel, send func()) {
	w.hist, w.home = &ks.history[w.t], ks
	if ks.ready {
		if sotw, delta := w.respond(ks.types[w.t], nil); sotw != nil || delta != nil {
			w.done = true
			return func() {}, func() {
				if sotw != nil {
					w.sotwCh <- sotw
				} else {
					w.deltaCh <- delta
				}
			}
		}
	}
	ks.watches[w.t].add(w)
	return func() {
		c.mu.Lock()
		w.home.watches[w.t].remove(w)
		c.mu.Unlock()
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	}, nil
}
