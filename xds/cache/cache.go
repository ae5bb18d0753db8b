package cache

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

// typ indexes the resource types the cache serves. Other type URLs (secrets
// until the identity work lands, runtime, ...) get watches that never fire,
// so an Envoy asking for them keeps its stream.
type typ int

const (
	clusterType typ = iota
	endpointType
	listenerType
	routeType
	numTypes
)

var typeURLs = [numTypes]string{
	clusterType:  resourcev3.ClusterType,
	endpointType: resourcev3.EndpointType,
	listenerType: resourcev3.ListenerType,
	routeType:    resourcev3.RouteType,
}

var typeNames = [numTypes]string{
	clusterType:  "cluster",
	endpointType: "endpoint",
	listenerType: "listener",
	routeType:    "route",
}

func typeOf(url string) (typ, bool) {
	for t, u := range typeURLs {
		if u == url {
			return typ(t), true
		}
	}
	return 0, false
}

// TypeName is the short name ("cluster", "endpoint", "listener", "route")
// of an xDS type URL, or "other". Metrics and logs use it as a label.
func TypeName(url string) string {
	if t, ok := typeOf(url); ok {
		return typeNames[t]
	}
	return "other"
}

// Stats says what an Update changed: resources added or modified, and
// resources removed, over all types.
type Stats struct {
	Changed, Removed int
}

// entry is one resource in its served forms. All of it is immutable once
// published, so any number of responses share the same bytes.
type entry struct {
	name    string
	version string
	any     *anypb.Any            // state-of-the-world form
	res     *discoveryv3.Resource // delta form
}

// typeSnapshot is every resource of one type for one proxy kind. Its content
// is immutable: Update replaces it as a whole, so a response built from it
// stays consistent without holding a lock. Only the selection memo grows.
type typeSnapshot struct {
	// base and overlay index the entries by name: overlay, when not nil,
	// holds what changed since base was built (a nil entry for a name
	// removed). A patch clones the small overlay instead of indexing every
	// entry again, and folds it into a new base once it has grown past
	// overlayLimit, so an endpoint flip that adds or removes one listener
	// of 11,000 touches a few dozen names, not 11,000 (see patch).
	base    map[string]*entry
	overlay map[string]*entry
	sorted  []*entry   // by name
	version string     // hash over all (name, version) pairs
	gen     string     // unique per snapshot of the cache, see deltaRespond
	all     *selection // the whole set, shared by wildcard responses

	// selections memoises state-of-the-world selections by a fingerprint of
	// the subscribed names, byList the same selections by a request's list
	// of names; memoised counts the names it holds. All are guarded by
	// memoMu (see choose), not Cache.mu, because responses are built
	// outside Cache.mu.
	memoMu     sync.Mutex
	selections map[uint64][]*selection
	byList     map[listKey][]*selection
	memoised   int
	// diffs memoises diffFrom by the older generation, also under memoMu.
	diffs map[string][]string

	recordOnce sync.Once
	recordStr  string
}

// record is the value delta clients' records name this snapshot by (see
// deltaHeld): its generation, then every resource's name and version, all
// NUL-separated. It is built once and shared by every record, so a
// snapshot a record names can be read after the history has dropped it.
func (ts *typeSnapshot) record() string {
	ts.recordOnce.Do(func() {
		n := len(ts.gen) + 1
		for _, e := range ts.sorted {
			n += len(e.name) + len(e.version) + 2
		}
		var b strings.Builder
		b.Grow(n)
		b.WriteString(ts.gen)
		for _, e := range ts.sorted {
			b.WriteByte(0)
			b.WriteString(e.name)
			b.WriteByte(0)
			b.WriteString(e.version)
		}
		ts.recordStr = b.String()
	})
	return ts.recordStr
}

var emptySnapshot = newTypeSnapshot(nil, "0")

func newTypeSnapshot(sorted []*entry, gen string) *typeSnapshot {
	return snapshotOf(indexOf(sorted), nil, newSelection(sorted), gen)
}

// indexOf maps the names of entries to them.
func indexOf(entries []*entry) map[string]*entry {
	index := make(map[string]*entry, len(entries))
	for _, e := range entries {
		index[e.name] = e
	}
	return index
}

// snapshotOf is the snapshot of the entries of all, which base and overlay
// index.
func snapshotOf(base, overlay map[string]*entry, all *selection, gen string) *typeSnapshot {
	return &typeSnapshot{base: base, overlay: overlay, sorted: all.entries, version: all.version, gen: gen, all: all}
}

// get returns the entry named name, or nil.
func (ts *typeSnapshot) get(name string) *entry {
	if e, ok := ts.overlay[name]; ok {
		return e
	}
	return ts.base[name]
}

// place returns where the entry named name is in sorted, or would be
// inserted, and whether it is there.
func (ts *typeSnapshot) place(name string) (int, bool) {
	return slices.BinarySearchFunc(ts.sorted, name, func(e *entry, name string) int {
		return strings.Compare(e.name, name)
	})
}

// overlayLimit is how many changed names a snapshot of n entries indexes
// apart from its base. Each patch copies the overlay and every limit-th
// rebuilds the base, so the cost per patch is about limit/2 + n/limit
// index writes, least near the square root of 2n: 148 names for 11,000
// listeners, 45 for 1,000 load assignments.
func overlayLimit(n int) int {
	return max(16, int(math.Sqrt(float64(2*n))))
}

// kindState is what one view of one proxy kind is served (see SetViews),
// and who is waiting for it.
type kindState struct {
	key viewKey
	// ready turns true with the first Update for the kind. Until then watches
	// are held: answering early would tell proxies that nothing exists.
	ready   bool
	types   [numTypes]*typeSnapshot
	watches [numTypes]watchSet
	// history holds recent snapshots' entries, for delta clients' records.
	// It has its own lock: responses read it outside Cache.mu.
	history [numTypes]history
}

// Cache is the xDS resource cache. One mutex guards the resource maps and
// the watch sets; the responses an Update wakes are built and sent after it
// is released (see fanOut), from immutable snapshots.
type Cache struct {
	log *slog.Logger

	// updateMu serialises Update, so the previous snapshot it diffs against
	// cannot change underneath it while mu is not held. It also guards gen.
	updateMu sync.Mutex
	gen      uint64

	mu    sync.Mutex
	views map[viewKey]*kindState
	// viewOf maps the namespaces that are not in DefaultView to their view
	// (see SetViews).
	viewOf map[string]string

	// recent turns the selection versions state-of-the-world clients are
	// recorded as holding back into resources; it has its own lock.
	recent recentSelections
}

var _ cachev3.Cache = (*Cache)(nil)

// New returns an empty cache. Watches are held until the first Update for
// their proxy kind and view.
func New(log *slog.Logger) *Cache {
	return &Cache{log: log, views: map[viewKey]*kindState{}}
}

// viewLocked returns the state of a kind's view, creating it. c.mu must be
// held.
func (c *Cache) viewLocked(k viewKey) *kindState {
	ks := c.views[k]
	if ks == nil {
		ks = &kindState{key: k}
		for t := range ks.types {
			ks.types[t] = emptySnapshot
			ks.watches[t] = watchSet{}
		}
		c.views[k] = ks
	}
	return ks
}

// marshalled is a validated resource with its bytes and content version.
type marshalled struct {
	name    string
	version string
	bytes   []byte
}

// Update is UpdateView of DefaultView: with no view set (see SetViews),
// everything served to proxies of one kind.
func (c *Cache) Update(kind node.Kind, r *translate.Resources) (Stats, error) {
	return c.UpdateView(kind, DefaultView, r)
}

// UpdateView replaces everything served to proxies of one kind in one view
// (see SetViews); a view no namespace is in yet is made ready for the
// SetViews that moves namespaces to it. Every resource is validated first;
// if any fails, nothing changes and the error names the type and resource.
// Resources whose bytes are unchanged keep their version, so only watches
// on resources that really changed (or were removed) are woken, and an
// Update with identical content wakes nobody.
func (c *Cache) UpdateView(kind node.Kind, view string, r *translate.Resources) (Stats, error) {
	return c.publish([]ViewUpdate{{Kind: kind, View: view, Resources: r}}, nil)
}

// ViewUpdate is everything one view of one proxy kind is to serve.
type ViewUpdate struct {
	Kind      node.Kind
	View      string
	Resources *translate.Resources
}

// Publish is UpdateView of every update and SetViews of of, as one change:
// every resource of every update is validated before anything changes, and
// every proxy goes from what it was served straight to what it is to be
// served. Done one by one, a namespace that moves could first be served
// its old view's new content (a Service it may see in its new view but not
// in the old one would vanish and come back, or one it may no longer see
// would show up) before being moved.
func (c *Cache) Publish(updates []ViewUpdate, of map[string]string) (Stats, error) {
	return c.publish(updates, &of)
}

// prepared is one ViewUpdate validated and serialised.
type prepared struct {
	key viewKey
	in  [numTypes][]marshalled
}

// published is what publish makes of one prepared update.
type published struct {
	next    [numTypes]*typeSnapshot
	changed [numTypes]map[string]struct{}
	stats   Stats
	first   bool
}

// logPublish logs a publish as one "xds cache updated" line, whose
// duration is the whole publish's (the load harness sums these per build),
// with each view's update at debug level when there are several.
func (c *Cache) logPublish(preps []prepared, out []published, stats Stats, notified, moved, dropped int, start time.Time) {
	if len(preps) == 1 && moved == 0 && dropped == 0 {
		c.logUpdate("xds cache updated", preps[0].key, out[0].stats, notified, out[0].first, start)
		return
	}
	level := slog.LevelDebug
	for i, p := range preps {
		c.log.Debug("xds cache view updated", "kind", p.key.kind, "view", p.key.view,
			"changed", out[i].stats.Changed, "removed", out[i].stats.Removed, "first", out[i].first)
		if out[i].first {
			level = slog.LevelInfo
		}
	}
	if stats != (Stats{}) || moved > 0 || dropped > 0 {
		level = slog.LevelInfo
	}
	if len(preps) == 0 {
		c.log.Log(context.Background(), level, "xds cache views set", "moved", moved, "dropped", dropped,
			"notified", notified, "duration", time.Since(start))
		return
	}
	c.log.Log(context.Background(), level, "xds cache updated", "updates", len(preps),
		"changed", stats.Changed, "removed", stats.Removed, "moved", moved, "dropped", dropped,
		"notified", notified, "duration", time.Since(start))
}

// publish applies updates and, if of is not nil, sets the views (see
// Publish).
func (c *Cache) publish(updates []ViewUpdate, of *map[string]string) (Stats, error) {
	start := time.Now()
	preps := make([]prepared, len(updates))
	for i, u := range updates {
		if _, err := node.ParseKind(string(u.Kind)); err != nil {
			return Stats{}, fmt.Errorf("xds cache update: %w", err)
		}
		key := viewKey{kind: u.Kind, view: u.View}
		if u.Resources == nil {
			return Stats{}, fmt.Errorf("xds cache update for %s: resources are nil", key)
		}
		for _, p := range preps[:i] {
			if p.key == key {
				return Stats{}, fmt.Errorf("xds cache update for %s: given twice", key)
			}
		}
		in, err := prepareAll(u.Resources)
		if err != nil {
			return Stats{}, fmt.Errorf("xds cache update for %s: %w", key, err)
		}
		preps[i] = prepared{key: key, in: in}
	}

	c.updateMu.Lock()
	defer c.updateMu.Unlock()

	states := make([]*kindState, len(preps))
	prevs := make([][numTypes]*typeSnapshot, len(preps))
	c.mu.Lock()
	for i, p := range preps {
		states[i] = c.viewLocked(p.key)
		prevs[i] = states[i].types
	}
	c.mu.Unlock()

	out := make([]published, len(preps))
	var stats Stats
	for i, p := range preps {
		for t := range numTypes {
			out[i].next[t], out[i].changed[t] = diff(t, prevs[i][t], p.in[t], &out[i].stats, c.nextGen)
		}
		stats.Changed += out[i].stats.Changed
		stats.Removed += out[i].stats.Removed
	}

	c.mu.Lock()
	var moved map[*watch]bool
	if of != nil {
		moved = c.moveLocked(*of)
	}
	var wake []woken
	for i, ks := range states {
		out[i].first = !ks.ready
		ks.ready = true
		wake = append(wake, ks.publishLocked(out[i].next, out[i].changed, out[i].first, moved)...)
	}
	// A moved watch is answered as if it had just been opened against its
	// new view, once that view is complete.
	for w := range moved {
		if w.home.ready {
			wake = append(wake, woken{w: w, ts: w.home.types[w.t]})
		}
	}
	dropped := 0
	if of != nil {
		dropped = c.dropUnusedLocked()
	}
	c.mu.Unlock()

	notified := c.fanOut(wake)
	c.logPublish(preps, out, stats, notified, len(moved), dropped, start)
	return stats, nil
}

// nextGen names a new snapshot (see typeSnapshot.gen). updateMu must be
// held.
func (c *Cache) nextGen() string {
	c.gen++
	return strconv.FormatUint(c.gen, 10)
}

// publishLocked makes next what the view serves and returns the watches
// that the changed names concern (every watch if first: watches held
// before the first build have never been checked), but those in skip. c.mu must be held; the
// watches must be answered with fanOut after releasing it.
func (ks *kindState) publishLocked(next [numTypes]*typeSnapshot, changed [numTypes]map[string]struct{}, first bool, skip map[*watch]bool) []woken {
	for t := range numTypes {
		if next[t] != ks.types[t] {
			ks.history[t].add(next[t])
		}
	}
	ks.types = next
	var out []woken
	for t := range numTypes {
		scope := changed[t]
		if first {
			scope = nil
		} else if len(scope) == 0 {
			continue
		}
		for _, g := range ks.watches[t] {
			if scope != nil && !g.interested(scope) {
				continue
			}
			for _, w := range g.watches {
				if !skip[w] {
					out = append(out, woken{w: w, ts: next[t], changed: scope})
				}
			}
		}
	}
	return out
}

// woken is a registered watch an Update (or SetViews) concerns, with what
// to answer it from. The view it is registered in is w.home, which only
// SetViews changes, under updateMu, which fanOut's caller holds.
type woken struct {
	w       *watch
	ts      *typeSnapshot
	changed map[string]struct{}
}

// fanOutBatch is how many woken watches make it worth another goroutine.
const fanOutBatch = 32

// fanOut answers the woken watches outside Cache.mu, sending each response
// as soon as it is built, on up to GOMAXPROCS goroutines: the first proxy
// hears of a change while the responses of the others are still being
// built. Snapshots are immutable and their memo has its own lock, so this
// needs no cache lock; each watch's own lock keeps a cancelled watch
// unanswered. Watches that were answered are unregistered afterwards, and
// the number answered is returned. The caller holds updateMu, so no other
// Update evaluates these watches meanwhile.
func (c *Cache) fanOut(woken []woken) int {
	if len(woken) == 0 {
		return 0
	}
	fired := make([]bool, len(woken))
	var next atomic.Int64
	work := func() {
		for {
			i := int(next.Add(1)) - 1
			if i >= len(woken) {
				return
			}
			fired[i] = woken[i].w.fire(woken[i].ts, woken[i].changed)
		}
	}
	workers := min(runtime.GOMAXPROCS(0), (len(woken)+fanOutBatch-1)/fanOutBatch)
	var wg sync.WaitGroup
	for range workers - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()

	n := 0
	c.mu.Lock()
	for i, wk := range woken {
		if fired[i] {
			wk.w.home.watches[wk.w.t].remove(wk.w)
			n++
		}
	}
	c.mu.Unlock()
	return n
}

func (c *Cache) logUpdate(msg string, key viewKey, stats Stats, notified int, first bool, start time.Time) {
	level := slog.LevelDebug
	if stats != (Stats{}) || first {
		level = slog.LevelInfo
	}
	ctx := context.Background()
	if !c.log.Enabled(ctx, level) {
		// Spares the endpoint fast path boxing the arguments.
		return
	}
	if key.view == DefaultView {
		// Five attributes fit in a log record without an allocation.
		c.log.Log(ctx, level, msg, "kind", key.kind,
			"changed", stats.Changed, "removed", stats.Removed, "notified", notified,
			"duration", time.Since(start))
		return
	}
	c.log.Log(ctx, level, msg, "kind", key.kind, "view", key.view,
		"changed", stats.Changed, "removed", stats.Removed, "notified", notified,
		"duration", time.Since(start))
}

// Names lists resource names by type: what Patch removes.
type Names struct {
	Clusters, Endpoints, Listeners, Routes []string
}

// Patch is PatchView of DefaultView.
func (c *Cache) Patch(kind node.Kind, upsert *translate.Resources, remove Names) (Stats, error) {
	return c.PatchView(kind, DefaultView, upsert, remove)
}

// PatchView changes part of what one kind is served in one view, for changes that touch a
// few resources of a large set (an endpoint flip changes one
// ClusterLoadAssignment of thousands): every resource in upsert is added or
// replaced, every name in remove is deleted (a name not served is
// ignored), and everything else stays as it is. Only the given resources
// are validated and marshalled. Otherwise it behaves as Update: if any
// resource fails validation nothing changes and the error names it;
// versions are content hashes, so a resource upserted with unchanged bytes
// keeps its version and wakes nobody, and only watches on resources that
// really changed are woken. The result is the cache Update would hold for
// the patched set of resources.
//
// PatchView refuses a view that has had no Update yet: a partial set must
// never be the first thing a proxy is told exists.
func (c *Cache) PatchView(kind node.Kind, view string, upsert *translate.Resources, remove Names) (Stats, error) {
	if _, err := node.ParseKind(string(kind)); err != nil {
		return Stats{}, fmt.Errorf("xds cache patch: %w", err)
	}
	key := viewKey{kind: kind, view: view}
	if upsert == nil {
		upsert = &translate.Resources{}
	}
	start := time.Now()
	in, err := prepareAll(upsert)
	if err != nil {
		return Stats{}, fmt.Errorf("xds cache patch for %s: %w", key, err)
	}
	removals := [numTypes][]string{
		clusterType:  remove.Clusters,
		endpointType: remove.Endpoints,
		listenerType: remove.Listeners,
		routeType:    remove.Routes,
	}
	for t := range numTypes {
		if len(removals[t]) == 0 {
			continue
		}
		upserted := make(map[string]struct{}, len(in[t]))
		for _, m := range in[t] {
			upserted[m.name] = struct{}{}
		}
		for _, name := range removals[t] {
			if _, ok := upserted[name]; ok {
				return Stats{}, fmt.Errorf("xds cache patch for %s: %s %q: both upserted and removed", key, typeNames[t], name)
			}
		}
	}

	c.updateMu.Lock()
	defer c.updateMu.Unlock()

	c.mu.Lock()
	ks := c.viewLocked(key)
	prev, ready := ks.types, ks.ready
	c.mu.Unlock()
	if !ready {
		return Stats{}, fmt.Errorf("xds cache patch for %s: no update yet", key)
	}

	var (
		next    [numTypes]*typeSnapshot
		changed [numTypes]map[string]struct{}
		stats   Stats
	)
	for t := range numTypes {
		next[t], changed[t] = patch(t, prev[t], in[t], removals[t], &stats, c.nextGen)
	}

	c.mu.Lock()
	woken := ks.publishLocked(next, changed, false, nil)
	c.mu.Unlock()

	notified := c.fanOut(woken)
	c.logUpdate("xds cache patched", key, stats, notified, false, start)
	return stats, nil
}

// prepareAll validates and serialises every resource of r, by type.
func prepareAll(r *translate.Resources) ([numTypes][]marshalled, error) {
	var in [numTypes][]marshalled
	var err error
	if in[clusterType], err = prepare(clusterType, r.Clusters, func(m *clusterv3.Cluster) string { return m.GetName() }); err != nil {
		return in, err
	}
	if in[endpointType], err = prepare(endpointType, r.Endpoints, func(m *endpointv3.ClusterLoadAssignment) string { return m.GetClusterName() }); err != nil {
		return in, err
	}
	if in[listenerType], err = prepare(listenerType, r.Listeners, func(m *listenerv3.Listener) string { return m.GetName() }); err != nil {
		return in, err
	}
	if in[routeType], err = prepare(routeType, r.Routes, func(m *routev3.RouteConfiguration) string { return m.GetName() }); err != nil {
		return in, err
	}
	return in, nil
}

// validated is what every Envoy resource message generated with
// protoc-gen-validate offers.
type validated interface {
	proto.Message
	ValidateAll() error
}

// prepare validates and serialises one type's resources. Serialisation is
// deterministic so equal content always yields equal bytes and version.
func prepare[M validated](t typ, list []M, name func(M) string) ([]marshalled, error) {
	out := make([]marshalled, 0, len(list))
	seen := make(map[string]struct{}, len(list))
	for i, m := range list {
		n := name(m)
		if n == "" {
			return nil, fmt.Errorf("%s at index %d: name is empty", typeNames[t], i)
		}
		if _, dup := seen[n]; dup {
			return nil, fmt.Errorf("%s %q: name appears more than once", typeNames[t], n)
		}
		seen[n] = struct{}{}
		if err := m.ValidateAll(); err != nil {
			return nil, fmt.Errorf("%s %q: %w", typeNames[t], n, err)
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("%s %q: marshal: %w", typeNames[t], n, err)
		}
		out = append(out, marshalled{name: n, version: contentVersion(b), bytes: b})
	}
	return out, nil
}

// newEntry is a resource of type t in both served forms, which share its
// bytes.
func newEntry(t typ, m marshalled) *entry {
	payload := &anypb.Any{TypeUrl: typeURLs[t], Value: m.bytes}
	return &entry{
		name:    m.name,
		version: m.version,
		any:     payload,
		res:     &discoveryv3.Resource{Name: m.name, Version: m.version, Resource: payload},
	}
}

// diff builds the next snapshot of one type, reusing the previous entry of
// every resource whose version is unchanged, and reports the names added,
// modified or removed. With no change it returns prev itself.
func diff(t typ, prev *typeSnapshot, in []marshalled, stats *Stats, gen func() string) (*typeSnapshot, map[string]struct{}) {
	changed := map[string]struct{}{}
	sorted := make([]*entry, 0, len(in))
	present := make(map[string]struct{}, len(in))
	for _, m := range in {
		present[m.name] = struct{}{}
		if e := prev.get(m.name); e != nil && e.version == m.version {
			sorted = append(sorted, e)
			continue
		}
		sorted = append(sorted, newEntry(t, m))
		changed[m.name] = struct{}{}
		stats.Changed++
	}
	for _, e := range prev.sorted {
		if _, ok := present[e.name]; !ok {
			changed[e.name] = struct{}{}
			stats.Removed++
		}
	}
	if len(changed) == 0 {
		return prev, nil
	}
	sortByName(sorted)
	return newTypeSnapshot(sorted, gen()), changed
}

// patch builds the next snapshot of one type from prev with the upserted
// resources in and the removed names gone, reusing every other entry, and
// reports the names added, modified or removed. With no change it returns
// prev itself. No name is both in in and in remove (PatchView refuses it).
//
// Whether the patch replaces entries, adds them or removes them, only the
// copy of the sorted entries, with the edits spliced in, grows with the
// type: the index is prev's base with a copied overlay (see typeSnapshot),
// only the chunks of the version around an edit are hashed again (see
// selection.edited), and payloads wait for a response that needs them.
func patch(t typ, prev *typeSnapshot, in []marshalled, remove []string, stats *Stats, gen func() string) (*typeSnapshot, map[string]struct{}) {
	changed := map[string]struct{}{}
	var edits []edit
	for _, m := range in {
		old := prev.get(m.name)
		if old != nil && old.version == m.version {
			continue
		}
		at, found := prev.place(m.name)
		edits = append(edits, edit{at: at, e: newEntry(t, m), insert: !found})
		changed[m.name] = struct{}{}
		stats.Changed++
	}
	for _, name := range remove {
		if prev.get(name) == nil {
			continue
		}
		// Not upserted, so in changed only if named twice in remove.
		if _, dup := changed[name]; !dup {
			changed[name] = struct{}{}
			at, _ := prev.place(name)
			edits = append(edits, edit{at: at})
			stats.Removed++
		}
	}
	if len(changed) == 0 {
		return prev, nil
	}
	slices.SortFunc(edits, compareEdits)
	all := prev.all.edited(edits)

	overlay := make(map[string]*entry, len(prev.overlay)+len(edits))
	maps.Copy(overlay, prev.overlay)
	for _, ed := range edits {
		if ed.e != nil {
			overlay[ed.e.name] = ed.e
			continue
		}
		name := prev.sorted[ed.at].name
		if _, inBase := prev.base[name]; inBase {
			overlay[name] = nil
		} else {
			delete(overlay, name)
		}
	}
	if len(overlay) > overlayLimit(len(all.entries)) {
		return snapshotOf(indexOf(all.entries), nil, all, gen()), changed
	}
	return snapshotOf(prev.base, overlay, all, gen()), changed
}

// edit is one change a patch makes to a sorted list of entries.
type edit struct {
	// at is the place in the list of the entry replaced or removed, or of
	// the one the new entry goes before when it is inserted.
	at     int
	e      *entry // the new entry; nil when the entry at at is removed
	insert bool
}

// compareEdits orders edits by place; inserts before the same place come
// first, by name, then the replacement or removal of the entry there.
func compareEdits(a, b edit) int {
	if c := cmp.Compare(a.at, b.at); c != 0 {
		return c
	}
	if a.insert != b.insert {
		if a.insert {
			return -1
		}
		return 1
	}
	if a.insert {
		return strings.Compare(a.e.name, b.e.name)
	}
	return 0
}

// contentVersion is a short hash of a resource's bytes: equal content, equal
// version, on every control plane replica and across restarts.
func contentVersion(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// versionChunk is how many consecutive (name, version) pairs of a sorted
// set share one digest in setVersion, on average; maxVersionChunk bounds
// it. With 64, 11,000 listeners are about 170 chunks and their root hashes
// some 5.5 kB, and a patch hashes again about 130 pairs around each edit
// (the chunk that holds an edit is a longer one, on average, than the mean).
const (
	versionChunk    = 64
	maxVersionChunk = 4 * versionChunk
)

// setVersion is the state-of-the-world version of a set of resources sorted
// by name, with the chunk digests it is made of and where each chunk ends
// in sorted (see selection.edited). It is a two-level hash: each chunk of
// (name, version) pairs is hashed with SHA-256, and the version is the
// first 8 bytes of the SHA-256 of those digests in order. It depends only
// on the pairs, so equal content has an equal version on every replica and
// across restarts, and different content a different one unless SHA-256
// collides. A client that already acknowledged it holds exactly this
// content.
//
// A chunk ends after a pair whose version endsChunk picks, or after
// maxVersionChunk pairs, so where chunks end depends on the pairs around,
// not on positions: inserting or removing a pair changes the chunk that
// holds it (and may join it to the next one or split it), and every other
// chunk keeps its digest, shifted.
func setVersion(sorted []*entry) (string, []byte, []int) {
	var v versionHasher
	for _, e := range sorted {
		v.add(e.name, e.version)
	}
	return v.sum()
}

// mapVersion is setVersion of a ReturnedResources map: the version of the
// response that produced it, if the subscription has not shrunk since.
func mapVersion(known map[string]string) string {
	var v versionHasher
	for _, name := range slices.Sorted(maps.Keys(known)) {
		v.add(name, known[name])
	}
	version, _, _ := v.sum()
	return version
}

// endsChunk reports whether a chunk of setVersion ends after a pair with
// this version, for one version in versionChunk. Versions are hex SHA-256
// prefixes (see contentVersion), but any string is mixed, eight bytes at a
// time, so the choice is as even as the versions are varied.
func endsChunk(version string) bool {
	h := uint64(len(version))
	for len(version) > 0 {
		var w uint64
		for i := range min(8, len(version)) {
			w |= uint64(version[i]) << (8 * i)
		}
		version = version[min(8, len(version)):]
		h = (h ^ w) * 0x9e3779b97f4a7c15
		h ^= h >> 32
	}
	return h%versionChunk == 0
}

// chunkEnd is where the chunk of setVersion that starts at from ends in
// sorted.
func chunkEnd(sorted []*entry, from int) int {
	for i := from; i < len(sorted); i++ {
		if i+1-from == maxVersionChunk || endsChunk(sorted[i].version) {
			return i + 1
		}
	}
	return len(sorted)
}

// chunkDigest is the digest of one chunk of setVersion.
func chunkDigest(chunk []*entry) [sha256.Size]byte {
	n := 0
	for _, e := range chunk {
		n += len(e.name) + len(e.version) + 2
	}
	buf := make([]byte, 0, n)
	for _, e := range chunk {
		buf = appendPair(buf, e.name, e.version)
	}
	return sha256.Sum256(buf)
}

// versionHasher computes setVersion from the pairs in name order. The pairs
// of a chunk are copied into one buffer and hashed at once: written one by
// one through the hash.Hash interface, every string would be copied to the
// heap first.
type versionHasher struct {
	buf     []byte
	n       int    // pairs in buf
	pairs   int    // pairs added
	digests []byte // one SHA-256 per full chunk
	ends    []int  // pairs up to the end of each full chunk
}

func (v *versionHasher) add(name, version string) {
	if v.buf == nil {
		v.buf = make([]byte, 0, 4096)
	}
	v.buf = appendPair(v.buf, name, version)
	v.n++
	v.pairs++
	if v.n == maxVersionChunk || endsChunk(version) {
		v.flush()
	}
}

func (v *versionHasher) flush() {
	sum := sha256.Sum256(v.buf)
	v.digests = append(v.digests, sum[:]...)
	v.ends = append(v.ends, v.pairs)
	v.buf, v.n = v.buf[:0], 0
}

// sum returns the version, the chunk digests and the chunk ends. An empty
// set is one empty chunk, so every set has at least one digest.
func (v *versionHasher) sum() (string, []byte, []int) {
	if v.n > 0 || len(v.digests) == 0 {
		v.flush()
	}
	return rootVersion(v.digests), v.digests, v.ends
}

func appendPair(b []byte, name, version string) []byte {
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, version...)
	return append(b, 0)
}

// rootVersion is the version of a set with these chunk digests.
func rootVersion(digests []byte) string {
	sum := sha256.Sum256(digests)
	return hex.EncodeToString(sum[:8])
}
