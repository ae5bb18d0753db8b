package translate

import (
	"slices"
	"strconv"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/xds/node"
)

const (
	// previousHostsPredicate makes a retry pick a host not tried before.
	previousHostsPredicate = "envoy.retry_host_predicates.previous_hosts"
	// hostSelectionRetryMaxAttempts is how often Envoy re-picks a host that
	// the predicate rejected. Envoy's default of 1 often lands on the same
	// failed host again in small backend sets; after 5 re-picks it gives up
	// and uses the last pick.
	hostSelectionRetryMaxAttempts = 5
	// retriableStatusCodes is the retryOn condition that makes
	// retriable_status_codes take effect; Envoy ignores the codes without it.
	retriableStatusCodes = "retriable-status-codes"
	// defaultBackoffBase is the first backoff when the policy's backoff
	// section sets none: Envoy's and gRPC's own default, written out
	// because base_interval is required once retry_back_off is present.
	defaultBackoffBase = 25 * time.Millisecond
)

// The retryOn conditions used when a retry section names none, per proxy
// kind, as the ResiliencePolicy API documents them.
var (
	defaultEnvoyRetryOn = []fjordv1a1.RetryOn{"connect-failure", "refused-stream", "unavailable", "cancelled", "resource-exhausted"}
	defaultGRPCRetryOn  = []fjordv1a1.RetryOn{"unavailable"}
)

// grpcConditions are the retryOn values that name gRPC status codes: the
// only ones proxyless gRPC honours, and the ones Envoy matches against the
// grpc-status of a response.
var grpcConditions = map[fjordv1a1.RetryOn]bool{
	"cancelled": true, "deadline-exceeded": true, "internal": true, "resource-exhausted": true, "unavailable": true,
}

// envoyRouteConfiguration is the route configuration of one port number: a
// virtual host per Service with that port, and a catch-all virtual host that
// passes requests for any other host through to their original destination
// (the port's listener catches every destination IP, so without it an
// application's request to an outside host on the same port would fail).
//
// A virtual host answers to name.ns, name.ns.svc and name.ns.svc.cluster.local,
// each with and without :port. The bare name is left out: this configuration
// is shared by the sidecars of every namespace, where "echo" would mean a
// different Service in each, and Envoy rejects a route configuration in which
// two virtual hosts claim the same domain.
func envoyRouteConfiguration(sps []servicePort, port int32) *routev3.RouteConfiguration {
	rc := &routev3.RouteConfiguration{Name: RouteName(node.Envoy, sps[0].svc, port)}
	for _, sp := range sps {
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{
			Name:    Authority(sp.svc, port),
			Domains: envoyDomains(sp, port),
			Routes:  envoyRoutes(sp),
		})
	}
	slices.SortFunc(rc.VirtualHosts, func(a, b *routev3.VirtualHost) int { return strings.Compare(a.GetName(), b.GetName()) })
	rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{
		Name:    PassthroughClusterName,
		Domains: []string{"*"},
		Routes: []*routev3.Route{prefixRoute(&routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: PassthroughClusterName},
			Timeout:          durationpb.New(0),
		})},
	})
	return rc
}

func envoyDomains(sp servicePort, port int32) []string {
	p := ":" + strconv.Itoa(int(port))
	short := sp.svc.Name + "." + sp.svc.Namespace
	return []string{short, short + p, short + ".svc", short + ".svc" + p, Host(sp.svc), Host(sp.svc) + p}
}

// grpcRouteConfiguration is the route configuration of one Service port for
// proxyless gRPC: one virtual host for the authority the client dialled,
// with the port's routes.
func grpcRouteConfiguration(sp servicePort) *routev3.RouteConfiguration {
	authority := Authority(sp.svc, sp.port.Port)
	return &routev3.RouteConfiguration{
		Name: RouteName(node.GRPC, sp.svc, sp.port.Port),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    authority,
			Domains: []string{authority},
			Routes:  grpcRoutes(sp),
		}},
	}
}

// prefixRoute sends every request ("/" prefixes every HTTP path and every
// gRPC method) to the action.
func prefixRoute(action *routev3.RouteAction) *routev3.Route {
	return &routev3.Route{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: action},
	}
}

// envoyRetryPolicy translates the retry section for Envoy: every condition,
// HTTP and gRPC, in one retry_on (Envoy accepts both vocabularies there),
// with per-try timeout, status codes, backoff and a predicate that steers
// each retry to a host not tried yet. Attempts 0 means no retries, so no
// policy; unset attempts leave num_retries to Envoy's default of 1.
func envoyRetryPolicy(r *fjordv1a1.Retry) *routev3.RetryPolicy {
	if r == nil || (r.Attempts != nil && *r.Attempts == 0) {
		return nil
	}
	on := conditions(r.RetryOn, defaultEnvoyRetryOn, func(fjordv1a1.RetryOn) bool { return true })
	codes := statusCodes(r.RetriableStatusCodes)
	if len(codes) > 0 && !slices.Contains(on, retriableStatusCodes) {
		on = append(on, retriableStatusCodes)
		slices.Sort(on)
	}
	return &routev3.RetryPolicy{
		RetryOn:              strings.Join(on, ","),
		NumRetries:           u32(r.Attempts),
		PerTryTimeout:        duration(r.PerTryTimeout),
		RetriableStatusCodes: codes,
		RetryBackOff:         backOff(r.Backoff),
		RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{
			Name:       previousHostsPredicate,
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: typed(&previoushostsv3.PreviousHostsPredicate{})},
		}},
		HostSelectionRetryMaxAttempts: hostSelectionRetryMaxAttempts,
	}
}

// grpcRetryPolicy translates the retry section for proxyless gRPC, which
// reads only retry_on's gRPC conditions, num_retries and retry_back_off.
// There is no policy when attempts is 0 (gRPC rejects num_retries 0) or
// when no gRPC condition is left (gRPC would not retry anyway, and an empty
// policy only misleads whoever reads the config).
func grpcRetryPolicy(r *fjordv1a1.Retry) *routev3.RetryPolicy {
	if r == nil || (r.Attempts != nil && *r.Attempts == 0) {
		return nil
	}
	on := conditions(r.RetryOn, defaultGRPCRetryOn, func(c fjordv1a1.RetryOn) bool { return grpcConditions[c] })
	if len(on) == 0 {
		return nil
	}
	return &routev3.RetryPolicy{
		RetryOn:      strings.Join(on, ","),
		NumRetries:   positive(r.Attempts),
		RetryBackOff: backOff(r.Backoff),
	}
}

// conditions returns the retryOn values that keep accepts, sorted and
// without repeats (retryOn is a set, so its order carries no meaning), or
// those of defaults when the policy names none.
func conditions(retryOn, defaults []fjordv1a1.RetryOn, keep func(fjordv1a1.RetryOn) bool) []string {
	if len(retryOn) == 0 {
		retryOn = defaults
	}
	var out []string
	for _, c := range retryOn {
		if keep(c) {
			out = append(out, string(c))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// statusCodes returns the HTTP status codes, sorted and without repeats.
func statusCodes(codes []int32) []uint32 {
	var out []uint32
	for _, c := range codes {
		if c > 0 {
			out = append(out, uint32(c))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// backOff is the jittered exponential backoff between retries. Envoy
// rejects a maximum below the base; since maxInterval is documented as a
// cap, the cap wins and the base is lowered to it.
func backOff(b *fjordv1a1.Backoff) *routev3.RetryPolicy_RetryBackOff {
	if b == nil {
		return nil
	}
	bo := &routev3.RetryPolicy_RetryBackOff{
		BaseInterval: positiveDuration(b.BaseInterval),
		MaxInterval:  positiveDuration(b.MaxInterval),
	}
	if bo.BaseInterval == nil {
		bo.BaseInterval = durationpb.New(defaultBackoffBase)
	}
	if bo.MaxInterval != nil && bo.MaxInterval.AsDuration() < bo.BaseInterval.AsDuration() {
		bo.BaseInterval = durationpb.New(bo.MaxInterval.AsDuration())
	}
	return bo
}
