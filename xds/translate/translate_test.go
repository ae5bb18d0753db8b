package translate

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/xds/node"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata and delete stale ones")

// goldenCases lists the cases in testdata: every <case>.in.yaml.
func goldenCases(t *testing.T) []string {
	t.Helper()
	ins, err := filepath.Glob(filepath.Join("testdata", "*.in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) == 0 {
		t.Fatal("no testdata/*.in.yaml")
	}
	var cases []string
	for _, in := range ins {
		cases = append(cases, strings.TrimSuffix(filepath.Base(in), ".in.yaml"))
	}
	return cases
}

// caseOptions are the translation options of a golden case: mTLS (in the
// default trust domain) for the cases named mtls*, none otherwise.
func caseOptions(name string) Options {
	if strings.HasPrefix(name, "mtls") {
		return Options{MTLS: true}
	}
	return Options{}
}

// readMesh decodes testdata/<name>.in.yaml strictly, so that a misspelt
// field fails the test instead of silently becoming "not set".
func readMesh(t *testing.T, name string) *policy.Mesh {
	t.Helper()
	m := &policy.Mesh{}
	if err := readMeshFile(name, m); err != nil {
		t.Fatal(err)
	}
	return m
}

func readMeshFile(name string, m *policy.Mesh) error {
	path := filepath.Join("testdata", name+".in.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.UnmarshalStrict(b, m); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// byType is a Resources value as the golden files split it.
func byType(r *Resources) map[string][]proto.Message {
	return map[string][]proto.Message{
		"clusters":  messages(r.Clusters),
		"endpoints": messages(r.Endpoints),
		"listeners": messages(r.Listeners),
		"routes":    messages(r.Routes),
	}
}

func messages[T proto.Message](rs []T) []proto.Message {
	out := make([]proto.Message, len(rs))
	for i, r := range rs {
		out[i] = r
	}
	return out
}

// render writes resources as a YAML list: protojson gives the canonical
// JSON mapping (durations as "5s", Any with @type), and JSONToYAML re-encodes
// it with sorted keys, which removes protojson's deliberately unstable
// whitespace.
func render(t *testing.T, ms []proto.Message) []byte {
	t.Helper()
	parts := make([]string, len(ms))
	for i, m := range ms {
		b, err := protojson.MarshalOptions{Multiline: true}.Marshal(m)
		if err != nil {
			t.Fatalf("render %s: %v", resourceName(m), err)
		}
		parts[i] = string(b)
	}
	y, err := yaml.JSONToYAML([]byte("[" + strings.Join(parts, ",") + "]"))
	if err != nil {
		t.Fatal(err)
	}
	return y
}

func TestGolden(t *testing.T) {
	produced := map[string]bool{}
	for _, name := range goldenCases(t) {
		t.Run(name, func(t *testing.T) {
			m := readMesh(t, name)
			for _, kind := range node.Kinds {
				for typ, ms := range byType(Translate(m, kind, caseOptions(name))) {
					file := fmt.Sprintf("%s.%s.%s.yaml", name, kind, typ)
					produced[file] = true
					path := filepath.Join("testdata", file)
					got := render(t, ms)
					if *update {
						if err := os.WriteFile(path, got, 0o644); err != nil {
							t.Fatal(err)
						}
						continue
					}
					want, err := os.ReadFile(path)
					if err != nil {
						t.Fatalf("%v (run go test ./xds/translate -update)", err)
					}
					if diff := cmp.Diff(string(want), string(got)); diff != "" {
						t.Errorf("%s (-want +got):\n%s", path, diff)
					}
				}
			}
		})
	}
	outs, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range outs {
		file := filepath.Base(path)
		if strings.HasSuffix(file, ".in.yaml") || produced[file] {
			continue
		}
		if *update {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			continue
		}
		t.Errorf("%s is not produced by any case (run go test ./xds/translate -update to delete it)", path)
	}
}

// validator is what protoc-gen-validate generates on every Envoy message.
type validator interface{ ValidateAll() error }

// TestValidateAll runs every resource of every case through the protos' own
// validation, including the extension configs packed in Any fields, which
// ValidateAll on the outer message cannot see into.
func TestValidateAll(t *testing.T) {
	for _, name := range goldenCases(t) {
		m := readMesh(t, name)
		for _, kind := range node.Kinds {
			for typ, ms := range byType(Translate(m, kind, caseOptions(name))) {
				for _, msg := range ms {
					if err := validateDeep(msg); err != nil {
						t.Errorf("%s %s %s %q: %v", name, kind, typ, resourceName(msg), err)
					}
				}
			}
		}
	}
}

// validateDeep validates m and every message nested in it, unpacking Any.
func validateDeep(m proto.Message) error {
	return walkDeep(m, func(m proto.Message) error {
		if v, ok := m.(validator); ok {
			if err := v.ValidateAll(); err != nil {
				return fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err)
			}
		}
		return nil
	})
}

// walkDeep calls visit on m and on every message nested in it, unpacking
// Any, and stops at the first error.
func walkDeep(m proto.Message, visit func(proto.Message) error) error {
	if err := visit(m); err != nil {
		return err
	}
	if a, ok := m.(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err)
		}
		return walkDeep(inner, visit)
	}
	var err error
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					err = walkDeep(mv.Message().Interface(), visit)
					return err == nil
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				for i := 0; i < v.List().Len() && err == nil; i++ {
					err = walkDeep(v.List().Get(i).Message().Interface(), visit)
				}
			}
		case fd.Message() != nil:
			err = walkDeep(v.Message().Interface(), visit)
		}
		return err == nil
	})
	return err
}

// TestReferences checks that every name a resource refers to is served:
// the RDS names of listeners (api_listeners included, which go-control-plane's
// Snapshot.Consistent does not follow), the clusters of routes, one
// ClusterLoadAssignment per EDS cluster, and for proxyless gRPC the listener
// a client dialling each Service port asks for.
func TestReferences(t *testing.T) {
	for _, name := range goldenCases(t) {
		m := readMesh(t, name)
		for _, kind := range node.Kinds {
			r := Translate(m, kind, caseOptions(name))
			clusters, routes, cla := map[string]bool{}, map[string]bool{}, map[string]bool{}
			for _, c := range r.Clusters {
				clusters[c.GetName()] = true
			}
			for _, rc := range r.Routes {
				routes[rc.GetName()] = true
				for _, vh := range rc.GetVirtualHosts() {
					for _, rt := range vh.GetRoutes() {
						for _, c := range routeClusters(rt) {
							if !clusters[c] {
								t.Errorf("%s %s: route %q refers to missing cluster %q", name, kind, rc.GetName(), c)
							}
						}
					}
				}
			}
			for _, e := range r.Endpoints {
				cla[e.GetClusterName()] = true
				if !clusters[e.GetClusterName()] {
					t.Errorf("%s %s: endpoints for missing cluster %q", name, kind, e.GetClusterName())
				}
			}
			for _, c := range r.Clusters {
				if c.GetEdsClusterConfig() != nil && !cla[c.GetName()] {
					t.Errorf("%s %s: cluster %q has no endpoints resource", name, kind, c.GetName())
				}
			}
			for _, l := range r.Listeners {
				for _, rds := range rdsNames(t, l) {
					if !routes[rds] {
						t.Errorf("%s %s: listener %q refers to missing route %q", name, kind, l.GetName(), rds)
					}
				}
			}
			if kind == node.GRPC {
				listeners := map[string]bool{}
				for _, l := range r.Listeners {
					listeners[l.GetName()] = true
				}
				for _, s := range m.Services {
					for _, p := range s.Ports {
						// Spelled out rather than taken from names.go: this
						// is the contract with clients, not an implementation detail.
						if host := fmt.Sprintf("%s.%s.svc.cluster.local:%d", s.Name, s.Namespace, p.Port); !listeners[host] {
							t.Errorf("%s: no listener for a client dialling xds:///%s", name, host)
						}
						for _, e := range p.Endpoints {
							// A server bound to its pod IP, to 0.0.0.0 or to [::].
							for _, addr := range []string{e.Address, "0.0.0.0", "::"} {
								if srv := "grpc/server?xds.resource.listening_address=" + net.JoinHostPort(addr, fmt.Sprint(e.Port)); !listeners[srv] {
									t.Errorf("%s: no listener for an xDS gRPC server on %s", name, net.JoinHostPort(addr, fmt.Sprint(e.Port)))
								}
							}
						}
					}
				}
			}
		}
	}
}

// routeClusters returns the clusters a route sends requests to: its
// cluster or weighted clusters, and its mirrors. A redirect or a direct
// response has none.
func routeClusters(rt *routev3.Route) []string {
	a := rt.GetRoute()
	if a == nil {
		return nil
	}
	var out []string
	if c := a.GetCluster(); c != "" || a.GetWeightedClusters() == nil {
		out = append(out, c)
	}
	for _, w := range a.GetWeightedClusters().GetClusters() {
		out = append(out, w.GetName())
	}
	for _, m := range a.GetRequestMirrorPolicies() {
		out = append(out, m.GetCluster())
	}
	return out
}

// rdsNames returns the route configuration names a listener's connection
// managers load over RDS (an inline route configuration is not one).
func rdsNames(t *testing.T, l *listenerv3.Listener) []string {
	t.Helper()
	var anys []*anypb.Any
	if a := l.GetApiListener().GetApiListener(); a != nil {
		anys = append(anys, a)
	}
	for _, fc := range append(slices.Clone(l.GetFilterChains()), l.GetDefaultFilterChain()) {
		for _, f := range fc.GetFilters() {
			anys = append(anys, f.GetTypedConfig())
		}
	}
	var names []string
	for _, a := range anys {
		hcm := &hcmv3.HttpConnectionManager{}
		if !a.MessageIs(hcm) {
			continue
		}
		if err := a.UnmarshalTo(hcm); err != nil {
			t.Fatalf("listener %q: %v", l.GetName(), err)
		}
		if rds := hcm.GetRds(); rds != nil {
			names = append(names, rds.GetRouteConfigName())
		}
	}
	return names
}

// TestDomainsUnique checks the rule Envoy enforces on a route
// configuration: no domain may belong to two virtual hosts.
func TestDomainsUnique(t *testing.T) {
	for _, name := range goldenCases(t) {
		m := readMesh(t, name)
		for _, kind := range node.Kinds {
			for _, rc := range Translate(m, kind, caseOptions(name)).Routes {
				owner := map[string]string{}
				for _, vh := range rc.GetVirtualHosts() {
					for _, d := range vh.GetDomains() {
						if o, ok := owner[d]; ok {
							t.Errorf("%s %s: route %q: domain %q in virtual hosts %q and %q", name, kind, rc.GetName(), d, o, vh.GetName())
						}
						owner[d] = vh.GetName()
					}
				}
			}
		}
	}
}

// TestSameClustersForBothKinds pins the decision that without mTLS both
// proxy kinds get identical clusters and endpoints (Envoy has its two
// passthrough clusters on top); with mTLS only the transport sockets differ.
func TestSameClustersForBothKinds(t *testing.T) {
	for _, name := range goldenCases(t) {
		m := readMesh(t, name)
		e, g := Translate(m, node.Envoy, Options{}), Translate(m, node.GRPC, Options{})
		envoyClusters := slices.DeleteFunc(slices.Clone(e.Clusters), func(c *clusterv3.Cluster) bool {
			return c.GetName() == PassthroughClusterName || c.GetName() == InboundPassthroughClusterName
		})
		if diff := cmp.Diff(envoyClusters, g.Clusters, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: clusters differ between kinds (-envoy +grpc):\n%s", name, diff)
		}
		if diff := cmp.Diff(e.Endpoints, g.Endpoints, protocmp.Transform()); diff != "" {
			t.Errorf("%s: endpoints differ between kinds (-envoy +grpc):\n%s", name, diff)
		}
	}
}

// TestDeterministic translates every case twice, and once more from a copy
// whose lists (Services, ports, endpoints, retry conditions, status codes)
// are shuffled, and wants the same resources each time; it also checks that
// Translate leaves its input untouched.
func TestDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, name := range goldenCases(t) {
		for _, kind := range node.Kinds {
			m := readMesh(t, name)
			pristine := readMesh(t, name)
			first := Translate(m, kind, caseOptions(name))
			if diff := cmp.Diff(pristine, m); diff != "" {
				t.Fatalf("%s %s: Translate modified its input (-before +after):\n%s", name, kind, diff)
			}
			if diff := cmp.Diff(first, Translate(m, kind, caseOptions(name)), protocmp.Transform()); diff != "" {
				t.Errorf("%s %s: second translation differs:\n%s", name, kind, diff)
			}
			for range 5 {
				shuffled := readMesh(t, name)
				shuffle(rng, shuffled)
				if diff := cmp.Diff(first, Translate(shuffled, kind, caseOptions(name)), protocmp.Transform()); diff != "" {
					t.Errorf("%s %s: shuffled input gives different output:\n%s", name, kind, diff)
				}
			}
		}
	}
}

func shuffle(rng *rand.Rand, m *policy.Mesh) {
	mix := func(n int, swap func(i, j int)) { rng.Shuffle(n, swap) }
	mix(len(m.Services), func(i, j int) { m.Services[i], m.Services[j] = m.Services[j], m.Services[i] })
	for i := range m.Services {
		sas := m.Services[i].ServiceAccounts
		mix(len(sas), func(a, b int) { sas[a], sas[b] = sas[b], sas[a] })
		ports := m.Services[i].Ports
		mix(len(ports), func(a, b int) { ports[a], ports[b] = ports[b], ports[a] })
		for j := range ports {
			eps := ports[j].Endpoints
			mix(len(eps), func(a, b int) { eps[a], eps[b] = eps[b], eps[a] })
			if r := ports[j].Policy.Retry; r != nil {
				mix(len(r.RetryOn), func(a, b int) { r.RetryOn[a], r.RetryOn[b] = r.RetryOn[b], r.RetryOn[a] })
				c := r.RetriableStatusCodes
				mix(len(c), func(a, b int) { c[a], c[b] = c[b], c[a] })
			}
		}
	}
}
