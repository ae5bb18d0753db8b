package controlplane

import (
	"fmt"
	"reflect"
	"slices"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

// builder turns snapshots into what the xDS cache serves. Most changes in a
// running mesh are endpoint changes (pods starting, stopping, turning
// ready), and a full build costs resolution, translation and marshalling of
// the whole mesh for every proxy kind. So when a snapshot differs from the
// last one built only in its EndpointSlices, the builder takes the endpoint
// fast path: it recomputes the endpoints of the Services those slices
// belong to, rebuilds only the resources that depend on them, and patches
// the cache. Every other change takes the full path. Both paths leave the
// cache holding exactly what a full build of the snapshot would.
//
// Proxies are served only the Services their namespace may see (see
// policy.Views): the full path translates each view's mesh for each kind
// and publishes them with which namespace is in which view, in one change
// that moves the proxies of a namespace whose view changed; the fast path
// patches only the views that see the changed Services. With no Service
// restricted there is one view, and the paths cost what they did without
// views.
//
// A builder is used by one goroutine at a time.
type builder struct {
	cache  *cache.Cache
	meshNS string
	opts   translate.Options
	// lastAccepted is passed to Resolve; see policy.Options.LastAccepted.
	lastAccepted []model.Policy

	// exportTo is policy.Options.DefaultExportTo.
	exportTo []string

	// snap and mesh are the last snapshot built and its mesh, nil when the
	// next build must take the full path (none yet, or the last one failed
	// part way, leaving the cache's kinds at different snapshots). views
	// are mesh's views, which the cache serves, and viewNames their names.
	snap      *model.Snapshot
	mesh      *policy.Mesh
	views     policy.Views
	viewNames []string
	// servers counts, per view and server listener name, the entries of
	// translate.ServerAddresses over every port of mesh the view sees that
	// call for it. The full build counts them, so that the first endpoint
	// change after it does not (at 1,000 Services × 10 endpoints counting
	// made the first flip's build 12 ms instead of 3).
	servers map[string]map[string]int
}

// buildResult is what one build did.
type buildResult struct {
	mesh  *policy.Mesh
	stats cache.Stats
	// fast says the endpoint fast path built it.
	fast bool
}

// build serves snap: the fast path if only endpoints changed since the last
// build, the full path otherwise. On error of the full path the cache is
// unchanged; on error of the fast path it may hold the new config for some
// kinds or views and the old one for others (each consistent on its own).
// Either way the next build takes the full path.
func (b *builder) build(snap *model.Snapshot) (buildResult, error) {
	if b.snap != nil && endpointsOnly(b.snap, snap) {
		res, err := b.fastBuild(snap)
		if err != nil {
			b.reset()
			return buildResult{}, err
		}
		return res, nil
	}
	mesh := policy.Resolve(snap, policy.Options{MeshNamespace: b.meshNS, LastAccepted: b.lastAccepted, DefaultExportTo: b.exportTo})
	views := policy.ViewsOf(mesh.Exports)
	names := views.Names()
	var updates []cache.ViewUpdate
	for _, view := range names {
		vm := views.Mesh(mesh, view)
		for _, kind := range node.Kinds {
			updates = append(updates, cache.ViewUpdate{Kind: kind, View: view, Resources: translate.Translate(vm, kind, b.opts)})
		}
	}
	// One publish: no proxy is ever served a mix of the old and the new
	// views, and an invalid resource changes nothing.
	stats, err := b.cache.Publish(updates, views.Of)
	if err != nil {
		b.reset()
		return buildResult{}, err
	}
	b.lastAccepted = mesh.Accepted
	b.snap, b.mesh, b.views, b.viewNames = snap, mesh, views, names
	b.servers = map[string]map[string]int{}
	for _, view := range names {
		b.servers[view] = serverCounts(mesh, views, view)
	}
	return buildResult{mesh: mesh, stats: stats}, nil
}

func (b *builder) reset() {
	b.snap, b.mesh, b.views, b.viewNames, b.servers = nil, nil, policy.Views{}, nil, nil
}

// endpointsOnly reports whether next differs from prev in its
// EndpointSlices alone. Resolution of everything but the ports' endpoints
// (policies, routes, statuses, accepted policies) reads only Services,
// Policies and Routes, so with those equal it gives what it gave for prev.
func endpointsOnly(prev, next *model.Snapshot) bool {
	return reflect.DeepEqual(prev.Services, next.Services) &&
		reflect.DeepEqual(prev.Policies, next.Policies) &&
		reflect.DeepEqual(prev.Routes, next.Routes)
}

// fastBuild serves snap, which differs from b.snap only in its
// EndpointSlices.
func (b *builder) fastBuild(snap *model.Snapshot) (buildResult, error) {
	affected := changedServices(b.snap.EndpointSlices, snap.EndpointSlices)
	mesh, ports := withEndpoints(b.mesh, snap.EndpointSlices, affected)

	// A load assignment is the same for every kind and view: built once,
	// shared (the cache only reads what it is given).
	endpoints := make([]*endpointv3.ClusterLoadAssignment, len(ports))
	for i, p := range ports {
		endpoints[i] = translate.PortLoadAssignment(p.svc, p.next)
	}
	var stats cache.Stats
	for _, view := range b.viewNames {
		vports, veps := ports, endpoints
		if len(b.views.Of) > 0 {
			vports, veps = nil, nil
			for i, p := range ports {
				if b.views.Sees(view, p.svc.Key) {
					vports, veps = append(vports, p), append(veps, endpoints[i])
				}
			}
			if len(vports) == 0 {
				continue
			}
		}
		upsertServers, removeServers := serverChanges(b.servers[view], vports)
		for _, kind := range node.Kinds {
			up := &translate.Resources{Endpoints: veps}
			var remove cache.Names
			for _, p := range vports {
				up.Clusters = append(up.Clusters, translate.PortCluster(kind, p.svc, p.next, b.opts))
			}
			if translate.HasServerListeners(kind) {
				up.Listeners = translate.ServerListeners(upsertServers, b.opts)
				remove.Listeners = removeServers
			}
			st, err := b.cache.PatchView(kind, view, up, remove)
			if err != nil {
				return buildResult{}, fmt.Errorf("kind %s: %w", kind, err)
			}
			stats.Changed, stats.Removed = stats.Changed+st.Changed, stats.Removed+st.Removed
		}
	}
	b.snap, b.mesh = snap, mesh
	return buildResult{mesh: mesh, stats: stats, fast: true}, nil
}

// changedServices are the Services whose endpoints can differ between two
// lists of EndpointSlices: the owners, before and after, of every slice
// added, removed or changed. The lists are walked side by side in the Key
// order snapshots keep them in, with no index of them built on each push;
// were they out of order, a slice would only count as removed and added,
// naming more Services than needed, never fewer.
func changedServices(prev, next []model.EndpointSlice) map[model.Key]bool {
	out := map[model.Key]bool{}
	owner := func(s *model.EndpointSlice) model.Key { return model.Key{Namespace: s.Namespace, Name: s.Service} }
	for i, j := 0, 0; i < len(prev) || j < len(next); {
		c := 0
		switch {
		case j == len(next):
			c = -1
		case i == len(prev):
			c = 1
		default:
			c = prev[i].Key.Compare(next[j].Key)
		}
		switch {
		case c < 0: // removed
			out[owner(&prev[i])] = true
			i++
		case c > 0: // added
			out[owner(&next[j])] = true
			j++
		default:
			if !prev[i].Equal(&next[j]) {
				out[owner(&prev[i])], out[owner(&next[j])] = true, true
			}
			i++
			j++
		}
	}
	return out
}

// changedPort is one port of a Service whose endpoints were recomputed.
type changedPort struct {
	svc        *policy.Service // in the new mesh
	prev, next *policy.Port
}

// withEndpoints returns a copy of mesh whose affected Services have their
// ports' endpoints resolved anew from eps, as policy.Resolve would,
// sharing everything else with mesh (which is not modified), and the ports
// it recomputed.
func withEndpoints(mesh *policy.Mesh, eps []model.EndpointSlice, affected map[model.Key]bool) (*policy.Mesh, []changedPort) {
	var owned []model.EndpointSlice
	for i := range eps {
		if affected[model.Key{Namespace: eps[i].Namespace, Name: eps[i].Service}] {
			owned = append(owned, eps[i])
		}
	}
	idx := policy.NewEndpointIndex(owned)
	next := *mesh
	next.Services = slices.Clone(mesh.Services)
	var ports []changedPort
	for i := range next.Services {
		s := &next.Services[i]
		if !affected[s.Key] {
			continue
		}
		s.Ports = slices.Clone(s.Ports)
		for j := range s.Ports {
			p := &s.Ports[j]
			p.Endpoints = idx.Endpoints(s.Key, p.Name)
			ports = append(ports, changedPort{svc: s, prev: &mesh.Services[i].Ports[j], next: p})
		}
	}
	return &next, ports
}

// serverCounts counts the server listener names the ports of mesh that
// view sees call for.
func serverCounts(mesh *policy.Mesh, views policy.Views, view string) map[string]int {
	counts := map[string]int{}
	var addrs []translate.ServerAddress
	for i := range mesh.Services {
		if !views.Sees(view, mesh.Services[i].Key) {
			continue
		}
		for j := range mesh.Services[i].Ports {
			addrs = translate.ServerAddresses(addrs[:0], mesh.Services[i].Ports[j].Endpoints)
			for _, a := range addrs {
				counts[a.Name()]++
			}
		}
	}
	return counts
}

// serverChanges updates a view's counts (see builder.servers) for the
// recomputed ports it sees and returns the server listeners that appear
// (no port called for them before) and the names of those that disappear
// (no port calls for them any more). Several Services can share an address
// and port, so a listener stays as long as any port calls for it.
func serverChanges(counts map[string]int, ports []changedPort) (appear []translate.ServerAddress, gone []string) {
	delta := map[string]int{}
	addrOf := map[string]translate.ServerAddress{}
	var addrs []translate.ServerAddress
	for _, p := range ports {
		addrs = translate.ServerAddresses(addrs[:0], p.prev.Endpoints)
		for _, a := range addrs {
			delta[a.Name()]--
		}
		addrs = translate.ServerAddresses(addrs[:0], p.next.Endpoints)
		for _, a := range addrs {
			name := a.Name()
			delta[name]++
			addrOf[name] = a
		}
	}
	for name, d := range delta {
		if d == 0 {
			continue
		}
		before := counts[name]
		after := before + d
		switch {
		case before == 0 && after > 0:
			appear = append(appear, addrOf[name])
		case before > 0 && after == 0:
			gone = append(gone, name)
		}
		if after == 0 {
			delete(counts, name)
		} else {
			counts[name] = after
		}
	}
	slices.Sort(gone)
	return appear, gone
}
