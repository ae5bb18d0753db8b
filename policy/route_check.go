package policy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// Route condition reasons the mesh adds to Gateway API's: a route that lost
// a Service port to a route of the other kind.
const reasonConflicted = "Conflicted"

// httpMethods are the methods HTTPRoute's method match allows.
var httpMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// redirectCodes are the redirect status codes Envoy can answer with.
var redirectCodes = []int32{301, 302, 303, 307, 308}

const (
	minRetryCode = 400
	maxRetryCode = 599
)

// checkRoute validates a route and finds the Service ports its parentRefs
// select. Problems that make the route unusable go to st.invalid; parents
// that select nothing carry their reason. Like Validate for policies, it
// does not trust the API server: standalone mode has none.
func (r *resolver) checkRoute(st *routeState) {
	rt := st.route
	seen := map[model.ParentRef]bool{}
	for _, ref := range rt.ParentRefs {
		if ref.Group != "" || ref.Kind != "Service" || seen[ref] {
			continue // another controller's parent (a Gateway), or a repeat
		}
		seen[ref] = true
		p := routeParent{ref: ref, svc: model.Key{Namespace: rt.Namespace, Name: ref.Name}}
		if ref.Namespace != "" {
			p.svc.Namespace = ref.Namespace
		}
		svc, ok := r.services[p.svc]
		switch {
		case p.svc.Namespace != rt.Namespace:
			p.reason = string(gatewayv1.RouteReasonNotAllowedByListeners)
			p.msg = fmt.Sprintf("Service %s is in another namespace: routes attach only to Services of their own namespace (consumer routes are not supported).", p.svc)
		case !ok:
			p.reason = string(gatewayv1.RouteReasonNoMatchingParent)
			p.msg = fmt.Sprintf("Service %s not found.", p.svc)
		default:
			for _, sp := range svc.Ports {
				if (ref.SectionName == "" || sp.Name == ref.SectionName) && (ref.Port == 0 || sp.Port == ref.Port) {
					p.ports = append(p.ports, sp.Port)
				}
			}
			slices.Sort(p.ports)
			p.ports = slices.Compact(p.ports)
			if len(p.ports) == 0 {
				p.reason = string(gatewayv1.RouteReasonNoMatchingParent)
				p.msg = fmt.Sprintf("Service %s has no port%s.", p.svc, portSelector(ref))
			}
		}
		st.parents = append(st.parents, p)
	}
	fail := func(reason, path, format string, args ...any) {
		if st.invalidReason == "" || reason == string(gatewayv1.RouteReasonIncompatibleFilters) {
			st.invalidReason = reason
		}
		st.invalid = append(st.invalid, fmt.Sprintf("spec.%s: %s", path, fmt.Sprintf(format, args...)))
	}
	for i := range rt.Rules {
		checkRule(rt.Kind, &rt.Rules[i], fmt.Sprintf("rules[%d]", i), fail)
	}
}

func portSelector(ref model.ParentRef) string {
	var parts []string
	if ref.SectionName != "" {
		parts = append(parts, fmt.Sprintf(" named %q", ref.SectionName))
	}
	if ref.Port != 0 {
		parts = append(parts, fmt.Sprintf(" numbered %d", ref.Port))
	}
	return strings.Join(parts, " and")
}

type failFunc func(reason, path, format string, args ...any)

var unsupported = string(gatewayv1.RouteReasonUnsupportedValue)

func checkRule(kind model.RouteKind, rule *model.RouteRule, at string, fail failFunc) {
	for j, m := range rule.Matches {
		checkMatch(kind, m, fmt.Sprintf("%s.matches[%d]", at, j), fail)
	}
	var redirect, rewrite bool
	for j, f := range rule.Filters {
		path := fmt.Sprintf("%s.filters[%d]", at, j)
		checkFilter(kind, f, path, false, fail)
		redirect = redirect || f.Type == model.FilterRequestRedirect
		rewrite = rewrite || f.Type == model.FilterURLRewrite
		if pm := prefixModifier(f); pm && !allPrefixMatches(rule.Matches) {
			fail(string(gatewayv1.RouteReasonIncompatibleFilters), path, "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match")
		}
	}
	if redirect && rewrite {
		fail(string(gatewayv1.RouteReasonIncompatibleFilters), at+".filters", "RequestRedirect and URLRewrite cannot be used together")
	}
	for j, b := range rule.BackendRefs {
		path := fmt.Sprintf("%s.backendRefs[%d]", at, j)
		if b.Weight < 0 {
			fail(unsupported, path+".weight", "must be at least 0, got %d", b.Weight)
		}
		for k, f := range b.Filters {
			checkFilter(kind, f, fmt.Sprintf("%s.filters[%d]", path, k), true, fail)
		}
	}
	if t := rule.Timeouts; t != nil {
		req := checkDuration(t.Request, at+".timeouts.request", fail)
		be := checkDuration(t.BackendRequest, at+".timeouts.backendRequest", fail)
		if req > 0 && be > req {
			fail(unsupported, at+".timeouts.backendRequest", "must not be longer than timeouts.request (%s), got %s", t.Request, t.BackendRequest)
		}
	}
	if rr := rule.Retry; rr != nil {
		if rr.Attempts != nil && (*rr.Attempts < 0 || int64(*rr.Attempts) > maxima["retry.attempts"]) {
			fail(unsupported, at+".retry.attempts", "must be 0 to %d, got %d", maxima["retry.attempts"], *rr.Attempts)
		}
		for k, c := range rr.Codes {
			if c < minRetryCode || c > maxRetryCode {
				fail(unsupported, fmt.Sprintf("%s.retry.codes[%d]", at, k), "%d is not a retriable HTTP status (%d to %d)", c, minRetryCode, maxRetryCode)
			}
		}
		checkDuration(rr.Backoff, at+".retry.backoff", fail)
	}
}

func checkMatch(kind model.RouteKind, m model.RouteMatch, at string, fail failFunc) {
	if kind == model.KindGRPCRoute {
		if g := m.GRPCMethod; g != nil {
			switch g.Type {
			case model.MatchExact:
				for _, f := range [][2]string{{"service", g.Service}, {"method", g.Method}} {
					if strings.Contains(f[1], "/") {
						fail(unsupported, at+".method."+f[0], "must not contain \"/\", got %q", f[1])
					}
				}
			case model.MatchRegularExpression:
				checkRegex(g.Service, at+".method.service", fail)
				checkRegex(g.Method, at+".method.method", fail)
			default:
				fail(unsupported, at+".method.type", "unsupported value %q: want Exact or RegularExpression", g.Type)
			}
			if g.Service == "" && g.Method == "" {
				fail(unsupported, at+".method", "must set service, method or both")
			}
		}
	} else {
		if p := m.Path; p != nil {
			switch p.Type {
			case model.MatchExact, model.MatchPathPrefix:
				if !strings.HasPrefix(p.Value, "/") {
					fail(unsupported, at+".path.value", "must start with \"/\", got %q", p.Value)
				}
			case model.MatchRegularExpression:
				checkRegex(p.Value, at+".path.value", fail)
			default:
				fail(unsupported, at+".path.type", "unsupported value %q: want Exact, PathPrefix or RegularExpression", p.Type)
			}
		}
		if m.Method != "" && !slices.Contains(httpMethods, m.Method) {
			fail(unsupported, at+".method", "unsupported value %q: want one of %s", m.Method, strings.Join(httpMethods, ", "))
		}
		checkValueMatches(m.QueryParams, at+".queryParams", fail)
	}
	checkValueMatches(m.Headers, at+".headers", fail)
}

func checkValueMatches(ms []model.ValueMatch, at string, fail failFunc) {
	for i, v := range ms {
		path := fmt.Sprintf("%s[%d]", at, i)
		if v.Name == "" {
			fail(unsupported, path+".name", "required")
		}
		switch v.Type {
		case model.MatchExact:
		case model.MatchRegularExpression:
			checkRegex(v.Value, path+".value", fail)
		default:
			fail(unsupported, path+".type", "unsupported value %q: want Exact or RegularExpression", v.Type)
		}
	}
}

// checkRegex accepts the RE2 syntax both proxies use (Envoy's safe_regex
// and grpc-go's regexp).
func checkRegex(expr, at string, fail failFunc) {
	if _, err := regexp.Compile(expr); err != nil {
		fail(unsupported, at, "invalid regular expression: %v", err)
	}
}

// checkFilter checks one filter; onBackend says it is a backendRef's
// filter, where only header modifiers are supported.
func checkFilter(kind model.RouteKind, f model.RouteFilter, at string, onBackend bool, fail failFunc) {
	var set bool
	switch f.Type {
	case model.FilterRequestHeaderModifier:
		set = f.RequestHeaderModifier != nil
		checkHeaders(f.RequestHeaderModifier, at+".requestHeaderModifier", fail)
	case model.FilterResponseHeaderModifier:
		set = f.ResponseHeaderModifier != nil
		checkHeaders(f.ResponseHeaderModifier, at+".responseHeaderModifier", fail)
	case model.FilterRequestMirror:
		set = f.RequestMirror != nil
		if m := f.RequestMirror; m != nil && (m.Numerator < 0 || m.Denominator <= 0 || m.Numerator > m.Denominator) {
			fail(unsupported, at+".requestMirror", "the mirrored share %d/%d must be between 0 and 1", m.Numerator, m.Denominator)
		}
	case model.FilterRequestRedirect:
		set = f.RequestRedirect != nil && kind == model.KindHTTPRoute
		if rd := f.RequestRedirect; rd != nil {
			if rd.Scheme != "" && rd.Scheme != "http" && rd.Scheme != "https" {
				fail(unsupported, at+".requestRedirect.scheme", "unsupported value %q: want http or https", rd.Scheme)
			}
			if !slices.Contains(redirectCodes, rd.StatusCode) {
				fail(unsupported, at+".requestRedirect.statusCode", "unsupported value %d: want one of 301, 302, 303, 307, 308", rd.StatusCode)
			}
			checkPathModifier(rd.Path, at+".requestRedirect.path", fail)
		}
	case model.FilterURLRewrite:
		set = f.URLRewrite != nil && kind == model.KindHTTPRoute
		if rw := f.URLRewrite; rw != nil {
			checkPathModifier(rw.Path, at+".urlRewrite.path", fail)
		}
	case model.FilterExtensionRef:
		// Resolution reports it (ResolvedRefs InvalidKind) and answers 500.
		set = f.ExtensionRef != nil
	default:
		fail(unsupported, at+".type", "filter type %q is not supported", f.Type)
		return
	}
	if !set {
		fail(unsupported, at, "filter type %s needs its %s field", f.Type, lowerFirst(f.Type))
		return
	}
	if onBackend && f.Type != model.FilterRequestHeaderModifier && f.Type != model.FilterResponseHeaderModifier {
		fail(unsupported, at+".type", "filter type %s is not supported on a backendRef, only header modifiers are", f.Type)
	}
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	// Every filter type starts with an ASCII capital; URLRewrite's field is
	// urlRewrite.
	if strings.HasPrefix(s, "URL") {
		return "url" + s[3:]
	}
	return strings.ToLower(s[:1]) + s[1:]
}

func checkHeaders(h *model.HeaderModifier, at string, fail failFunc) {
	if h == nil {
		return
	}
	for i, hd := range h.Set {
		if hd.Name == "" {
			fail(unsupported, fmt.Sprintf("%s.set[%d].name", at, i), "required")
		}
	}
	for i, hd := range h.Add {
		if hd.Name == "" {
			fail(unsupported, fmt.Sprintf("%s.add[%d].name", at, i), "required")
		}
	}
	for i, name := range h.Remove {
		if name == "" {
			fail(unsupported, fmt.Sprintf("%s.remove[%d]", at, i), "must not be empty")
		}
	}
}

func checkPathModifier(p *model.PathModifier, at string, fail failFunc) {
	if p == nil {
		return
	}
	switch p.Type {
	case model.ReplaceFullPath, model.ReplacePrefixMatch:
		if !strings.HasPrefix(p.Value, "/") {
			fail(unsupported, at, "the replacement path must start with \"/\", got %q", p.Value)
		}
	default:
		fail(unsupported, at+".type", "unsupported value %q: want ReplaceFullPath or ReplacePrefixMatch", p.Type)
	}
}

func prefixModifier(f model.RouteFilter) bool {
	var p *model.PathModifier
	switch {
	case f.URLRewrite != nil:
		p = f.URLRewrite.Path
	case f.RequestRedirect != nil:
		p = f.RequestRedirect.Path
	}
	return p != nil && p.Type == model.ReplacePrefixMatch
}

// allPrefixMatches reports whether every match is a path prefix match (no
// matches means the default, a prefix match on "/").
func allPrefixMatches(ms []model.RouteMatch) bool {
	for _, m := range ms {
		if m.Path != nil && m.Path.Type != model.MatchPathPrefix {
			return false
		}
	}
	return true
}

// checkDuration parses a Gateway API duration, whose format is the
// policy's, and returns it in nanoseconds (0 when unset or invalid).
func checkDuration(d, at string, fail failFunc) int64 {
	if d == "" {
		return 0
	}
	v, err := fjordv1a1.Duration(d).Parse()
	if err != nil {
		fail(unsupported, at, "%v", err)
		return 0
	}
	return int64(v)
}

// resolveRules resolves every rule's references once; a reference that
// does not resolve is left out and reported in ResolvedRefs.
func (r *resolver) resolveRules(st *routeState) {
	rt := st.route
	problem := func(reason, format string, args ...any) {
		if st.refsReason == "" {
			st.refsReason = reason
		}
		st.refs = append(st.refs, fmt.Sprintf(format, args...))
	}
	for i := range rt.Rules {
		rule := &rt.Rules[i]
		rr := resolvedRule{rule: rule}
		at := fmt.Sprintf("spec.rules[%d]", i)
		for j, f := range rule.Filters {
			switch f.Type {
			case model.FilterRequestHeaderModifier:
				rr.requestHeaders = joinHeaders(rr.requestHeaders, f.RequestHeaderModifier)
			case model.FilterResponseHeaderModifier:
				rr.responseHeaders = joinHeaders(rr.responseHeaders, f.ResponseHeaderModifier)
			case model.FilterRequestRedirect:
				rd := *f.RequestRedirect
				rd.Path = copyPath(rd.Path)
				rr.redirect = &rd
			case model.FilterURLRewrite:
				rw := *f.URLRewrite
				rw.Path = copyPath(rw.Path)
				rr.rewrite = &rw
			case model.FilterRequestMirror:
				m := f.RequestMirror
				svc, port, ok := r.backend(rt.Namespace, m.BackendRef, fmt.Sprintf("%s.filters[%d].requestMirror.backendRef", at, j), problem)
				if ok {
					rr.mirrors = append(rr.mirrors, Mirror{Service: svc, Port: port, Numerator: m.Numerator, Denominator: m.Denominator})
				}
			case model.FilterExtensionRef:
				e := f.ExtensionRef
				problem(string(gatewayv1.RouteReasonInvalidKind), "%s.filters[%d].extensionRef: %s %s/%s is not supported (no extension filters are); the rule answers 500",
					at, j, e.Kind, e.Group, e.Name)
				rr.direct = 500
			}
		}
		for j, b := range rule.BackendRefs {
			svc, port, ok := r.backend(rt.Namespace, b.ObjectRef, fmt.Sprintf("%s.backendRefs[%d]", at, j), problem)
			if !ok || b.Weight == 0 {
				continue
			}
			be := Backend{Service: svc, Port: port, Weight: b.Weight}
			for _, f := range b.Filters {
				switch f.Type {
				case model.FilterRequestHeaderModifier:
					be.RequestHeaders = joinHeaders(be.RequestHeaders, f.RequestHeaderModifier)
				case model.FilterResponseHeaderModifier:
					be.ResponseHeaders = joinHeaders(be.ResponseHeaders, f.ResponseHeaderModifier)
				}
			}
			rr.backends = append(rr.backends, be)
		}
		switch {
		case rr.direct != 0 || rr.redirect != nil:
			rr.backends = nil
		case len(rr.backends) == 0:
			// Gateway API: a rule whose backends are all invalid (or that
			// has none, or only weight 0) answers 500.
			rr.direct = 500
		}
		st.rules = append(st.rules, rr)
	}
}

// backend resolves a reference to a Service port in the route's
// namespace.
func (r *resolver) backend(ns string, ref model.ObjectRef, at string, problem func(reason, format string, args ...any)) (model.Key, int32, bool) {
	key := model.Key{Namespace: ns, Name: ref.Name}
	if ref.Namespace != "" {
		key.Namespace = ref.Namespace
	}
	if ref.Group != "" || ref.Kind != "Service" {
		problem(string(gatewayv1.RouteReasonInvalidKind), "%s: %s in group %q is not supported, only Services", at, ref.Kind, ref.Group)
		return key, 0, false
	}
	if key.Namespace != ns {
		problem(string(gatewayv1.RouteReasonRefNotPermitted), "%s: Service %s is in another namespace (references across namespaces are not supported)", at, key)
		return key, 0, false
	}
	svc, ok := r.services[key]
	switch {
	case !ok:
		problem(string(gatewayv1.RouteReasonBackendNotFound), "%s: Service %s not found", at, key)
		return key, 0, false
	case ref.Port == 0:
		problem(string(gatewayv1.RouteReasonBackendNotFound), "%s.port: required for a Service", at)
		return key, 0, false
	case !slices.ContainsFunc(svc.Ports, func(p model.ServicePort) bool { return p.Port == ref.Port }):
		problem(string(gatewayv1.RouteReasonBackendNotFound), "%s: Service %s has no port %d", at, key, ref.Port)
		return key, 0, false
	}
	return key, ref.Port, true
}

// joinHeaders adds b's changes to a's; the API allows one filter of each
// type per rule, so this matters only for input that skipped validation.
func joinHeaders(a, b *model.HeaderModifier) *model.HeaderModifier {
	if b == nil {
		return a
	}
	out := &model.HeaderModifier{}
	if a != nil {
		*out = model.HeaderModifier{Set: slices.Clone(a.Set), Add: slices.Clone(a.Add), Remove: slices.Clone(a.Remove)}
	}
	out.Set = append(out.Set, b.Set...)
	out.Add = append(out.Add, b.Add...)
	out.Remove = append(out.Remove, b.Remove...)
	return out
}

// copyPath copies a path modifier, so the resolved mesh shares no memory
// with the snapshot.
func copyPath(p *model.PathModifier) *model.PathModifier {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}
