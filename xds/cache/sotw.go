package cache

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
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
	return c.open(req.GetNode(), req.GetTypeUrl(), "xds watch", func(t typ) *watch {
		return &watch{t: t, sotwReq: req, sotwCh: ch, sub: sub, recent: &c.recent}
	})
}

// open registers the watch newWatch makes for the node's proxy kind in its
// namespace's view, and answers it at once when it can. A watch for a type the cache does not
// serve is held forever, so the proxy keeps its stream.
func (c *Cache) open(n *corev3.Node, typeURL, what string, newWatch func(typ) *watch) (func(), error) {
	info, err := node.FromNode(n)
	if err != nil {
		return nil, fmt.Errorf("%s for %s: %w", what, typeURL, err)
	}
	t, ok := typeOf(typeURL)
	if !ok {
		c.log.Debug(what+" for a type that is not served; holding it", "node", n.GetId(), "type", typeURL)
		return func() {}, nil
	}
	w := newWatch(t)
	w.kind, w.ns = info.Kind, info.Namespace
	c.mu.Lock()
	cancel, send := c.watchLocked(c.viewLocked(c.viewKeyLocked(info)), w)
	c.mu.Unlock()
	if send != nil {
		send()
	}
	return cancel, nil
}

// Fetch answers a one-shot (REST or unary gRPC) request from the current
// content of the node's view. A request at the current version gets types.SkipFetchError.
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
	ks := c.viewLocked(c.viewKeyLocked(info))
	ready, ts := ks.ready, ks.types[t]
	c.mu.Unlock()
	if !ready {
		return nil, fmt.Errorf("xds fetch for %s: no configuration built yet for %s", req.GetTypeUrl(), ks.key)
	}
	names := map[string]struct{}{}
	wildcard := len(req.GetResourceNames()) == 0
	for _, n := range req.GetResourceNames() {
		if n == "*" {
			wildcard = true
		}
		names[n] = struct{}{}
	}
	sel := sotwSelect(ts, wildcard, names)
	if req.GetVersionInfo() == sel.version {
		return nil, &types.SkipFetchError{}
	}
	r := newSotwResponse(req, sel, sel.payloads())
	// A one-shot request has no later request to interpret a marker.
	r.whole = true
	return r, nil
}

// selection is what a state-of-the-world response for one set of names
// carries from one snapshot: the entries sorted by name, their payloads and
// their set version. It is read-only once built (its payloads are built
// once, on first use), so every watch subscribing to the same names shares
// it.
type selection struct {
	names   *memoNames // the subscribed names, when memoised
	list    []string   // a request's resource_names for them, see choose
	entries []*entry
	chunks  []byte // the chunk digests of version, see setVersion
	ends    []int  // where each chunk ends in entries
	version string
	marker  string // the value of its ReturnedResources entry, see sotwMarker

	// payloadList is payloads(), built on first use: a patch makes a new
	// selection of every entry of its type, which most types (the
	// listeners of proxyless gRPC proxies, requested by name) never send
	// whole, and copying 11,000 payloads would cost as much as copying
	// the entries.
	payloadOnce sync.Once
	payloadList []*anypb.Any
}

func newSelection(entries []*entry) *selection {
	v, chunks, ends := setVersion(entries)
	return &selection{entries: entries, chunks: chunks, ends: ends, version: v, marker: markerPrefix + v}
}

// payloads is the state-of-the-world form of the selection's entries, in
// their order.
func (s *selection) payloads() []*anypb.Any {
	s.payloadOnce.Do(func() { s.payloadList = payloadsOf(s.entries) })
	return s.payloadList
}

// edited is newSelection of s's entries with the edits made, which are
// sorted by compareEdits. It splices the edits into a copy of s's entries,
// and hashes again only the chunks of the version that hold an edit, up to
// where the chunks of the edited entries end where the chunks of s's end:
// after that both are cut alike (see setVersion), so every other digest is
// s's.
func (s *selection) edited(edits []edit) *selection {
	n := len(s.entries)
	for _, ed := range edits {
		switch {
		case ed.insert:
			n++
		case ed.e == nil:
			n--
		}
	}
	entries := make([]*entry, 0, n)
	last := 0
	for _, ed := range edits {
		entries = append(entries, s.entries[last:ed.at]...)
		last = ed.at
		if ed.e != nil {
			entries = append(entries, ed.e)
		}
		if !ed.insert {
			last++
		}
	}
	entries = append(entries, s.entries[last:]...)
	if n == 0 || len(s.entries) == 0 {
		return newSelection(entries)
	}
	chunks, ends := s.rechunk(entries, edits)
	v := rootVersion(chunks)
	return &selection{entries: entries, chunks: chunks, ends: ends, version: v, marker: markerPrefix + v}
}

// rechunk is the chunk digests and ends of setVersion(entries), where
// entries are s's, which are not empty, with the edits made.
func (s *selection) rechunk(entries []*entry, edits []edit) ([]byte, []int) {
	k := len(s.ends)
	// chunkOf is the chunk of s an edit belongs to: the one holding the
	// entry it replaces, removes or goes before (the last for an append).
	chunkOf := func(ed edit) int {
		c, _ := slices.BinarySearch(s.ends, ed.at+1)
		return min(c, k-1)
	}
	next := 0 // the first edit not yet accounted for
	// take accounts for the edits of chunk c and returns the shift they
	// make to the places after it.
	take := func(c int) int {
		d := 0
		for ; next < len(edits) && chunkOf(edits[next]) == c; next++ {
			switch {
			case edits[next].insert:
				d++
			case edits[next].e == nil:
				d--
			}
		}
		return d
	}
	chunks := make([]byte, 0, len(s.chunks)+2*sha256.Size)
	ends := make([]int, 0, k+2)
	shift := 0 // place in entries minus place in s.entries, at the start of chunk c
	for c := 0; c < k; {
		dirty := k
		if next < len(edits) {
			dirty = chunkOf(edits[next])
		}
		if c < dirty {
			chunks = append(chunks, s.chunks[c*sha256.Size:dirty*sha256.Size]...)
			for ; c < dirty; c++ {
				ends = append(ends, s.ends[c]+shift)
			}
			continue
		}
		pos := shift
		if c > 0 {
			pos += s.ends[c-1]
		}
		j, d := c, shift+take(c)
		if pos == len(entries) {
			// Every entry from chunk c on is removed.
			break
		}
		for {
			end := chunkEnd(entries, pos)
			sum := chunkDigest(entries[pos:end])
			chunks = append(chunks, sum[:]...)
			ends = append(ends, end)
			pos = end
			for j < k-1 && s.ends[j]+d < pos {
				j++
				d += take(j)
			}
			if s.ends[j]+d == pos {
				break
			}
		}
		c, shift = j+1, d
	}
	return chunks, ends
}

// payloadsOf is the state-of-the-world form of entries, in their order.
func payloadsOf(entries []*entry) []*anypb.Any {
	payloads := make([]*anypb.Any, len(entries))
	for i, e := range entries {
		payloads[i] = e.any
	}
	return payloads
}

// memoNames is a memoised set of subscribed names with its fingerprint. A
// watch keeps the memoNames its names matched, so the next snapshot's memo
// finds the selection for it by pointer instead of hashing and comparing a
// thousand names again for every woken proxy.
type memoNames struct {
	key uint64
	m   map[string]struct{}
}

// maxMemoised bounds the names a snapshot's memo holds in total, so clients
// with many distinct subscriptions cost memory only up to it; beyond it
// selections are computed per watch, with the same result.
const maxMemoised = 1 << 18

// nameSeed keys the fingerprints of name sets within this process.
var nameSeed = maphash.MakeSeed()

// fingerprint is a sum of the names' hashes, so it ignores the map's
// iteration order.
func fingerprint(names map[string]struct{}) uint64 {
	var key uint64
	for n := range names {
		key += maphash.String(nameSeed, n)
	}
	return key
}

// sotwSelect picks the resources a state-of-the-world response carries and
// their set version.
func sotwSelect(ts *typeSnapshot, wildcard bool, names map[string]struct{}) *selection {
	if wildcard {
		return ts.all
	}
	entries := make([]*entry, 0, min(len(names), len(ts.sorted)))
	if len(names) >= len(ts.sorted)/4 {
		// Walking the sorted set is cheaper than sorting a large pick.
		for _, e := range ts.sorted {
			if _, ok := names[e.name]; ok {
				entries = append(entries, e)
			}
		}
	} else {
		for n := range names {
			if e := ts.get(n); e != nil {
				entries = append(entries, e)
			}
		}
		sortByName(entries)
	}
	return newSelection(entries)
}

// choose is sotwSelect memoised per snapshot and set of names. Every Update
// wakes the watches on a changed name, and each then ACKs with a new watch
// against the same snapshot; with a memo, the sort and hash over a large
// subscription (an Envoy's 1,000 load assignments) happen once per snapshot
// and distinct set instead of twice per watch. Snapshots are replaced, never
// changed, so a memoised selection cannot go stale.
//
// A selection is found, cheapest first:
//   - by known, if not nil: the memoNames the watch matched in an earlier
//     snapshot (an Update's woken watches), compared by pointer;
//   - by list, the request's resource_names, which the subscription's names
//     are the set of: a client sends the same list in the same order with
//     every ACK, and comparing two lists costs far less than hashing and
//     looking up a thousand names (the ACKs after a push);
//   - by the fingerprint of names, compared name by name.
//
// choose returns the selection and the memoNames now memoised for names
// (known itself when the memo is full).
func (ts *typeSnapshot) choose(wildcard bool, names map[string]struct{}, list []string, known *memoNames) (*selection, *memoNames) {
	if wildcard || len(names) == 0 || len(ts.sorted) == 0 {
		// Nothing to save, and the shared empty snapshot stays unwritten.
		return sotwSelect(ts, wildcard, names), known
	}
	lk := listKey{n: len(list)}
	if len(list) > 0 {
		lk.first, lk.last = list[0], list[len(list)-1]
	}
	if known == nil && len(list) > 0 {
		ts.memoMu.Lock()
		for _, sel := range ts.byList[lk] {
			if slices.Equal(sel.list, list) {
				ts.memoMu.Unlock()
				return sel, sel.names
			}
		}
		ts.memoMu.Unlock()
	}
	key := uint64(0)
	if known != nil {
		key = known.key
	} else {
		key = fingerprint(names)
	}
	ts.memoMu.Lock()
	defer ts.memoMu.Unlock()
	for _, sel := range ts.selections[key] {
		if sel.names == known || sameNames(sel.names.m, names) {
			ts.indexListLocked(sel, lk, list)
			return sel, sel.names
		}
	}
	sel := sotwSelect(ts, false, names)
	if ts.memoised+len(names) > maxMemoised {
		return sel, known
	}
	if known == nil {
		known = &memoNames{key: key, m: maps.Clone(names)}
	}
	sel.names = known
	if ts.selections == nil {
		ts.selections = map[uint64][]*selection{}
	}
	ts.selections[key] = append(ts.selections[key], sel)
	ts.memoised += len(names)
	ts.indexListLocked(sel, lk, list)
	return sel, known
}

// listKey narrows the memoised selections a resource_names list can match.
type listKey struct {
	n           int
	first, last string
}

// indexListLocked lets a memoised selection be found by the request list
// its names came from, if it has none yet. ts.memoMu must be held.
func (ts *typeSnapshot) indexListLocked(sel *selection, lk listKey, list []string) {
	if sel.list != nil || len(list) == 0 {
		return
	}
	sel.list = list
	if ts.byList == nil {
		ts.byList = map[listKey][]*selection{}
	}
	ts.byList[lk] = append(ts.byList[lk], sel)
}

func sameNames(a, b map[string]struct{}) bool {
	if len(a) != len(b) {
		return false
	}
	for n := range b {
		if _, ok := a[n]; !ok {
			return false
		}
	}
	return true
}

// partialTypes are the types whose state-of-the-world responses may carry
// only what changed. The xDS protocol ("Grouping resources into responses",
// envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol) requires the
// complete state of the world only for Listener and Cluster; for other
// types a resource missing from a response is not a removal. Clients agree:
// grpc-go (v1.85, internal/xds/xdsclient/resource_types.go) sets
// AllResourcesRequiredInSotW only for Listener and Cluster, and its
// authority (internal/xds/clients/xdsclient/authority.go) treats an absent
// resource as deleted only for those; Envoy's EDS and RDS subscriptions
// update the resources a response names and keep the others. An endpoint
// flip then costs an Envoy subscribed to 1,000 load assignments one load
// assignment, not all of them.
var partialTypes = [numTypes]bool{endpointType: true, routeType: true}

// sotwRespond decides whether a state-of-the-world watch gets a response now,
// and what it carries.
//
// The request's version_info is what the client last accepted. The
// subscription's ReturnedResources records what it was last sent: the
// server stores there what each response's GetReturnedResources returns,
// which is a marker naming the version of the selection sent (see
// sotwMarker), or a map of name -> resource version when reconcile had to
// spell it out. A response is held when:
//   - it is an ACK of exactly this set's version, or
//   - the client was already sent exactly this set. This covers a NACK:
//     the client keeps its last good config and asks again with the old
//     version, and sending the rejected content again would only be
//     rejected again, in a loop, until the content changes. A marker
//     proves it by the set version alone, without the table of recent
//     selections.
//
// For the types that allow it (partialTypes) the response carries only what
// the client lacks, whenever what it holds is proven:
//   - w.current: the request acknowledged the selection's version when the
//     watch was checked, and every Update since has been checked against
//     it, so the client lacks exactly the resources in changed (the names
//     the Update that woke the watch changed). This is the endpoint flip:
//     work and bytes proportional to the change, not to the subscription.
//   - the request is an ACK (no error_detail, a nonce) of the response that
//     ReturnedResources records: its version_info is the version recorded.
//     The client then holds exactly that selection (found again in
//     c.recent, or spelled out), and lacks the resources of the current
//     selection whose version differs from it: a change that landed
//     between a response and its ACK, or names added to the subscription.
//
// Everything else carries the whole selection: a first request, a
// reconnect (a new stream knows nothing of the client but its version), a
// NACK (Envoy rejects the whole response, grpc-go only the bad resources, so
// what the client holds is unknown), a request after a shrunk subscription,
// or a recorded selection c.recent no longer holds. Either way version_info
// is the version of the whole selection and ReturnedResources records all
// of it, which is what the client holds after applying the response;
// resources that no longer exist, which state of the world cannot remove
// for these types, are left out of it.
//
// It runs under w.mu (or before the watch is registered); it reads w.sub,
// which the server changes only after cancel has returned.
func (w *watch) sotwRespond(ts *typeSnapshot, changed map[string]struct{}) cachev3.Response {
	req, sub := w.sotwReq, w.sub
	sel, ns := ts.choose(sub.IsWildcard(), sub.SubscribedResources(), req.GetResourceNames(), w.names)
	w.names = ns
	known := sub.ReturnedResources()
	if !w.reconciled {
		w.reconciled = true
		w.reconcile(known, sel)
	}
	if req.GetErrorDetail() == nil && req.GetVersionInfo() == sel.version &&
		(req.GetResponseNonce() == "" || sentExactly(known, sel)) {
		// An ACK of exactly this selection's version: the client holds it.
		// On a stream that has had responses, the record must agree: a
		// request that subscribes again to names it dropped carries the
		// version of the selection that had them, but the client no longer
		// holds them.
		w.current = true
		return nil
	}
	if w.current && changed != nil && partialTypes[w.t] {
		return w.newSotwResponse(sel, changedPayloads(ts, sub, changed))
	}
	w.current = false
	acked := partialTypes[w.t] && req.GetErrorDetail() == nil && req.GetResponseNonce() != ""
	if (len(known) > 0 || req.GetResponseNonce() != "") && sentExactly(known, sel) {
		// Sent before, perhaps rejected: a first request is answered even
		// when its selection is empty.
		return nil
	}
	if version, ok := sotwMarker(known); ok {
		if acked && version == req.GetVersionInfo() {
			if held := w.recent.get(w.t, version); held != nil {
				return w.newSotwResponse(sel, payloadsBeyond(sel, held))
			}
		}
		return w.newSotwResponse(sel, sel.payloads())
	}
	if acked && len(known) > 0 && mapVersion(known) == req.GetVersionInfo() {
		return w.newSotwResponse(sel, differingPayloads(sel, known))
	}
	return w.newSotwResponse(sel, sel.payloads())
}

// newSotwResponse answers the watch with payloads of sel, and remembers sel
// so that the marker the response records can be read back.
func (w *watch) newSotwResponse(sel *selection, payloads []*anypb.Any) *sotwResponse {
	w.recent.add(w.t, sel)
	return newSotwResponse(w.sotwReq, sel, payloads)
}

// markerPrefix starts the value of a marker entry; content versions are
// hex, so no resource version starts with it.
const markerPrefix = "\x00"

// sotwMarker reads the ReturnedResources a state-of-the-world response
// records: the marker prefix and the selection's version, under the first
// and the last name of the selection sent. A client that was sent the
// selection holds all of it, so the version says what it holds without a
// map of a thousand names per proxy and type. The server deletes the names
// a request no longer subscribes to, so the marker is lost only when a
// shrink drops both of those names (the client is then sent its whole
// selection again); reconcile handles the rest. It reports the version, or
// false for any other map (empty, or spelled out by reconcile).
func sotwMarker(known map[string]string) (string, bool) {
	if len(known) == 0 || len(known) > 2 {
		return "", false
	}
	version := ""
	for _, v := range known {
		after, ok := strings.CutPrefix(v, markerPrefix)
		if !ok || (version != "" && after != version) {
			return "", false
		}
		version = after
	}
	return version, true
}

// reconcile runs once per watch, when it is first checked: right after its
// request may have changed the subscription. The server drops the names a
// request no longer subscribes to from ReturnedResources, so that a name
// subscribed again is sent again; a marker survives that as long as one of
// its keys stays subscribed, and would then claim the dropped names. So
// when the recorded selection is not the current one and has names no
// longer subscribed, the marker is spelled out as the map the server would
// have kept: the names of the selection still subscribed, with the
// versions sent. When c.recent no longer holds the selection, the record
// is cleared: what the client holds is then unknown, and it gets the whole
// selection.
//
// known is the subscription's own map, made by GetReturnedResources for
// this stream alone; the server touches it only between watches, so
// changing it in place is safe here.
func (w *watch) reconcile(known map[string]string, sel *selection) {
	version, ok := sotwMarker(known)
	if !ok || version == sel.version || w.sub.IsWildcard() {
		return
	}
	held := w.recent.get(w.t, version)
	subscribed := w.sub.SubscribedResources()
	if held != nil && !slices.ContainsFunc(held, func(e *entry) bool {
		_, ok := subscribed[e.name]
		return !ok
	}) {
		return
	}
	clear(known)
	for _, e := range held {
		if _, ok := subscribed[e.name]; ok {
			known[e.name] = e.version
		}
	}
}

// payloadsBeyond is what a partial response to a client holding the
// selection held (sorted by name) carries: the resources of sel it lacks or
// holds another version of. Both are sorted by name, so one merge walk
// finds them.
func payloadsBeyond(sel *selection, held []*entry) []*anypb.Any {
	var payloads []*anypb.Any
	i := 0
	for _, e := range sel.entries {
		for i < len(held) && held[i].name < e.name {
			i++
		}
		if i < len(held) && held[i].name == e.name && held[i].version == e.version {
			continue
		}
		payloads = append(payloads, e.any)
	}
	return payloads
}

// differingPayloads is what a partial response to a client holding known
// carries: the resources of the selection it lacks or holds another version
// of.
func differingPayloads(sel *selection, known map[string]string) []*anypb.Any {
	var payloads []*anypb.Any
	for _, e := range sel.entries {
		if v, ok := known[e.name]; !ok || v != e.version {
			payloads = append(payloads, e.any)
		}
	}
	return payloads
}

// changedPayloads is what a partial response carries: the resources among
// changed that the subscription selects and that still exist, by name. It
// walks the smaller of the two sets, as interested does.
func changedPayloads(ts *typeSnapshot, sub cachev3.Subscription, changed map[string]struct{}) []*anypb.Any {
	wildcard := sub.IsWildcard()
	small, large := changed, sub.SubscribedResources()
	if !wildcard && len(large) < len(small) {
		small, large = large, small
	}
	var entries []*entry
	for name := range small {
		if _, ok := large[name]; !ok && !wildcard {
			continue
		}
		if e := ts.get(name); e != nil {
			entries = append(entries, e)
		}
	}
	sortByName(entries)
	return payloadsOf(entries)
}

// sentExactly reports whether ReturnedResources records that the client was
// sent exactly sel.
func sentExactly(known map[string]string, sel *selection) bool {
	if version, ok := sotwMarker(known); ok {
		return version == sel.version
	}
	return sameVersions(known, sel.entries)
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

	// sel makes the ReturnedResources map, on the stream's goroutine when
	// the server asks for it rather than while an Update answers every
	// woken watch. whole spells it out in full (Fetch), instead of the
	// marker (see sotwMarker).
	sel      *selection
	whole    bool
	once     sync.Once
	returned map[string]string
}

var _ cachev3.Response = (*sotwResponse)(nil)

// newSotwResponse answers with payloads (all of sel's, or the changed part
// of it) at sel's version; the client holds all of sel after applying it.
func newSotwResponse(req *cachev3.Request, sel *selection, payloads []*anypb.Any) *sotwResponse {
	return &sotwResponse{
		req: req,
		out: &discoveryv3.DiscoveryResponse{
			VersionInfo: sel.version,
			// Read-only: shared by every response of this selection.
			Resources: payloads,
			TypeUrl:   req.GetTypeUrl(),
		},
		sel: sel,
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

// GetReturnedResources records the selection the client holds after
// applying the response (whether it carried all of it or only the changed
// part): a marker entry naming it (see sotwMarker), or, for Fetch, each
// resource with its content version. The next request's subscription hands
// it back.
func (r *sotwResponse) GetReturnedResources() map[string]string {
	r.once.Do(func() {
		// The server deletes from this map when the subscription shrinks,
		// and reconcile may rewrite it, so every response gets its own.
		if r.whole {
			r.returned = make(map[string]string, len(r.sel.entries))
			for _, e := range r.sel.entries {
				r.returned[e.name] = e.version
			}
			return
		}
		r.returned = make(map[string]string, 2)
		if n := len(r.sel.entries); n > 0 {
			r.returned[r.sel.entries[0].name] = r.sel.marker
			r.returned[r.sel.entries[n-1].name] = r.sel.marker
		}
	})
	return r.returned
}

func (r *sotwResponse) GetContext() context.Context { return context.Background() }
