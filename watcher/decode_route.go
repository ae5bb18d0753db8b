package watcher

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/fjordmesh/fjord/watcher/model"
)

// Route kinds the mesh reads, in Gateway API's v1 version.
const (
	KindHTTPRoute = string(model.KindHTTPRoute)
	KindGRPCRoute = string(model.KindGRPCRoute)
)

// Defaults the Gateway API CRDs apply at the API server. Standalone files
// never went through one, so the converters apply them too, and both
// sources give the same model for the same YAML.
const (
	defaultParentGroup = gatewayv1.GroupName
	defaultParentKind  = "Gateway"
	defaultBackendKind = "Service"
	defaultRedirect    = 302
	percentDenominator = 100
)

func init() {
	kindAPIVersion[KindHTTPRoute] = gatewayv1.GroupVersion.String()
	kindAPIVersion[KindGRPCRoute] = gatewayv1.GroupVersion.String()
}

// decodeRoute decodes one HTTPRoute or GRPCRoute document strictly and
// converts it. A route without metadata.creationTimestamp gets firstSeen,
// as policies do (see Decode): the oldest route wins conflicts.
func decodeRoute(js []byte, ref ObjectRef, firstSeen time.Time) (model.Route, error) {
	var m model.Route
	switch ref.Kind {
	case KindHTTPRoute:
		var r gatewayv1.HTTPRoute
		if err := strict(js, &r); err != nil {
			return model.Route{}, err
		}
		r.Namespace = ref.Namespace
		m = HTTPRouteFromK8s(&r)
	default:
		var r gatewayv1.GRPCRoute
		if err := strict(js, &r); err != nil {
			return model.Route{}, err
		}
		r.Namespace = ref.Namespace
		m = GRPCRouteFromK8s(&r)
	}
	if m.CreationTimestamp.IsZero() {
		m.CreationTimestamp = firstSeen.UTC().Truncate(time.Second)
	}
	return m, nil
}

// HTTPRouteFromK8s takes an HTTPRoute into the model, with the API's
// defaults applied. Nothing is shared with r.
func HTTPRouteFromK8s(r *gatewayv1.HTTPRoute) model.Route {
	out := routeMeta(model.KindHTTPRoute, &r.ObjectMeta)
	out.ParentRefs = parentRefs(r.Spec.ParentRefs)
	out.Hostnames = hostnames(r.Spec.Hostnames)
	for _, rule := range r.Spec.Rules {
		mr := model.RouteRule{Name: sectionName(rule.Name)}
		for _, m := range rule.Matches {
			mr.Matches = append(mr.Matches, httpMatch(m))
		}
		for _, f := range rule.Filters {
			mr.Filters = append(mr.Filters, httpFilter(f))
		}
		for _, b := range rule.BackendRefs {
			mb := backendRef(b.BackendRef)
			for _, f := range b.Filters {
				mb.Filters = append(mb.Filters, httpFilter(f))
			}
			mr.BackendRefs = append(mr.BackendRefs, mb)
		}
		if t := rule.Timeouts; t != nil {
			mr.Timeouts = &model.RouteTimeouts{Request: duration(t.Request), BackendRequest: duration(t.BackendRequest)}
		}
		if rt := rule.Retry; rt != nil {
			mr.Retry = &model.RouteRetry{Backoff: duration(rt.Backoff)}
			for _, c := range rt.Codes {
				mr.Retry.Codes = append(mr.Retry.Codes, int32(c))
			}
			if rt.Attempts != nil {
				n := int32(*rt.Attempts)
				mr.Retry.Attempts = &n
			}
		}
		if rule.SessionPersistence != nil {
			mr.Unsupported = append(mr.Unsupported, "sessionPersistence")
		}
		out.Rules = append(out.Rules, mr)
	}
	return out
}

// GRPCRouteFromK8s takes a GRPCRoute into the model, with the API's
// defaults applied. Nothing is shared with r.
func GRPCRouteFromK8s(r *gatewayv1.GRPCRoute) model.Route {
	out := routeMeta(model.KindGRPCRoute, &r.ObjectMeta)
	out.ParentRefs = parentRefs(r.Spec.ParentRefs)
	out.Hostnames = hostnames(r.Spec.Hostnames)
	for _, rule := range r.Spec.Rules {
		mr := model.RouteRule{Name: sectionName(rule.Name)}
		for _, m := range rule.Matches {
			mm := model.RouteMatch{Headers: grpcHeaders(m.Headers)}
			if mt := m.Method; mt != nil {
				mm.GRPCMethod = &model.GRPCMethodMatch{Type: model.MatchExact, Service: deref(mt.Service), Method: deref(mt.Method)}
				if mt.Type != nil {
					mm.GRPCMethod.Type = string(*mt.Type)
				}
			}
			mr.Matches = append(mr.Matches, mm)
		}
		for _, f := range rule.Filters {
			mr.Filters = append(mr.Filters, grpcFilter(f))
		}
		for _, b := range rule.BackendRefs {
			mb := backendRef(b.BackendRef)
			for _, f := range b.Filters {
				mb.Filters = append(mb.Filters, grpcFilter(f))
			}
			mr.BackendRefs = append(mr.BackendRefs, mb)
		}
		if rule.SessionPersistence != nil {
			mr.Unsupported = append(mr.Unsupported, "sessionPersistence")
		}
		out.Rules = append(out.Rules, mr)
	}
	return out
}

// routeMeta fills identity and precedence facts. A route never stored by an
// API server has generation 0; it counts as 1, as for policies.
func routeMeta(kind model.RouteKind, meta *metav1.ObjectMeta) model.Route {
	gen := meta.Generation
	if gen == 0 {
		gen = 1
	}
	out := model.Route{Key: model.Key{Namespace: meta.Namespace, Name: meta.Name}, Kind: kind, Generation: gen}
	if !meta.CreationTimestamp.IsZero() {
		out.CreationTimestamp = meta.CreationTimestamp.UTC()
	}
	return out
}

func parentRefs(refs []gatewayv1.ParentReference) []model.ParentRef {
	var out []model.ParentRef
	for _, p := range refs {
		m := model.ParentRef{Group: defaultParentGroup, Kind: defaultParentKind, Name: string(p.Name)}
		if p.Group != nil {
			m.Group = string(*p.Group)
		}
		if p.Kind != nil {
			m.Kind = string(*p.Kind)
		}
		if p.Namespace != nil {
			m.Namespace = string(*p.Namespace)
		}
		m.SectionName = sectionName(p.SectionName)
		if p.Port != nil {
			m.Port = int32(*p.Port)
		}
		out = append(out, m)
	}
	return out
}

func hostnames(hs []gatewayv1.Hostname) []string {
	var out []string
	for _, h := range hs {
		out = append(out, string(h))
	}
	return out
}

func httpMatch(m gatewayv1.HTTPRouteMatch) model.RouteMatch {
	out := model.RouteMatch{Path: &model.PathMatch{Type: model.MatchPathPrefix, Value: "/"}}
	if p := m.Path; p != nil {
		if p.Type != nil {
			out.Path.Type = string(*p.Type)
		}
		if p.Value != nil {
			out.Path.Value = *p.Value
		}
	}
	if m.Method != nil {
		out.Method = string(*m.Method)
	}
	for _, h := range m.Headers {
		out.Headers = append(out.Headers, valueMatch((*string)(h.Type), string(h.Name), h.Value))
	}
	for _, q := range m.QueryParams {
		out.QueryParams = append(out.QueryParams, valueMatch((*string)(q.Type), string(q.Name), q.Value))
	}
	return out
}

func grpcHeaders(hs []gatewayv1.GRPCHeaderMatch) []model.ValueMatch {
	var out []model.ValueMatch
	for _, h := range hs {
		out = append(out, valueMatch((*string)(h.Type), string(h.Name), h.Value))
	}
	return out
}

func valueMatch(typ *string, name, value string) model.ValueMatch {
	m := model.ValueMatch{Type: model.MatchExact, Name: name, Value: value}
	if typ != nil {
		m.Type = *typ
	}
	return m
}

func httpFilter(f gatewayv1.HTTPRouteFilter) model.RouteFilter {
	out := model.RouteFilter{
		Type:                   string(f.Type),
		RequestHeaderModifier:  headerModifier(f.RequestHeaderModifier),
		ResponseHeaderModifier: headerModifier(f.ResponseHeaderModifier),
		RequestMirror:          mirror(f.RequestMirror),
		ExtensionRef:           extensionRef(f.ExtensionRef),
	}
	if r := f.RequestRedirect; r != nil {
		out.RequestRedirect = &model.RedirectFilter{
			Scheme:     deref(r.Scheme),
			Path:       pathModifier(r.Path),
			StatusCode: defaultRedirect,
		}
		if r.Hostname != nil {
			out.RequestRedirect.Hostname = string(*r.Hostname)
		}
		if r.Port != nil {
			out.RequestRedirect.Port = int32(*r.Port)
		}
		if r.StatusCode != nil {
			out.RequestRedirect.StatusCode = int32(*r.StatusCode)
		}
	}
	if r := f.URLRewrite; r != nil {
		out.URLRewrite = &model.RewriteFilter{Path: pathModifier(r.Path)}
		if r.Hostname != nil {
			out.URLRewrite.Hostname = string(*r.Hostname)
		}
	}
	return out
}

func grpcFilter(f gatewayv1.GRPCRouteFilter) model.RouteFilter {
	return model.RouteFilter{
		Type:                   string(f.Type),
		RequestHeaderModifier:  headerModifier(f.RequestHeaderModifier),
		ResponseHeaderModifier: headerModifier(f.ResponseHeaderModifier),
		RequestMirror:          mirror(f.RequestMirror),
		ExtensionRef:           extensionRef(f.ExtensionRef),
	}
}

func headerModifier(h *gatewayv1.HTTPHeaderFilter) *model.HeaderModifier {
	if h == nil {
		return nil
	}
	out := &model.HeaderModifier{}
	for _, s := range h.Set {
		out.Set = append(out.Set, model.Header{Name: string(s.Name), Value: s.Value})
	}
	for _, a := range h.Add {
		out.Add = append(out.Add, model.Header{Name: string(a.Name), Value: a.Value})
	}
	out.Remove = append(out.Remove, h.Remove...)
	return out
}

// mirror converts the share of mirrored requests to a fraction: percent p
// is p/100, a fraction without denominator is n/100, neither is 100/100.
func mirror(m *gatewayv1.HTTPRequestMirrorFilter) *model.MirrorFilter {
	if m == nil {
		return nil
	}
	out := &model.MirrorFilter{
		BackendRef:  objectRef(m.BackendRef),
		Numerator:   percentDenominator,
		Denominator: percentDenominator,
	}
	switch {
	case m.Percent != nil:
		out.Numerator = *m.Percent
	case m.Fraction != nil:
		out.Numerator = m.Fraction.Numerator
		if m.Fraction.Denominator != nil {
			out.Denominator = *m.Fraction.Denominator
		}
	}
	return out
}

func extensionRef(r *gatewayv1.LocalObjectReference) *model.ObjectRef {
	if r == nil {
		return nil
	}
	return &model.ObjectRef{Group: string(r.Group), Kind: string(r.Kind), Name: string(r.Name)}
}

func pathModifier(p *gatewayv1.HTTPPathModifier) *model.PathModifier {
	if p == nil {
		return nil
	}
	out := &model.PathModifier{Type: string(p.Type)}
	switch p.Type {
	case gatewayv1.FullPathHTTPPathModifier:
		out.Value = deref(p.ReplaceFullPath)
	case gatewayv1.PrefixMatchHTTPPathModifier:
		out.Value = deref(p.ReplacePrefixMatch)
	}
	return out
}

// objectRef applies BackendObjectReference's defaults: the core group and
// kind Service.
func objectRef(r gatewayv1.BackendObjectReference) model.ObjectRef {
	out := model.ObjectRef{Kind: defaultBackendKind, Name: string(r.Name)}
	if r.Group != nil {
		out.Group = string(*r.Group)
	}
	if r.Kind != nil {
		out.Kind = string(*r.Kind)
	}
	if r.Namespace != nil {
		out.Namespace = string(*r.Namespace)
	}
	if r.Port != nil {
		out.Port = int32(*r.Port)
	}
	return out
}

func backendRef(b gatewayv1.BackendRef) model.BackendRef {
	out := model.BackendRef{ObjectRef: objectRef(b.BackendObjectReference), Weight: 1}
	if b.Weight != nil {
		out.Weight = *b.Weight
	}
	return out
}

func sectionName(s *gatewayv1.SectionName) string {
	if s == nil {
		return ""
	}
	return string(*s)
}

func duration(d *gatewayv1.Duration) string {
	if d == nil {
		return ""
	}
	return string(*d)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
