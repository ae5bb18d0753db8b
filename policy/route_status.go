package policy

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// RouteStatus is the status of one route, as data, for the parents the mesh
// is responsible for: its parentRefs to Services. Parents to Gateways
// belong to other controllers and are left out.
type RouteStatus struct {
	Kind model.RouteKind `json:"kind"`
	model.Key
	// Generation is the route generation this status was computed from.
	Generation int64 `json:"generation"`
	// Parents holds one entry per distinct parentRef to a Service, in the
	// order written (Gateway API RouteParentStatus).
	Parents []RouteParentStatus `json:"parents"`
}

// RouteParentStatus is a route's status with respect to one parent
// Service: conditions Accepted and ResolvedRefs. Conditions carry no
// lastTransitionTime; the writer sets it when a condition changes.
type RouteParentStatus struct {
	ParentRef      model.ParentRef    `json:"parentRef"`
	ControllerName string             `json:"controllerName"`
	Conditions     []metav1.Condition `json:"conditions"`
}

// maxRouteParents is the most parent statuses Gateway API's status schema
// holds.
const maxRouteParents = 32

// routeStatus computes a route's status; false when the route has no
// Service parent, so the mesh has nothing to say about it.
func (r *resolver) routeStatus(st *routeState) (RouteStatus, bool) {
	rt := st.route
	if len(st.parents) == 0 {
		return RouteStatus{}, false
	}
	out := RouteStatus{Kind: rt.Kind, Key: rt.Key, Generation: rt.Generation}
	cond := func(typ gatewayv1.RouteConditionType, ok bool, reason, msg string) metav1.Condition {
		status := metav1.ConditionTrue
		if !ok {
			status = metav1.ConditionFalse
		}
		return metav1.Condition{Type: string(typ), Status: status, Reason: reason,
			Message: truncate(msg, maxMessageLength), ObservedGeneration: rt.Generation}
	}
	resolved := cond(gatewayv1.RouteConditionResolvedRefs, true, string(gatewayv1.RouteReasonResolvedRefs), "All references resolved.")
	if len(st.refs) > 0 {
		resolved = cond(gatewayv1.RouteConditionResolvedRefs, false, st.refsReason,
			strings.Join(st.refs, "; ")+". An unresolved backend gets no traffic; a rule left without backends answers 500.")
	}
	notes := routeNotes(st)
	parents := st.parents
	if len(parents) > maxRouteParents {
		parents = parents[:maxRouteParents]
	}
	for _, p := range parents {
		var accepted metav1.Condition
		switch {
		case len(st.invalid) > 0:
			accepted = cond(gatewayv1.RouteConditionAccepted, false, st.invalidReason,
				strings.Join(st.invalid, "; ")+". The route is not applied.")
		case p.reason != "":
			accepted = cond(gatewayv1.RouteConditionAccepted, false, p.reason, p.msg)
		default:
			var won []int32
			var lost []string
			for _, port := range p.ports {
				w := st.lostTo[portKey{p.svc, port}]
				if w == nil {
					won = append(won, port)
					continue
				}
				lost = append(lost, lostNote(st, w, port))
			}
			if len(won) == 0 {
				accepted = cond(gatewayv1.RouteConditionAccepted, false, reasonConflicted, strings.Join(lost, " "))
				break
			}
			msg := fmt.Sprintf("Accepted for %s of Service %s.", describePorts(won), p.svc)
			accepted = cond(gatewayv1.RouteConditionAccepted, true, string(gatewayv1.RouteReasonAccepted),
				strings.Join(append(append([]string{msg}, lost...), notes...), " "))
		}
		out.Parents = append(out.Parents, RouteParentStatus{
			ParentRef:      p.ref,
			ControllerName: fjordv1a1.ControllerName,
			Conditions:     []metav1.Condition{accepted, resolved},
		})
	}
	return out, true
}

func describePorts(ports []int32) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	if len(ports) == 1 {
		return "port " + s[0]
	}
	return "ports " + strings.Join(s, ", ")
}

// lostNote says why a route does not apply on a port: a route of the other
// kind holds it.
func lostNote(st, winner *routeState, port int32) string {
	why := fmt.Sprintf("it is older (created %s)", winner.route.CreationTimestamp.UTC().Format(time.RFC3339))
	if winner.route.CreationTimestamp.Equal(st.route.CreationTimestamp) {
		why = "it was created at the same time and comes first by namespace/name"
	}
	return fmt.Sprintf("Not applied on port %d: %s %s holds it, as %s; HTTPRoutes and GRPCRoutes cannot share a Service port.",
		port, winner.route.Kind, winner.route.Key, why)
}

func shadowNote(st, first *routeState, rule, match int, k portKey) string {
	return fmt.Sprintf("On port %d, rules[%d].matches[%d] is identical to a match of %s %s, which takes precedence.",
		k.port, rule, match, first.route.Kind, first.route.Key)
}

// routeNotes are the parts of the Accepted message that hold for every
// parent: what the mesh ignores and what a proxy kind cannot honour, so
// that nothing is dropped without a word.
func routeNotes(st *routeState) []string {
	rt := st.route
	var notes []string
	if len(rt.Hostnames) > 0 {
		notes = append(notes, "spec.hostnames is ignored: a route attached to a Service applies to every name of the Service.")
	}
	var ignored []string
	for i, rule := range rt.Rules {
		for _, f := range rule.Unsupported {
			ignored = append(ignored, fmt.Sprintf("rules[%d].%s", i, f))
		}
	}
	if len(ignored) > 0 {
		notes = append(notes, "Ignored (not supported): "+strings.Join(ignored, ", ")+".")
	}
	if g := grpcUnhonoured(rt); len(g) > 0 {
		notes = append(notes, "Not honoured by proxyless gRPC: "+strings.Join(g, "; ")+".")
	}
	return append(notes, st.shadowed...)
}

// grpcUnhonoured lists, per rule, what proxyless gRPC (grpc-go's xDS
// client) does not do: it rewrites, mirrors and modifies nothing, cannot
// redirect (a call that matches a redirect fails with UNAVAILABLE), has no
// per-try timeout, and retries on gRPC status codes, not HTTP ones.
func grpcUnhonoured(rt *model.Route) []string {
	var out []string
	for i, rule := range rt.Rules {
		var items []string
		for _, f := range rule.Filters {
			switch f.Type {
			case model.FilterRequestHeaderModifier, model.FilterResponseHeaderModifier, model.FilterRequestMirror, model.FilterURLRewrite:
				items = append(items, f.Type)
			case model.FilterRequestRedirect:
				items = append(items, "RequestRedirect (matching calls fail)")
			}
		}
		for j, b := range rule.BackendRefs {
			if len(b.Filters) > 0 {
				items = append(items, fmt.Sprintf("backendRefs[%d].filters", j))
			}
		}
		if t := rule.Timeouts; t != nil && t.BackendRequest != "" {
			items = append(items, "timeouts.backendRequest")
		}
		if rr := rule.Retry; rr != nil && len(rr.Codes) > 0 {
			items = append(items, "retry.codes")
		}
		if len(items) > 0 {
			out = append(out, fmt.Sprintf("rules[%d]: %s", i, strings.Join(items, ", ")))
		}
	}
	return out
}
