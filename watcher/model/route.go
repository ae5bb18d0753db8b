package model

import (
	"cmp"
	"slices"
	"strings"
	"time"
)

// RouteKind is the Gateway API kind a Route was written as. The two kinds
// share one model because they share attachment, precedence and status; they
// differ in how rules match (paths and methods versus gRPC services and
// methods) and in which fields they have.
type RouteKind string

// The route kinds the mesh reads.
const (
	KindHTTPRoute RouteKind = "HTTPRoute"
	KindGRPCRoute RouteKind = "GRPCRoute"
)

// Route is a Gateway API HTTPRoute or GRPCRoute reduced to what mesh routing
// needs, with the API's defaults applied (parentRef group and kind, backend
// weight, match types), so that resolution never has to know them. It keeps
// what the user wrote even where the mesh cannot act on it (a filter type it
// does not implement, a parent that is a Gateway): status must be able to
// say so.
type Route struct {
	Key
	Kind RouteKind `json:"kind"`
	// Generation is metadata.generation; statuses report it as
	// observedGeneration.
	Generation int64 `json:"generation"`
	// CreationTimestamp decides precedence between routes: the oldest wins.
	CreationTimestamp time.Time   `json:"creationTimestamp"`
	ParentRefs        []ParentRef `json:"parentRefs,omitempty"`
	// Hostnames are kept only to report that the mesh ignores them: a
	// route attached to a Service applies to every name of the Service.
	Hostnames []string    `json:"hostnames,omitempty"`
	Rules     []RouteRule `json:"rules,omitempty"`
}

// ParentRef is a route's spec.parentRefs entry. Group and Kind carry the
// API's defaults ("gateway.networking.k8s.io", "Gateway") when the route
// left them out; the mesh attaches only to group "" kind Service. The other
// fields are as written: Namespace "" means the route's own, SectionName ""
// and Port 0 mean every port.
type ParentRef struct {
	Group       string `json:"group"`
	Kind        string `json:"kind"`
	Namespace   string `json:"namespace,omitempty"`
	Name        string `json:"name"`
	SectionName string `json:"sectionName,omitempty"`
	Port        int32  `json:"port,omitempty"`
}

// RouteRule is one rule: requests that match any of Matches (every request
// when there are none) go through Filters to one of BackendRefs.
type RouteRule struct {
	Name        string        `json:"name,omitempty"`
	Matches     []RouteMatch  `json:"matches,omitempty"`
	Filters     []RouteFilter `json:"filters,omitempty"`
	BackendRefs []BackendRef  `json:"backendRefs,omitempty"`
	// Timeouts and Retry exist on HTTPRoute rules only.
	Timeouts *RouteTimeouts `json:"timeouts,omitempty"`
	Retry    *RouteRetry    `json:"retry,omitempty"`
	// Unsupported names rule fields that were set and that the mesh does
	// not implement (such as "sessionPersistence"); status lists them.
	Unsupported []string `json:"unsupported,omitempty"`
}

// Match types, as Gateway API spells them.
const (
	MatchExact             = "Exact"
	MatchPathPrefix        = "PathPrefix"
	MatchRegularExpression = "RegularExpression"
)

// RouteMatch is one match of a rule; every condition set must hold.
// HTTPRoute matches use Path, Method and QueryParams; GRPCRoute matches use
// GRPCMethod. Both use Headers.
type RouteMatch struct {
	Path        *PathMatch       `json:"path,omitempty"`
	Method      string           `json:"method,omitempty"`
	QueryParams []ValueMatch     `json:"queryParams,omitempty"`
	GRPCMethod  *GRPCMethodMatch `json:"grpcMethod,omitempty"`
	Headers     []ValueMatch     `json:"headers,omitempty"`
}

// PathMatch matches the request path. Type is Exact, PathPrefix or
// RegularExpression (default PathPrefix, value default "/").
type PathMatch struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// ValueMatch matches one header or query parameter by name. Type is Exact
// or RegularExpression (default Exact).
type ValueMatch struct {
	Type  string `json:"type"`
	Name  string `json:"name"`
	Value string `json:"value"`
}

// GRPCMethodMatch matches the gRPC service and method of a call; an empty
// field matches any. Type is Exact or RegularExpression (default Exact).
type GRPCMethodMatch struct {
	Type    string `json:"type"`
	Service string `json:"service,omitempty"`
	Method  string `json:"method,omitempty"`
}

// Filter types, as Gateway API spells them.
const (
	FilterRequestHeaderModifier  = "RequestHeaderModifier"
	FilterResponseHeaderModifier = "ResponseHeaderModifier"
	FilterRequestMirror          = "RequestMirror"
	FilterRequestRedirect        = "RequestRedirect"
	FilterURLRewrite             = "URLRewrite"
	FilterExtensionRef           = "ExtensionRef"
)

// RouteFilter is one filter. Type says which of the fields is set; a type
// the mesh does not implement keeps only its name.
type RouteFilter struct {
	Type                   string          `json:"type"`
	RequestHeaderModifier  *HeaderModifier `json:"requestHeaderModifier,omitempty"`
	ResponseHeaderModifier *HeaderModifier `json:"responseHeaderModifier,omitempty"`
	RequestMirror          *MirrorFilter   `json:"requestMirror,omitempty"`
	RequestRedirect        *RedirectFilter `json:"requestRedirect,omitempty"`
	URLRewrite             *RewriteFilter  `json:"urlRewrite,omitempty"`
	ExtensionRef           *ObjectRef      `json:"extensionRef,omitempty"`
}

// HeaderModifier sets, adds and removes headers.
type HeaderModifier struct {
	Set    []Header `json:"set,omitempty"`
	Add    []Header `json:"add,omitempty"`
	Remove []string `json:"remove,omitempty"`
}

// Header is one header name and value.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// MirrorFilter copies a share of the requests to another backend and
// ignores its answers. The share is Numerator/Denominator (the API's
// percent becomes n/100); 0/0 means every request.
type MirrorFilter struct {
	BackendRef  ObjectRef `json:"backendRef"`
	Numerator   int32     `json:"numerator"`
	Denominator int32     `json:"denominator"`
}

// RedirectFilter answers with a redirect instead of forwarding. Empty
// fields keep the request's value; StatusCode defaults to 302.
type RedirectFilter struct {
	Scheme     string        `json:"scheme,omitempty"`
	Hostname   string        `json:"hostname,omitempty"`
	Path       *PathModifier `json:"path,omitempty"`
	Port       int32         `json:"port,omitempty"`
	StatusCode int32         `json:"statusCode"`
}

// RewriteFilter rewrites the request before forwarding it.
type RewriteFilter struct {
	Hostname string        `json:"hostname,omitempty"`
	Path     *PathModifier `json:"path,omitempty"`
}

// Path modifier types, as Gateway API spells them.
const (
	ReplaceFullPath    = "ReplaceFullPath"
	ReplacePrefixMatch = "ReplacePrefixMatch"
)

// PathModifier replaces the whole path or the part a PathPrefix match
// matched with Value.
type PathModifier struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// ObjectRef names an object a route refers to. Namespace "" is the route's
// own; Port 0 is unset.
type ObjectRef struct {
	Group     string `json:"group"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Port      int32  `json:"port,omitempty"`
}

// BackendRef is a weighted backend of a rule, with filters that apply only
// to requests sent to it. Group "" and Kind "Service" by default; Weight
// defaults to 1.
type BackendRef struct {
	ObjectRef
	Weight  int32         `json:"weight"`
	Filters []RouteFilter `json:"filters,omitempty"`
}

// RouteTimeouts are an HTTPRoute rule's timeouts, as Gateway API duration
// strings ("10s", "1m30s"): Request bounds the whole request, BackendRequest
// each try. "" is unset; "0s" disables the timeout.
type RouteTimeouts struct {
	Request        string `json:"request,omitempty"`
	BackendRequest string `json:"backendRequest,omitempty"`
}

// RouteRetry is an HTTPRoute rule's retry section. Attempts nil leaves the
// count to the policy or the proxy's default; Backoff "" is unset.
type RouteRetry struct {
	Codes    []int32 `json:"codes,omitempty"`
	Attempts *int32  `json:"attempts,omitempty"`
	Backoff  string  `json:"backoff,omitempty"`
}

// Compare orders routes by key, then kind (an HTTPRoute and a GRPCRoute may
// share a name).
func (r *Route) Compare(o *Route) int {
	return cmp.Or(r.Key.Compare(o.Key), strings.Compare(string(r.Kind), string(o.Kind)))
}

// Less is Compare as a less-than.
func (r *Route) Less(o *Route) bool { return r.Compare(o) < 0 }

// sortRoutes orders routes by Compare. The order inside a route
// (parentRefs, rules, matches, filters) means something and is kept.
func sortRoutes(rs []Route) {
	slices.SortFunc(rs, func(a, b Route) int { return a.Compare(&b) })
}
