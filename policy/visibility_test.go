package policy

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/watcher/model"
)

func svc(ns, name string) Service {
	return Service{Key: model.Key{Namespace: ns, Name: name}, Ports: []Port{{Port: 80}}}
}

// export is the Export of Service ns/name to the namespaces to; nil (every
// namespace) without any.
func export(ns, name string, to ...string) *Export {
	if len(to) == 0 {
		return nil
	}
	return &Export{Service: model.Key{Namespace: ns, Name: name}, To: to}
}

// exportsOf lists the Exports that are not nil.
func exportsOf(es ...*Export) []Export {
	var out []Export
	for _, e := range es {
		if e != nil {
			out = append(out, *e)
		}
	}
	return out
}

func TestCanSee(t *testing.T) {
	s := model.Key{Namespace: "a", Name: "s"}
	tests := map[string]struct {
		ns   string
		e    *Export
		want bool
	}{
		"every namespace":           {ns: "b", e: nil, want: true},
		"own namespace":             {ns: "a", e: export("a", "s", "a"), want: true},
		"own namespace, not listed": {ns: "a", e: export("a", "s", "web"), want: true},
		"listed":                    {ns: "web", e: export("a", "s", "a", "web"), want: true},
		"not listed":                {ns: "b", e: export("a", "s", "a", "web"), want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := CanSee(tc.ns, s, tc.e); got != tc.want {
				t.Errorf("CanSee(%q, %+v) = %v, want %v", tc.ns, tc.e, got, tc.want)
			}
		})
	}
}

func TestViewsOf(t *testing.T) {
	k := func(ns, name string) model.Key { return model.Key{Namespace: ns, Name: name} }
	tests := map[string]struct {
		services []*Export // one per Service, nil for every namespace
		// want maps each namespace named in Of to the restricted Services
		// its view sees; groups lists namespaces that must share a view.
		want   map[string][]model.Key
		groups [][]string
		views  int
	}{
		"nothing restricted": {
			services: []*Export{nil, nil},
			want:     map[string][]model.Key{},
			views:    1,
		},
		"private to its namespace": {
			services: []*Export{export("a", "priv", "a"), nil, nil},
			want:     map[string][]model.Key{"a": {k("a", "priv")}},
			views:    2,
		},
		"same Services, same view": {
			services: []*Export{export("a", "priv", "a", "web")},
			want:     map[string][]model.Key{"a": {k("a", "priv")}, "web": {k("a", "priv")}},
			groups:   [][]string{{"a", "web"}},
			views:    2,
		},
		"different Services, different views": {
			services: []*Export{export("a", "one", "a"), export("a", "two", "b"), export("c", "three", "a", "b")},
			want: map[string][]model.Key{
				"a": {k("a", "one"), k("a", "two"), k("c", "three")},
				"b": {k("a", "two"), k("c", "three")},
				"c": {k("c", "three")},
			},
			views: 4,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			exports := exportsOf(tc.services...)
			v := ViewsOf(exports)
			got := map[string][]model.Key{}
			for ns, view := range v.Of {
				for _, e := range exports {
					if v.Sees(view, e.Service) {
						got[ns] = append(got[ns], e.Service)
					}
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("restricted Services seen per namespace (-want +got):\n%s", diff)
			}
			for _, g := range tc.groups {
				for _, ns := range g[1:] {
					if v.Of[ns] != v.Of[g[0]] {
						t.Errorf("namespaces %s and %s are in views %q and %q, want one", g[0], ns, v.Of[g[0]], v.Of[ns])
					}
				}
			}
			if n := len(v.Names()); n != tc.views || v.Names()[0] != DefaultView {
				t.Errorf("views %q, want %d starting with the default view", v.Names(), tc.views)
			}
			// The default view, and every namespace the views do not
			// name, sees no restricted Service; every namespace sees what
			// CanSee says.
			for _, e := range exports {
				if v.Sees(DefaultView, e.Service) || v.Sees(v.Of["elsewhere"], e.Service) {
					t.Errorf("the default view sees restricted %s", e.Service)
				}
				for _, ns := range []string{"a", "b", "c", "web", "elsewhere"} {
					if got, want := v.Sees(v.Of[ns], e.Service), CanSee(ns, e.Service, &e); got != want {
						t.Errorf("namespace %s's view sees %s: %v, CanSee says %v", ns, e.Service, got, want)
					}
				}
			}
		})
	}
}

func TestViewsMesh(t *testing.T) {
	front := svc("a", "front")
	front.Ports[0].Routes = []Route{
		{
			From:     &RouteSource{Key: model.Key{Namespace: "a", Name: "split"}},
			Backends: []Backend{{Service: model.Key{Namespace: "a", Name: "front"}, Port: 80, Weight: 80}, {Service: model.Key{Namespace: "a", Name: "canary"}, Port: 80, Weight: 20}},
			Mirrors:  []Mirror{{Service: model.Key{Namespace: "a", Name: "canary"}, Port: 80, Numerator: 1, Denominator: 2}},
		},
		{
			From:     &RouteSource{Key: model.Key{Namespace: "a", Name: "only-canary"}},
			Backends: []Backend{{Service: model.Key{Namespace: "a", Name: "canary"}, Port: 80, Weight: 1}},
		},
		{Backends: []Backend{{Service: model.Key{Namespace: "a", Name: "front"}, Port: 80, Weight: 1}}},
	}
	m := &Mesh{Services: []Service{svc("a", "canary"), front, svc("b", "other")}, Exports: exportsOf(export("a", "canary", "a"))}
	v := ViewsOf(m.Exports)

	if got := v.Mesh(m, v.Of["a"]); !cmp.Equal(got, m) {
		t.Errorf("namespace a sees everything, got a different mesh:\n%s", cmp.Diff(m, got))
	}
	got := v.Mesh(m, v.Of["b"])
	wantFront := svc("a", "front")
	wantFront.Ports[0].Routes = []Route{
		{
			From:     &RouteSource{Key: model.Key{Namespace: "a", Name: "split"}},
			Backends: []Backend{{Service: model.Key{Namespace: "a", Name: "front"}, Port: 80, Weight: 80}},
		},
		{From: &RouteSource{Key: model.Key{Namespace: "a", Name: "only-canary"}}, DirectStatus: 500},
		{Backends: []Backend{{Service: model.Key{Namespace: "a", Name: "front"}, Port: 80, Weight: 1}}},
	}
	want := &Mesh{Services: []Service{wantFront, svc("b", "other")}, Exports: m.Exports}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("namespace b's mesh (-want +got):\n%s", diff)
	}
	if len(m.Services[1].Ports[0].Routes[0].Backends) != 2 || m.Services[1].Ports[0].Routes[1].DirectStatus != 0 {
		t.Errorf("Mesh modified its input: %+v", m.Services[1].Ports[0].Routes)
	}

	open := &Mesh{Services: []Service{svc("a", "s")}}
	if got := (Views{}).Mesh(open, DefaultView); got != open {
		t.Error("with nothing restricted, Mesh copied the mesh")
	}
}

func TestResolveExportTo(t *testing.T) {
	in := &model.Snapshot{Services: []model.Service{
		{Key: model.Key{Namespace: "a", Name: "absent"}, Ports: []model.ServicePort{{Port: 80}}},
		{Key: model.Key{Namespace: "a", Name: "everyone"}, Ports: []model.ServicePort{{Port: 80}}, ExportTo: []string{model.ExportAll}},
		{Key: model.Key{Namespace: "a", Name: "listed"}, Ports: []model.ServicePort{{Port: 80}}, ExportTo: []string{"a", "web"}},
	}}
	absent, listed := model.Key{Namespace: "a", Name: "absent"}, model.Key{Namespace: "a", Name: "listed"}
	tests := map[string]struct {
		def  []string
		want []Export
	}{
		"default every namespace": {def: nil, want: []Export{{listed, []string{"a", "web"}}}},
		"default own namespace":   {def: []string{model.ExportOwn}, want: []Export{{absent, []string{"a"}}, {listed, []string{"a", "web"}}}},
		"default named":           {def: []string{"ops", model.ExportOwn}, want: []Export{{absent, []string{"a", "ops"}}, {listed, []string{"a", "web"}}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := Resolve(in, Options{DefaultExportTo: tc.def})
			if diff := cmp.Diff(tc.want, m.Exports); diff != "" {
				t.Errorf("Exports (-want +got):\n%s", diff)
			}
		})
	}
}
