package load

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/watcher"
	"github.com/fjordmesh/fjord/watcher/model"
)

// decodeDir reads a generated directory the way the file source does.
func decodeDir(t *testing.T, dir string) *watcher.Objects {
	t.Helper()
	all := &watcher.Objects{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") {
			t.Errorf("temporary file left behind: %s", p)
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		objs, err := watcher.Decode(p, data, time.Time{})
		if err != nil {
			t.Errorf("generated file does not decode: %v", err)
			return nil
		}
		all.Services = append(all.Services, objs.Services...)
		all.EndpointSlices = append(all.EndpointSlices, objs.EndpointSlices...)
		all.Policies = append(all.Policies, objs.Policies...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return all
}

func TestGenerateMesh(t *testing.T) {
	dir := t.TempDir()
	m, err := GenerateMesh(dir, MeshSpec{Services: 12, Endpoints: 4, Namespaces: 3, PolicyEvery: 5})
	if err != nil {
		t.Fatal(err)
	}
	objs := decodeDir(t, dir)
	// 12 Services; policies: services 0, 5, 10, three namespace defaults,
	// the mesh default.
	if len(objs.Services) != 12 || len(objs.EndpointSlices) != 12 || len(objs.Policies) != 3+3+1 {
		t.Fatalf("decoded %d services, %d slices, %d policies; want 12, 12, 7",
			len(objs.Services), len(objs.EndpointSlices), len(objs.Policies))
	}
	seen := map[string]bool{}
	for _, s := range objs.EndpointSlices {
		if len(s.Endpoints) != 4 {
			t.Errorf("slice %s has %d endpoints, want 4", s.Key, len(s.Endpoints))
		}
		for _, e := range s.Endpoints {
			a := netip.MustParseAddr(e.Address)
			if !netip.MustParsePrefix("127.0.0.0/8").Contains(a) || seen[e.Address] {
				t.Errorf("address %s: want unique addresses in 127.0.0.0/8", e.Address)
			}
			seen[e.Address] = true
		}
	}
	for _, p := range objs.Policies {
		if err := policy.Validate(&p.Spec); err != nil {
			t.Errorf("policy %s is invalid: %v", p.Key, err)
		}
	}
	if _, err := GenerateMesh(dir, MeshSpec{Services: 1, Endpoints: 1}); err == nil {
		t.Error("GenerateMesh into a non-empty directory succeeded")
	}
	if got := m.Services(); got != 12 {
		t.Errorf("Services() = %d, want 12", got)
	}
}

func TestFlipEndpoint(t *testing.T) {
	dir := t.TempDir()
	m, err := GenerateMesh(dir, MeshSpec{Services: 2, Endpoints: 3})
	if err != nil {
		t.Fatal(err)
	}
	addrs := func() []string {
		var out []string
		for _, s := range decodeDir(t, dir).EndpointSlices {
			if s.Service == "svc-00001" {
				for _, e := range s.Endpoints {
					out = append(out, e.Address)
				}
			}
		}
		slices.Sort(out)
		return out
	}
	all := addrs()
	flipped := m.services[1].addrs[1]
	without := slices.DeleteFunc(slices.Clone(all), func(a string) bool { return a == flipped })
	for i, want := range [][]string{without, all} {
		before := addrs()
		c := m.FlipEndpoint(1, 1)
		if diff := cmp.Diff(before, addrs()); diff != "" {
			t.Fatalf("flip %d changed the file before write (-before +after):\n%s", i, diff)
		}
		if err := c.write(); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, addrs()); diff != "" {
			t.Errorf("flip %d (%s): addresses (-want +got):\n%s", i, c.What, diff)
		}
		ep := c.probe.(*endpointProbe)
		if ep.addr != flipped || ep.present != (i == 1) || ep.svc != 1 {
			t.Errorf("flip %d: probe %+v, want address %s present=%v", i, ep, flipped, i == 1)
		}
	}
}

func TestSetLimit(t *testing.T) {
	tests := map[string]struct {
		scope Scope
		svc   int
		field limit
		want  []int // affected services
		key   model.Key
	}{
		"service":   {scope: ScopeService, svc: 3, field: maxRequests, want: []int{3}, key: model.Key{Namespace: "ns-001", Name: "svc-00003"}},
		"namespace": {scope: ScopeNamespace, svc: 3, field: maxPendingRequests, want: []int{1, 3, 5}, key: model.Key{Namespace: "ns-001", Name: "namespace-default"}},
		"mesh":      {scope: ScopeMesh, svc: 3, field: maxConnections, want: []int{0, 1, 2, 3, 4, 5}, key: model.Key{Namespace: "fjord-system", Name: "mesh-default"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			m, err := GenerateMesh(dir, MeshSpec{Services: 6, Endpoints: 1, Namespaces: 2})
			if err != nil {
				t.Fatal(err)
			}
			c, err := m.SetLimit(tc.scope, tc.svc)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.write(); err != nil {
				t.Fatal(err)
			}
			p := c.probe.(*limitProbe)
			var got []int
			for svc := range p.clusters {
				got = append(got, svc)
			}
			slices.Sort(got)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("affected services (-want +got):\n%s", diff)
			}
			if p.field != tc.field || p.value != firstLimit+1 {
				t.Errorf("probe field %d value %d, want %d %d", p.field, p.value, tc.field, firstLimit+1)
			}
			var found bool
			for _, pol := range decodeDir(t, dir).Policies {
				if pol.Key != tc.key {
					continue
				}
				found = true
				cp := pol.Spec.ConnectionPool
				got := map[limit]*int32{maxConnections: cp.MaxConnections, maxPendingRequests: cp.MaxPendingRequests, maxRequests: cp.MaxRequests}[tc.field]
				if got == nil || *got != firstLimit+1 {
					t.Errorf("policy %s: field %d = %v, want %d", pol.Key, tc.field, got, firstLimit+1)
				}
			}
			if !found {
				t.Errorf("no policy %s written", tc.key)
			}
		})
	}
}

func TestAddService(t *testing.T) {
	dir := t.TempDir()
	m, err := GenerateMesh(dir, MeshSpec{Services: 2, Endpoints: 2})
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.AddService()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.write(); err != nil {
		t.Fatal(err)
	}
	objs := decodeDir(t, dir)
	if len(objs.Services) != 3 || m.Services() != 3 {
		t.Fatalf("%d services decoded, %d in the mesh; want 3", len(objs.Services), m.Services())
	}
	p := c.probe.(*newServiceProbe)
	if p.svc != 2 || len(p.addrs) != 2 {
		t.Errorf("probe %+v, want service 2 with 2 addresses", p)
	}
}

// TestPlanProxiesDeltaShares: without a gRPC share every kind follows
// DeltaFraction; with one, gRPC-like proxies follow it instead.
func TestPlanProxiesDeltaShares(t *testing.T) {
	m, err := GenerateMesh(t.TempDir(), MeshSpec{Services: 10, Endpoints: 2, PolicyEvery: 0})
	if err != nil {
		t.Fatal(err)
	}
	count := func(spec FleetSpec) map[Pattern][2]int {
		out := map[Pattern][2]int{}
		for _, ps := range PlanProxies(spec, m) {
			c := out[ps.Pattern]
			if ps.Delta {
				c[1]++
			} else {
				c[0]++
			}
			out[ps.Pattern] = c
		}
		return out
	}
	half := count(FleetSpec{Proxies: 40, EnvoyFraction: 0.5, DeltaFraction: 0.5, GRPCServices: 3, Seed: 1})
	if half[EnvoyLike] != [2]int{10, 10} || half[GRPCLike] != [2]int{10, 10} {
		t.Errorf("half delta: %v, want 10 sotw and 10 delta of each kind", half)
	}
	boot := count(FleetSpec{Proxies: 40, EnvoyFraction: 0.5, DeltaFraction: 1, GRPCDeltaFraction: new(float64), GRPCServices: 3, Seed: 1})
	if boot[EnvoyLike] != [2]int{0, 20} || boot[GRPCLike] != [2]int{20, 0} {
		t.Errorf("bootstrapped fleet: %v, want Envoy-like all delta and gRPC-like all state of the world", boot)
	}
	if got := (FleetSpec{DeltaFraction: 1, GRPCDeltaFraction: new(float64)}).DeltaShare(); got != "Envoy-like 100%, gRPC-like 0%" {
		t.Errorf("DeltaShare = %q", got)
	}
}

// TestBootstrappedFleetSendsNodeOnce: the matrix's bootstrapped runs, and
// only they, model fjordctl bootstrap's Envoys, which send their node once
// per stream, and every Envoy-like proxy of such a fleet is planned so.
func TestBootstrappedFleetSendsNodeOnce(t *testing.T) {
	bootstrapped := 0
	for _, matrix := range []string{"smoke", "reduced", "full"} {
		runs, err := Matrix(matrix)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range runs {
			want := strings.Contains(r.Name, "bootstrapped")
			if want {
				bootstrapped++
			}
			if r.Fleet.NodeOnce != want {
				t.Errorf("%s: NodeOnce = %v, want %v", r.Name, r.Fleet.NodeOnce, want)
			}
		}
	}
	if bootstrapped == 0 {
		t.Fatal("no bootstrapped run in any matrix")
	}
	m, err := GenerateMesh(t.TempDir(), MeshSpec{Services: 10, Endpoints: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, once := range []bool{false, true} {
		for _, ps := range PlanProxies(FleetSpec{Proxies: 10, EnvoyFraction: 0.5, DeltaFraction: 1, NodeOnce: once, GRPCServices: 1, Seed: 1}, m) {
			if ps.NodeOnce != once {
				t.Errorf("fleet NodeOnce %v planned a %s proxy with NodeOnce %v", once, ps.Pattern, ps.NodeOnce)
			}
		}
	}
}
