package v1alpha1

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// TestContractExample decodes the API contract's example (the YAML users
// and tests write, verbatim) strictly, so that a renamed or misspelt field
// in the types fails here, and checks every value landed where it should.
func TestContractExample(t *testing.T) {
	data, err := os.ReadFile("testdata/echo-breaker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var got ResiliencePolicy
	if err := yaml.UnmarshalStrict(data, &got); err != nil {
		t.Fatalf("strict decoding of the contract example: %v", err)
	}
	want := ResiliencePolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "fjord.dev/v1alpha1", Kind: "ResiliencePolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: "echo-breaker", Namespace: "demo"},
		Spec: ResiliencePolicySpec{
			TargetRefs: []TargetRef{{Group: "", Kind: "Service", Name: "echo", SectionName: ptr("grpc")}},
			OutlierDetection: &OutlierDetection{
				Interval:                       ptr[Duration]("1s"),
				BaseEjectionTime:               ptr[Duration]("30s"),
				MaxEjectionTime:                ptr[Duration]("300s"),
				MaxEjectionPercent:             ptr[int32](50),
				MinHealthPercent:               ptr[int32](50),
				EnforcingPercent:               ptr[int32](100),
				Consecutive5xxErrors:           ptr[int32](5),
				ConsecutiveGatewayErrors:       ptr[int32](3),
				ConsecutiveLocalOriginFailures: ptr[int32](5),
				SplitExternalLocalOriginErrors: ptr(true),
				SuccessRate: &SuccessRate{
					MinimumHosts:            ptr[int32](5),
					RequestVolume:           ptr[int32](100),
					StandardDeviationFactor: ptr[Decimal]("1.9"),
				},
				FailurePercentage: &FailurePercentage{
					Threshold:     ptr[int32](60),
					MinimumHosts:  ptr[int32](2),
					RequestVolume: ptr[int32](3),
				},
			},
			ConnectionPool: &ConnectionPool{
				MaxConnections:           ptr[int32](1024),
				MaxPendingRequests:       ptr[int32](1024),
				MaxRequests:              ptr[int32](1024),
				MaxRetries:               ptr[int32](3),
				MaxRequestsPerConnection: ptr[int32](0),
				ConnectTimeout:           ptr[Duration]("1s"),
				IdleTimeout:              ptr[Duration]("1h"),
				RetryBudget:              &RetryBudget{BudgetPercent: ptr[int32](20), MinRetryConcurrency: ptr[int32](3)},
			},
			Retry: &Retry{
				Attempts:             ptr[int32](2),
				PerTryTimeout:        ptr[Duration]("500ms"),
				RetryOn:              []RetryOn{"unavailable", "connect-failure", "refused-stream", "reset", "5xx", "gateway-error"},
				RetriableStatusCodes: []int32{503},
				Backoff:              &Backoff{BaseInterval: ptr[Duration]("25ms"), MaxInterval: ptr[Duration]("250ms")},
			},
			Timeout: &Timeout{Request: ptr[Duration]("10s"), Idle: ptr[Duration]("1h")},
		},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("decoded example (-want +got):\n%s", d)
	}

	// What we write back must decode strictly to the same value: the JSON
	// names of the types are the contract in both directions.
	out, err := yaml.Marshal(&got)
	if err != nil {
		t.Fatal(err)
	}
	var again ResiliencePolicy
	if err := yaml.UnmarshalStrict(out, &again); err != nil {
		t.Fatalf("strict decoding of the re-encoded example: %v\n%s", err, out)
	}
	if d := cmp.Diff(got, again); d != "" {
		t.Fatalf("round trip changed the policy (-first +second):\n%s", d)
	}
	// DeepCopy must copy every field of the contract.
	if d := cmp.Diff(got, *got.DeepCopy()); d != "" {
		t.Fatalf("DeepCopy lost fields (-orig +copy):\n%s", d)
	}
}

// TestStrictDecodingRejectsTypos guards the reason the contract test decodes
// strictly: a misspelt field must be an error, not a silently unset one.
func TestStrictDecodingRejectsTypos(t *testing.T) {
	data, err := os.ReadFile("testdata/echo-breaker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	typo := strings.Replace(string(data), "consecutive5xxErrors", "consecutive5xxError", 1)
	var p ResiliencePolicy
	err = yaml.UnmarshalStrict([]byte(typo), &p)
	if err == nil || !strings.Contains(err.Error(), "consecutive5xxError") {
		t.Fatalf("UnmarshalStrict with a misspelt field: got %v, want an error naming it", err)
	}
}

func ptr[T any](v T) *T { return &v }
