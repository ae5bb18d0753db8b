package policy

import (
	"cmp"
	"regexp"
	"slices"
	"strings"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// Route is one match of one route rule, resolved for one Service port:
// what to match, and what to do with a request that matches. A port's
// routes are ordered by Gateway API match precedence, so a proxy can try
// them in order and take the first that matches.
type Route struct {
	// From names the route, rule and match this entry comes from; nil for
	// the Service's own default route, which comes last and takes every
	// request no route matched.
	From  *RouteSource `json:"from,omitempty"`
	Match RouteMatch   `json:"match"`
	// Backends share the matching requests by weight. Empty when the route
	// redirects or answers directly.
	Backends []Backend `json:"backends,omitempty"`
	// Redirect answers with a redirect instead of forwarding.
	Redirect *model.RedirectFilter `json:"redirect,omitempty"`
	// DirectStatus, when not 0, is the HTTP status the proxy answers with
	// instead of forwarding: 500 for a rule none of whose backends is valid,
	// as Gateway API requires.
	DirectStatus    int32                 `json:"directStatus,omitempty"`
	RequestHeaders  *model.HeaderModifier `json:"requestHeaders,omitempty"`
	ResponseHeaders *model.HeaderModifier `json:"responseHeaders,omitempty"`
	Mirrors         []Mirror              `json:"mirrors,omitempty"`
	Rewrite         *model.RewriteFilter  `json:"rewrite,omitempty"`
	// Timeout and Retry are the effective settings of this route: the
	// port's policy with the rule's own timeouts and retry laid over it
	// (route-level settings beat service-level ones, field by field).
	Timeout *fjordv1a1.Timeout `json:"timeout,omitempty"`
	Retry   *fjordv1a1.Retry   `json:"retry,omitempty"`
}

// RouteSource names a match of a route rule.
type RouteSource struct {
	Kind model.RouteKind `json:"kind"`
	model.Key
	Rule  int `json:"rule"`
	Match int `json:"match"`
}

// RouteMatch is a match in HTTP terms: a GRPCRoute's service and method
// become a path ("/<service>/<method>"). PathPrefix matches whole path
// segments ("/a" matches "/a" and "/a/b", not "/ab").
type RouteMatch struct {
	PathType    string             `json:"pathType"`
	Path        string             `json:"path"`
	Method      string             `json:"method,omitempty"`
	Headers     []model.ValueMatch `json:"headers,omitempty"`
	QueryParams []model.ValueMatch `json:"queryParams,omitempty"`
}

// CatchAll reports whether the match takes every request.
func (m *RouteMatch) CatchAll() bool {
	return m.PathType == model.MatchPathPrefix && m.Path == "/" && m.Method == "" && len(m.Headers) == 0 && len(m.QueryParams) == 0
}

// Backend is one weighted destination of a route: a port of a Service
// (every Service port has a cluster), with header changes that apply only
// to requests sent there.
type Backend struct {
	Service         model.Key             `json:"service"`
	Port            int32                 `json:"port"`
	Weight          int32                 `json:"weight"`
	RequestHeaders  *model.HeaderModifier `json:"requestHeaders,omitempty"`
	ResponseHeaders *model.HeaderModifier `json:"responseHeaders,omitempty"`
}

// Mirror sends a copy of Numerator/Denominator of the requests to a
// Service port and ignores the answers.
type Mirror struct {
	Service     model.Key `json:"service"`
	Port        int32     `json:"port"`
	Numerator   int32     `json:"numerator"`
	Denominator int32     `json:"denominator"`
}

// portKey is one Service port by number, the unit routes attach to.
type portKey struct {
	svc  model.Key
	port int32
}

// routeState is one route of the snapshot on its way through resolution.
type routeState struct {
	route *model.Route
	// invalid lists what makes the route unusable as a whole; reason is
	// UnsupportedValue or IncompatibleFilters.
	invalid       []string
	invalidReason string
	// refs lists references that did not resolve, with the reason of the
	// first; the rest of the route still applies.
	refs       []string
	refsReason string
	parents    []routeParent
	rules      []resolvedRule
	// lostTo holds, per port where the route lost a conflict, the route
	// that won it.
	lostTo map[portKey]*routeState
	// shadowed notes matches that an older route's identical match hides.
	shadowed []string
}

// routeParent is one parentRef the mesh is responsible for (a Service).
type routeParent struct {
	ref model.ParentRef
	svc model.Key
	// ports are the Service ports the parentRef selects; empty when
	// reason says why it attaches nowhere.
	ports       []int32
	reason, msg string
}

// resolvedRule is a rule with its references resolved; the same for every
// port the route attaches to.
type resolvedRule struct {
	rule            *model.RouteRule
	backends        []Backend
	redirect        *model.RedirectFilter
	direct          int32
	requestHeaders  *model.HeaderModifier
	responseHeaders *model.HeaderModifier
	mirrors         []Mirror
	rewrite         *model.RewriteFilter
}

// resolveRoutes attaches the snapshot's routes to the Service ports of m,
// orders each port's routes, and computes every route's status.
func (r *resolver) resolveRoutes(in *model.Snapshot, m *Mesh) {
	if len(in.Routes) == 0 {
		return
	}
	ports := map[portKey]*Port{}
	for i := range m.Services {
		s := &m.Services[i]
		for j := range s.Ports {
			ports[portKey{s.Key, s.Ports[j].Port}] = &s.Ports[j]
		}
	}
	states := make([]*routeState, 0, len(in.Routes))
	for i := range in.Routes {
		st := &routeState{route: &in.Routes[i], lostTo: map[portKey]*routeState{}}
		r.checkRoute(st)
		if len(st.invalid) == 0 {
			r.resolveRules(st)
		}
		states = append(states, st)
	}
	slices.SortFunc(states, func(a, b *routeState) int { return compareRoutes(a.route, b.route) })

	attached := map[portKey][]*routeState{}
	var order []portKey
	for _, st := range states {
		if len(st.invalid) > 0 {
			continue
		}
		for _, p := range st.parents {
			for _, port := range p.ports {
				k := portKey{p.svc, port}
				if attached[k] == nil {
					order = append(order, k)
				}
				if !slices.Contains(attached[k], st) {
					attached[k] = append(attached[k], st)
				}
			}
		}
	}
	for _, k := range order {
		group := conflict(attached[k], k)
		ports[k].Routes = buildRoutes(group, k, ports[k])
	}
	for _, st := range states {
		if s, ok := r.routeStatus(st); ok {
			m.RouteStatuses = append(m.RouteStatuses, s)
		}
	}
	slices.SortFunc(m.RouteStatuses, func(a, b RouteStatus) int {
		return cmp.Or(compareKeys(a.Key, b.Key), strings.Compare(string(a.Kind), string(b.Kind)))
	})
}

// compareRoutes orders routes by age, the precedence Gateway API gives
// between routes: the oldest creationTimestamp first, then namespace/name,
// then kind so the order is total.
func compareRoutes(a, b *model.Route) int {
	return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp), compareKeys(a.Key, b.Key),
		strings.Compare(string(a.Kind), string(b.Kind)))
}

// conflict settles the routes attached to one port. HTTPRoutes and
// GRPCRoutes cannot share a port (Gateway API: of two routes of the two
// kinds on one listener, exactly one is accepted): the kind of the oldest
// route wins, and the routes of the other kind lose on this port. group is
// ordered by age, so its first route is the oldest.
func conflict(group []*routeState, k portKey) []*routeState {
	winner := group[0]
	var kept []*routeState
	for _, st := range group {
		if st.route.Kind != winner.route.Kind {
			st.lostTo[k] = winner
			continue
		}
		kept = append(kept, st)
	}
	return kept
}

// buildRoutes expands every rule match of the routes on one port into a
// Route, orders them by precedence and ends the list with the Service's own
// default route, unless a route already catches every request.
func buildRoutes(group []*routeState, k portKey, port *Port) []Route {
	type entry struct {
		st    *routeState
		rule  int
		match int
		model model.RouteMatch
		route Route
	}
	var entries []entry
	for _, st := range group {
		for ri := range st.rules {
			rr := &st.rules[ri]
			matches := rr.rule.Matches
			if len(matches) == 0 {
				matches = []model.RouteMatch{defaultMatch(st.route.Kind)}
			}
			for mi, mm := range matches {
				rt := Route{
					From:            &RouteSource{Kind: st.route.Kind, Key: st.route.Key, Rule: ri, Match: mi},
					Match:           httpMatch(st.route.Kind, mm),
					Backends:        slices.Clone(rr.backends),
					Redirect:        rr.redirect,
					DirectStatus:    rr.direct,
					RequestHeaders:  rr.requestHeaders,
					ResponseHeaders: rr.responseHeaders,
					Mirrors:         slices.Clone(rr.mirrors),
					Rewrite:         rr.rewrite,
				}
				rt.Timeout, rt.Retry = effective(&port.Policy, rr.rule)
				entries = append(entries, entry{st: st, rule: ri, match: mi, model: mm, route: rt})
			}
		}
	}
	slices.SortStableFunc(entries, func(a, b entry) int {
		if c := comparePrecedence(a.st.route.Kind, a.model, b.model); c != 0 {
			return c
		}
		// Ties go to the oldest route, then to the first rule and match in
		// it; group and the loops above are already in that order.
		return 0
	})
	out := make([]Route, 0, len(entries)+1)
	seen := map[string]*routeState{}
	for _, e := range entries {
		id := matchID(&e.route.Match)
		if first, ok := seen[id]; ok && first != e.st {
			e.st.shadowed = append(e.st.shadowed, shadowNote(e.st, first, e.rule, e.match, k))
		} else if !ok {
			seen[id] = e.st
		}
		out = append(out, e.route)
	}
	if len(out) == 0 || !out[len(out)-1].Match.CatchAll() {
		out = append(out, Route{
			Match:    RouteMatch{PathType: model.MatchPathPrefix, Path: "/"},
			Backends: []Backend{{Service: k.svc, Port: k.port, Weight: 1}},
			Timeout:  port.Policy.Timeout.DeepCopy(),
			Retry:    port.Policy.Retry.DeepCopy(),
		})
	}
	return out
}

// defaultMatch is the match of a rule that has none: every request.
func defaultMatch(kind model.RouteKind) model.RouteMatch {
	if kind == model.KindGRPCRoute {
		return model.RouteMatch{}
	}
	return model.RouteMatch{Path: &model.PathMatch{Type: model.MatchPathPrefix, Value: "/"}}
}

// httpMatch puts a match in HTTP terms. A gRPC call's path is
// /<service>/<method>: an exact service and method is an exact path, a
// service alone a path prefix, and anything else a regular expression.
func httpMatch(kind model.RouteKind, m model.RouteMatch) RouteMatch {
	out := RouteMatch{
		PathType:    model.MatchPathPrefix,
		Path:        "/",
		Method:      m.Method,
		Headers:     slices.Clone(m.Headers),
		QueryParams: slices.Clone(m.QueryParams),
	}
	if kind != model.KindGRPCRoute {
		if m.Path != nil {
			out.PathType, out.Path = m.Path.Type, m.Path.Value
		}
		return out
	}
	g := m.GRPCMethod
	switch {
	case g == nil || (g.Service == "" && g.Method == ""):
	case g.Type == model.MatchExact && g.Method == "":
		out.Path = "/" + g.Service
	case g.Type == model.MatchExact && g.Service != "":
		out.PathType, out.Path = model.MatchExact, "/"+g.Service+"/"+g.Method
	default:
		svc, method := anySegment, anySegment
		if g.Service != "" {
			svc = exprOrLiteral(g.Type, g.Service)
		}
		if g.Method != "" {
			method = exprOrLiteral(g.Type, g.Method)
		}
		out.PathType, out.Path = model.MatchRegularExpression, "/"+svc+"/"+method
	}
	return out
}

// anySegment matches one path segment.
const anySegment = "[^/]+"

func exprOrLiteral(typ, v string) string {
	if typ == model.MatchRegularExpression {
		return "(?:" + v + ")"
	}
	return regexp.QuoteMeta(v)
}

// comparePrecedence orders two matches of routes of one kind by Gateway
// API's match precedence; 0 means the spec leaves the tie to route age and
// rule order.
//
// HTTPRoute: an Exact path first, then RegularExpression paths (whose place
// the spec leaves to implementations; longer expressions first), then
// PathPrefix by length, longest first; then a match with a method, then
// more header matches, then more query parameter matches.
//
// GRPCRoute: the longer service, then the longer method, then more header
// matches.
func comparePrecedence(kind model.RouteKind, a, b model.RouteMatch) int {
	if kind == model.KindGRPCRoute {
		as, am := grpcParts(a)
		bs, bm := grpcParts(b)
		return cmp.Or(cmp.Compare(len(bs), len(as)), cmp.Compare(len(bm), len(am)), cmp.Compare(len(b.Headers), len(a.Headers)))
	}
	rank := func(m model.RouteMatch) (int, int) {
		switch m.Path.Type {
		case model.MatchExact:
			return 0, len(m.Path.Value)
		case model.MatchRegularExpression:
			return 1, len(m.Path.Value)
		}
		return 2, len(m.Path.Value)
	}
	ar, al := rank(a)
	br, bl := rank(b)
	hasMethod := func(m model.RouteMatch) int {
		if m.Method != "" {
			return 1
		}
		return 0
	}
	return cmp.Or(cmp.Compare(ar, br), cmp.Compare(bl, al), cmp.Compare(hasMethod(b), hasMethod(a)),
		cmp.Compare(len(b.Headers), len(a.Headers)), cmp.Compare(len(b.QueryParams), len(a.QueryParams)))
}

func grpcParts(m model.RouteMatch) (string, string) {
	if m.GRPCMethod == nil {
		return "", ""
	}
	return m.GRPCMethod.Service, m.GRPCMethod.Method
}

// matchID identifies a match for finding identical ones; header and query
// matches are a set, so their order does not count.
func matchID(m *RouteMatch) string {
	var b strings.Builder
	b.WriteString(m.PathType + "\x00" + m.Path + "\x00" + m.Method)
	for _, list := range [][]model.ValueMatch{m.Headers, m.QueryParams} {
		items := make([]string, len(list))
		for i, v := range list {
			items[i] = v.Type + "\x01" + strings.ToLower(v.Name) + "\x01" + v.Value
		}
		slices.Sort(items)
		b.WriteString("\x00" + strings.Join(items, "\x02"))
	}
	return b.String()
}

// effective lays a rule's timeouts and retry over the port's policy: what
// the rule sets wins, the rest comes from the policy.
//
// timeouts.request replaces timeout.request. timeouts.backendRequest bounds
// each try: it replaces retry.perTryTimeout when the route retries, and
// otherwise, the one try being the whole request, it bounds the request
// (when shorter than the request timeout). retry.attempts replaces
// retry.attempts, retry.codes replaces retry.retriableStatusCodes, and
// retry.backoff becomes the base of the backoff ("0s" leaves the policy's).
func effective(p *fjordv1a1.ResiliencePolicySpec, rule *model.RouteRule) (*fjordv1a1.Timeout, *fjordv1a1.Retry) {
	timeout, retry := p.Timeout.DeepCopy(), p.Retry.DeepCopy()
	if rr := rule.Retry; rr != nil {
		if retry == nil {
			retry = &fjordv1a1.Retry{}
		}
		if rr.Attempts != nil {
			retry.Attempts = ptr(*rr.Attempts)
		}
		if len(rr.Codes) > 0 {
			retry.RetriableStatusCodes = slices.Clone(rr.Codes)
		}
		if d, err := fjordv1a1.Duration(rr.Backoff).Parse(); err == nil && d > 0 {
			retry.Backoff = &fjordv1a1.Backoff{BaseInterval: ptr(fjordv1a1.Duration(rr.Backoff))}
		}
	}
	to := rule.Timeouts
	if to == nil {
		return timeout, retry
	}
	if to.Request != "" {
		if timeout == nil {
			timeout = &fjordv1a1.Timeout{}
		}
		timeout.Request = ptr(fjordv1a1.Duration(to.Request))
	}
	if to.BackendRequest != "" {
		perTry := fjordv1a1.Duration(to.BackendRequest)
		if retry != nil && (retry.Attempts == nil || *retry.Attempts > 0) {
			retry.PerTryTimeout = &perTry
			return timeout, retry
		}
		if timeout == nil {
			timeout = &fjordv1a1.Timeout{}
		}
		if shorter(perTry, timeout.Request) {
			timeout.Request = &perTry
		}
	}
	return timeout, retry
}

// shorter reports whether d bounds a request more tightly than limit,
// where an unset or zero limit means none.
func shorter(d fjordv1a1.Duration, limit *fjordv1a1.Duration) bool {
	v, err := d.Parse()
	if err != nil || v == 0 {
		return false
	}
	if limit == nil {
		return true
	}
	l, err := limit.Parse()
	return err != nil || l == 0 || v < l
}

func ptr[T any](v T) *T { return &v }
