package cache

import (
	"sync"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// watch is one open request of one stream for one type, state-of-the-world
// or delta. It fires at most once: the server opens a new watch with every
// request, so a fired watch is simply forgotten.
//
// The go-control-plane server sizes its response channels so that one
// response per open watch always fits (one per type and stream), which is why
// delivering never blocks. Holding mu while sending still matters: the delta
// server closes its channel right after cancelling, and cancel waits on mu,
// so nothing is ever sent after cancel has returned.
type watch struct {
	t typ

	// Exactly one of the two request/channel pairs is set.
	sotwReq  *cachev3.Request
	sotwCh   chan cachev3.Response
	deltaReq *cachev3.DeltaRequest
	deltaCh  chan cachev3.DeltaResponse

	// sub is the server's view of the client. It is immutable from watch
	// creation until cancel, and read only under Cache.mu.
	sub cachev3.Subscription

	mu   sync.Mutex
	done bool
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

// respond builds the watch's response from a snapshot, or reports that the
// client already holds (or has rejected) exactly what it would receive.
// changed, if not nil, is what the Update that woke the watch changed.
func (w *watch) respond(ts *typeSnapshot, changed map[string]struct{}) (pending, bool) {
	if w.sotwReq != nil {
		r := sotwRespond(ts, w.sotwReq, w.sub)
		return pending{w: w, sotw: r}, r != nil
	}
	r := deltaRespond(ts, w.deltaReq, w.sub, changed)
	return pending{w: w, delta: r}, r != nil
}

// pending is a response built under Cache.mu, to be delivered after it is
// released.
type pending struct {
	w     *watch
	sotw  cachev3.Response
	delta cachev3.DeltaResponse
}

func (p pending) deliver() {
	w := p.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return
	}
	w.done = true
	if p.sotw != nil {
		w.sotwCh <- p.sotw
		return
	}
	w.deltaCh <- p.delta
}

// watchLocked answers a new watch at once if there is something to send,
// and otherwise registers it until an Update concerns it. c.mu must be held;
// the returned pending, if any, must be delivered after releasing it.
func (c *Cache) watchLocked(ks *kindState, w *watch) (func(), *pending) {
	if ks.ready {
		if p, ok := w.respond(ks.types[w.t], nil); ok {
			return func() {}, &p
		}
	}
	ks.watches[w.t][w] = struct{}{}
	return func() {
		c.mu.Lock()
		delete(ks.watches[w.t], w)
		c.mu.Unlock()
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	}, nil
}
