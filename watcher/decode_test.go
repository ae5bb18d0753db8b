package watcher

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/utils/ptr"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

var firstSeen = time.Date(2026, 3, 4, 5, 6, 7, 890, time.UTC)

func TestDecodeFiles(t *testing.T) {
	tests := map[string]struct {
		file string
		want *Objects
	}{
		"all kinds": {
			file: "all-kinds.yaml",
			want: &Objects{
				Services: []model.Service{{
					Key: model.Key{Namespace: "demo", Name: "echo"},
					Ports: []model.ServicePort{
						{Name: "grpc", Port: 50051, AppProtocol: "grpc"},
						{Name: "metrics", Port: 9090},
					},
				}},
				EndpointSlices: []model.EndpointSlice{{
					Key:     model.Key{Namespace: "demo", Name: "echo-1"},
					Service: "echo",
					Ports:   []model.EndpointPort{{Name: "grpc", Port: 50051}},
					Endpoints: []model.Endpoint{
						{Address: "127.0.0.1", Ready: true, Zone: "zone-a", Workload: "echo-0"},
						{Address: "127.0.0.2", Ready: false},
					},
				}},
				Policies: []model.Policy{{
					Key:               model.Key{Namespace: "demo", Name: "echo-breaker"},
					Generation:        3,
					CreationTimestamp: time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC),
					Spec: fjordv1a1.ResiliencePolicySpec{
						TargetRefs: []fjordv1a1.TargetRef{{Group: "", Kind: "Service", Name: "echo", SectionName: ptr.To("grpc")}},
						OutlierDetection: &fjordv1a1.OutlierDetection{
							Interval: ptr.To(fjordv1a1.Duration("1s")),
							FailurePercentage: &fjordv1a1.FailurePercentage{
								Threshold: ptr.To[int32](60), MinimumHosts: ptr.To[int32](2), RequestVolume: ptr.To[int32](3),
							},
						},
					},
				}},
				Refs: []ObjectRef{
					{APIVersion: "v1", Kind: "Service", Key: model.Key{Namespace: "demo", Name: "echo"}, Document: 1},
					{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice", Key: model.Key{Namespace: "demo", Name: "echo-1"}, Document: 2},
					{APIVersion: "fjord.dev/v1alpha1", Kind: "ResiliencePolicy", Key: model.Key{Namespace: "demo", Name: "echo-breaker"}, Document: 3},
				},
				Skipped: []ObjectRef{
					{APIVersion: "apps/v1", Kind: "Deployment", Key: model.Key{Namespace: "demo", Name: "echo"}, Document: 4},
				},
			},
		},
		"json, generation and creation time defaulted": {
			file: "mesh-default.json",
			want: &Objects{
				Policies: []model.Policy{{
					Key:        model.Key{Namespace: "fjord-system", Name: "mesh-default"},
					Generation: 1,
					// Truncated to seconds, like metav1.Time, so the value
					// survives a JSON round trip through the store unchanged.
					CreationTimestamp: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC),
					Spec: fjordv1a1.ResiliencePolicySpec{
						Timeout: &fjordv1a1.Timeout{Request: ptr.To(fjordv1a1.Duration("10s"))},
					},
				}},
				Refs: []ObjectRef{
					{APIVersion: "fjord.dev/v1alpha1", Kind: "ResiliencePolicy", Key: model.Key{Namespace: "fjord-system", Name: "mesh-default"}, Document: 1},
				},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", "decode", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(tc.file, data, firstSeen)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("Decode (-want +got):\n%s", d)
			}
		})
	}
}

func TestDecodeDefaults(t *testing.T) {
	got, err := Decode("a.yaml", []byte(`
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports:
  - {port: 80, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  ports:
  - {name: udp, port: 53, protocol: UDP}
  - {name: tcp, port: 53}
`), firstSeen)
	if err != nil {
		t.Fatal(err)
	}
	want := []model.Service{
		{Key: model.Key{Namespace: "default", Name: "web"}, Ports: []model.ServicePort{{Port: 80}}},
		{Key: model.Key{Namespace: "default", Name: "dns"}, Ports: []model.ServicePort{{Name: "tcp", Port: 53}}},
	}
	if d := cmp.Diff(want, got.Services); d != "" {
		t.Errorf("services (-want +got):\n%s", d)
	}
}

func TestDecodeEmpty(t *testing.T) {
	for name, in := range map[string]string{
		"empty":          "",
		"comments":       "# nothing here\n",
		"only separator": "---\n---\n",
	} {
		t.Run(name, func(t *testing.T) {
			got, err := Decode("a.yaml", []byte(in), firstSeen)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(&Objects{}, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	const svc = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\n"
	const slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: echo-1, namespace: demo, labels: {kubernetes.io/service-name: echo}}\n"
	const policy = "apiVersion: fjord.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {name: p, namespace: demo}\n"
	tests := map[string]struct {
		in   string
		want []string // substrings of the error
	}{
		"unknown field names its path": {
			in:   policy + "spec:\n  retry: {attemps: 2}\n",
			want: []string{"conf/a.yaml: document 1 (ResiliencePolicy demo/p)", `unknown field "spec.retry.attemps"`},
		},
		"field names are case-sensitive": {
			in:   policy + "Spec: {timeout: {request: 1s}}\n",
			want: []string{"document 1 (ResiliencePolicy demo/p)", `unknown field "Spec"`},
		},
		"duplicate field": {
			in:   svc + "spec:\n  ports: []\n  ports: []\n",
			want: []string{"document 1", `"ports" already set`},
		},
		"wrong type names the field": {
			in:   svc + "spec:\n  ports:\n  - {port: http}\n",
			want: []string{"document 1 (Service demo/echo)", "spec.ports.port"},
		},
		"error in a later document": {
			in:   svc + "spec: {}\n---\n" + slice + "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], bogus: 1}]\n",
			want: []string{"conf/a.yaml: document 2 (EndpointSlice demo/echo-1)", `unknown field "endpoints[0].bogus"`},
		},
		"endpoint slice without service label": {
			in:   "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: orphan}\naddressType: IPv4\n",
			want: []string{"(EndpointSlice default/orphan)", "kubernetes.io/service-name", "required"},
		},
		"endpoint slice with bad address": {
			in:   slice + "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [not-an-ip]}]\n",
			want: []string{"endpoints[1].addresses[0]", `"not-an-ip"`},
		},
		"endpoint slice with IPv6 address in IPv4 slice": {
			in:   slice + "addressType: IPv4\nendpoints: [{addresses: [\"::1\"]}]\n",
			want: []string{"endpoints[0].addresses[0]", "IPv4"},
		},
		"endpoint slice with FQDN": {
			in:   slice + "addressType: FQDN\n",
			want: []string{"addressType", "FQDN"},
		},
		"endpoint slice port without number": {
			in:   slice + "addressType: IPv4\nports: [{name: grpc}]\n",
			want: []string{"ports[0].port: required"},
		},
		"endpoint without address": {
			in:   slice + "addressType: IPv4\nendpoints: [{addresses: []}]\n",
			want: []string{"endpoints[0].addresses: required"},
		},
		"service port out of range": {
			in:   svc + "spec:\n  ports:\n  - {name: a, port: 70000}\n",
			want: []string{"spec.ports[0].port", "70000"},
		},
		"service ports need names": {
			in:   svc + "spec:\n  ports:\n  - {name: a, port: 1}\n  - {port: 2}\n",
			want: []string{"spec.ports[1].name: required"},
		},
		"service port names are unique": {
			in:   svc + "spec:\n  ports:\n  - {name: a, port: 1}\n  - {name: a, port: 2}\n",
			want: []string{"spec.ports[1].name", "used twice"},
		},
		"missing name": {
			in:   "apiVersion: v1\nkind: Service\nmetadata: {namespace: demo}\n",
			want: []string{"document 1", "metadata.name: required"},
		},
		"missing kind": {
			in:   "apiVersion: v1\nmetadata: {name: x}\n",
			want: []string{"kind: required"},
		},
		"missing apiVersion": {
			in:   "kind: Service\nmetadata: {name: x}\n",
			want: []string{"apiVersion: required"},
		},
		"unknown fjord.dev version": {
			in:   "apiVersion: fjord.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: x}\nspec: {}\n",
			want: []string{`apiVersion "fjord.dev/v1"`, "not supported"},
		},
		"not an object": {
			in:   "- a\n- b\n",
			want: []string{"document 1", "not a Kubernetes object"},
		},
		"invalid YAML": {
			in:   "kind: [\n",
			want: []string{"document 1", "invalid YAML"},
		},
		"same object twice in one file": {
			in:   svc + "spec: {}\n---\n" + svc + "spec: {}\n",
			want: []string{"conf/a.yaml", "Service demo/echo defined twice, in documents 1 and 2"},
		},
		"export-to with a bad namespace name": {
			in:   "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo, annotations: {fjord.dev/export-to: \"., Team_A\"}}\nspec: {}\n",
			want: []string{"conf/a.yaml: document 1 (Service demo/echo)", `metadata.annotations["fjord.dev/export-to"]`, `"Team_A"`},
		},
		"export-to empty": {
			in:   "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo, annotations: {fjord.dev/export-to: \" \"}}\nspec: {}\n",
			want: []string{"(Service demo/echo)", `metadata.annotations["fjord.dev/export-to"]: no entry`},
		},
		"export-to with an empty entry": {
			in:   "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo, annotations: {fjord.dev/export-to: \"a,,b\"}}\nspec: {}\n",
			want: []string{"(Service demo/echo)", `metadata.annotations["fjord.dev/export-to"]: entry 2 is empty`},
		},
		"every error of a file is reported": {
			in:   policy + "spec: {x: 1}\n---\n" + svc + "spec: {z: 1}\n",
			want: []string{`document 1 (ResiliencePolicy demo/p): unknown field "spec.x"`, `document 2 (Service demo/echo): unknown field "spec.z"`},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Decode("conf/a.yaml", []byte(tc.in), firstSeen)
			if err == nil {
				t.Fatalf("Decode succeeded with %+v, want an error", got)
			}
			if got != nil {
				t.Errorf("Decode returned objects along with the error: %+v", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestDecodeExportTo(t *testing.T) {
	tests := map[string]struct {
		annotations string
		want        []string
	}{
		"absent":                           {annotations: "{}", want: nil},
		"every namespace":                  {annotations: `{fjord.dev/export-to: "*"}`, want: []string{"*"}},
		"own namespace":                    {annotations: `{fjord.dev/export-to: "."}`, want: []string{"demo"}},
		"own, named and duplicates":        {annotations: `{fjord.dev/export-to: "web, ., demo,api,web"}`, want: []string{"api", "demo", "web"}},
		"every namespace absorbs the rest": {annotations: `{fjord.dev/export-to: "., web, *"}`, want: []string{"*"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			in := "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo, annotations: " + tc.annotations + "}\nspec: {ports: [{port: 80}]}\n"
			got, err := Decode("conf/a.yaml", []byte(in), firstSeen)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got.Services[0].ExportTo); diff != "" {
				t.Errorf("ExportTo (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPolicyFromK8sCopiesSpec(t *testing.T) {
	p := &fjordv1a1.ResiliencePolicy{Spec: fjordv1a1.ResiliencePolicySpec{
		Timeout: &fjordv1a1.Timeout{Request: ptr.To(fjordv1a1.Duration("1s"))},
	}}
	p.Name, p.Namespace = "p", "ns"
	m := PolicyFromK8s(p)
	*p.Spec.Timeout.Request = "2s"
	if got := *m.Spec.Timeout.Request; got != "1s" {
		t.Fatalf("model policy shares memory with its source: request = %s", got)
	}
	if m.Generation != 1 {
		t.Errorf("generation = %d, want 1 for an object never stored", m.Generation)
	}
}

// FuzzDecode feeds arbitrary bytes to the decoder: it must never panic, and
// whatever it accepts must hold the invariants the pipeline relies on.
func FuzzDecode(f *testing.F) {
	for _, name := range []string{"all-kinds.yaml", "mesh-default.json"} {
		data, err := os.ReadFile(filepath.Join("testdata", "decode", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1}]}\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Decode("fuzz.yaml", data, firstSeen)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml: ") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		check := func(what string, k model.Key) {
			if k.Namespace == "" || k.Name == "" {
				t.Fatalf("%s with empty key %+v", what, k)
			}
		}
		for _, s := range got.Services {
			check("service", s.Key)
			for _, p := range s.Ports {
				if p.Port < 1 || p.Port > 65535 {
					t.Fatalf("service %s port %d out of range", s.Key, p.Port)
				}
			}
		}
		for _, s := range got.EndpointSlices {
			check("endpoint slice", s.Key)
			if s.Service == "" {
				t.Fatalf("endpoint slice %s without service", s.Key)
			}
			for _, e := range s.Endpoints {
				if e.Address == "" {
					t.Fatalf("endpoint slice %s with empty address", s.Key)
				}
			}
		}
		for _, p := range got.Policies {
			check("policy", p.Key)
			if p.Generation < 1 || p.CreationTimestamp.IsZero() {
				t.Fatalf("policy %s with generation %d, created %v", p.Key, p.Generation, p.CreationTimestamp)
			}
		}
		for _, r := range got.Routes {
			check("route", r.Key)
			if r.CreationTimestamp.IsZero() {
				t.Fatalf("route %s without creation time", r.Key)
			}
		}
		if n := len(got.Services) + len(got.EndpointSlices) + len(got.Policies) + len(got.Routes); n != len(got.Refs) {
			t.Fatalf("%d objects but %d refs", n, len(got.Refs))
		}
	})
}

func TestDecodeRoutes(t *testing.T) {
	got, err := Decode("routes.yaml", []byte(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
`), firstSeen)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Routes) != 2 || len(got.Refs) != 2 {
		t.Fatalf("want two routes with refs, got %+v", got)
	}
	for i, kind := range []model.RouteKind{model.KindHTTPRoute, model.KindGRPCRoute} {
		r := got.Routes[i]
		if r.Kind != kind || r.Key != (model.Key{Namespace: "demo", Name: "echo"}) || !r.CreationTimestamp.Equal(firstSeen.Truncate(time.Second)) {
			t.Errorf("route %d = %s %s created %v", i, r.Kind, r.Key, r.CreationTimestamp)
		}
	}
	if _, err := Decode("routes.yaml", []byte("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {parentRef: []}\n"), firstSeen); err == nil ||
		!strings.Contains(err.Error(), `(HTTPRoute default/r): unknown field "spec.parentRef"`) {
		t.Errorf("strict route decoding: %v", err)
	}
}
