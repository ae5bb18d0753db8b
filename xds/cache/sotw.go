package cache

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/fjordmesh/fjord/xds/node"
)

// CreateWatch opens a state-of-the-world watch. A request naming resources
// is answered with those that exist (never held until the client asks for
// everything, which proxyless gRPC never does); a wildcard request gets the
// whole type. A client that already holds the content, or has rejected
// exactly this content, is not answered until it changes.
func (c *Cache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	info, err := node.FromNode(req.GetNode())
	if err != nil {
		return nil, fmt.Errorf("xds watch for %s: %w", req.GetTypeUrl(), err)
	}
	t, ok := typeOf(req.GetTypeUrl())
	if !ok {
		c.log.Debug("xds watch for a type that is not served; holding it", "node", req.GetNode().GetId(), "type", req.GetTypeUrl())
		return func() {}, nil
	}
	w := &watch{t: t, sotwReq: req, sotwCh: ch, sub: sub}
	c.mu.Lock()
	cancel, p := c.watchLocked(c.kindLocked(info.Kind), w)
	c.mu.Unlock()
	if p != nil {
		p.deliver()
	}
	return cancel, nil
}

// Fetch answers a one-shot (REST or unary gRPC) request from the current
// content. A request at the current version gets types.SkipFetchError.
func (c *Cache) Fetch(_ context.Context, req *cachev3.Request) (cachev3.Response, error) {
	info, err := node.FromNode(req.GetNode())
	if err != nil {
		return nil, fmt.Errorf("xds fetch for %s: %w", req.GetTypeUrl(), err)
	}
	t, ok := typeOf(req.GetTypeUrl())
	if !ok {
		return nil, fmt.Errorf("xds fetch: type %q is not served", req.GetTypeUrl())
	}
	c.mu.Lock()
	ks := c.kindLocked(info.Kind)
	ready, ts := ks.ready, ks.types[t]
	c.mu.Unlock()
	if !ready {
		return nil, fmt.Errorf("xds fetch for %s: no configuration built yet for %s proxies", req.GetTypeUrl(), info.Kind)
	}
	names := map[string]struct{}{}
	wildcard := len(req.GetResourceNames()) == 0
	for _, n := range req.GetResourceNames() {
		if n == "*" {
			wildcard = true
		}
		names[n] = struct{}{}
	}
	entries, version := sotwSelect(ts, wildcard, names)
	if req.GetVersionInfo() == version {
		return nil, &types.SkipFetchError{}
	}
	return newSotwResponse(req, ts, entries, version, wildcard), nil
}

// sotwSelect picks the resources a state-of-the-world response carries and
// their set version.
func sotwSelect(ts *typeSnapshot, wildcard bool, names map[string]struct{}) ([]*entry, string) {
	if wildcard {
		return ts.sorted, ts.version
	}
	entries := make([]*entry, 0, len(names))
	for n := range names {
		if e := ts.byName[n]; e != nil {
			entries = append(entries, e)
		}
	}
	slices.SortFunc(entries, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	return entries, setVersion(entries)
}

// sotwRespond decides whether a state-of-the-world watch gets a response now.
//
// The request's version_info is what the client last accepted. A response is
// held when:
//   - it is an ACK of exactly this set's version, or
//   - the client was already sent exactly this set (the server records what
//     it sent as ReturnedResources: name -> resource version). This covers a
//     NACK: the client keeps its last good config and asks again with the old
//     version, and sending the rejected content again would only be rejected
//     again, in a loop, until the content changes.
func sotwRespond(ts *typeSnapshot, req *cachev3.Request, sub cachev3.Subscription) cachev3.Response {
	entries, version := sotwSelect(ts, sub.IsWildcard(), sub.SubscribedResources())
	if req.GetErrorDetail() == nil && req.GetVersionInfo() == version {
		return nil
	}
	known := sub.ReturnedResources()
	if (len(known) > 0 || req.GetResponseNonce() != "") && sameVersions(known, entries) {
		return nil
	}
	return newSotwResponse(req, ts, entries, version, sub.IsWildcard())
}

func sameVersions(known map[string]string, entries []*entry) bool {
	if len(known) != len(entries) {
		return false
	}
	for _, e := range entries {
		if v, ok := known[e.name]; !ok || v != e.version {
			return false
		}
	}
	return true
}

// sotwResponse carries resources serialised once in the cache: the server
// sends the same bytes to every proxy and never marshals a resource per
// proxy. The DiscoveryResponse itself is per stream, because the server
// writes the nonce into it.
type sotwResponse struct {
	req *discoveryv3.DiscoveryRequest
	out *discoveryv3.DiscoveryResponse

	// entries makes the ReturnedResources map, built on the stream's
	// goroutine when the server asks for it rather than under the cache lock.
	entries  []*entry
	once     sync.Once
	returned map[string]string
}

var _ cachev3.Response = (*sotwResponse)(nil)

func newSotwResponse(req *cachev3.Request, ts *typeSnapshot, entries []*entry, version string, wildcard bool) *sotwResponse {
	var payloads []*anypb.Any
	if wildcard {
		// Read-only: shared by every wildcard response of this snapshot.
		payloads = ts.anys
	} else {
		payloads = make([]*anypb.Any, len(entries))
		for i, e := range entries {
			payloads[i] = e.any
		}
	}
	return &sotwResponse{
		req: req,
		out: &discoveryv3.DiscoveryResponse{
			VersionInfo: version,
			Resources:   payloads,
			TypeUrl:     req.GetTypeUrl(),
		},
		entries: entries,
	}
}

func (r *sotwResponse) GetDiscoveryResponse() (*discoveryv3.DiscoveryResponse, error) {
	return r.out, nil
}

func (r *sotwResponse) GetRequest() *discoveryv3.DiscoveryRequest { return r.req }

// GetVersion is the set version of the response.
//
// Deprecated: go-control-plane still declares it; use GetResponseVersion.
func (r *sotwResponse) GetVersion() (string, error) { return r.out.GetVersionInfo(), nil }

func (r *sotwResponse) GetResponseVersion() string { return r.out.GetVersionInfo() }

// GetReturnedResources maps each resource in the response to its own
// content version; the next request's subscription hands it back.
func (r *sotwResponse) GetReturnedResources() map[string]string {
	r.once.Do(func() {
		// The server deletes from this map when the subscription shrinks,
		// so every response gets its own.
		r.returned = make(map[string]string, len(r.entries))
		for _, e := range r.entries {
			r.returned[e.name] = e.version
		}
	})
	return r.returned
}

func (r *sotwResponse) GetContext() context.Context { return context.Background() }
