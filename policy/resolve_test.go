package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// TestResolveSharesNoMemory changes everything reachable from the result
// and checks the input did not change with it: the snapshot is shared by
// every consumer and must stay immutable whatever a translator does.
func TestResolveSharesNoMemory(t *testing.T) {
	for _, name := range []string{"precedence-merge", "routes-http", "routes-grpc"} {
		snap, last := loadCase(t, name)
		before := mustJSON(t, snap)
		m := Resolve(snap, Options{LastAccepted: last})
		if n := scribble(reflect.ValueOf(m)); n < 100 {
			t.Fatalf("%s: only %d values changed; the case is too small to show anything", name, n)
		}
		if after := mustJSON(t, snap); after != before {
			t.Fatalf("%s: changing the resolved mesh changed the input snapshot:\nbefore %s\nafter  %s", name, before, after)
		}
	}
}

func TestResolveMeshNamespaceOption(t *testing.T) {
	snap := &model.Snapshot{
		Services: []model.Service{
			{Key: model.Key{Namespace: "demo", Name: "echo"}, Ports: []model.ServicePort{{Name: "grpc", Port: 8080}}},
		},
		Policies: []model.Policy{
			{Key: model.Key{Namespace: "fjord-system", Name: "d"}, Generation: 1, Spec: fjordv1a1.ResiliencePolicySpec{Timeout: &fjordv1a1.Timeout{Request: ptr[fjordv1a1.Duration]("1s")}}},
			{Key: model.Key{Namespace: "mesh", Name: "d"}, Generation: 1, Spec: fjordv1a1.ResiliencePolicySpec{Timeout: &fjordv1a1.Timeout{Request: ptr[fjordv1a1.Duration]("2s")}}},
		},
	}
	cases := map[string]struct {
		opts Options
		want string
		from model.Key
	}{
		"default namespace": {opts: Options{}, want: "1s", from: model.Key{Namespace: "fjord-system", Name: "d"}},
		"custom namespace":  {opts: Options{MeshNamespace: "mesh"}, want: "2s", from: model.Key{Namespace: "mesh", Name: "d"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p := Resolve(snap, tc.opts).Services[0].Ports[0]
			if got := string(*p.Policy.Timeout.Request); got != tc.want {
				t.Errorf("timeout.request = %s, want %s", got, tc.want)
			}
			want := []FieldSource{{Path: "timeout.request", Policy: tc.from, Level: LevelMesh}}
			if d := cmp.Diff(want, p.Sources); d != "" {
				t.Errorf("sources (-want +got):\n%s", d)
			}
		})
	}
}

// TestStatusFitsTheSchema resolves a policy that only standalone mode can
// hold (no schema limits its targets) and checks its status still fits the
// status schema: at most 16 ancestors, messages within metav1.Condition's
// limit.
func TestStatusFitsTheSchema(t *testing.T) {
	var refs []fjordv1a1.TargetRef
	for i := range 1000 {
		refs = append(refs, fjordv1a1.TargetRef{Group: "ééééééééééé", Kind: "Deployment", Name: fmt.Sprintf("echo-%d", i)})
	}
	snap := &model.Snapshot{Policies: []model.Policy{{
		Key:        model.Key{Namespace: "demo", Name: "huge"},
		Generation: 1,
		Spec:       fjordv1a1.ResiliencePolicySpec{TargetRefs: refs, Timeout: &fjordv1a1.Timeout{Request: ptr[fjordv1a1.Duration]("1s")}},
	}}}
	st := Resolve(snap, Options{}).Statuses[0]
	if len(st.Ancestors) != maxTargetRefs {
		t.Fatalf("%d ancestors, want %d", len(st.Ancestors), maxTargetRefs)
	}
	for _, a := range st.Ancestors {
		msg := a.Conditions[0].Message
		if a.Conditions[0].Reason != fjordv1a1.ReasonInvalid || len(msg) > maxMessageLength || !utf8.ValidString(msg) ||
			!strings.HasPrefix(msg, "spec.targetRefs: must have at most 16 items, has 1000") || !strings.HasSuffix(msg, " ...") {
			t.Fatalf("condition %s (%d bytes) does not fit: %.200s", a.Conditions[0].Reason, len(msg), msg)
		}
	}
}

func TestTruncate(t *testing.T) {
	cases := map[string]struct {
		in   string
		n    int
		want string
	}{
		"short enough":        {in: "abc", n: 3, want: "abc"},
		"cut":                 {in: "abcdefgh", n: 7, want: "abc ..."},
		"cut before a rune":   {in: "abcéfgh", n: 7, want: "abc ..."},
		"never inside a rune": {in: "abéfghij", n: 7, want: "ab ..."},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := truncate(tc.in, tc.n); got != tc.want || len(got) > tc.n {
				t.Errorf("truncate(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
			}
		})
	}
}

// FuzzResolve feeds mutated golden inputs through Resolve and checks the
// properties every output must have, whatever the input: it is
// deterministic and order-independent, every policy gets exactly one status
// with one well-formed condition per ancestor, only valid specs are used,
// every effective policy is valid apart from combinations that only
// merging can produce, and routes resolve to well-formed statuses and
// route lists (checkRoutes).
func FuzzResolve(f *testing.F) {
	ins, err := filepath.Glob("testdata/*.in.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, in := range ins {
		b, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	reasons := []string{fjordv1a1.ReasonAccepted, fjordv1a1.ReasonInvalid, fjordv1a1.ReasonConflicted, fjordv1a1.ReasonTargetNotFound}
	f.Fuzz(func(t *testing.T, data []byte) {
		snap, last, err := decodeObjects(data)
		if err != nil || duplicateKeys(snap, last) {
			// A snapshot holds each object once by contract (the API server
			// and the file source both guarantee it); resolution need not
			// be deterministic for input that breaks it.
			return
		}
		m := Resolve(snap, Options{LastAccepted: last})
		got := mustYAML(t, m)
		if again := mustYAML(t, Resolve(snap, Options{LastAccepted: last})); again != got {
			t.Fatalf("Resolve is not deterministic:\n%s", cmp.Diff(got, again))
		}
		if rev := mustYAML(t, Resolve(reversed(snap), Options{LastAccepted: rev(last)})); rev != got {
			t.Fatalf("Resolve depends on input order:\n%s", cmp.Diff(got, rev))
		}
		if len(m.Statuses) != len(snap.Policies) {
			t.Fatalf("%d statuses for %d policies", len(m.Statuses), len(snap.Policies))
		}
		for _, st := range m.Statuses {
			if len(st.Ancestors) == 0 {
				t.Fatalf("%s: no ancestors", st.Key)
			}
			for _, a := range st.Ancestors {
				if len(a.Conditions) != 1 {
					t.Fatalf("%s: %d conditions", st.Key, len(a.Conditions))
				}
				c := a.Conditions[0]
				if c.Type != fjordv1a1.ConditionAccepted || !slices.Contains(reasons, c.Reason) || c.ObservedGeneration != st.Generation ||
					(c.Status == metav1.ConditionTrue) != (c.Reason == fjordv1a1.ReasonAccepted) || c.Message == "" {
					t.Fatalf("%s: malformed condition %+v", st.Key, c)
				}
			}
		}
		checkRoutes(t, snap, m)
		for _, p := range m.Accepted {
			if err := Validate(&p.Spec); err != nil {
				t.Fatalf("%s is in Accepted but invalid: %v", p.Key, err)
			}
		}
		for _, s := range m.Services {
			for _, p := range s.Ports {
				spec := p.Policy
				if len(spec.TargetRefs) != 0 {
					t.Fatalf("%s port %s: effective policy has targetRefs", s.Key, p.Name)
				}
				err := Validate(&spec)
				if err == nil {
					continue
				}
				for _, line := range strings.Split(err.Error(), "\n") {
					// Levels may each set one of the ejection times; proxies
					// take the larger as the cap, so the merge keeps both.
					if strings.HasPrefix(line, "spec: must set at least one") || strings.HasPrefix(line, "spec.outlierDetection.maxEjectionTime: must not be shorter") {
						continue
					}
					t.Fatalf("%s port %s: effective policy invalid: %s", s.Key, p.Name, line)
				}
			}
		}
	})
}

// scribble overwrites every string, integer and bool reachable from v and
// returns how many it changed.
func scribble(v reflect.Value) int {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return 0
		}
		return scribble(v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			return 0
		}
		n := 0
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				n += scribble(v.Field(i))
			}
		}
		return n
	case reflect.Slice, reflect.Array:
		n := 0
		for i := range v.Len() {
			n += scribble(v.Index(i))
		}
		return n
	case reflect.String:
		v.SetString(v.String() + "!")
		return 1
	case reflect.Int, reflect.Int32, reflect.Int64:
		v.SetInt(v.Int() + 1)
		return 1
	case reflect.Bool:
		v.SetBool(!v.Bool())
		return 1
	}
	return 0
}

func duplicateKeys(snap *model.Snapshot, last []model.Policy) bool {
	dup := func(keys []model.Key) bool {
		slices.SortFunc(keys, compareKeys)
		return len(slices.Compact(keys)) != len(keys)
	}
	var svc, eps, pol, acc []model.Key
	for _, s := range snap.Services {
		svc = append(svc, s.Key)
	}
	for _, s := range snap.EndpointSlices {
		eps = append(eps, s.Key)
	}
	for _, p := range snap.Policies {
		pol = append(pol, p.Key)
	}
	for _, p := range last {
		acc = append(acc, p.Key)
	}
	routes := map[model.RouteKind][]model.Key{}
	for _, r := range snap.Routes {
		routes[r.Kind] = append(routes[r.Kind], r.Key)
	}
	return dup(svc) || dup(eps) || dup(pol) || dup(acc) || dup(routes[model.KindHTTPRoute]) || dup(routes[model.KindGRPCRoute])
}

// checkRoutes checks the properties every resolved route must have: each
// route with a Service parent has a status whose parents carry Accepted and
// ResolvedRefs for the route's generation, and every port with routes ends
// with one that catches every request and sends only to Service ports that
// exist.
func checkRoutes(t *testing.T, snap *model.Snapshot, m *Mesh) {
	t.Helper()
	for _, st := range m.RouteStatuses {
		if len(st.Parents) == 0 || len(st.Parents) > maxRouteParents {
			t.Fatalf("%s %s: %d parents", st.Kind, st.Key, len(st.Parents))
		}
		for _, p := range st.Parents {
			if len(p.Conditions) != 2 || p.Conditions[0].Type != "Accepted" || p.Conditions[1].Type != "ResolvedRefs" {
				t.Fatalf("%s %s: conditions %+v", st.Kind, st.Key, p.Conditions)
			}
			for _, c := range p.Conditions {
				if c.ObservedGeneration != st.Generation || c.Reason == "" || c.Message == "" || len(c.Message) > maxMessageLength {
					t.Fatalf("%s %s: malformed condition %+v", st.Kind, st.Key, c)
				}
			}
		}
	}
	ports := map[portKey]bool{}
	for _, s := range snap.Services {
		for _, p := range s.Ports {
			ports[portKey{s.Key, p.Port}] = true
		}
	}
	for _, s := range m.Services {
		for _, p := range s.Ports {
			if len(p.Routes) == 0 {
				continue
			}
			if last := p.Routes[len(p.Routes)-1].Match; !last.CatchAll() {
				t.Fatalf("%s port %d: the last route does not catch every request: %+v", s.Key, p.Port, last)
			}
			for _, rt := range p.Routes {
				if len(rt.Backends) == 0 && rt.DirectStatus == 0 && rt.Redirect == nil {
					t.Fatalf("%s port %d: route %+v does nothing", s.Key, p.Port, rt.From)
				}
				for _, b := range rt.Backends {
					if !ports[portKey{b.Service, b.Port}] || b.Weight <= 0 {
						t.Fatalf("%s port %d: route %+v sends to %s:%d weight %d", s.Key, p.Port, rt.From, b.Service, b.Port, b.Weight)
					}
				}
			}
		}
	}
}

func mustYAML(t testing.TB, v any) string {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func loadCase(t testing.TB, name string) (*model.Snapshot, []model.Policy) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name+".in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	snap, last, err := decodeObjects(data)
	if err != nil {
		t.Fatal(err)
	}
	return snap, last
}

// BenchmarkResolve resolves a mesh of the size the scale work targets:
// 1,000 Services with two ports and 10 endpoints each, a mesh default, a
// default in each of 10 namespaces, and 200 Service and 200 port policies.
func BenchmarkResolve(b *testing.B) {
	snap := bigSnapshot(1000, 10)
	b.ReportAllocs()
	for b.Loop() {
		Resolve(snap, Options{})
	}
}

func bigSnapshot(services, endpoints int) *model.Snapshot {
	snap := &model.Snapshot{}
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	spec := fjordv1a1.ResiliencePolicySpec{
		OutlierDetection: &fjordv1a1.OutlierDetection{
			Interval:          ptr[fjordv1a1.Duration]("1s"),
			FailurePercentage: &fjordv1a1.FailurePercentage{Threshold: ptr[int32](60)},
		},
		Retry: &fjordv1a1.Retry{Attempts: ptr[int32](2), Backoff: &fjordv1a1.Backoff{BaseInterval: ptr[fjordv1a1.Duration]("25ms")}},
	}
	addPolicy := func(ns, name string, refs ...fjordv1a1.TargetRef) {
		s := *spec.DeepCopy()
		s.TargetRefs = refs
		snap.Policies = append(snap.Policies, model.Policy{Key: model.Key{Namespace: ns, Name: name}, Generation: 1, CreationTimestamp: created, Spec: s})
	}
	addPolicy(DefaultMeshNamespace, "mesh-default")
	for i := range services {
		ns := fmt.Sprintf("ns-%d", i%10)
		name := fmt.Sprintf("svc-%d", i)
		key := model.Key{Namespace: ns, Name: name}
		snap.Services = append(snap.Services, model.Service{Key: key, Ports: []model.ServicePort{{Name: "grpc", Port: 8080}, {Name: "http", Port: 8081}}})
		slice := model.EndpointSlice{Key: model.Key{Namespace: ns, Name: name + "-abc"}, Service: name,
			Ports: []model.EndpointPort{{Name: "grpc", Port: 9080}, {Name: "http", Port: 9081}}}
		for e := range endpoints {
			slice.Endpoints = append(slice.Endpoints, model.Endpoint{Address: fmt.Sprintf("10.%d.%d.%d", i/250, i%250, e+1), Ready: true})
		}
		snap.EndpointSlices = append(snap.EndpointSlices, slice)
		switch i % 5 {
		case 0:
			addPolicy(ns, name, fjordv1a1.TargetRef{Kind: "Service", Name: name})
		case 1:
			addPolicy(ns, name, fjordv1a1.TargetRef{Kind: "Service", Name: name, SectionName: ptr("grpc")})
		}
		if i < 10 {
			addPolicy(ns, "default")
		}
	}
	snap.Sort()
	return snap
}
