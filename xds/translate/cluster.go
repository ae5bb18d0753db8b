package translate

import (
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
)

// DefaultConnectTimeout is the connect timeout of a cluster whose policy sets
// none. It is Envoy's own default, written out because the field is required
// to be positive and an explicit value reads the same in every dump.
// Proxyless gRPC ignores connect_timeout.
const DefaultConnectTimeout = 5 * time.Second

// defaultEnforcingPercent is the enforcing_* value of a configured outlier
// detector when the policy sets no enforcingPercent.
const defaultEnforcingPercent = 100

// cluster is the EDS cluster of one Service port. Both proxy kinds get the
// same cluster: proxyless gRPC reads the type, the EDS config source, the
// load-balancing policy, max_requests at DEFAULT priority and the
// success-rate and failure-percentage detectors, and ignores the rest
// without rejecting it (see docs/mapping.md), so one shape serves both.
func cluster(sp servicePort) *clusterv3.Cluster {
	p := sp.port.Policy
	c := &clusterv3.Cluster{
		Name:                 sp.clusterName(),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		ConnectTimeout:       durationpb.New(DefaultConnectTimeout),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		OutlierDetection:     outlierDetection(p.OutlierDetection),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			typeName(&upstreamhttpv3.HttpProtocolOptions{}): typed(protocolOptions(p.ConnectionPool, sp.port.AppProtocol)),
		},
	}
	if cp := p.ConnectionPool; cp != nil {
		if d := positiveDuration(cp.ConnectTimeout); d != nil {
			c.ConnectTimeout = d
		}
		c.CircuitBreakers = circuitBreakers(cp)
	}
	if od := p.OutlierDetection; od != nil {
		if t := percent(od.MinHealthPercent); t != nil {
			c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: t}
		}
	}
	return c
}

// passthroughCluster forwards connections to their original destination. The
// virtual outbound listener sends traffic for unknown ports to it, and every
// Envoy route configuration sends requests for unknown hosts to it, so that
// a sidecar never breaks traffic to destinations outside the mesh.
func passthroughCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 PassthroughClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(DefaultConnectTimeout),
	}
}

// outlierDetection maps the policy's detectors onto Envoy's. Every
// enforcing_* field is written explicitly, because Envoy's defaults differ
// per detector (100 for consecutive 5xx, local-origin and success rate, 0
// for gateway errors and failure percentage) and proxyless gRPC runs success
// rate whenever enforcing_success_rate is absent: a detector the policy
// configures gets enforcingPercent (100 unless set; 0 is shadow mode), one it
// does not configure gets 0, so only what the policy names can eject. A
// consecutive-* detector is configured when its count is above zero, a
// rate detector when its section is present. Without an outlierDetection
// section the cluster has no outlier_detection at all.
func outlierDetection(od *fjordv1a1.OutlierDetection) *clusterv3.OutlierDetection {
	if od == nil {
		return nil
	}
	enforcing := uint32(defaultEnforcingPercent)
	if e := u32(od.EnforcingPercent); e != nil {
		enforcing = e.GetValue()
	}
	enforce := func(on bool) *wrapperspb.UInt32Value {
		if on {
			return wrapperspb.UInt32(enforcing)
		}
		return wrapperspb.UInt32(0)
	}
	out := &clusterv3.OutlierDetection{
		Interval:                       positiveDuration(od.Interval),
		BaseEjectionTime:               positiveDuration(od.BaseEjectionTime),
		MaxEjectionTime:                positiveDuration(od.MaxEjectionTime),
		MaxEjectionPercent:             u32(od.MaxEjectionPercent),
		SplitExternalLocalOriginErrors: od.SplitExternalLocalOriginErrors != nil && *od.SplitExternalLocalOriginErrors,
	}

	out.Consecutive_5Xx = positive(od.Consecutive5xxErrors)
	out.EnforcingConsecutive_5Xx = enforce(out.Consecutive_5Xx != nil)
	out.ConsecutiveGatewayFailure = positive(od.ConsecutiveGatewayErrors)
	out.EnforcingConsecutiveGatewayFailure = enforce(out.ConsecutiveGatewayFailure != nil)
	out.ConsecutiveLocalOriginFailure = positive(od.ConsecutiveLocalOriginFailures)
	out.EnforcingConsecutiveLocalOriginFailure = enforce(out.ConsecutiveLocalOriginFailure != nil)

	if sr := od.SuccessRate; sr != nil {
		out.SuccessRateMinimumHosts = u32(sr.MinimumHosts)
		out.SuccessRateRequestVolume = u32(sr.RequestVolume)
		if sr.StandardDeviationFactor != nil {
			if f, err := sr.StandardDeviationFactor.Milli(); err == nil {
				out.SuccessRateStdevFactor = wrapperspb.UInt32(f)
			}
		}
	}
	out.EnforcingSuccessRate = enforce(od.SuccessRate != nil)
	out.EnforcingLocalOriginSuccessRate = enforce(od.SuccessRate != nil)

	if fp := od.FailurePercentage; fp != nil {
		out.FailurePercentageThreshold = u32(fp.Threshold)
		out.FailurePercentageMinimumHosts = u32(fp.MinimumHosts)
		out.FailurePercentageRequestVolume = u32(fp.RequestVolume)
	}
	out.EnforcingFailurePercentage = enforce(od.FailurePercentage != nil)
	out.EnforcingFailurePercentageLocalOrigin = enforce(od.FailurePercentage != nil)
	return out
}

// circuitBreakers maps the connection-pool limits onto the DEFAULT priority
// thresholds (the only priority Fjord routes at, and the only one proxyless
// gRPC reads). Unset limits keep Envoy's defaults; with no limit set at all
// the cluster has no circuit_breakers. When a retry budget is set Envoy
// ignores max_retries.
func circuitBreakers(cp *fjordv1a1.ConnectionPool) *clusterv3.CircuitBreakers {
	t := &clusterv3.CircuitBreakers_Thresholds{
		Priority:           corev3.RoutingPriority_DEFAULT,
		MaxConnections:     u32(cp.MaxConnections),
		MaxPendingRequests: u32(cp.MaxPendingRequests),
		MaxRequests:        u32(cp.MaxRequests),
		MaxRetries:         u32(cp.MaxRetries),
	}
	if rb := cp.RetryBudget; rb != nil {
		t.RetryBudget = &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
			BudgetPercent:       percent(rb.BudgetPercent),
			MinRetryConcurrency: u32(rb.MinRetryConcurrency),
		}
	}
	if t.MaxConnections == nil && t.MaxPendingRequests == nil && t.MaxRequests == nil &&
		t.MaxRetries == nil && t.RetryBudget == nil {
		return nil
	}
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{t}}
}

// protocolOptions chooses the upstream HTTP protocol and carries the
// connection-pool settings that live on the HTTP connection. A port whose
// appProtocol says HTTP/2 (grpc, http2, h2c) is spoken to in HTTP/2 even
// when the application's request came in as HTTP/1.1; any other port is
// spoken to in whatever protocol the request arrived in, which keeps gRPC
// working on ports nobody labelled. Envoy requires one of these choices
// whenever the options are present.
func protocolOptions(cp *fjordv1a1.ConnectionPool, appProtocol string) *upstreamhttpv3.HttpProtocolOptions {
	o := &upstreamhttpv3.HttpProtocolOptions{}
	if cp != nil {
		common := &corev3.HttpProtocolOptions{IdleTimeout: duration(cp.IdleTimeout)}
		// 0 means unlimited in the policy, and so does an absent field in Envoy.
		common.MaxRequestsPerConnection = positive(cp.MaxRequestsPerConnection)
		if common.IdleTimeout != nil || common.MaxRequestsPerConnection != nil {
			o.CommonHttpProtocolOptions = common
		}
	}
	if isHTTP2(appProtocol) {
		o.UpstreamProtocolOptions = &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		}
	} else {
		o.UpstreamProtocolOptions = &upstreamhttpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			},
		}
	}
	return o
}

// isHTTP2 reports whether a Service port's appProtocol names HTTP/2 over
// cleartext, in the spellings Kubernetes and common charts use.
func isHTTP2(appProtocol string) bool {
	switch strings.ToLower(appProtocol) {
	case "grpc", "http2", "h2c", "kubernetes.io/h2c":
		return true
	}
	return false
}

// percent converts a policy percentage; nil when unset or negative.
func percent(v *int32) *typev3.Percent {
	if v == nil || *v < 0 {
		return nil
	}
	return &typev3.Percent{Value: float64(*v)}
}

// positive is u32 for the counts where 0 means "off" in the policy and the
// field must then be left out.
func positive(v *int32) *wrapperspb.UInt32Value {
	if v == nil || *v <= 0 {
		return nil
	}
	return wrapperspb.UInt32(uint32(*v))
}
