package load

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/translate"
)

// MeshSpec sizes the generated mesh.
type MeshSpec struct {
	// Services is the number of Services (M), spread over Namespaces.
	Services int `json:"services"`
	// Endpoints is the number of endpoints of each Service (E).
	Endpoints int `json:"endpoints"`
	// Namespaces defaults to one per 50 Services.
	Namespaces int `json:"namespaces"`
	// PolicyEvery gives every n-th Service its own ResiliencePolicy
	// (outlier detection); 0 means none. Every namespace has a default
	// policy (retries) and the mesh a default (request timeout,
	// maxConnections).
	PolicyEvery int `json:"policyEvery"`
}

func (s *MeshSpec) defaults() {
	if s.Namespaces <= 0 {
		s.Namespaces = max(1, s.Services/50)
	}
	s.Namespaces = min(s.Namespaces, max(1, s.Services))
}

// servicePorts are the port numbers Services get, in turn. Several numbers
// give an Envoy sidecar several outbound listeners and route
// configurations, each shared by the Services with that number, as in a
// real mesh; none is the sidecar's capture port.
var servicePorts = []int32{80, 8080, 9090, 50051}

// meshNamespace holds the mesh-wide default policy; it is fjord-cp's default
// --namespace.
const meshNamespace = "fjord-system"

// firstLimit is the mesh default's connectionPool.maxConnections. Every
// policy change sets a value never used before, so a proxy holding the new
// value can only have received the change.
const firstLimit = 1000

// Mesh is a generated mesh, in a standalone config directory or in the API
// server, and what the harness last wrote into it. Its methods change one thing, write the files concerned
// (each by an atomic rename, as a careful editor or a ConfigMap update
// does), and return the Change with the content that proves a proxy got it.
// A Mesh is used from one goroutine.
type Mesh struct {
	dir        string
	spec       MeshSpec
	namespaces []string
	services   []*service
	// firstOctet of the endpoint addresses: 127 for files, 10 for the API
	// server, which refuses loopback addresses in EndpointSlices.
	firstOctet int
	// write puts a file in place: a file in dir, or its objects applied to
	// the API server.
	write func(file) error

	// Each scope of policy change owns one connection-pool field, so that
	// no scope shadows another and a change affects exactly the Services of
	// its scope: the mesh default sets maxConnections, namespace defaults
	// maxPendingRequests (once changed), Service policies maxRequests.
	meshMaxConnections int32
	nsMaxPending       map[string]int32 // 0: not set
	nextValue          int32
}

// service is one generated Service with one port and its EndpointSlice.
type service struct {
	key     model.Key
	port    int32
	addrs   []string
	present []bool
	// ownPolicy: the Service has a policy file; maxRequests is what it sets
	// (0: not set).
	ownPolicy   bool
	maxRequests int32
}

func (s *service) cluster() string { return translate.ClusterName(s.key, s.port) }

func (s *service) presentAddrs() []string {
	var out []string
	for i, a := range s.addrs {
		if s.present[i] {
			out = append(out, a)
		}
	}
	return out
}

// GenerateMesh writes a config directory for spec into dir, which must be
// empty or not exist.
func GenerateMesh(dir string, spec MeshSpec) (*Mesh, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("config dir: %w", err)
	}
	if ents, err := os.ReadDir(dir); err != nil {
		return nil, fmt.Errorf("config dir: %w", err)
	} else if len(ents) > 0 {
		return nil, fmt.Errorf("config dir %s is not empty", dir)
	}
	m, err := newMesh(dir, spec, 127)
	if err != nil {
		return nil, err
	}
	m.write = file.write
	for _, f := range m.files() {
		if err := f.write(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// GenerateKubeMesh writes the mesh for spec into the API server: its
// namespaces, then every object, applied server-side. Endpoint addresses
// are in 10.0.0.0/8 (the API server refuses loopback ones); they are only
// data, nothing connects to them.
func GenerateKubeMesh(ctx context.Context, k *Kube, spec MeshSpec) (*Mesh, error) {
	m, err := newMesh("", spec, 10)
	if err != nil {
		return nil, err
	}
	m.write = func(f file) error { return k.apply(ctx, f) }
	if err := k.ensureNamespaces(ctx, append([]string{meshNamespace}, m.namespaces...)); err != nil {
		return nil, err
	}
	if err := k.applyAll(ctx, m.files()); err != nil {
		return nil, err
	}
	return m, nil
}

func newMesh(dir string, spec MeshSpec, firstOctet int) (*Mesh, error) {
	spec.defaults()
	if spec.Services <= 0 || spec.Endpoints <= 0 {
		return nil, fmt.Errorf("mesh of %d services x %d endpoints: both must be positive", spec.Services, spec.Endpoints)
	}
	if spec.Services*(spec.Endpoints+1) >= 1<<24 {
		return nil, fmt.Errorf("mesh of %d services x %d endpoints: more addresses than a /8 holds", spec.Services, spec.Endpoints)
	}
	m := &Mesh{
		dir: dir, spec: spec, firstOctet: firstOctet,
		meshMaxConnections: firstLimit,
		nsMaxPending:       map[string]int32{},
		nextValue:          firstLimit + 1,
	}
	for i := range spec.Namespaces {
		m.namespaces = append(m.namespaces, fmt.Sprintf("ns-%03d", i))
	}
	for i := range spec.Services {
		s := m.newService(i)
		s.ownPolicy = spec.PolicyEvery > 0 && i%spec.PolicyEvery == 0
		m.services = append(m.services, s)
	}
	return m, nil
}

// files is the whole mesh: the mesh default, the namespace defaults, and
// every Service with its EndpointSlice and its policy.
func (m *Mesh) files() []file {
	files := []file{m.meshPolicy()}
	for _, ns := range m.namespaces {
		files = append(files, m.namespacePolicy(ns))
	}
	for _, s := range m.services {
		files = append(files, m.serviceFile(s))
		if s.ownPolicy {
			files = append(files, m.servicePolicy(s))
		}
	}
	return files
}

// writer returns the function that makes f's change.
func (m *Mesh) writer(f file) func() error {
	return func() error { return m.write(f) }
}

// newService makes Service i: its namespace, port and addresses, all
// present. Addresses are unique across the mesh; they are only data,
// nothing ever connects to them.
func (m *Mesh) newService(i int) *service {
	s := &service{
		key:  model.Key{Namespace: m.namespaces[i%len(m.namespaces)], Name: fmt.Sprintf("svc-%05d", i)},
		port: servicePorts[i%len(servicePorts)],
	}
	for j := range m.spec.Endpoints {
		s.addrs = append(s.addrs, address(m.firstOctet, i*(m.spec.Endpoints+1)+j+1))
		s.present = append(s.present, true)
	}
	return s
}

// address is the n-th address of the /8 starting with first (n < 2^24).
func address(first, n int) string {
	return fmt.Sprintf("%d.%d.%d.%d", first, n>>16&0xff, n>>8&0xff, n&0xff)
}

// Services is the number of Services, including added ones.
func (m *Mesh) Services() int { return len(m.services) }

// file is one config file to write.
type file struct {
	path, content string
}

// write writes the file to a temporary file next to it (its name starts
// with ".", which the file source skips) and renames that over it, so the
// control plane never reads half a file.
func (f file) write() error {
	if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
		return fmt.Errorf("writing %s: %w", f.path, err)
	}
	tmp := filepath.Join(filepath.Dir(f.path), "."+filepath.Base(f.path)+".tmp")
	if err := os.WriteFile(tmp, []byte(f.content), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", f.path, err)
	}
	if err := os.Rename(tmp, f.path); err != nil {
		return fmt.Errorf("writing %s: %w", f.path, err)
	}
	return nil
}

// serviceFile holds a Service and its EndpointSlice.
func (m *Mesh) serviceFile(s *service) file {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: %s, namespace: %s}
spec:
  ports:
  - {name: grpc, port: %d, appProtocol: grpc}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %s-1
  namespace: %s
  labels: {kubernetes.io/service-name: %s}
addressType: IPv4
ports:
- {name: grpc, port: %d}
endpoints:`, s.key.Name, s.key.Namespace, s.port, s.key.Name, s.key.Namespace, s.key.Name, s.port)
	addrs := s.presentAddrs()
	if len(addrs) == 0 {
		b.WriteString(" []")
	}
	b.WriteString("\n")
	for _, a := range addrs {
		fmt.Fprintf(&b, "- addresses: [%q]\n", a)
	}
	return file{filepath.Join(m.dir, s.key.Namespace, s.key.Name+".yaml"), b.String()}
}

// policyHeader is the start of a ResiliencePolicy. creationTimestamp is
// pinned so that precedence never depends on when a file was first seen.
func policyHeader(ns, name string) string {
	return fmt.Sprintf(`apiVersion: fjord.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: %s, namespace: %s, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
`, name, ns)
}

func (m *Mesh) servicePolicy(s *service) file {
	var b strings.Builder
	b.WriteString(policyHeader(s.key.Namespace, s.key.Name))
	fmt.Fprintf(&b, `  targetRefs: [{group: "", kind: Service, name: %s}]
  outlierDetection:
    interval: 10s
    baseEjectionTime: 30s
    maxEjectionPercent: 50
    consecutive5xxErrors: 5
    failurePercentage: {threshold: 80, minimumHosts: 3, requestVolume: 10}
`, s.key.Name)
	if s.maxRequests > 0 {
		fmt.Fprintf(&b, "  connectionPool: {maxRequests: %d}\n", s.maxRequests)
	}
	return file{filepath.Join(m.dir, s.key.Namespace, "policy-"+s.key.Name+".yaml"), b.String()}
}

func (m *Mesh) namespacePolicy(ns string) file {
	var b strings.Builder
	b.WriteString(policyHeader(ns, "namespace-default"))
	b.WriteString("  retry: {attempts: 2, retryOn: [unavailable, cancelled]}\n")
	if v := m.nsMaxPending[ns]; v > 0 {
		fmt.Fprintf(&b, "  connectionPool: {maxPendingRequests: %d}\n", v)
	}
	return file{filepath.Join(m.dir, ns, "namespace-default.yaml"), b.String()}
}

func (m *Mesh) meshPolicy() file {
	var b strings.Builder
	b.WriteString(policyHeader(meshNamespace, "mesh-default"))
	fmt.Fprintf(&b, "  timeout: {request: 10s}\n  connectionPool: {maxConnections: %d}\n", m.meshMaxConnections)
	return file{filepath.Join(m.dir, meshNamespace, "mesh-default.yaml"), b.String()}
}

// FlipEndpoint removes endpoint ep of Service svc if it is present and adds
// it back if not. Like every change, it is written by Change.write.
func (m *Mesh) FlipEndpoint(svc, ep int) *Change {
	s := m.services[svc]
	ep %= len(s.addrs)
	s.present[ep] = !s.present[ep]
	verb := "remove"
	if s.present[ep] {
		verb = "add"
	}
	return &Change{
		What:  fmt.Sprintf("%s endpoint %s of %s", verb, s.addrs[ep], s.key),
		probe: &endpointProbe{svc: svc, cluster: s.cluster(), addr: s.addrs[ep], present: s.present[ep]},
		write: m.writer(m.serviceFile(s)),
	}
}

// Scope is what a policy change applies to.
type Scope string

// Policy change scopes.
const (
	ScopeService   Scope = "service"
	ScopeNamespace Scope = "namespace"
	ScopeMesh      Scope = "mesh"
)

// SetLimit changes a connection-pool limit at one scope: maxRequests in
// Service svc's own policy (created if it has none), maxPendingRequests in
// the default of svc's namespace, or maxConnections in the mesh default.
// The change affects the clusters of that Service, of every Service in the
// namespace, or of every Service.
func (m *Mesh) SetLimit(scope Scope, svc int) (*Change, error) {
	if svc < 0 || svc >= len(m.services) {
		return nil, fmt.Errorf("policy change for service %d: the mesh has %d", svc, len(m.services))
	}
	v := m.nextValue
	m.nextValue++
	s := m.services[svc]
	p := &limitProbe{value: uint32(v), clusters: map[int]string{}}
	var (
		f    file
		what string
	)
	switch scope {
	case ScopeService:
		s.maxRequests, s.ownPolicy = v, true
		p.field = maxRequests
		p.clusters[svc] = s.cluster()
		what = fmt.Sprintf("policy of %s: maxRequests %d", s.key, v)
		f = m.servicePolicy(s)
	case ScopeNamespace:
		m.nsMaxPending[s.key.Namespace] = v
		p.field = maxPendingRequests
		for i, o := range m.services {
			if o.key.Namespace == s.key.Namespace {
				p.clusters[i] = o.cluster()
			}
		}
		what = fmt.Sprintf("default policy of namespace %s: maxPendingRequests %d", s.key.Namespace, v)
		f = m.namespacePolicy(s.key.Namespace)
	case ScopeMesh:
		m.meshMaxConnections = v
		p.field = maxConnections
		for i, o := range m.services {
			p.clusters[i] = o.cluster()
		}
		what = fmt.Sprintf("mesh default policy: maxConnections %d", v)
		f = m.meshPolicy()
	default:
		return nil, fmt.Errorf("unknown policy scope %q", scope)
	}
	return &Change{What: fmt.Sprintf("%s (%d services)", what, len(p.clusters)), probe: p, write: m.writer(f)}, nil
}

// AddService adds a Service with its EndpointSlice in a file of its own.
func (m *Mesh) AddService() (*Change, error) {
	i := len(m.services)
	if (i+1)*(m.spec.Endpoints+1) >= 1<<24 {
		return nil, fmt.Errorf("adding service %d: no addresses left in 127.0.0.0/8", i)
	}
	s := m.newService(i)
	m.services = append(m.services, s)
	return &Change{
		What:  "new service " + s.key.String(),
		probe: &newServiceProbe{svc: i, cluster: s.cluster(), addrs: s.presentAddrs()},
		write: m.writer(m.serviceFile(s)),
	}, nil
}
