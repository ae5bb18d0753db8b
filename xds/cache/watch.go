package cache

import (
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
}

// interested reports whether a change to any of the names can concern the
// watch: it is wildcard, or subscribes to one of them.
func (w *watch) interested(changed map[string]struct{}) bool {
	if w.sub.IsWildcard() {
		return true
	}
	subscribed := w.sub.SubscribedResources()
	small, large := subscribed, changed
	if len(changed) < len(subscribed) {
		small, large = changed, subscribed
	}
	for name := range small {
		if _, ok := large[name]; ok {
			return true
		}
	}
	return false
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
	ks.watches[w.t][w] = struct{}{}
	return func() {
		c.mu.Lock()
		delete(w.home.watches[w.t], w)
		c.mu.Unlock()
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	}, nil
}
