package load

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/fjordmesh/fjord/xds/node"
)

// Pattern is how a simulated proxy subscribes.
type Pattern string

const (
	// EnvoyLike subscribes like an Envoy sidecar: every cluster and every
	// listener (wildcard), then the load assignment of every EDS cluster
	// and the route configuration of every listener it got. It sends its
	// node with every request, as Envoy does unless told otherwise, or
	// once per stream with ProxySpec.NodeOnce.
	EnvoyLike Pattern = "envoy"
	// GRPCLike subscribes like a proxyless gRPC client: the listeners of
	// the few Services it dials, their route configurations, the clusters
	// those route to, and those clusters' load assignments. It sends its
	// node once per stream, as grpc-go does.
	GRPCLike Pattern = "grpc"
)

// ProxySpec is one simulated proxy.
type ProxySpec struct {
	Pattern Pattern
	// Delta picks the incremental protocol; false is state of the world.
	Delta bool
	// NodeOnce: an Envoy-like proxy sends its node only in the first
	// request of each stream (a gRPC-like one always does).
	NodeOnce bool
	Info     node.Info
	// Services are the indexes of the Services a GRPCLike proxy dials,
	// with the names of their listeners.
	Services  []int
	Listeners []string
}

// proxy is a simulated proxy: one ADS stream at a time, reconnecting when
// it breaks, holding what it has accepted across reconnects like a real
// proxy.
type proxy struct {
	id    int
	spec  ProxySpec
	node  *corev3.Node
	fleet *Fleet
	dials map[int]bool // GRPCLike: spec.Services as a set

	mu      sync.Mutex
	types   [numTypes]typeState
	seen    uint32 // sweep generation, see applySotw
	shrinks []Shrink
	// nodeSent: the current stream has carried the node.
	nodeSent bool

	responses atomic.Int64 // responses received, all streams
	bytes     atomic.Int64 // their serialised size
	streams   atomic.Int64 // streams opened
	nacks     atomic.Int64 // responses the proxy could not decode
	// upAt is when the current stream sent its initial requests (unix
	// nanoseconds), 0 while there is none; lastAt when the last response
	// arrived.
	upAt   atomic.Int64
	lastAt atomic.Int64
}

// typeState is what a proxy subscribes to and holds of one type.
type typeState struct {
	wildcard bool
	names    map[string]struct{} // explicit subscription
	// sorted is names in order, as requests carry them; nil until needed
	// after names changes. An Envoy-like state-of-the-world proxy names its
	// 1,000 load assignments in every ACK, and sorting them each time would
	// make the harness, not the control plane, the slow side.
	sorted []string
	held   map[string]held
	// version is the state-of-the-world version last accepted; nonce the
	// last nonce received on the current stream.
	version, nonce string
	// requested: a request for the type was sent on the current stream.
	requested bool
}

// held is a resource a proxy holds: its content, its version (the
// response's version_info in state of the world) and when that content
// arrived.
type held struct {
	d       *digest
	version string
	at      int64
	seen    uint32
}

// Shrink is a response after which a proxy held fewer resources of a type
// than before. No scenario removes a resource, so every Shrink is a fault:
// a proxy that applied it would drop clusters or listeners it still needs.
type Shrink struct {
	Proxy  string    `json:"proxy"`
	Type   string    `json:"type"`
	Before int       `json:"before"`
	After  int       `json:"after"`
	At     time.Time `json:"at"`
}

func newProxy(id int, spec ProxySpec, f *Fleet) *proxy {
	p := &proxy{id: id, spec: spec, node: spec.Info.Node(), fleet: f, dials: map[int]bool{}}
	for _, s := range spec.Services {
		p.dials[s] = true
	}
	for t := range p.types {
		p.types[t].names = map[string]struct{}{}
		p.types[t].held = map[string]held{}
	}
	switch spec.Pattern {
	case EnvoyLike:
		p.types[clusterType].wildcard = true
		p.types[listenerType].wildcard = true
	case GRPCLike:
		for _, l := range spec.Listeners {
			p.types[listenerType].names[l] = struct{}{}
		}
	}
	return p
}

// interested reports whether the proxy uses Service svc: a sidecar uses
// every Service in the mesh, a gRPC client the ones it dials.
func (p *proxy) interested(svc int) bool {
	return p.spec.Pattern == EnvoyLike || p.dials[svc]
}

// run keeps a stream open until ctx ends. grpc.WaitForReady makes a new
// stream wait for the connection, whose reconnect backoff the fleet sets,
// so a control plane that is down costs no busy loop here.
func (p *proxy) run(ctx context.Context, conn *grpc.ClientConn) {
	client := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	pause := 50 * time.Millisecond
	for ctx.Err() == nil {
		var got bool
		var err error
		if p.spec.Delta {
			got, err = p.deltaSession(ctx, client)
		} else {
			got, err = p.sotwSession(ctx, client)
		}
		p.upAt.Store(0)
		if ctx.Err() != nil {
			return
		}
		p.fleet.streamError(err)
		if got {
			pause = 50 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}

// startStream resets the per-stream state and returns the requests that
// re-establish every subscription: what a proxy sends after a reconnect,
// with the versions it holds so an up-to-date proxy is sent nothing.
func (p *proxy) startStream() []typ {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refresh()
	p.nodeSent = false
	var out []typ
	for t := range numTypes {
		ts := &p.types[t]
		ts.nonce, ts.requested = "", false
		if ts.wildcard || len(ts.names) > 0 {
			out = append(out, t)
		}
	}
	return out
}

// refresh recomputes the subscriptions that follow from what the proxy
// holds and returns the types whose subscription changed, with the names
// added and removed. p.mu must be held.
func (p *proxy) refresh() []subChange {
	var out []subChange
	set := func(t typ, want map[string]struct{}) {
		ts := &p.types[t]
		var c subChange
		for n := range want {
			if _, ok := ts.names[n]; !ok {
				c.added = append(c.added, n)
			}
		}
		for n := range ts.names {
			if _, ok := want[n]; !ok {
				c.removed = append(c.removed, n)
			}
		}
		if len(c.added) == 0 && len(c.removed) == 0 {
			return
		}
		c.t = t
		ts.names, ts.sorted = want, nil
		for _, n := range c.removed {
			delete(ts.held, n)
		}
		slices.Sort(c.added)
		slices.Sort(c.removed)
		out = append(out, c)
	}
	clusters := p.types[clusterType].held
	listeners := p.types[listenerType].held
	eds := make(map[string]struct{}, len(clusters))
	for _, h := range clusters {
		if h.d.edsName != "" {
			eds[h.d.edsName] = struct{}{}
		}
	}
	rds := make(map[string]struct{}, len(listeners))
	for _, h := range listeners {
		if h.d.routeConfig != "" {
			rds[h.d.routeConfig] = struct{}{}
		}
	}
	if p.spec.Pattern == GRPCLike {
		cds := map[string]struct{}{}
		for _, h := range p.types[routeType].held {
			for _, c := range h.d.routeClusters {
				cds[c] = struct{}{}
			}
		}
		set(routeType, rds)
		set(clusterType, cds)
		set(endpointType, eds)
		return out
	}
	set(endpointType, eds)
	set(routeType, rds)
	return out
}

// follow is refresh after a response of type t. Subscriptions follow
// clusters, listeners and routes, never load assignments, so a load
// assignment response changes none: skipping the walk over everything
// held keeps the harness's own cost per endpoint push small, as a real
// proxy's is, so it does not inflate the latencies it measures.
func (p *proxy) follow(t typ) []subChange {
	if t == endpointType {
		return nil
	}
	return p.refresh()
}

type subChange struct {
	t              typ
	added, removed []string
}

// sortedNames is the explicit subscription of a type, sorted.
func (ts *typeState) sortedNames() []string {
	if ts.sorted == nil {
		ts.sorted = slices.Sorted(maps.Keys(ts.names))
	}
	return ts.sorted
}

// count records a response's arrival and size.
func (p *proxy) count(m proto.Message, now time.Time) {
	p.responses.Add(1)
	p.bytes.Add(int64(proto.Size(m)))
	p.lastAt.Store(now.UnixNano())
}

// describe summarises the proxy's state for a report on a change it has not
// converged on.
func (p *proxy) describe() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	proto := "sotw"
	if p.spec.Delta {
		proto = "delta"
	}
	var held []string
	for t := range numTypes {
		ts := &p.types[t]
		held = append(held, fmt.Sprintf("%s %d held/%d named (version %q, nonce %q)", typeNames[t], len(ts.held), len(ts.names), ts.version, ts.nonce))
	}
	ago := func(ns int64) string {
		if ns == 0 {
			return "never"
		}
		return time.Since(time.Unix(0, ns)).Round(time.Millisecond).String() + " ago"
	}
	return fmt.Sprintf("%s (%s, %s): %d streams, stream up %s, %d responses, last %s; %s",
		p.spec.Info.ID(), p.spec.Pattern, proto, p.streams.Load(), ago(p.upAt.Load()),
		p.responses.Load(), ago(p.lastAt.Load()), strings.Join(held, "; "))
}

// shrunk records a response after which fewer resources of type t are held.
// p.mu must be held.
func (p *proxy) shrunk(t typ, before int, now time.Time) {
	if after := len(p.types[t].held); after < before {
		p.shrinks = append(p.shrinks, Shrink{Proxy: p.spec.Info.ID(), Type: typeNames[t], Before: before, After: after, At: now})
	}
}

// decodeAll digests the resources of a response; an error is what a real
// proxy would NACK.
func (p *proxy) decodeAll(t typ, payloads [][]byte) ([]*digest, error) {
	out := make([]*digest, len(payloads))
	for i, b := range payloads {
		d, err := p.fleet.intern.get(t, b)
		if err != nil {
			return nil, err
		}
		out[i] = d
	}
	return out, nil
}

// sotwSession runs one state-of-the-world stream. got reports whether any
// response arrived.
func (p *proxy) sotwSession(ctx context.Context, client discoveryv3.AggregatedDiscoveryServiceClient) (got bool, _ error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return false, err
	}
	p.streams.Add(1)
	initial := p.startStream()
	var reqs []*discoveryv3.DiscoveryRequest
	p.mu.Lock()
	for _, t := range initial {
		reqs = append(reqs, p.sotwRequest(t))
	}
	p.mu.Unlock()
	return exchange(p, stream.Send, stream.Recv, reqs, p.applySotw)
}

// streamUp marks a new stream whose initial requests are sent. Those
// requests name the versions the proxy holds (version_info, or
// initial_resource_versions), which acknowledges them to the control plane
// as an ACK would: a proxy whose stream broke between applying a response
// and ACKing it has converged once it says so on the next stream, and an
// up-to-date proxy is sent nothing more that would tell the tracker.
func (p *proxy) streamUp() {
	now := time.Now()
	p.upAt.Store(now.UnixNano())
	p.mu.Lock()
	done := p.fleet.tracker.holding(p)
	p.mu.Unlock()
	p.fleet.tracker.converged(p, done, now)
}

// sotwRequest is the state-of-the-world request for type t: the
// subscription, with the version last accepted and the nonce last received.
// The node goes as nextNode says. p.mu must be held.
func (p *proxy) sotwRequest(t typ) *discoveryv3.DiscoveryRequest {
	ts := &p.types[t]
	ts.requested = true
	req := &discoveryv3.DiscoveryRequest{
		TypeUrl:       typeURLs[t],
		VersionInfo:   ts.version,
		ResponseNonce: ts.nonce,
		ResourceNames: ts.sortedNames(),
		Node:          p.nextNode(),
	}
	return req
}

// withNode adds the node to a delta request if the proxy sends it. p.mu
// must be held.
func (p *proxy) withNode(r *discoveryv3.DeltaDiscoveryRequest) *discoveryv3.DeltaDiscoveryRequest {
	r.Node = p.nextNode()
	return r
}

// nextNode is the node the next request carries: on the first request of
// a stream for proxies sending it once (gRPC-like ones, and Envoy-like ones
// bootstrapped by fjordctl), else nil; always for the others.
// p.mu must be held.
func (p *proxy) nextNode() *corev3.Node {
	if p.nodeSent && (p.spec.NodeOnce || p.spec.Pattern == GRPCLike) {
		return nil
	}
	p.nodeSent = true
	return p.node
}

// applySotw applies a state-of-the-world response and returns the ACK (or
// NACK) followed by any subscription changes, and the pending changes the
// proxy now holds. Clusters and listeners are replaced as a whole (a
// missing one is removed); load assignments and route configurations are
// merged, since the protocol lets a server send only those that changed.
// p.mu must be held.
func (p *proxy) applySotw(resp *discoveryv3.DiscoveryResponse, now time.Time) ([]*discoveryv3.DiscoveryRequest, []*pendingChange) {
	t, ok := typeOf(resp.GetTypeUrl())
	if !ok {
		return []*discoveryv3.DiscoveryRequest{{
			TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(),
		}}, nil
	}
	ts := &p.types[t]
	payloads := make([][]byte, len(resp.GetResources()))
	for i, a := range resp.GetResources() {
		payloads[i] = a.GetValue()
	}
	digests, err := p.decodeAll(t, payloads)
	if err != nil {
		p.nacks.Add(1)
		ts.nonce = resp.GetNonce()
		nack := p.sotwRequest(t)
		nack.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		return []*discoveryv3.DiscoveryRequest{nack}, nil
	}
	before := len(ts.held)
	p.seen++
	at := now.UnixNano()
	for _, d := range digests {
		h := held{d: d, version: resp.GetVersionInfo(), at: at, seen: p.seen}
		if prev, ok := ts.held[d.name]; ok && prev.d == d {
			h.at = prev.at
		}
		ts.held[d.name] = h
	}
	if t == clusterType || t == listenerType {
		for n, h := range ts.held {
			if h.seen != p.seen {
				delete(ts.held, n)
			}
		}
	}
	p.shrunk(t, before, now)
	ts.version, ts.nonce = resp.GetVersionInfo(), resp.GetNonce()
	reqs := []*discoveryv3.DiscoveryRequest{p.sotwRequest(t)}
	for _, c := range p.follow(t) {
		if len(c.added) > 0 || p.types[c.t].requested {
			reqs = append(reqs, p.sotwRequest(c.t))
		}
	}
	return reqs, p.fleet.tracker.holding(p)
}

// deltaSession runs one incremental stream.
func (p *proxy) deltaSession(ctx context.Context, client discoveryv3.AggregatedDiscoveryServiceClient) (got bool, _ error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return false, err
	}
	p.streams.Add(1)
	initial := p.startStream()
	var reqs []*discoveryv3.DeltaDiscoveryRequest
	p.mu.Lock()
	for _, t := range initial {
		ts := &p.types[t]
		ts.requested = true
		r := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURLs[t]}
		if !ts.wildcard {
			r.ResourceNamesSubscribe = ts.sortedNames()
		}
		if len(ts.held) > 0 {
			r.InitialResourceVersions = make(map[string]string, len(ts.held))
			for n, h := range ts.held {
				r.InitialResourceVersions[n] = h.version
			}
		}
		reqs = append(reqs, p.withNode(r))
	}
	p.mu.Unlock()
	return exchange(p, stream.Send, stream.Recv, reqs, p.applyDelta)
}

// exchange is the life of one stream, either protocol: send the initial
// requests, then take each response as a real proxy would (apply it under
// the proxy's lock, send the ACKs or NACKs and follow-up subscriptions it
// yields) and record the changes it completed. got reports whether any
// response arrived.
func exchange[Req any, Resp proto.Message](p *proxy, send func(Req) error, recv func() (Resp, error),
	initial []Req, apply func(Resp, time.Time) ([]Req, []*pendingChange)) (got bool, _ error) {
	for _, r := range initial {
		if err := send(r); err != nil {
			return false, err
		}
	}
	p.streamUp()
	for {
		resp, err := recv()
		if err != nil {
			return got, err
		}
		got = true
		now := time.Now()
		p.count(resp, now)
		p.mu.Lock()
		reqs, done := apply(resp, now)
		p.mu.Unlock()
		for _, r := range reqs {
			if err := send(r); err != nil {
				return got, err
			}
		}
		p.fleet.tracker.converged(p, done, time.Now())
	}
}

// applyDelta applies an incremental response and returns the ACK (or NACK)
// followed by any subscription changes, and the pending changes the proxy
// now holds. p.mu must be held.
func (p *proxy) applyDelta(resp *discoveryv3.DeltaDiscoveryResponse, now time.Time) ([]*discoveryv3.DeltaDiscoveryRequest, []*pendingChange) {
	ack := p.withNode(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
	t, ok := typeOf(resp.GetTypeUrl())
	if !ok {
		return []*discoveryv3.DeltaDiscoveryRequest{ack}, nil
	}
	ts := &p.types[t]
	ts.nonce = resp.GetNonce()
	payloads := make([][]byte, len(resp.GetResources()))
	for i, r := range resp.GetResources() {
		payloads[i] = r.GetResource().GetValue()
	}
	digests, err := p.decodeAll(t, payloads)
	if err != nil {
		p.nacks.Add(1)
		ack.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		return []*discoveryv3.DeltaDiscoveryRequest{ack}, nil
	}
	before := len(ts.held)
	at := now.UnixNano()
	for i, r := range resp.GetResources() {
		h := held{d: digests[i], version: r.GetVersion(), at: at}
		if prev, ok := ts.held[r.GetName()]; ok && prev.d == h.d {
			h.at = prev.at
		}
		ts.held[r.GetName()] = h
	}
	for _, n := range resp.GetRemovedResources() {
		delete(ts.held, n)
	}
	p.shrunk(t, before, now)
	reqs := []*discoveryv3.DeltaDiscoveryRequest{ack}
	for _, c := range p.follow(t) {
		reqs = append(reqs, p.withNode(&discoveryv3.DeltaDiscoveryRequest{
			TypeUrl:                  typeURLs[c.t],
			ResourceNamesSubscribe:   c.added,
			ResourceNamesUnsubscribe: c.removed,
		}))
		p.types[c.t].requested = true
	}
	return reqs, p.fleet.tracker.holding(p)
}

// holds returns the resource of type t named name, if the proxy holds it.
// p.mu must be held.
func (p *proxy) holds(t typ, name string) (*digest, bool) {
	h, ok := p.types[t].held[name]
	return h.d, ok
}

// heldCounts is the number of resources held per type.
func (p *proxy) heldCounts() [numTypes]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out [numTypes]int
	for t := range numTypes {
		out[t] = len(p.types[t].held)
	}
	return out
}
