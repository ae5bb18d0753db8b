package cache

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// CreateDeltaWatch opens an incremental watch. The client is sent only the
// resources whose version differs from the one it holds (the subscription's
// ReturnedResources, seeded from initial_resource_versions on reconnect) and
// the removal of subscribed resources that no longer exist. After a NACK the
// held versions are those just sent, so rejected content is not sent again.
func (c *Cache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	return c.open(req.GetNode(), req.GetTypeUrl(), "xds delta watch", func(t typ) *watch {
		return &watch{t: t, deltaReq: req, deltaCh: ch, sub: sub}
	})
}

// genKey is the entry of a delta client's ReturnedResources map (which the
// server hands back with every request and leaves to the cache to interpret)
// naming the snapshot the client was last found up to date with, when the
// map spells out every resource the client holds. It cannot clash with a
// resource name: those are DNS names and listener addresses.
const genKey = "\x00fjord.generation"

// baseKey names the snapshot generation a record in the short form is
// relative to (see deltaMarker), and notHeld is the version recorded for a
// subscribed resource of that snapshot the client does not hold. Neither
// can be a resource name or a content version.
const (
	baseKey = "\x00fjord.base"
	notHeld = "\x00-"
)

// deltaRespond builds the changes a delta client is missing, or nil if it is
// up to date. The first response to a wildcard subscription is sent even when
// empty, so a client with nothing to receive still completes its initial
// fetch.
//
// Work is kept proportional to what changed, not to what a proxy subscribes
// to (a sidecar may subscribe to every load assignment in the mesh):
//   - An Update passes the names it changed: a registered watch was up to
//     date when registered and has been re-checked by every Update touching
//     its names since, so only those names can differ.
//   - An ACK or NACK that changes no subscription, arriving while the
//     snapshot is still the one the last response was built from, has
//     nothing to receive.
//   - A record in the short form (see deltaMarker) differs from the current
//     snapshot only on its exceptions and on the names that changed since
//     its generation.
//
// Otherwise (first request, subscription change to or from wildcard,
// generation no longer in the history) every resource in scope is compared.
func (w *watch) deltaRespond(ts *typeSnapshot, changed map[string]struct{}) cachev3.DeltaResponse {
	req, sub := w.deltaReq, w.sub
	known := sub.ReturnedResources()
	h := w.held(known, ts)
	if !w.reconciled {
		w.reconciled = true
		h.subscribedAgain(req.GetResourceNamesSubscribe())
	}
	if changed == nil && req.GetResponseNonce() != "" &&
		len(req.GetResourceNamesSubscribe()) == 0 && len(req.GetResourceNamesUnsubscribe()) == 0 &&
		h.upTo() == ts.gen {
		return nil
	}
	var (
		updated []*entry
		removed []string
	)
	check := func(name string) {
		e := ts.byName[name]
		v, ok := h.version(name)
		if e == nil {
			if ok {
				removed = append(removed, name)
			}
			return
		}
		if !ok || v != e.version {
			updated = append(updated, e)
		}
	}
	subscribed := sub.SubscribedResources()
	switch {
	case changed != nil:
		for name := range changed {
			if _, ok := subscribed[name]; ok || sub.IsWildcard() {
				check(name)
			}
		}
	case sub.IsWildcard():
		for _, e := range ts.sorted {
			check(e.name)
		}
		h.each(func(name string) {
			if ts.byName[name] == nil {
				removed = append(removed, name)
			}
		})
	case h.short && h.base != nil:
		// Only the exceptions and what changed since the generation can
		// differ; the rest the client holds at the current version.
		for name := range known {
			if _, ok := subscribed[name]; ok {
				check(name)
			}
		}
		for _, name := range ts.diffFrom(h.gen, h.base) {
			_, sub := subscribed[name]
			if _, exception := known[name]; sub && !exception {
				check(name)
			}
		}
	default:
		for name := range subscribed {
			check(name)
		}
	}
	first := sub.IsWildcard() && req.GetResponseNonce() == ""
	if len(updated) == 0 && len(removed) == 0 && !first {
		return nil
	}
	slices.SortFunc(updated, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	slices.Sort(removed)
	resources := make([]*discoveryv3.Resource, len(updated))
	for i, e := range updated {
		resources[i] = e.res
	}
	return &deltaResponse{
		req: req,
		out: &discoveryv3.DeltaDiscoveryResponse{
			SystemVersionInfo: ts.version,
			Resources:         resources,
			RemovedResources:  removed,
			TypeUrl:           req.GetTypeUrl(),
		},
		held:     h,
		updated:  updated,
		ts:       ts,
		wildcard: sub.IsWildcard(),
	}
}

// deltaHeld is what a delta client holds, read from its ReturnedResources
// record. The record has one of two forms:
//   - spelled out: every resource the client holds with its version, and
//     genKey. The server's own maps (empty, or seeded from a reconnecting
//     client's initial_resource_versions) have this form, and so do the
//     records of wildcard subscriptions.
//   - short (deltaMarker): baseKey names a generation of the snapshot;
//     every other entry is an exception. The client holds each subscribed
//     resource at that generation's version, unless an exception says
//     otherwise (a version, "" for held at a version unknown, or notHeld).
//
// The short form is what makes a sidecar subscribed to a thousand load
// assignments cost a few entries instead of a thousand per response: every
// client at the same generation shares that generation's entries.
type deltaHeld struct {
	known      map[string]string
	subscribed map[string]struct{}
	short      bool
	gen        string
	// base is the generation's entries sorted by name (nil if the history
	// no longer holds it, or the record is spelled out); byName indexes
	// them when the generation is the current snapshot.
	base   []*entry
	byName map[string]*entry
}

// held reads the watch's record against the snapshot ts. (A client could
// put baseKey in its initial_resource_versions; it would only misinform
// the cache about itself.)
func (w *watch) held(known map[string]string, ts *typeSnapshot) *deltaHeld {
	h := &deltaHeld{known: known, subscribed: w.sub.SubscribedResources()}
	gen, ok := known[baseKey]
	if !ok {
		return h
	}
	h.short, h.gen = true, gen
	if gen == ts.gen {
		h.base, h.byName = ts.sorted, ts.byName
		return h
	}
	if base, ok := w.hist.get(gen); ok {
		h.base = base
		if base == nil {
			h.base = []*entry{}
		}
	}
	return h
}

// upTo is the generation the client was last sent a response from.
func (h *deltaHeld) upTo() string {
	if h.short {
		return h.gen
	}
	return h.known[genKey]
}

func (h *deltaHeld) lookup(name string) *entry {
	if h.byName != nil {
		return h.byName[name]
	}
	return find(h.base, name)
}

// version is the version of name the client holds, and whether it holds
// it. A short record speaks for subscribed names only: the server drops an
// unsubscribed name's exception, and the client dropped the resource.
// Without its generation's entries it says every subscribed name is held
// at an unknown version, so each is sent again or removed: never a
// resource missed.
func (h *deltaHeld) version(name string) (string, bool) {
	if v, ok := h.known[name]; ok {
		return v, v != notHeld
	}
	if !h.short {
		return "", false
	}
	if _, ok := h.subscribed[name]; !ok {
		return "", false
	}
	if h.base == nil {
		return "", true
	}
	if e := h.lookup(name); e != nil {
		return e.version, true
	}
	return "", false
}

// each calls f with every name the client holds.
func (h *deltaHeld) each(f func(name string)) {
	for name, v := range h.known {
		if name != genKey && name != baseKey && v != notHeld {
			f(name)
		}
	}
	if !h.short {
		return
	}
	for name := range h.subscribed {
		if _, ok := h.known[name]; ok {
			continue
		}
		if h.base == nil || h.lookup(name) != nil {
			f(name)
		}
	}
}

// subscribedAgain runs once per watch with the names its request
// subscribes to. A short record read after the request would say the
// client holds such a name at its generation's version: but the client
// either never had it (it was not subscribed when the record was made) or
// dropped it when it unsubscribed. So each is recorded as held at an
// unknown version, which sends it (or its removal) again; a redundant
// subscription costs a resend, never a missed resource. The record is the
// subscription's own map, made by GetReturnedResources for this stream
// alone, and the server touches it only between watches, so changing it
// in place is safe here.
func (h *deltaHeld) subscribedAgain(names []string) {
	if !h.short || h.base == nil {
		return
	}
	for _, name := range names {
		if _, ok := h.known[name]; !ok && h.lookup(name) != nil {
			h.known[name] = ""
		}
	}
}

// deltaResponse carries resources serialised once in the cache, like
// sotwResponse.
type deltaResponse struct {
	req *discoveryv3.DeltaDiscoveryRequest
	out *discoveryv3.DeltaDiscoveryResponse

	// What the next ReturnedResources map is made of. It is built when the
	// server asks for it, on the stream's goroutine, so a push to a thousand
	// proxies builds no maps while the cache answers every woken watch. The
	// server reads every response before it touches the subscription
	// again, so the record held reads is unchanged by then.
	held     *deltaHeld
	updated  []*entry
	ts       *typeSnapshot
	wildcard bool
	once     sync.Once
	returned map[string]string
}

var _ cachev3.DeltaResponse = (*deltaResponse)(nil)

func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discoveryv3.DeltaDiscoveryResponse, error) {
	return r.out, nil
}

func (r *deltaResponse) GetDeltaRequest() *discoveryv3.DeltaDiscoveryRequest { return r.req }

// GetSystemVersion is the version of the whole type, for debugging.
//
// Deprecated: go-control-plane still declares it; use GetResponseVersion.
func (r *deltaResponse) GetSystemVersion() (string, error) { return r.out.GetSystemVersionInfo(), nil }

func (r *deltaResponse) GetResponseVersion() string { return r.out.GetSystemVersionInfo() }

// GetNextVersionMap is GetReturnedResources.
//
// Deprecated: go-control-plane still declares it; use GetReturnedResources.
func (r *deltaResponse) GetNextVersionMap() map[string]string { return r.GetReturnedResources() }

// GetReturnedResources records what the client holds after applying this
// response: in the short form (see deltaHeld) for a subscription by name,
// spelled out with the snapshot generation under genKey for a wildcard
// one. A wildcard client holds resources it never named, and a short
// record whose generation has left the history could not say which; so
// its record stays whole.
func (r *deltaResponse) GetReturnedResources() map[string]string {
	r.once.Do(func() {
		// The server edits this map as the subscription changes, and
		// subscribedAgain may, so every response gets its own.
		if r.wildcard {
			r.returned = r.spelledOut()
		} else {
			r.returned = r.short()
		}
	})
	return r.returned
}

func (r *deltaResponse) spelledOut() map[string]string {
	var m map[string]string
	if r.held.short {
		m = map[string]string{}
		r.held.each(func(name string) {
			m[name], _ = r.held.version(name)
		})
	} else {
		m = maps.Clone(r.held.known)
		if m == nil {
			m = make(map[string]string, len(r.updated)+1)
		}
	}
	for _, e := range r.updated {
		m[e.name] = e.version
	}
	for _, name := range r.out.GetRemovedResources() {
		delete(m, name)
	}
	m[genKey] = r.ts.gen
	return m
}

// short records the client's holdings relative to the response's snapshot:
// the sent resources are at its versions and removed ones absent from it,
// so exceptions can only be among the old record's exceptions and the names
// that differ between its generation and this snapshot (all subscribed
// names when the old record is spelled out or its generation is gone).
func (r *deltaResponse) short() map[string]string {
	h, ts := r.held, r.ts
	sent := func(name string) bool {
		_, ok := slices.BinarySearchFunc(r.updated, name, func(e *entry, n string) int { return strings.Compare(e.name, n) })
		if !ok {
			_, ok = slices.BinarySearch(r.out.GetRemovedResources(), name)
		}
		return ok
	}
	m := map[string]string{}
	except := func(name string) {
		if _, done := m[name]; done || sent(name) {
			return
		}
		v, ok := h.version(name)
		_, subscribed := h.subscribed[name]
		e := ts.byName[name]
		switch {
		case !subscribed:
			// Held outside the subscription (a reconnecting client's
			// initial versions may name such): kept as the server left it.
			if ok {
				m[name] = v
			}
		case ok && (e == nil || e.version != v):
			m[name] = v
		case !ok && e != nil:
			m[name] = notHeld
		}
	}
	for name := range h.known {
		if name != genKey && name != baseKey {
			except(name)
		}
	}
	if h.short && h.base != nil {
		for _, name := range ts.diffFrom(h.gen, h.base) {
			if _, ok := h.subscribed[name]; ok {
				except(name)
			}
		}
	} else {
		for name := range h.subscribed {
			except(name)
		}
	}
	m[baseKey] = ts.gen
	return m
}

func (r *deltaResponse) GetContext() context.Context { return context.Background() }
