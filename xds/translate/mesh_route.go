package translate

import (
	"regexp"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fjordmesh/fjord/policy"
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// This file translates the mesh routes of a Service port (policy.Route,
// already in precedence order and ending with the Service's default route)
// into the routes of its virtual host, for each proxy kind.

// envoyRoutes are the routes of one Service port's virtual host for Envoy.
func envoyRoutes(sp servicePort) []*routev3.Route {
	p := &sp.port.Policy
	if len(sp.port.Routes) == 0 {
		action := envoyAction(p.Timeout, p.Retry)
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: sp.clusterName()}
		return []*routev3.Route{withFault(prefixRoute(action), p.FaultInjection)}
	}
	out := make([]*routev3.Route, 0, len(sp.port.Routes))
	for i := range sp.port.Routes {
		out = append(out, withFault(envoyRoute(&sp.port.Routes[i]), p.FaultInjection))
	}
	return out
}

// envoyAction is a forwarding action, without its destination, with the
// Service's or the route's timeout and retry. Envoy's default request
// timeout is 15s; without a setting the mesh imposes none, as for
// proxyless gRPC.
func envoyAction(t *fjordv1a1.Timeout, r *fjordv1a1.Retry) *routev3.RouteAction {
	action := &routev3.RouteAction{Timeout: durationpb.New(0), RetryPolicy: envoyRetryPolicy(r)}
	if t != nil {
		if d := duration(t.Request); d != nil {
			action.Timeout = d
		}
		action.IdleTimeout = duration(t.Idle)
	}
	return action
}

func envoyRoute(rt *policy.Route) *routev3.Route {
	out := &routev3.Route{Name: routeName(rt), Match: envoyMatch(&rt.Match)}
	switch {
	case rt.DirectStatus != 0:
		out.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: uint32(rt.DirectStatus)}}
	case rt.Redirect != nil:
		out.Action = &routev3.Route_Redirect{Redirect: redirect(rt.Redirect, &rt.Match)}
	default:
		action := envoyAction(rt.Timeout, rt.Retry)
		setDestination(action, rt.Backends, true)
		for _, m := range rt.Mirrors {
			action.RequestMirrorPolicies = append(action.RequestMirrorPolicies, &routev3.RouteAction_RequestMirrorPolicy{
				Cluster:         ClusterName(m.Service, m.Port),
				RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: fraction(m.Numerator, m.Denominator)},
			})
		}
		if rw := rt.Rewrite; rw != nil {
			if rw.Hostname != "" {
				action.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: rw.Hostname}
			}
			if pm := rw.Path; pm != nil {
				action.PrefixRewrite, action.RegexRewrite = pathRewrite(pm, &rt.Match)
			}
		}
		out.Action = &routev3.Route_Route{Route: action}
	}
	out.RequestHeadersToAdd, out.RequestHeadersToRemove = headers(rt.RequestHeaders)
	out.ResponseHeadersToAdd, out.ResponseHeadersToRemove = headers(rt.ResponseHeaders)
	return out
}

// grpcRoutes are the routes of one Service port's virtual host for
// proxyless gRPC. A route that can never match a gRPC call (a query
// parameter match, a method other than POST) is left out; grpc-go would
// skip a query parameter match anyway. Header changes, mirrors and rewrites
// are not sent: grpc-go does none of them, and the route's status says so.
// A redirect or a direct response is sent as such: grpc-go fails the calls
// that match it (UNAVAILABLE), which is the closest it comes to the answer
// an HTTP client would get.
func grpcRoutes(sp servicePort) []*routev3.Route {
	p := &sp.port.Policy
	if len(sp.port.Routes) == 0 {
		action := grpcAction(p.Timeout, p.Retry)
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: sp.clusterName()}
		return []*routev3.Route{withFault(prefixRoute(action), p.FaultInjection)}
	}
	var out []*routev3.Route
	for i := range sp.port.Routes {
		rt := &sp.port.Routes[i]
		m := &rt.Match
		if len(m.QueryParams) > 0 || (m.Method != "" && m.Method != "POST") {
			continue
		}
		r := &routev3.Route{Name: routeName(rt), Match: grpcMatch(m)}
		switch {
		case rt.DirectStatus != 0:
			r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: uint32(rt.DirectStatus)}}
		case rt.Redirect != nil:
			r.Action = &routev3.Route_Redirect{Redirect: redirect(rt.Redirect, m)}
		default:
			action := grpcAction(rt.Timeout, rt.Retry)
			setDestination(action, rt.Backends, false)
			r.Action = &routev3.Route_Route{Route: action}
		}
		out = append(out, withFault(r, p.FaultInjection))
	}
	return out
}

// grpcAction is a forwarding action, without its destination, for
// proxyless gRPC. gRPC ignores RouteAction.timeout; the request timeout
// becomes max_stream_duration, and grpc_timeout_header_max caps the
// deadline the application sets with the same value.
func grpcAction(t *fjordv1a1.Timeout, r *fjordv1a1.Retry) *routev3.RouteAction {
	action := &routev3.RouteAction{RetryPolicy: grpcRetryPolicy(r)}
	if t != nil {
		if d := duration(t.Request); d != nil {
			action.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: d, GrpcTimeoutHeaderMax: d}
		}
	}
	return action
}

// routeName names a route after its source, so that Envoy's stats and
// debug output say which route rule a request took.
func routeName(rt *policy.Route) string {
	f := rt.From
	if f == nil {
		return "default"
	}
	return string(f.Kind) + "/" + f.Namespace + "/" + f.Name + "/rule/" + strconv.Itoa(f.Rule) + "/match/" + strconv.Itoa(f.Match)
}

// setDestination sends the action to one cluster, or to weighted clusters
// when there are several backends or (with perBackendHeaders, for Envoy) a
// backend with header changes of its own. Resolution leaves no backend with
// weight 0, so the total is positive, as both proxies require.
func setDestination(action *routev3.RouteAction, backends []policy.Backend, perBackendHeaders bool) {
	own := func(b policy.Backend) bool {
		return perBackendHeaders && (b.RequestHeaders != nil || b.ResponseHeaders != nil)
	}
	if len(backends) == 1 && !own(backends[0]) {
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: ClusterName(backends[0].Service, backends[0].Port)}
		return
	}
	wc := &routev3.WeightedCluster{}
	for _, b := range backends {
		cw := &routev3.WeightedCluster_ClusterWeight{Name: ClusterName(b.Service, b.Port), Weight: wrapperspb.UInt32(uint32(b.Weight))}
		if own(b) {
			cw.RequestHeadersToAdd, cw.RequestHeadersToRemove = headers(b.RequestHeaders)
			cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove = headers(b.ResponseHeaders)
		}
		wc.Clusters = append(wc.Clusters, cw)
	}
	action.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
}

// envoyMatch translates a match for Envoy. Gateway API's PathPrefix
// matches whole segments, which is Envoy's path_separated_prefix (that
// takes no trailing slash); "/" is every path. An HTTP method is the
// :method header.
func envoyMatch(m *policy.RouteMatch) *routev3.RouteMatch {
	out := &routev3.RouteMatch{}
	switch m.PathType {
	case model.MatchExact:
		out.PathSpecifier = &routev3.RouteMatch_Path{Path: m.Path}
	case model.MatchRegularExpression:
		out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.Path}}
	default:
		if p := strings.TrimRight(m.Path, "/"); p != "" {
			out.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: p}
		} else {
			out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		}
	}
	if m.Method != "" {
		out.Headers = append(out.Headers, headerMatcher(model.ValueMatch{Type: model.MatchExact, Name: ":method", Value: m.Method}))
	}
	for _, h := range m.Headers {
		out.Headers = append(out.Headers, headerMatcher(h))
	}
	for _, q := range m.QueryParams {
		out.QueryParameters = append(out.QueryParameters, &routev3.QueryParameterMatcher{
			Name:                         q.Name,
			QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: stringMatcher(q)},
		})
	}
	return out
}

// grpcMatch translates a match for grpc-go, which knows no
// path_separated_prefix: a segment prefix other than "/" becomes a regular
// expression (grpc-go, like Envoy, matches it against the whole path).
func grpcMatch(m *policy.RouteMatch) *routev3.RouteMatch {
	out := &routev3.RouteMatch{}
	switch m.PathType {
	case model.MatchExact:
		out.PathSpecifier = &routev3.RouteMatch_Path{Path: m.Path}
	case model.MatchRegularExpression:
		out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.Path}}
	default:
		if p := strings.TrimRight(m.Path, "/"); p != "" {
			out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: regexp.QuoteMeta(p) + "(/.*)?"}}
		} else {
			out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		}
	}
	for _, h := range m.Headers {
		out.Headers = append(out.Headers, headerMatcher(h))
	}
	return out
}

func headerMatcher(v model.ValueMatch) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{
		Name:                 strings.ToLower(v.Name),
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatcher(v)},
	}
}

func stringMatcher(v model.ValueMatch) *matcherv3.StringMatcher {
	if v.Type == model.MatchRegularExpression {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: v.Value}}}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v.Value}}
}

// headers translates a header modifier: set overwrites, add appends.
func headers(h *model.HeaderModifier) ([]*corev3.HeaderValueOption, []string) {
	if h == nil {
		return nil, nil
	}
	var add []*corev3.HeaderValueOption
	for _, s := range h.Set {
		add = append(add, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: strings.ToLower(s.Name), Value: s.Value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		})
	}
	for _, a := range h.Add {
		add = append(add, &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: strings.ToLower(a.Name), Value: a.Value},
			AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD,
		})
	}
	var remove []string
	for _, r := range h.Remove {
		remove = append(remove, strings.ToLower(r))
	}
	return add, remove
}

// pathRewrite rewrites the path of a forwarded request. ReplaceFullPath
// replaces the whole path. ReplacePrefixMatch replaces the matched prefix
// (resolution allows it only on PathPrefix matches); replacing it with "/"
// takes a regular expression, because Envoy's prefix_rewrite would leave a
// double slash ("/admin/x" would become "//x").
func pathRewrite(pm *model.PathModifier, m *policy.RouteMatch) (string, *matcherv3.RegexMatchAndSubstitute) {
	if pm.Type == model.ReplaceFullPath {
		return "", &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^/.*$"}, Substitution: pm.Value}
	}
	prefix := strings.TrimRight(m.Path, "/")
	if pm.Value == "/" {
		return "", &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^" + regexp.QuoteMeta(prefix) + "/*"}, Substitution: "/"}
	}
	return pm.Value, nil
}

// redirect translates RequestRedirect; unset fields keep the request's.
func redirect(rd *model.RedirectFilter, m *policy.RouteMatch) *routev3.RedirectAction {
	out := &routev3.RedirectAction{HostRedirect: rd.Hostname, PortRedirect: uint32(max(rd.Port, 0)), ResponseCode: redirectCode(rd.StatusCode)}
	if rd.Scheme != "" {
		out.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: rd.Scheme}
	}
	if pm := rd.Path; pm != nil {
		switch prefix, regex := pathRewrite(pm, m); {
		case pm.Type == model.ReplaceFullPath:
			out.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: pm.Value}
		case regex != nil:
			out.PathRewriteSpecifier = &routev3.RedirectAction_RegexRewrite{RegexRewrite: regex}
		default:
			out.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: prefix}
		}
	}
	return out
}

func redirectCode(code int32) routev3.RedirectAction_RedirectResponseCode {
	switch code {
	case 301:
		return routev3.RedirectAction_MOVED_PERMANENTLY
	case 303:
		return routev3.RedirectAction_SEE_OTHER
	case 307:
		return routev3.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		return routev3.RedirectAction_PERMANENT_REDIRECT
	}
	return routev3.RedirectAction_FOUND
}

// fraction is n/d in the coarsest denominator that holds it exactly, or
// per million, rounded down.
func fraction(n, d int32) *typev3.FractionalPercent {
	switch {
	case d <= 0 || n >= d:
		return &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}
	case n <= 0:
		return &typev3.FractionalPercent{Denominator: typev3.FractionalPercent_HUNDRED}
	}
	for _, den := range []struct {
		v int64
		e typev3.FractionalPercent_DenominatorType
	}{{100, typev3.FractionalPercent_HUNDRED}, {10_000, typev3.FractionalPercent_TEN_THOUSAND}} {
		if den.v%int64(d) == 0 {
			return &typev3.FractionalPercent{Numerator: uint32(int64(n) * den.v / int64(d)), Denominator: den.e}
		}
	}
	return &typev3.FractionalPercent{Numerator: uint32(int64(n) * 1_000_000 / int64(d)), Denominator: typev3.FractionalPercent_MILLION}
}
