package cache

import (
	"context"
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

// The keys of the entries of a delta client's ReturnedResources record
// (which the server hands back with every request and leaves to the cache
// to interpret) that name the snapshot it is relative to (see deltaHeld):
// baseKey when the client subscribed by name, wildKey when to everything.
// notHeld is the version recorded for a resource of that snapshot, in
// scope, that the client does not hold. None can be a resource name (those
// are DNS names and listener addresses) or a content version.
const (
	baseKey = "\x00fjord.base"
	wildKey = "\x00fjord.wildcard-base"
	notHeld = "\x00-"
)

func isRecordKey(name string) bool { return name == baseKey || name == wildKey }

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
//   - Otherwise the record (see deltaHeld) differs from the current
//     snapshot only on its exceptions and on the names that changed since
//     its snapshot.
//
// Every resource in scope is compared only for a record the client made
// (a first request, seeded from initial_resource_versions on reconnect) or
// a subscription that turned wildcard or stopped being so.
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
		h.short && h.gen == ts.gen {
		return nil
	}
	var (
		updated []*entry
		removed []string
	)
	check := func(name string) {
		e := ts.get(name)
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
	inScope := func(name string) bool {
		_, ok := subscribed[name]
		return ok || sub.IsWildcard()
	}
	switch {
	case changed != nil:
		for name := range changed {
			if inScope(name) {
				check(name)
			}
		}
	case h.short && h.all == sub.IsWildcard():
		// Only the exceptions and what changed since the record's snapshot
		// can differ; the rest the client holds at the current version.
		for name := range known {
			if !isRecordKey(name) && inScope(name) {
				check(name)
			}
		}
		for _, name := range ts.diffFrom(h.gen, h.base) {
			if _, exception := known[name]; !exception && inScope(name) {
				check(name)
			}
		}
	case sub.IsWildcard():
		for _, e := range ts.sorted {
			check(e.name)
		}
		h.each(func(name string) {
			if ts.get(name) == nil {
				removed = append(removed, name)
			}
		})
	default:
		for name := range subscribed {
			check(name)
		}
	}
	first := sub.IsWildcard() && req.GetResponseNonce() == ""
	if len(updated) == 0 && len(removed) == 0 && !first {
		return nil
	}
	sortByName(updated)
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
//   - the cache's (deltaResponse.record): under baseKey or wildKey, the
//     snapshot the last response was built from (ts.record: its generation
//     and every resource's name and version, one string shared by every
//     record of that snapshot). The client holds each resource of that
//     snapshot in scope (every one under wildKey, the subscribed ones
//     under baseKey) at that snapshot's version, unless another entry, an
//     exception, says otherwise: a version, "" (held at a version unknown)
//     or notHeld.
//   - spelled out: every resource the client holds with its version. The
//     server's own maps have this form: empty on a new stream, or a
//     reconnecting client's initial_resource_versions.
//
// The first form makes a sidecar subscribed to a thousand resources cost a
// few entries per type instead of a thousand: every client of the same
// snapshot shares its string, which lives as long as a record names it.
// The cache's history of recent snapshots answers lookups without reading
// the string; a snapshot gone from it is read from the string.
type deltaHeld struct {
	known      map[string]string
	subscribed map[string]struct{}
	short, all bool
	gen        string
	// base is the record's snapshot's entries sorted by name; cur is that
	// snapshot when it is the current one, whose index finds them.
	base []*entry
	cur  *typeSnapshot
}

// held reads the watch's record against the snapshot ts. (A client could
// put a record key in its initial_resource_versions; it would only
// misinform the cache about itself.)
func (w *watch) held(known map[string]string, ts *typeSnapshot) *deltaHeld {
	h := &deltaHeld{known: known, subscribed: w.sub.SubscribedResources()}
	rec, ok := known[baseKey]
	if !ok {
		rec, ok = known[wildKey]
		h.all = true
	}
	if !ok {
		h.all = false
		return h
	}
	gen, table, _ := strings.Cut(rec, "\x00")
	h.short, h.gen = true, gen
	switch base, ok := w.hist.get(gen); {
	case gen == ts.gen:
		h.base, h.cur = ts.sorted, ts
	case ok:
		h.base = base
	default:
		h.base = parseRecord(table)
	}
	return h
}

// parseRecord reads the entries of a snapshot from its record string (see
// typeSnapshot.record), for a snapshot the history no longer holds.
func parseRecord(table string) []*entry {
	fields := strings.Split(table, "\x00")
	out := make([]*entry, 0, len(fields)/2)
	for i := 0; i+1 < len(fields); i += 2 {
		out = append(out, &entry{name: fields[i], version: fields[i+1]})
	}
	// Sorted when written; a record a client made up must not break the
	// binary search.
	sortByName(out)
	return out
}

func (h *deltaHeld) lookup(name string) *entry {
	if h.cur != nil {
		return h.cur.get(name)
	}
	return find(h.base, name)
}

// version is the version of name the client holds, and whether it holds
// it. A record under baseKey speaks for subscribed names only: the server
// drops an unsubscribed name's exception, and the client dropped the
// resource.
func (h *deltaHeld) version(name string) (string, bool) {
	if v, ok := h.known[name]; ok {
		return v, v != notHeld
	}
	if !h.short {
		return "", false
	}
	if _, ok := h.subscribed[name]; !ok && !h.all {
		return "", false
	}
	if e := h.lookup(name); e != nil {
		return e.version, true
	}
	return "", false
}

// each calls f with every name the client holds.
func (h *deltaHeld) each(f func(name string)) {
	for name, v := range h.known {
		if !isRecordKey(name) && v != notHeld {
			f(name)
		}
	}
	if !h.short {
		return
	}
	if h.all {
		for _, e := range h.base {
			if _, ok := h.known[e.name]; !ok {
				f(e.name)
			}
		}
		return
	}
	for name := range h.subscribed {
		if _, ok := h.known[name]; !ok && h.lookup(name) != nil {
			f(name)
		}
	}
}

// subscribedAgain runs once per watch with the names its request
// subscribes to. The record read after the request would say the client
// holds such a name at its snapshot's version: but the client either never
// had it (it was not subscribed when the record was made) or dropped it
// when it unsubscribed. So each is recorded as held at an unknown version,
// which sends it (or its removal) again; a redundant subscription costs a
// resend, never a missed resource. The record is the subscription's own
// map, made by GetReturnedResources for this stream alone, and the server
// touches it only between watches, so changing it in place is safe here.
// Every watch runs this when created: a stream has a record of the cache's
// only once the kind is ready, and then watches are answered or checked at
// once.
func (h *deltaHeld) subscribedAgain(names []string) {
	if !h.short {
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
// response, relative to the response's snapshot (see deltaHeld).
func (r *deltaResponse) GetReturnedResources() map[string]string {
	r.once.Do(func() {
		// The server edits this map as the subscription changes, and
		// subscribedAgain may, so every response gets its own.
		r.returned = r.record()
	})
	return r.returned
}

// record builds the record: the sent resources are at the snapshot's
// versions and removed ones absent from it, so exceptions can only be among
// the old record's exceptions and the names that differ between its
// snapshot and this one (all names in scope when the old record is spelled
// out or its scope was another).
func (r *deltaResponse) record() map[string]string {
	h, ts := r.held, r.ts
	sent := func(name string) bool {
		if find(r.updated, name) != nil {
			return true
		}
		_, ok := slices.BinarySearch(r.out.GetRemovedResources(), name)
		return ok
	}
	m := map[string]string{}
	except := func(name string) {
		if _, done := m[name]; done || sent(name) {
			return
		}
		v, ok := h.version(name)
		_, subscribed := h.subscribed[name]
		e := ts.get(name)
		switch {
		case !subscribed && !r.wildcard:
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
		if !isRecordKey(name) {
			except(name)
		}
	}
	switch {
	case h.short && h.all == r.wildcard:
		for _, name := range ts.diffFrom(h.gen, h.base) {
			if _, ok := h.subscribed[name]; ok || r.wildcard {
				except(name)
			}
		}
	case r.wildcard:
		for _, e := range ts.sorted {
			except(e.name)
		}
		h.each(except)
	default:
		for name := range h.subscribed {
			except(name)
		}
	}
	if r.wildcard {
		m[wildKey] = ts.record()
	} else {
		m[baseKey] = ts.record()
	}
	return m
}

func (r *deltaResponse) GetContext() context.Context { return context.Background() }
