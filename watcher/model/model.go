// Package model is the input of the pipeline: a Kubernetes-free, immutable,
// sorted snapshot of the Services, EndpointSlices, ResiliencePolicies and
// mesh routes (HTTPRoute, GRPCRoute) the control plane knows. Both sources
// (the Kubernetes watcher and the standalone directory) publish this same
// type, so everything downstream is indifferent to where the objects came
// from.
package model

import (
	"cmp"
	"slices"
	"sort"
	"strings"
	"time"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
)

// Key names a namespaced object.
type Key struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// String renders the key as namespace/name.
func (k Key) String() string { return k.Namespace + "/" + k.Name }

// Less orders keys by namespace, then name.
func (k Key) Less(o Key) bool {
	if k.Namespace != o.Namespace {
		return k.Namespace < o.Namespace
	}
	return k.Name < o.Name
}

// Compare is Less as slices.SortFunc wants it: -1, 0 or +1.
func (k Key) Compare(o Key) int {
	return cmp.Or(strings.Compare(k.Namespace, o.Namespace), strings.Compare(k.Name, o.Name))
}

// Snapshot is one consistent view of the mesh's inputs. Every slice is sorted
// by Key (see Sort) so that equal inputs are equal values and the pure stages
// downstream produce byte-identical output. A Snapshot is never mutated after
// it is published.
type Snapshot struct {
	Services       []Service       `json:"services,omitempty"`
	EndpointSlices []EndpointSlice `json:"endpointSlices,omitempty"`
	Policies       []Policy        `json:"policies,omitempty"`
	Routes         []Route         `json:"routes,omitempty"`
}

// Service is a Kubernetes Service reduced to what the mesh routes on.
type Service struct {
	Key
	Ports []ServicePort `json:"ports"`
	// ServiceAccounts are the service accounts the Service declares its
	// backends run as (the fjord.dev/service-accounts annotation), sorted and
	// without duplicates. Clients with mTLS accept these identities besides
	// the ones its endpoints' pods report, which is how a Service whose
	// endpoints have no pods (standalone mode) gets an identity.
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
	// ExportTo lists the namespaces that may see the Service (the
	// fjord.dev/export-to annotation, in NormaliseExportTo's form: ExportAll
	// alone, or namespace names sorted). Nil when the annotation is absent:
	// the control plane's default applies (see policy.Options).
	ExportTo []string `json:"exportTo,omitempty"`
}

// ServicePort is one port of a Service.
type ServicePort struct {
	// Name is the port name; policies select a port by it (sectionName).
	Name string `json:"name,omitempty"`
	// Port is the Service port clients dial.
	Port int32 `json:"port"`
	// AppProtocol is the port's application protocol ("grpc", "http",
	// "http2", "kubernetes.io/h2c", ...), empty when unknown.
	AppProtocol string `json:"appProtocol,omitempty"`
}

// EndpointSlice is a Kubernetes EndpointSlice reduced to the mesh's needs.
type EndpointSlice struct {
	Key
	// Service is the name of the owning Service (the
	// kubernetes.io/service-name label), in the same namespace.
	Service   string         `json:"service"`
	Ports     []EndpointPort `json:"ports"`
	Endpoints []Endpoint     `json:"endpoints"`
}

// EndpointPort maps a Service port name to the port the endpoints listen on.
type EndpointPort struct {
	Name string `json:"name,omitempty"`
	Port int32  `json:"port"`
}

// Endpoint is one backend address.
type Endpoint struct {
	Address string `json:"address"`
	// Ready is the EndpointSlice ready condition (absent means ready).
	Ready bool `json:"ready"`
	// Zone is the endpoint's topology zone, if known.
	Zone string `json:"zone,omitempty"`
	// Workload and ServiceAccount identify the pod behind the endpoint, when
	// the source knows it (Kubernetes mode maps targetRef to the Pod).
	Workload       string `json:"workload,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
}

// Policy is a ResiliencePolicy as the pipeline sees it: identity, the facts
// that decide precedence, and the spec as written.
type Policy struct {
	Key
	Generation        int64                          `json:"generation"`
	CreationTimestamp time.Time                      `json:"creationTimestamp"`
	Spec              fjordv1a1.ResiliencePolicySpec `json:"spec"`
}

// Equal reports whether s and o are the same Service, field for field (a
// nil list differs from an empty one: they encode differently). Sources
// and the control plane compare thousands of these after every change, so
// it allocates nothing and settles a list held by both at once.
func (s *Service) Equal(o *Service) bool {
	return s.Key == o.Key && equalSlices(s.Ports, o.Ports) &&
		equalSlices(s.ServiceAccounts, o.ServiceAccounts) && equalSlices(s.ExportTo, o.ExportTo)
}

// Equal reports whether s and o are the same EndpointSlice, as Service.Equal
// does for Services. Sources share the inner lists of the objects they did
// not change between snapshots, so most comparisons stop at the lists'
// identity.
func (s *EndpointSlice) Equal(o *EndpointSlice) bool {
	return s.Key == o.Key && s.Service == o.Service &&
		equalSlices(s.Ports, o.Ports) && equalSlices(s.Endpoints, o.Endpoints)
}

// equalSlices is slices.Equal that also tells nil from empty and settles
// one list held twice without a walk.
func equalSlices[T comparable](a, b []T) bool {
	if (a == nil) != (b == nil) || len(a) != len(b) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0] || slices.Equal(a, b)
}

// Sort orders every slice of s by Key, and the ports and endpoints inside
// them, so that two snapshots with the same content compare equal.
func (s *Snapshot) Sort() {
	sort.Slice(s.Services, func(i, j int) bool { return s.Services[i].Key.Less(s.Services[j].Key) })
	for i := range s.Services {
		s.Services[i].SortInner()
	}
	sort.Slice(s.EndpointSlices, func(i, j int) bool { return s.EndpointSlices[i].Key.Less(s.EndpointSlices[j].Key) })
	for i := range s.EndpointSlices {
		s.EndpointSlices[i].SortInner()
	}
	sort.Slice(s.Policies, func(i, j int) bool { return s.Policies[i].Key.Less(s.Policies[j].Key) })
	sortRoutes(s.Routes)
}

// SortInner orders the Service's ports by port number, as Sort does. A
// source that converts one object sorts it once and can then share its
// list between snapshots.
func (s *Service) SortInner() {
	p := s.Ports
	sort.Slice(p, func(a, b int) bool { return p[a].Port < p[b].Port })
}

// SortInner orders the slice's ports by name and endpoints by address, as
// Sort does (see Service.SortInner).
func (e *EndpointSlice) SortInner() {
	sort.Slice(e.Ports, func(a, b int) bool { return e.Ports[a].Name < e.Ports[b].Name })
	sort.Slice(e.Endpoints, func(a, b int) bool { return e.Endpoints[a].Address < e.Endpoints[b].Address })
}
