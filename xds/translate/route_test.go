package translate

import (
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
)

// TestGRPCRetryPolicy pins what proxyless gRPC gets: only gRPC conditions,
// never num_retries 0, and no policy when nothing would be retried.
func TestGRPCRetryPolicy(t *testing.T) {
	d := func(s string) *fjordv1a1.Duration { return ptr(fjordv1a1.Duration(s)) }
	tests := map[string]struct {
		in   *fjordv1a1.Retry
		want *routev3.RetryPolicy
	}{
		"no section": {},
		"attempts 0 is off": {
			in: &fjordv1a1.Retry{Attempts: ptr(int32(0)), RetryOn: []fjordv1a1.RetryOn{"unavailable"}},
		},
		"HTTP conditions only": {
			in: &fjordv1a1.Retry{Attempts: ptr(int32(3)), RetryOn: []fjordv1a1.RetryOn{"5xx", "reset", "connect-failure"}},
		},
		"default condition is unavailable": {
			in:   &fjordv1a1.Retry{Attempts: ptr(int32(2))},
			want: &routev3.RetryPolicy{RetryOn: "unavailable", NumRetries: wrapperspb.UInt32(2)},
		},
		"unset attempts leave gRPC's default of one retry": {
			in:   &fjordv1a1.Retry{RetryOn: []fjordv1a1.RetryOn{"internal"}},
			want: &routev3.RetryPolicy{RetryOn: "internal"},
		},
		"mixed conditions keep the gRPC ones, sorted and unique": {
			in: &fjordv1a1.Retry{
				Attempts:             ptr(int32(3)),
				PerTryTimeout:        d("1s"),
				RetryOn:              []fjordv1a1.RetryOn{"unavailable", "5xx", "cancelled", "unavailable"},
				RetriableStatusCodes: []int32{503},
				Backoff:              &fjordv1a1.Backoff{BaseInterval: d("10ms"), MaxInterval: d("1s")},
			},
			want: &routev3.RetryPolicy{
				RetryOn:      "cancelled,unavailable",
				NumRetries:   wrapperspb.UInt32(3),
				RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(10e6), MaxInterval: durationpb.New(1e9)},
			},
		},
		"a cap below the default base lowers the base": {
			in: &fjordv1a1.Retry{Backoff: &fjordv1a1.Backoff{MaxInterval: d("10ms")}},
			want: &routev3.RetryPolicy{
				RetryOn:      "unavailable",
				RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(10e6), MaxInterval: durationpb.New(10e6)},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, grpcRetryPolicy(tc.in), protocmp.Transform()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestEnvoyRetryOn pins Envoy's retry_on: every condition in one list, and
// retriable-status-codes added when codes are given, since Envoy ignores
// the codes without it.
func TestEnvoyRetryOn(t *testing.T) {
	tests := map[string]struct {
		in   *fjordv1a1.Retry
		want string
	}{
		"defaults": {
			in:   &fjordv1a1.Retry{},
			want: "cancelled,connect-failure,refused-stream,resource-exhausted,unavailable",
		},
		"HTTP and gRPC together": {
			in:   &fjordv1a1.Retry{RetryOn: []fjordv1a1.RetryOn{"unavailable", "5xx"}},
			want: "5xx,unavailable",
		},
		"status codes add their condition once": {
			in:   &fjordv1a1.Retry{RetryOn: []fjordv1a1.RetryOn{"reset"}, RetriableStatusCodes: []int32{503}},
			want: "reset,retriable-status-codes",
		},
		"condition already named": {
			in:   &fjordv1a1.Retry{RetryOn: []fjordv1a1.RetryOn{"retriable-status-codes"}, RetriableStatusCodes: []int32{503}},
			want: "retriable-status-codes",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := envoyRetryPolicy(tc.in).GetRetryOn(); got != tc.want {
				t.Errorf("retry_on = %q, want %q", got, tc.want)
			}
		})
	}
	if p := envoyRetryPolicy(&fjordv1a1.Retry{Attempts: ptr(int32(0))}); p != nil {
		t.Errorf("attempts 0: want no retry policy, got %v", p)
	}
}
