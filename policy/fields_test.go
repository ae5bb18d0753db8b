package policy

import (
	"slices"
	"testing"

	"github.com/fjordmesh/fjord/xds/node"
	"github.com/google/go-cmp/cmp"
)

// TestLeafPaths pins the paths that merging, FieldSources, explain output
// and Unenforced speak in. A field added to the API shows up here first.
func TestLeafPaths(t *testing.T) {
	want := []string{
		"outlierDetection.interval",
		"outlierDetection.baseEjectionTime",
		"outlierDetection.maxEjectionTime",
		"outlierDetection.maxEjectionPercent",
		"outlierDetection.minHealthPercent",
		"outlierDetection.enforcingPercent",
		"outlierDetection.consecutive5xxErrors",
		"outlierDetection.consecutiveGatewayErrors",
		"outlierDetection.consecutiveLocalOriginFailures",
		"outlierDetection.splitExternalLocalOriginErrors",
		"outlierDetection.successRate.minimumHosts",
		"outlierDetection.successRate.requestVolume",
		"outlierDetection.successRate.standardDeviationFactor",
		"outlierDetection.failurePercentage.threshold",
		"outlierDetection.failurePercentage.minimumHosts",
		"outlierDetection.failurePercentage.requestVolume",
		"connectionPool.maxConnections",
		"connectionPool.maxPendingRequests",
		"connectionPool.maxRequests",
		"connectionPool.maxRetries",
		"connectionPool.maxRequestsPerConnection",
		"connectionPool.connectTimeout",
		"connectionPool.idleTimeout",
		"connectionPool.retryBudget.budgetPercent",
		"connectionPool.retryBudget.minRetryConcurrency",
		"retry.attempts",
		"retry.perTryTimeout",
		"retry.retryOn",
		"retry.retriableStatusCodes",
		"retry.backoff",
		"timeout.request",
		"timeout.idle",
		"faultInjection.abort",
		"faultInjection.delay",
	}
	if d := cmp.Diff(want, leafPaths()); d != "" {
		t.Errorf("leaf paths (-want +got):\n%s", d)
	}
	for p := range grpcEnforced {
		if !slices.Contains(leafPaths(), p) {
			t.Errorf("grpcEnforced names %s, which is not a leaf of the spec", p)
		}
	}
}

func TestUnenforced(t *testing.T) {
	cases := map[string]struct {
		kind node.Kind
		want []string
	}{
		"envoy enforces everything": {kind: node.Envoy},
		"proxyless gRPC": {kind: node.GRPC, want: []string{
			"connectionPool.connectTimeout",
			"connectionPool.idleTimeout",
			"connectionPool.maxConnections",
			"connectionPool.maxPendingRequests",
			"connectionPool.maxRequestsPerConnection",
			"connectionPool.maxRetries",
			"connectionPool.retryBudget.budgetPercent",
			"connectionPool.retryBudget.minRetryConcurrency",
			"outlierDetection.consecutive5xxErrors",
			"outlierDetection.consecutiveGatewayErrors",
			"outlierDetection.consecutiveLocalOriginFailures",
			"outlierDetection.minHealthPercent",
			"outlierDetection.splitExternalLocalOriginErrors",
			"retry.perTryTimeout",
			"retry.retriableStatusCodes",
			"timeout.idle",
		}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, Unenforced(tc.kind)); d != "" {
				t.Errorf("Unenforced(%s) (-want +got):\n%s", tc.kind, d)
			}
		})
	}
}

func TestUnenforcedBy(t *testing.T) {
	cases := map[string]struct {
		spec string
		kind node.Kind
		want []string
	}{
		"gRPC conditions only": {
			spec: `retry: {attempts: 2, retryOn: [unavailable, cancelled]}`,
			kind: node.GRPC,
		},
		"HTTP conditions named by value": {
			spec: `retry: {attempts: 2, retryOn: [5xx, unavailable, reset]}`,
			kind: node.GRPC,
			want: []string{"retry.retryOn[5xx]", "retry.retryOn[reset]"},
		},
		"only fields the policy sets": {
			spec: `{outlierDetection: {consecutive5xxErrors: 3, interval: 1s}, timeout: {request: 1s}}`,
			kind: node.GRPC,
			want: []string{"outlierDetection.consecutive5xxErrors"},
		},
		"envoy": {
			spec: `{outlierDetection: {consecutive5xxErrors: 3}, retry: {retryOn: [5xx]}}`,
			kind: node.Envoy,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			spec := decodeSpec(t, tc.spec)
			if d := cmp.Diff(tc.want, unenforcedBy(tc.kind, &spec)); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}
