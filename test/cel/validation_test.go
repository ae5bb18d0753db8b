package cel

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// TestResiliencePolicyValidation applies ResiliencePolicies to a real API
// server: impossible values must be rejected with an error that names the
// offending field, and valid policies must be stored exactly as written (a
// field the schema does not know would be pruned silently, so a round trip
// also catches drift between the CRD and the documented YAML).
func TestResiliencePolicyValidation(t *testing.T) {
	c := startAPIServer(t)
	ctx := t.Context()
	for _, ns := range []string{"demo", "bad"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatalf("creating namespace %s: %v", ns, err)
		}
	}

	t.Run("rejected", func(t *testing.T) {
		var targets []string
		for i := range 17 {
			targets = append(targets, fmt.Sprintf(`{group: "", kind: Service, name: echo-%d}`, i))
		}
		seventeenTargets := strings.Join(targets, ", ")
		cases := map[string]struct {
			// spec is the YAML of spec; empty leaves spec out.
			spec string
			// field is the one field the API server must name.
			field string
			// reason is a fragment of the error the user reads.
			reason string
		}{
			"negative duration": {
				spec:   `outlierDetection: {interval: -5s}`,
				field:  "spec.outlierDetection.interval",
				reason: "should match",
			},
			"negative ejection time": {
				spec:   `outlierDetection: {baseEjectionTime: -1s}`,
				field:  "spec.outlierDetection.baseEjectionTime",
				reason: "should match",
			},
			"duration without unit": {
				spec:   `retry: {perTryTimeout: "5"}`,
				field:  "spec.retry.perTryTimeout",
				reason: "should match",
			},
			"duration in words": {
				spec:   `timeout: {request: five seconds}`,
				field:  "spec.timeout.request",
				reason: "should match",
			},
			"duration in days": {
				spec:   `retry: {backoff: {maxInterval: 1d}}`,
				field:  "spec.retry.backoff.maxInterval",
				reason: "should match",
			},
			"connect timeout malformed": {
				spec:   `connectionPool: {connectTimeout: 5sec}`,
				field:  "spec.connectionPool.connectTimeout",
				reason: "should match",
			},
			"max ejection percent over 100": {
				spec:   `outlierDetection: {maxEjectionPercent: 101}`,
				field:  "spec.outlierDetection.maxEjectionPercent",
				reason: "less than or equal to 100",
			},
			"max ejection percent negative": {
				spec:   `outlierDetection: {maxEjectionPercent: -1}`,
				field:  "spec.outlierDetection.maxEjectionPercent",
				reason: "greater than or equal to 0",
			},
			"min health percent over 100": {
				spec:   `outlierDetection: {minHealthPercent: 101}`,
				field:  "spec.outlierDetection.minHealthPercent",
				reason: "less than or equal to 100",
			},
			"enforcing percent over 100": {
				spec:   `outlierDetection: {enforcingPercent: 101}`,
				field:  "spec.outlierDetection.enforcingPercent",
				reason: "less than or equal to 100",
			},
			"failure percentage threshold 101": {
				spec:   `outlierDetection: {failurePercentage: {threshold: 101}}`,
				field:  "spec.outlierDetection.failurePercentage.threshold",
				reason: "less than or equal to 100",
			},
			"failure percentage threshold negative": {
				spec:   `outlierDetection: {failurePercentage: {threshold: -1}}`,
				field:  "spec.outlierDetection.failurePercentage.threshold",
				reason: "greater than or equal to 0",
			},
			"negative consecutive 5xx": {
				spec:   `outlierDetection: {consecutive5xxErrors: -1}`,
				field:  "spec.outlierDetection.consecutive5xxErrors",
				reason: "greater than or equal to 0",
			},
			"negative standard deviation factor": {
				spec:   `outlierDetection: {successRate: {standardDeviationFactor: "-1.9"}}`,
				field:  "spec.outlierDetection.successRate.standardDeviationFactor",
				reason: "should match",
			},
			"retry budget over 100": {
				spec:   `connectionPool: {retryBudget: {budgetPercent: 101}}`,
				field:  "spec.connectionPool.retryBudget.budgetPercent",
				reason: "less than or equal to 100",
			},
			"negative max connections": {
				spec:   `connectionPool: {maxConnections: -1}`,
				field:  "spec.connectionPool.maxConnections",
				reason: "greater than or equal to 0",
			},
			"too many attempts": {
				spec:   `retry: {attempts: 11}`,
				field:  "spec.retry.attempts",
				reason: "less than or equal to 10",
			},
			"unknown retryOn": {
				spec:   `retry: {retryOn: [unavailable, on-tuesdays]}`,
				field:  "spec.retry.retryOn[1]",
				reason: "Unsupported value",
			},
			"duplicate retryOn": {
				spec:   `retry: {retryOn: [unavailable, unavailable]}`,
				field:  "spec.retry.retryOn[1]",
				reason: "Duplicate value",
			},
			"retriable status code 42": {
				spec:   `retry: {retriableStatusCodes: [503, 42]}`,
				field:  "spec.retry.retriableStatusCodes[1]",
				reason: "greater than or equal to 100",
			},
			"retriable status code 600": {
				spec:   `retry: {retriableStatusCodes: [600]}`,
				field:  "spec.retry.retriableStatusCodes[0]",
				reason: "less than or equal to 599",
			},
			"empty spec": {
				spec:   `{}`,
				field:  "spec",
				reason: "spec must set at least one of outlierDetection, connectionPool, retry, timeout",
			},
			"targetRefs only": {
				spec:   `targetRefs: [{group: "", kind: Service, name: echo}]`,
				field:  "spec",
				reason: "spec must set at least one of outlierDetection, connectionPool, retry, timeout",
			},
			"no spec": {
				field:  "spec",
				reason: "Required value",
			},
			"target kind Deployment": {
				spec:   "targetRefs: [{group: \"\", kind: Deployment, name: echo}]\ntimeout: {request: 1s}",
				field:  "spec.targetRefs[0].kind",
				reason: "kind must be Service",
			},
			"target group apps": {
				spec:   "targetRefs: [{group: apps, kind: Service, name: echo}]\ntimeout: {request: 1s}",
				field:  "spec.targetRefs[0].group",
				reason: "group must be",
			},
			"target without name": {
				spec:   "targetRefs: [{group: \"\", kind: Service, name: \"\"}]\ntimeout: {request: 1s}",
				field:  "spec.targetRefs[0].name",
				reason: "at least 1 chars long",
			},
			"same target twice": {
				spec:   "targetRefs: [{group: \"\", kind: Service, name: echo}, {group: \"\", kind: Service, name: echo}]\ntimeout: {request: 1s}",
				field:  "spec.targetRefs",
				reason: "must not name the same Service",
			},
			"seventeen targets": {
				spec:   "targetRefs: [" + seventeenTargets + "]\ntimeout: {request: 1s}",
				field:  "spec.targetRefs",
				reason: "must have at most 16 items",
			},
			"zero interval": {
				spec:   `outlierDetection: {interval: 0s}`,
				field:  "spec.outlierDetection.interval",
				reason: "must be greater than 0",
			},
			"zero connect timeout": {
				spec:   `connectionPool: {connectTimeout: 0ms}`,
				field:  "spec.connectionPool.connectTimeout",
				reason: "must be greater than 0",
			},
			"max ejection time below base": {
				spec:   `outlierDetection: {baseEjectionTime: 30s, maxEjectionTime: 10s}`,
				field:  "spec.outlierDetection.maxEjectionTime",
				reason: "maxEjectionTime must not be shorter than baseEjectionTime",
			},
			"backoff max below base": {
				spec:   `retry: {backoff: {baseInterval: 1s, maxInterval: 100ms}}`,
				field:  "spec.retry.backoff.maxInterval",
				reason: "maxInterval must not be shorter than baseInterval",
			},
		}
		for name, tc := range cases {
			t.Run(name, func(t *testing.T) {
				obj := policy(t, "bad", tc.spec)
				err := c.Create(t.Context(), obj)
				if err == nil {
					t.Fatalf("created %s with spec %s; want it rejected naming %s", obj.GetName(), tc.spec, tc.field)
				}
				if !apierrors.IsInvalid(err) {
					t.Fatalf("create: %v; want an Invalid error naming %s", err, tc.field)
				}
				t.Logf("rejected: %v", err)
				if got := causeFields(err); !cmp.Equal(got, []string{tc.field}) {
					t.Errorf("fields named by the rejection (-got +want):\n%s\nerror: %v", cmp.Diff(got, []string{tc.field}), err)
				}
				for _, want := range []string{tc.field, tc.reason} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
			})
		}
	})

	t.Run("accepted", func(t *testing.T) {
		example, err := os.ReadFile(filepath.Join("testdata", "echo-breaker.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		cases := map[string]struct {
			namespace string
			// yaml is the whole object; spec is used when it is empty.
			yaml string
			spec string
		}{
			"documented example": {yaml: string(example)},
			"namespace default": {
				namespace: "demo",
				spec:      `timeout: {request: 1h30m, idle: 0s}`,
			},
			"upper bounds": {
				namespace: "demo",
				spec: `
targetRefs: [{group: "", kind: Service, name: echo}]
outlierDetection:
  maxEjectionPercent: 100
  minHealthPercent: 100
  enforcingPercent: 100
  failurePercentage: {threshold: 100}
  successRate: {standardDeviationFactor: "9999.999"}
connectionPool: {retryBudget: {budgetPercent: 100}, connectTimeout: 99999ms}
retry: {attempts: 10, retriableStatusCodes: [100, 599]}`,
			},
			"lower bounds": {
				namespace: "demo",
				spec: `
targetRefs: [{group: "", kind: Service, name: echo, sectionName: grpc}]
outlierDetection:
  maxEjectionPercent: 0
  minHealthPercent: 0
  enforcingPercent: 0
  consecutive5xxErrors: 0
  failurePercentage: {threshold: 0, minimumHosts: 0, requestVolume: 0}
  successRate: {standardDeviationFactor: "0"}
connectionPool: {maxConnections: 0, retryBudget: {budgetPercent: 0}}
retry: {attempts: 0, retryOn: []}`,
			},
		}
		for name, tc := range cases {
			t.Run(name, func(t *testing.T) {
				var obj *unstructured.Unstructured
				if tc.yaml != "" {
					obj = decode(t, tc.yaml)
				} else {
					obj = policy(t, tc.namespace, tc.spec)
				}
				want := specJSON(t, obj)
				if err := c.Create(t.Context(), obj); err != nil {
					t.Fatalf("create %s/%s: %v", obj.GetNamespace(), obj.GetName(), err)
				}
				stored := &unstructured.Unstructured{}
				stored.SetGroupVersionKind(obj.GroupVersionKind())
				if err := c.Get(t.Context(), client.ObjectKeyFromObject(obj), stored); err != nil {
					t.Fatalf("get %s/%s: %v", obj.GetNamespace(), obj.GetName(), err)
				}
				if diff := cmp.Diff(want, specJSON(t, stored)); diff != "" {
					t.Errorf("spec stored by the API server differs from the spec applied (-applied +stored):\n%s", diff)
				}
			})
		}
	})
}

// policy returns a ResiliencePolicy in namespace with the given spec YAML
// (none when empty) and a server-generated name, so that cases never collide.
func policy(t *testing.T, namespace, spec string) *unstructured.Unstructured {
	t.Helper()
	doc := "apiVersion: fjord.dev/v1alpha1\nkind: ResiliencePolicy\nmetadata: {generateName: rp-, namespace: " + namespace + "}\n"
	if spec != "" {
		doc += "spec:\n  " + strings.ReplaceAll(strings.TrimSpace(spec), "\n", "\n  ") + "\n"
	}
	return decode(t, doc)
}

func decode(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
		t.Fatalf("test YAML does not parse: %v\n%s", err, doc)
	}
	return obj
}

// specJSON returns the spec decoded from JSON, so that an applied and a
// stored object compare equal whatever number types their decoders chose.
func specJSON(t *testing.T, obj *unstructured.Unstructured) any {
	t.Helper()
	raw, err := json.Marshal(obj.Object["spec"])
	if err != nil {
		t.Fatalf("spec of %s: %v", obj.GetName(), err)
	}
	var spec any
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatalf("spec of %s: %v", obj.GetName(), err)
	}
	return spec
}

// causeFields lists, once each, the fields an Invalid error names. A value
// may break two rules (a negative duration fails both the pattern and the
// positivity rule), and the API server's note that CEL rules were skipped
// after a schema error names no field ("<nil>").
func causeFields(err error) []string {
	var status apierrors.APIStatus
	if !errors.As(err, &status) || status.Status().Details == nil {
		return nil
	}
	var fields []string
	for _, cause := range status.Status().Details.Causes {
		if cause.Field != "" && cause.Field != "<nil>" && !slices.Contains(fields, cause.Field) {
			fields = append(fields, cause.Field)
		}
	}
	return fields
}
