package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"

	"github.com/fjordmesh/fjord/watcher/model"
)

// DefaultView is the view of every namespace that may see no restricted
// Service (one with an Export, not visible to every namespace): the
// namespaces Views does not name, and any namespace the control plane has
// never heard of.
const DefaultView = ""

// CanSee is the visibility rule, Istio's exportTo: a proxy in namespace ns
// may see a Service when it is in ns, or exported to every namespace (it
// has no Export) or to ns. e is the Service's Export, nil for none. A proxy
// is sent only the Services it may see, with their policies and routes.
func CanSee(ns string, svc model.Key, e *Export) bool {
	return e == nil || svc.Namespace == ns || slices.Contains(e.To, ns)
}

// Views groups namespaces by what they may see, so that the mesh is
// translated once per group rather than once per namespace: namespaces
// that may see the same restricted Services share a view, and every
// namespace that may see none shares DefaultView. A mesh with no
// restricted Service has DefaultView alone, and then costs nothing more
// than before visibility existed. The zero Views is that.
type Views struct {
	// Of maps every namespace that may see a restricted Service to its
	// view; every other namespace is in DefaultView.
	Of map[string]string
	// sees holds, per view other than DefaultView, the restricted
	// Services it may see; restricted holds every restricted Service.
	sees       map[string]map[model.Key]bool
	restricted map[model.Key]bool
}

// ViewsOf computes the views of a resolved mesh from its Exports (sorted
// by key). A view's name is a hash of the restricted Services it may see,
// so a namespace keeps its view, and its proxies their stream's view,
// across builds as long as what it may see does not change.
func ViewsOf(exports []Export) Views {
	var v Views
	visible := map[string][]model.Key{}
	for _, e := range exports {
		if v.restricted == nil {
			v.restricted = map[model.Key]bool{}
		}
		v.restricted[e.Service] = true
		visible[e.Service.Namespace] = append(visible[e.Service.Namespace], e.Service)
		for _, ns := range e.To {
			if ns != e.Service.Namespace {
				visible[ns] = append(visible[ns], e.Service)
			}
		}
	}
	if len(visible) == 0 {
		return v
	}
	v.Of = make(map[string]string, len(visible))
	v.sees = map[string]map[model.Key]bool{}
	for ns, keys := range visible {
		// Exports are sorted by key, so keys are too.
		name := viewName(keys)
		v.Of[ns] = name
		if v.sees[name] == nil {
			set := make(map[model.Key]bool, len(keys))
			for _, k := range keys {
				set[k] = true
			}
			v.sees[name] = set
		}
	}
	return v
}

// viewName names the view that may see exactly keys, sorted.
func viewName(keys []model.Key) string {
	h := sha256.New()
	for _, k := range keys {
		h.Write([]byte(k.Namespace))
		h.Write([]byte{0})
		h.Write([]byte(k.Name))
		h.Write([]byte{0})
	}
	return "v" + hex.EncodeToString(h.Sum(nil)[:8])
}

// Names lists the views, DefaultView first, then sorted.
func (v Views) Names() []string {
	out := make([]string, 0, len(v.sees)+1)
	out = append(out, DefaultView)
	for name := range v.sees {
		out = append(out, name)
	}
	slices.Sort(out[1:])
	return out
}

// Sees reports whether the proxies of view may see the Service named key.
func (v Views) Sees(view string, key model.Key) bool {
	return !v.restricted[key] || v.sees[view][key]
}

// Mesh is what the proxies of view are served: m without the Services they
// may not see, and without the route backends and mirrors that lead to
// such a Service. For these proxies a backend they may not see is an
// unresolved backend, as docs/routes.md describes: its share goes to the
// rule's other backends, and a rule left with none answers 500. Statuses
// and Exports are m's: a route's status speaks for the whole mesh. m is not modified;
// what the view does not change is shared with it, and with no restricted
// Service m itself is returned.
func (v Views) Mesh(m *Mesh, view string) *Mesh {
	if len(v.restricted) == 0 {
		return m
	}
	hidden := func(k model.Key) bool { return !v.Sees(view, k) }
	out := *m
	out.Services = make([]Service, 0, len(m.Services))
	for i := range m.Services {
		s := m.Services[i]
		if hidden(s.Key) {
			continue
		}
		cloned := false
		for j := range s.Ports {
			routes, changed := routesWithout(s.Ports[j].Routes, hidden)
			if !changed {
				continue
			}
			if !cloned {
				s.Ports, cloned = slices.Clone(s.Ports), true
			}
			s.Ports[j].Routes = routes
		}
		out.Services = append(out.Services, s)
	}
	return &out
}

// routesWithout is routes without the backends and mirrors to hidden
// Services, and whether that changed anything (if not, routes itself).
func routesWithout(routes []Route, hidden func(model.Key) bool) ([]Route, bool) {
	touches := func(r *Route) bool {
		return slices.ContainsFunc(r.Backends, func(b Backend) bool { return hidden(b.Service) }) ||
			slices.ContainsFunc(r.Mirrors, func(m Mirror) bool { return hidden(m.Service) })
	}
	if !slices.ContainsFunc(routes, func(r Route) bool { return touches(&r) }) {
		return routes, false
	}
	out := slices.Clone(routes)
	for i := range out {
		r := &out[i]
		if !touches(r) {
			continue
		}
		had := len(r.Backends)
		r.Backends = slices.DeleteFunc(slices.Clone(r.Backends), func(b Backend) bool { return hidden(b.Service) })
		r.Mirrors = slices.DeleteFunc(slices.Clone(r.Mirrors), func(m Mirror) bool { return hidden(m.Service) })
		if len(r.Mirrors) == 0 {
			r.Mirrors = nil
		}
		if had > 0 && len(r.Backends) == 0 {
			// Gateway API: a rule none of whose backends is valid answers
			// 500.
			r.Backends, r.DirectStatus = nil, 500
		}
	}
	return out, true
}
