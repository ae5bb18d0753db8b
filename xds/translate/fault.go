package translate

import (
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonfaultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
)

// Fault injection is configured per route, never on the listener: every
// connection manager carries the fault filter with an empty configuration
// (no faults), and a route whose Service has a faultInjection section
// overrides it through typed_per_filter_config. Turning faults on or off
// then changes only route configurations, which both proxy kinds apply
// without draining connections, and grpc-go, which implements the same
// filter (gRFC A33), reads the same configuration.

// faultFilter is the connection manager's fault filter, before the router.
func faultFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{
		Name:       wellknown.Fault,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&faultv3.HTTPFault{})},
	}
}

// faultOverride is a route's typed_per_filter_config for the faults of its
// Service; nil when there are none.
func faultOverride(f *fjordv1a1.FaultInjection) map[string]*anypb.Any {
	cfg := fault(f)
	if cfg == nil {
		return nil
	}
	return map[string]*anypb.Any{wellknown.Fault: typed(cfg)}
}

// fault translates a faultInjection section. An abort without a status or
// a delay without a positive duration (possible only in a Mesh built by
// hand) is left out rather than emitted in a form the proxies reject.
func fault(f *fjordv1a1.FaultInjection) *faultv3.HTTPFault {
	if f == nil {
		return nil
	}
	out := &faultv3.HTTPFault{}
	if a := f.Abort; a != nil {
		abort := &faultv3.FaultAbort{Percentage: percentage(a.Percentage)}
		switch {
		case a.HTTPStatus != nil:
			abort.ErrorType = &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(*a.HTTPStatus)}
		case a.GRPCStatus != nil:
			abort.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: uint32(*a.GRPCStatus)}
		}
		if abort.ErrorType != nil {
			out.Abort = abort
		}
	}
	if d := f.Delay; d != nil {
		if fixed := positiveDuration(d.FixedDelay); fixed != nil {
			out.Delay = &commonfaultv3.FaultDelay{
				FaultDelaySecifier: &commonfaultv3.FaultDelay_FixedDelay{FixedDelay: fixed},
				Percentage:         percentage(d.Percentage),
			}
		}
	}
	if out.Abort == nil && out.Delay == nil {
		return nil
	}
	return out
}

// percentage is a policy percentage ("12.5") per million; unset is 100%.
func percentage(p *fjordv1a1.Decimal) *typev3.FractionalPercent {
	const million = 1_000_000
	n := uint32(million)
	if p != nil {
		if milli, err := p.Milli(); err == nil {
			n = min(milli*10, million)
		}
	}
	return &typev3.FractionalPercent{Numerator: n, Denominator: typev3.FractionalPercent_MILLION}
}

// withFault adds the Service's fault configuration to a route.
func withFault(r *routev3.Route, f *fjordv1a1.FaultInjection) *routev3.Route {
	r.TypedPerFilterConfig = faultOverride(f)
	return r
}
