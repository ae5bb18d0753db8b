package cache

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/fjordmesh/fjord/xds/node"
)

// CreateDeltaWatch opens an incremental watch. The client is sent only the
// resources whose version differs from the one it holds (the subscription's
// ReturnedResources, seeded from initial_resource_versions on reconnect) and
// the removal of subscribed resources that no longer exist. After a NACK the
// held versions are those just sent, so rejected content is not sent again.
func (c *Cache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	info, err := node.FromNode(req.GetNode())
	if err != nil {
		return nil, fmt.Errorf("xds delta watch for %s: %w", req.GetTypeUrl(), err)
	}
	t, ok := typeOf(req.GetTypeUrl())
	if !ok {
		c.log.Debug("xds delta watch for a type that is not served; holding it", "node", req.GetNode().GetId(), "type", req.GetTypeUrl())
		return func() {}, nil
	}
	w := &watch{t: t, deltaReq: req, deltaCh: ch, sub: sub}
	c.mu.Lock()
	cancel, p := c.watchLocked(c.kindLocked(info.Kind), w)
	c.mu.Unlock()
	if p != nil {
		p.deliver()
	}
	return cancel, nil
}

// deltaRespond builds the changes a delta client is missing, or nil if it is
// up to date. The first response to a wildcard subscription is sent even when
// empty, so a client with nothing to receive still completes its initial
// fetch.
func deltaRespond(ts *typeSnapshot, req *cachev3.DeltaRequest, sub cachev3.Subscription) cachev3.DeltaResponse {
	known := sub.ReturnedResources()
	var (
		changed []*entry
		removed []string
	)
	stale := func(e *entry) bool {
		v, ok := known[e.name]
		return !ok || v != e.version
	}
	if sub.IsWildcard() {
		for _, e := range ts.sorted {
			if stale(e) {
				changed = append(changed, e)
			}
		}
		for name := range known {
			if ts.byName[name] == nil {
				removed = append(removed, name)
			}
		}
	} else {
		for name := range sub.SubscribedResources() {
			e := ts.byName[name]
			if e == nil {
				if _, ok := known[name]; ok {
					removed = append(removed, name)
				}
				continue
			}
			if stale(e) {
				changed = append(changed, e)
			}
		}
		slices.SortFunc(changed, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	}
	first := sub.IsWildcard() && req.GetResponseNonce() == ""
	if len(changed) == 0 && len(removed) == 0 && !first {
		return nil
	}
	slices.Sort(removed)

	// The server edits this map as the subscription changes, so every
	// response gets its own copy.
	returned := maps.Clone(known)
	if returned == nil {
		returned = make(map[string]string, len(changed))
	}
	resources := make([]*discoveryv3.Resource, len(changed))
	for i, e := range changed {
		resources[i] = e.res
		returned[e.name] = e.version
	}
	for _, name := range removed {
		delete(returned, name)
	}
	return &deltaResponse{
		req: req,
		out: &discoveryv3.DeltaDiscoveryResponse{
			SystemVersionInfo: ts.version,
			Resources:         resources,
			RemovedResources:  removed,
			TypeUrl:           req.GetTypeUrl(),
		},
		returned: returned,
	}
}

// deltaResponse carries resources serialised once in the cache, like
// sotwResponse.
type deltaResponse struct {
	req      *discoveryv3.DeltaDiscoveryRequest
	out      *discoveryv3.DeltaDiscoveryResponse
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
func (r *deltaResponse) GetNextVersionMap() map[string]string { return r.returned }

// GetReturnedResources is every resource the client holds after applying
// this response, with its version.
func (r *deltaResponse) GetReturnedResources() map[string]string { return r.returned }

func (r *deltaResponse) GetContext() context.Context { return context.Background() }
