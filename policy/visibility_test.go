package policy

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/watcher/model"
)

func svc(ns, name string, exportTo ...string) Service {
	return Service{Key: model.Key{Namespace: ns, Name: name}, Ports: []Port{{Port: 80}}, ExportTo: exportTo}
}

func TestCanSee(t *testing.T) {
	tests := map[string]struct {
		ns   string
		svc  Service
		want bool
	}{
		"every namespace":           {ns: "b", svc: svc("a", "s"), want: true},
		"own namespace":             {ns: "a", svc: svc("a", "s", "a"), want: true},
		"own namespace, not listed": {ns: "a", svc: svc("a", "s", "web"), want: true},
		"listed":                    {ns: "web", svc: svc("a", "s", "a", "web"), want: true},
		"not listed":                {ns: "b", svc: svc("a", "s", "a", "web"), want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := CanSee(tc.ns, &tc.svc); got != tc.want {
				t.Errorf("CanSee(%q, %v) = %v, want %v", tc.ns, tc.svc.ExportTo, got, tc.want)
			}
		})
	}
}

func TestViewsOf(t *testing.T) {
	k := func(ns, name string) model.Key { return model.Key{Namespace: ns, Name: name} }
	tests := map[string]struct {
		services []Service
		// want maps each namespace named in Of to the restricted Services
		// its view sees; groups lists namespaces that must share a view.
		want   map[string][]model.Key
		groups [][]string
		views  int
	}{
		"nothing restricted": {
			services: []Service{svc("a", "s"), svc("b", "t")},
			want:     map[string][]model.Key{},
			views:    1,
		},
		"private to its namespace": {
			services: []Service{svc("a", "priv", "a"), svc("a", "pub"), svc("b", "t")},
			want:     map[string][]model.Key{"a": {k("a", "priv")}},
			views:    2,
		},
		"same Services, same view": {
			services: []Service{svc("a", "priv", "a", "web")},
			want:     map[string][]model.Key{"a": {k("a", "priv")}, "web": {k("a", "priv")}},
			groups:   [][]string{{"a", "web"}},
			views:    2,
		},
		"different Services, different views": {
			services: []Service{svc("a", "one", "a"), svc("a", "two", "b"), svc("c", "three", "a", "b")},
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
			v := ViewsOf(tc.services)
			got := map[string][]model.Key{}
			for ns, view := range v.Of {
				for _, s := range tc.services {
					if len(s.ExportTo) > 0 && v.Sees(view, s.Key) {
						got[ns] = append(got[ns], s.Key)
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
			// Every namespace the views do not name sees the unrestricted
			// Services only, and so does the default view.
			for _, s := range tc.services {
				if got, want := v.Sees(DefaultView, s.Key), len(s.ExportTo) == 0; got != want {
					t.Errorf("default view sees %s: %v, want %v", s.Key, got, want)
				}
				if got, want := v.Sees(v.Of["elsewhere"], s.Key), CanSee("elsewhere", &s); got != want {
					t.Errorf("an unnamed namespace sees %s: %v, want %v", s.Key, got, want)
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
	m := &Mesh{Services: []Service{svc("a", "canary", "a"), front, svc("b", "other")}}
	v := ViewsOf(m.Services)

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
	want := &Mesh{Services: []Service{wantFront, svc("b", "other")}}
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
	tests := map[string]struct {
		def  []string
		want [][]string
	}{
		"default every namespace": {def: nil, want: [][]string{nil, nil, {"a", "web"}}},
		"default own namespace":   {def: []string{model.ExportOwn}, want: [][]string{{"a"}, nil, {"a", "web"}}},
		"default named":           {def: []string{"ops", model.ExportOwn}, want: [][]string{{"a", "ops"}, nil, {"a", "web"}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := Resolve(in, Options{DefaultExportTo: tc.def})
			var got [][]string
			for _, s := range m.Services {
				got = append(got, s.ExportTo)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ExportTo (-want +got):\n%s", diff)
			}
		})
	}
}
