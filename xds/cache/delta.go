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
// naming the snapshot the client was last found up to date with. It cannot
// clash with a resource name: those are DNS names and listener addresses.
const genKey = "\x00fjord.generation"

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
//
// Otherwise (first request, subscription change, snapshot moved on) every
// resource in scope is compared.
func deltaRespond(ts *typeSnapshot, req *cachev3.DeltaRequest, sub cachev3.Subscription, changed map[string]struct{}) cachev3.DeltaResponse {
	known := sub.ReturnedResources()
	if changed == nil && req.GetResponseNonce() != "" &&
		len(req.GetResourceNamesSubscribe()) == 0 && len(req.GetResourceNamesUnsubscribe()) == 0 &&
		known[genKey] == ts.gen {
		return nil
	}
	var (
		updated []*entry
		removed []string
	)
	check := func(name string) {
		e := ts.byName[name]
		if e == nil {
			if _, ok := known[name]; ok {
				removed = append(removed, name)
			}
			return
		}
		if v, ok := known[name]; !ok || v != e.version {
			updated = append(updated, e)
		}
	}
	switch {
	case changed != nil:
		subscribed := sub.SubscribedResources()
		for name := range changed {
			if _, ok := subscribed[name]; ok || sub.IsWildcard() {
				check(name)
			}
		}
	case sub.IsWildcard():
		for _, e := range ts.sorted {
			check(e.name)
		}
		for name := range known {
			if name != genKey && ts.byName[name] == nil {
				removed = append(removed, name)
			}
		}
	default:
		for name := range sub.SubscribedResources() {
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
		known:   known,
		updated: updated,
		gen:     ts.gen,
	}
}

// deltaResponse carries resources serialised once in the cache, like
// sotwResponse.
type deltaResponse struct {
	req *discoveryv3.DeltaDiscoveryRequest
	out *discoveryv3.DeltaDiscoveryResponse

	// What the next ReturnedResources map is made of. It is built when the
	// server asks for it, on the stream's goroutine, so a push to a thousand
	// proxies does not copy a thousand version maps while holding the cache.
	// The server reads every response before it touches the subscription
	// again, so known is unchanged by then.
	known    map[string]string
	updated  []*entry
	gen      string
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

// GetReturnedResources is every resource the client holds after applying
// this response, with its version, plus the snapshot generation under
// genKey.
func (r *deltaResponse) GetReturnedResources() map[string]string {
	r.once.Do(func() {
		// The server edits this map as the subscription changes, so every
		// response gets its own copy.
		m := maps.Clone(r.known)
		if m == nil {
			m = make(map[string]string, len(r.updated)+1)
		}
		for _, e := range r.updated {
			m[e.name] = e.version
		}
		for _, name := range r.out.GetRemovedResources() {
			delete(m, name)
		}
		m[genKey] = r.gen
		r.returned = m
	})
	return r.returned
}

func (r *deltaResponse) GetContext() context.Context { return context.Background() }
