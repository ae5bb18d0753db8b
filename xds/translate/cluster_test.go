package translate

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
)

func ptr[T any](v T) *T { return &v }

// TestOutlierDetection pins which detectors may eject: only those the
// policy configures, at enforcingPercent, with every enforcing_* written so
// that neither Envoy's per-detector defaults nor gRPC's implicit success-rate
// detector can eject on their own.
func TestOutlierDetection(t *testing.T) {
	off := wrapperspb.UInt32(0)
	full := wrapperspb.UInt32(100)
	tests := map[string]struct {
		in   *fjordv1a1.OutlierDetection
		want *clusterv3.OutlierDetection
	}{
		"no section, no outlier detection": {},
		"section without detectors ejects nothing": {
			in: &fjordv1a1.OutlierDetection{Interval: ptr(fjordv1a1.Duration("2s"))},
			want: &clusterv3.OutlierDetection{
				Interval:                 durationpb.New(2e9),
				EnforcingConsecutive_5Xx: off, EnforcingConsecutiveGatewayFailure: off, EnforcingConsecutiveLocalOriginFailure: off,
				EnforcingSuccessRate: off, EnforcingLocalOriginSuccessRate: off,
				EnforcingFailurePercentage: off, EnforcingFailurePercentageLocalOrigin: off,
			},
		},
		"failure percentage alone is enforced at 100 by default": {
			in: &fjordv1a1.OutlierDetection{FailurePercentage: &fjordv1a1.FailurePercentage{Threshold: ptr(int32(60))}},
			want: &clusterv3.OutlierDetection{
				FailurePercentageThreshold: wrapperspb.UInt32(60),
				EnforcingConsecutive_5Xx:   off, EnforcingConsecutiveGatewayFailure: off, EnforcingConsecutiveLocalOriginFailure: off,
				EnforcingSuccessRate: off, EnforcingLocalOriginSuccessRate: off,
				EnforcingFailurePercentage: full, EnforcingFailurePercentageLocalOrigin: full,
			},
		},
		"a zero count turns its detector off": {
			in: &fjordv1a1.OutlierDetection{Consecutive5xxErrors: ptr(int32(0)), ConsecutiveGatewayErrors: ptr(int32(4))},
			want: &clusterv3.OutlierDetection{
				ConsecutiveGatewayFailure: wrapperspb.UInt32(4),
				EnforcingConsecutive_5Xx:  off, EnforcingConsecutiveGatewayFailure: full, EnforcingConsecutiveLocalOriginFailure: off,
				EnforcingSuccessRate: off, EnforcingLocalOriginSuccessRate: off,
				EnforcingFailurePercentage: off, EnforcingFailurePercentageLocalOrigin: off,
			},
		},
		"enforcingPercent applies to every configured detector": {
			in: &fjordv1a1.OutlierDetection{
				EnforcingPercent:     ptr(int32(30)),
				Consecutive5xxErrors: ptr(int32(5)),
				SuccessRate:          &fjordv1a1.SuccessRate{StandardDeviationFactor: ptr(fjordv1a1.Decimal("1.25"))},
			},
			want: &clusterv3.OutlierDetection{
				Consecutive_5Xx:          wrapperspb.UInt32(5),
				SuccessRateStdevFactor:   wrapperspb.UInt32(1250),
				EnforcingConsecutive_5Xx: wrapperspb.UInt32(30), EnforcingConsecutiveGatewayFailure: off, EnforcingConsecutiveLocalOriginFailure: off,
				EnforcingSuccessRate: wrapperspb.UInt32(30), EnforcingLocalOriginSuccessRate: wrapperspb.UInt32(30),
				EnforcingFailurePercentage: off, EnforcingFailurePercentageLocalOrigin: off,
			},
		},
		"shadow mode detects with thresholds but never ejects": {
			in: &fjordv1a1.OutlierDetection{
				EnforcingPercent:     ptr(int32(0)),
				Consecutive5xxErrors: ptr(int32(5)),
				FailurePercentage:    &fjordv1a1.FailurePercentage{Threshold: ptr(int32(60))},
			},
			want: &clusterv3.OutlierDetection{
				Consecutive_5Xx:            wrapperspb.UInt32(5),
				FailurePercentageThreshold: wrapperspb.UInt32(60),
				EnforcingConsecutive_5Xx:   off, EnforcingConsecutiveGatewayFailure: off, EnforcingConsecutiveLocalOriginFailure: off,
				EnforcingSuccessRate: off, EnforcingLocalOriginSuccessRate: off,
				EnforcingFailurePercentage: off, EnforcingFailurePercentageLocalOrigin: off,
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, outlierDetection(tc.in), protocmp.Transform()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestUpstreamProtocol pins which Service ports are spoken to in HTTP/2.
func TestUpstreamProtocol(t *testing.T) {
	tests := map[string]struct {
		appProtocol string
		http2       bool
	}{
		"grpc":                 {"grpc", true},
		"upper-case grpc":      {"GRPC", true},
		"http2":                {"http2", true},
		"h2c":                  {"h2c", true},
		"kubernetes h2c":       {"kubernetes.io/h2c", true},
		"http follows client":  {"http", false},
		"unset follows client": {"", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := protocolOptions(nil, tc.appProtocol)
			if got := o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil; got != tc.http2 {
				t.Errorf("explicit HTTP/2 = %v, want %v", got, tc.http2)
			}
			if !tc.http2 && o.GetUseDownstreamProtocolConfig() == nil {
				t.Errorf("want use_downstream_protocol_config, got %v", o)
			}
		})
	}
}
