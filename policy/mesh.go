package policy

import (
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// Mesh is the output of resolution and the input of translation: every
// Service port with its endpoints and the one effective policy that applies
// to it, plus the status of every policy. All slices are sorted.
type Mesh struct {
	Services []Service `json:"services,omitempty"`
	// Statuses holds the status of every policy in the input, sorted by key.
	Statuses []Status `json:"statuses,omitempty"`
	// Accepted are the policies resolution used, sorted by key: every valid
	// policy as given, and for a policy whose current spec is invalid its
	// entry from Options.LastAccepted, if any. Persisting this list and
	// passing it back as Options.LastAccepted is what keeps an invalid edit
	// from disturbing what is served, also across restarts.
	Accepted []model.Policy `json:"accepted,omitempty"`
	// RouteStatuses holds the status of every route with at least one
	// parentRef to a Service (the parents the mesh is responsible for),
	// sorted by key, then kind.
	RouteStatuses []RouteStatus `json:"routeStatuses,omitempty"`
	// Exports lists the Services not every namespace may see, sorted by
	// key; empty when every Service is visible everywhere.
	Exports []Export `json:"exports,omitempty"`
}

// Service is a Service with its resolved ports.
type Service struct {
	model.Key
	Ports []Port `json:"ports"`
	// ServiceAccounts are the service accounts the Service declares (see
	// model.Service.ServiceAccounts), sorted.
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
}

// Export is a Service that not every namespace may see, and the
// namespaces whose proxies may see it besides its own (see CanSee): its
// model.Service.ExportTo, or Options.DefaultExportTo when it has none,
// sorted. It is kept apart from Service so that a mesh where every Service
// is visible everywhere carries nothing for it, and the endpoint fast
// path copies no more than before.
type Export struct {
	Service model.Key `json:"service"`
	To      []string  `json:"to"`
}

// Port is one Service port, ready for translation.
type Port struct {
	// Name is the Service port name (may be empty for a single-port Service).
	Name string `json:"name,omitempty"`
	// Port is the Service port clients dial.
	Port int32 `json:"port"`
	// AppProtocol is the port's application protocol, empty when unknown.
	AppProtocol string `json:"appProtocol,omitempty"`
	// Endpoints are the ready and not-ready backends of this port, sorted by
	// address then port, deduplicated across EndpointSlices.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	// Policy is the effective policy, merged field by field from every level
	// that applies; nil sections mean nothing applies. TargetRefs is empty.
	Policy fjordv1a1.ResiliencePolicySpec `json:"policy"`
	// Sources says, for each field set in Policy, which policy it came from.
	// Sorted by Path.
	Sources []FieldSource `json:"sources,omitempty"`
	// Routes are the mesh routes of this port in the order a proxy must try
	// them, ending with the Service's own default route; empty when no
	// route is attached, in which case every request goes to the port's
	// own endpoints under Policy.
	Routes []Route `json:"routes,omitempty"`
}

// Endpoint is one backend of a Service port.
type Endpoint struct {
	Address        string `json:"address"`
	Port           int32  `json:"port"`
	Ready          bool   `json:"ready"`
	Zone           string `json:"zone,omitempty"`
	Workload       string `json:"workload,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
}

// Level is how specific a policy's attachment is. Higher levels win.
type Level int

// Attachment levels, least specific first.
const (
	LevelMesh Level = iota
	LevelNamespace
	LevelService
	LevelPort
)

// String names the level as users read it in explain output and status.
func (l Level) String() string {
	switch l {
	case LevelMesh:
		return "mesh"
	case LevelNamespace:
		return "namespace"
	case LevelService:
		return "service"
	case LevelPort:
		return "port"
	}
	return "unknown"
}

// MarshalText makes levels readable in golden files and JSON.
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// FieldSource records where one effective field came from.
type FieldSource struct {
	// Path is the field's JSON path in the spec, e.g. "outlierDetection.interval".
	Path   string    `json:"path"`
	Policy model.Key `json:"policy"`
	Level  Level     `json:"level"`
}

// Status is the status of one policy, as data: the watcher writes it to the
// API server, the standalone mode logs and exposes it.
type Status struct {
	model.Key
	// Generation is the policy generation this status was computed from.
	Generation int64 `json:"generation"`
	// Ancestors holds one entry per target (Gateway API policy status).
	// Conditions carry no lastTransitionTime: resolution has no clock; the
	// writer sets it when a condition changes.
	Ancestors []fjordv1a1.PolicyAncestorStatus `json:"ancestors"`
}
