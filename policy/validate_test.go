package policy

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

func TestValidate(t *testing.T) {
	cases := map[string]struct {
		spec string
		want []string // one entry per error, in order; nil means valid
	}{
		"contract example": {
			spec: mustRead(t, "api/v1alpha1/testdata/echo-breaker.yaml"),
		},
		"one empty section is enough": {
			spec: `outlierDetection: {}`,
		},
		"zero where zero means off": {
			spec: `{retry: {attempts: 0, perTryTimeout: 0s}, timeout: {request: 0s, idle: 0s}, connectionPool: {idleTimeout: 0s, maxRequestsPerConnection: 0}}`,
		},
		"bounds inclusive": {
			spec: `{outlierDetection: {maxEjectionPercent: 100, enforcingPercent: 0, failurePercentage: {threshold: 100}}, retry: {attempts: 10, retriableStatusCodes: [100, 599]}}`,
		},
		"equal backoff intervals": {
			spec: `retry: {backoff: {baseInterval: 1s, maxInterval: 1s}}`,
		},
		"no section": {
			spec: `targetRefs: [{group: "", kind: Service, name: echo}]`,
			want: []string{"spec: must set at least one of outlierDetection, connectionPool, retry, timeout, faultInjection"},
		},
		"fault injection alone is a section": {
			spec: `faultInjection: {abort: {grpcStatus: 14, percentage: "12.5"}, delay: {fixedDelay: 100ms, percentage: "100"}}`,
		},
		"fault injection rules": {
			spec: `faultInjection: {abort: {httpStatus: 503, grpcStatus: 14, percentage: "100.001"}, delay: {percentage: "5"}}`,
			want: []string{
				"spec.faultInjection.abort: must set exactly one of httpStatus, grpcStatus",
				`spec.faultInjection.abort.percentage: must be at most 100, got 100.001`,
				"spec.faultInjection.delay.fixedDelay: required",
			},
		},
		"fault injection bounds": {
			spec: `faultInjection: {abort: {httpStatus: 199}, delay: {fixedDelay: 0s}}`,
			want: []string{
				"spec.faultInjection.abort.httpStatus: must be at least 200, got 199",
				"spec.faultInjection.delay.fixedDelay: must be greater than 0",
			},
		},
		"empty fault injection": {
			spec: `faultInjection: {}`,
			want: []string{"spec.faultInjection: must set abort, delay or both"},
		},
		"invalid duration": {
			spec: `retry: {perTryTimeout: 5x}`,
			want: []string{`spec.retry.perTryTimeout: invalid duration "5x": want whole numbers of h, m, s or ms, such as "500ms" or "1m30s"`},
		},
		"negative duration": {
			spec: `timeout: {request: -5s}`,
			want: []string{`spec.timeout.request: invalid duration "-5s": want whole numbers of h, m, s or ms, such as "500ms" or "1m30s"`},
		},
		"zero where Envoy needs a positive value": {
			spec: `{outlierDetection: {interval: 0s, baseEjectionTime: 0ms, maxEjectionTime: 0h}, connectionPool: {connectTimeout: 0s}, retry: {backoff: {baseInterval: 0s, maxInterval: 0s}}}`,
			want: []string{
				"spec.outlierDetection.interval: must be greater than 0",
				"spec.outlierDetection.baseEjectionTime: must be greater than 0",
				"spec.outlierDetection.maxEjectionTime: must be greater than 0",
				"spec.connectionPool.connectTimeout: must be greater than 0",
				"spec.retry.backoff.baseInterval: must be greater than 0",
				"spec.retry.backoff.maxInterval: must be greater than 0",
			},
		},
		"percent over 100": {
			spec: `{outlierDetection: {maxEjectionPercent: 101, minHealthPercent: 200, enforcingPercent: 101}, connectionPool: {retryBudget: {budgetPercent: 101}}}`,
			want: []string{
				"spec.outlierDetection.maxEjectionPercent: must be at most 100, got 101",
				"spec.outlierDetection.minHealthPercent: must be at most 100, got 200",
				"spec.outlierDetection.enforcingPercent: must be at most 100, got 101",
				"spec.connectionPool.retryBudget.budgetPercent: must be at most 100, got 101",
			},
		},
		"failure percentage threshold": {
			spec: `outlierDetection: {failurePercentage: {threshold: -1}}`,
			want: []string{"spec.outlierDetection.failurePercentage.threshold: must be at least 0, got -1"},
		},
		"negative counts": {
			spec: `{connectionPool: {maxConnections: -1, maxRequests: -2}, outlierDetection: {successRate: {minimumHosts: -3}}}`,
			want: []string{
				"spec.outlierDetection.successRate.minimumHosts: must be at least 0, got -3",
				"spec.connectionPool.maxConnections: must be at least 0, got -1",
				"spec.connectionPool.maxRequests: must be at least 0, got -2",
			},
		},
		"too many attempts": {
			spec: `retry: {attempts: 11}`,
			want: []string{"spec.retry.attempts: must be at most 10, got 11"},
		},
		"bad decimal": {
			spec: `outlierDetection: {successRate: {standardDeviationFactor: "1.9999"}}`,
			want: []string{`spec.outlierDetection.successRate.standardDeviationFactor: invalid decimal "1.9999": want up to four digits and at most three decimals, such as "1.9"`},
		},
		"retry conditions": {
			spec: `retry: {retryOn: [unavailable, teapot, unavailable]}`,
			want: []string{
				`spec.retry.retryOn[1]: unsupported value "teapot": want one of 5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable`,
				"spec.retry.retryOn[2]: duplicate value unavailable",
			},
		},
		"status codes": {
			spec: `retry: {retriableStatusCodes: [99, 503, 503, 600]}`,
			want: []string{
				"spec.retry.retriableStatusCodes[0]: 99 is not an HTTP status code (100 to 599)",
				"spec.retry.retriableStatusCodes[2]: duplicate value 503",
				"spec.retry.retriableStatusCodes[3]: 600 is not an HTTP status code (100 to 599)",
			},
		},
		"too many status codes": {
			spec: `retry: {retriableStatusCodes: [500, 501, 502, 503, 504, 505, 506, 507, 508, 509, 510, 511, 512, 513, 514, 515, 516]}`,
			want: []string{"spec.retry.retriableStatusCodes: must have at most 16 items, has 17"},
		},
		"backoff inverted": {
			spec: `retry: {backoff: {baseInterval: 1s, maxInterval: 100ms}}`,
			want: []string{"spec.retry.backoff.maxInterval: must not be shorter than baseInterval (1s), got 100ms"},
		},
		"ejection times inverted": {
			spec: `outlierDetection: {baseEjectionTime: 1m, maxEjectionTime: 30s}`,
			want: []string{"spec.outlierDetection.maxEjectionTime: must not be shorter than baseEjectionTime (1m), got 30s"},
		},
		"targetRef group and kind": {
			spec: `{targetRefs: [{group: apps, kind: Deployment, name: echo}], timeout: {request: 1s}}`,
			want: []string{
				`spec.targetRefs[0].group: must be "" (core): only Services can be targeted, got "apps"`,
				`spec.targetRefs[0].kind: must be Service, got "Deployment"`,
			},
		},
		"targetRef names": {
			spec: `{targetRefs: [{group: "", kind: Service, name: ""}, {group: "", kind: Service, name: echo, sectionName: ""}], timeout: {request: 1s}}`,
			want: []string{
				"spec.targetRefs[0].name: must have 1 to 253 characters",
				"spec.targetRefs[1].sectionName: must have 1 to 253 characters when set",
			},
		},
		"duplicate targetRefs": {
			spec: `{targetRefs: [{group: "", kind: Service, name: echo}, {group: "", kind: Service, name: echo, sectionName: grpc}, {group: "", kind: Service, name: echo, sectionName: grpc}, {group: "", kind: Service, name: echo}], timeout: {request: 1s}}`,
			want: []string{
				"spec.targetRefs[2]: names the same Service (and sectionName) as targetRefs[1]",
				"spec.targetRefs[3]: names the same Service (and sectionName) as targetRefs[0]",
			},
		},
		"too many targetRefs": {
			spec: "{timeout: {request: 1s}, targetRefs: [" + targetRefs(17) + "]}",
			want: []string{"spec.targetRefs: must have at most 16 items, has 17"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			spec := decodeSpec(t, tc.spec)
			var got []string
			if err := Validate(&spec); err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("Validate errors (-want +got):\n%s", d)
			}
		})
	}
}

// decodeSpec reads a spec, or a whole ResiliencePolicy, from YAML.
func decodeSpec(t *testing.T, s string) fjordv1a1.ResiliencePolicySpec {
	t.Helper()
	if strings.Contains(s, "kind: ResiliencePolicy") {
		var p fjordv1a1.ResiliencePolicy
		if err := yaml.UnmarshalStrict([]byte(s), &p); err != nil {
			t.Fatal(err)
		}
		return p.Spec
	}
	var spec fjordv1a1.ResiliencePolicySpec
	if err := yaml.UnmarshalStrict([]byte(s), &spec); err != nil {
		t.Fatal(err)
	}
	return spec
}

func targetRefs(n int) string {
	refs := make([]string, n)
	for i := range refs {
		refs[i] = fmt.Sprintf(`{group: "", kind: Service, name: s%d}`, i)
	}
	return strings.Join(refs, ", ")
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestValidateMatchesCRD reads the generated CRD and checks that Validate's
// bounds, patterns, enums and positive-duration rules are the CRD's, field
// by field: standalone mode must accept exactly what a cluster accepts.
func TestValidateMatchesCRD(t *testing.T) {
	var crd struct {
		Spec struct {
			Versions []struct {
				Schema struct {
					OpenAPIV3Schema schema `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(mustRead(t, "../manifests/crd/fjord.dev_resiliencepolicies.yaml")), &crd); err != nil {
		t.Fatal(err)
	}
	if len(crd.Spec.Versions) != 1 {
		t.Fatalf("CRD has %d versions, want 1", len(crd.Spec.Versions))
	}
	spec := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"]
	if got := *spec.Properties["targetRefs"].MaxItems; got != maxTargetRefs {
		t.Errorf("CRD targetRefs maxItems %d, Validate %d", got, maxTargetRefs)
	}

	const positiveRule = "duration(self) > duration('0s')"
	var durations, ints []string
	var walk func(s schema, path string)
	walk = func(s schema, path string) {
		for name, p := range s.Properties {
			if path == "" && name == "targetRefs" {
				continue
			}
			fp := strings.TrimPrefix(path+"."+name, ".")
			switch p.Type {
			case "object":
				walk(p, fp)
			case "integer":
				ints = append(ints, fp)
				if p.Minimum == nil || int64(*p.Minimum) != minima[fp] {
					t.Errorf("%s: CRD minimum %v, Validate %d", fp, p.Minimum, minima[fp])
				}
				want, ok := maxima[fp]
				switch {
				case p.Maximum == nil && ok:
					t.Errorf("%s: Validate has maximum %d, the CRD none", fp, want)
				case p.Maximum != nil && (!ok || int64(*p.Maximum) != want):
					t.Errorf("%s: CRD maximum %v, Validate %d (set: %v)", fp, *p.Maximum, want, ok)
				}
			case "string":
				switch p.Pattern {
				case `^([0-9]{1,5}(h|m|s|ms)){1,4}$`:
					durations = append(durations, fp)
					hasRule := slices.ContainsFunc(p.Validations, func(v validation) bool { return v.Rule == positiveRule })
					if hasRule != positive[fp] {
						t.Errorf("%s: CRD requires a positive duration: %v, Validate: %v", fp, hasRule, positive[fp])
					}
				case `^[0-9]{1,4}(\.[0-9]{1,3})?$`:
				default:
					t.Errorf("%s: string with pattern %q that Validate does not know", fp, p.Pattern)
				}
			case "array":
				if p.MaxItems == nil || *p.MaxItems != maxListItems {
					t.Errorf("%s: CRD maxItems %v, Validate %d", fp, p.MaxItems, maxListItems)
				}
				if p.ListType != "set" {
					t.Errorf("%s: CRD list type %q, Validate checks for duplicates (set)", fp, p.ListType)
				}
				switch fp {
				case "retry.retryOn":
					var want []string
					for _, v := range retryOnValues {
						want = append(want, string(v))
					}
					if d := cmp.Diff(want, p.Items.Enum); d != "" {
						t.Errorf("retry.retryOn enum (-Validate +CRD):\n%s", d)
					}
				case "retry.retriableStatusCodes":
					if p.Items.Minimum == nil || *p.Items.Minimum != minStatusCode || p.Items.Maximum == nil || *p.Items.Maximum != maxStatusCode {
						t.Errorf("retry.retriableStatusCodes items: CRD %v..%v, Validate %d..%d", p.Items.Minimum, p.Items.Maximum, minStatusCode, maxStatusCode)
					}
				default:
					t.Errorf("%s: list that Validate does not check", fp)
				}
			case "boolean":
			default:
				t.Errorf("%s: type %q that Validate does not know", fp, p.Type)
			}
		}
	}
	walk(spec, "")
	for p := range maxima {
		if !slices.Contains(ints, p) {
			t.Errorf("Validate bounds %s, which is no integer field of the CRD", p)
		}
	}
	for p := range positive {
		if !slices.Contains(durations, p) {
			t.Errorf("Validate requires %s to be positive, which is no duration field of the CRD", p)
		}
	}
	for p := range minima {
		if !slices.Contains(ints, p) {
			t.Errorf("Validate bounds %s from below, which is no integer field of the CRD", p)
		}
	}
	if len(durations) != 11 {
		t.Errorf("found %d durations in the CRD, want 11: %v", len(durations), durations)
	}
}

// schema is the part of an OpenAPI v3 schema the parity test reads.
type schema struct {
	Type        string            `json:"type"`
	Properties  map[string]schema `json:"properties"`
	Items       *schema           `json:"items"`
	Minimum     *float64          `json:"minimum"`
	Maximum     *float64          `json:"maximum"`
	MaxItems    *int              `json:"maxItems"`
	Pattern     string            `json:"pattern"`
	Enum        []string          `json:"enum"`
	ListType    string            `json:"x-kubernetes-list-type"`
	Validations []validation      `json:"x-kubernetes-validations"`
}

type validation struct {
	Rule string `json:"rule"`
}
