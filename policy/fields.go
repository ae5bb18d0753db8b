package policy

import (
	"reflect"
	"slices"
	"strings"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/xds/node"
)

// The spec is walked by reflection rather than by hand so that a field added
// to the API is merged, attributed, validated and checked for enforcement
// without anyone remembering to extend a list here; the tests pin the
// resulting paths.

// atomicTypes are struct types merged as one value: their fields constrain
// each other (backoff's maxInterval must not be below its baseInterval), so
// taking them from different policies could produce a combination that
// nobody wrote and that is invalid.
var atomicTypes = map[reflect.Type]bool{
	reflect.TypeFor[fjordv1a1.Backoff]():    true,
	reflect.TypeFor[fjordv1a1.FaultAbort](): true,
	reflect.TypeFor[fjordv1a1.FaultDelay](): true,
}

var specType = reflect.TypeFor[fjordv1a1.ResiliencePolicySpec]()

// field is what the walks need to know about one struct field. It is
// computed once per type: reading struct tags on every walk dominated
// resolution time.
type field struct {
	index int
	// name is the JSON name.
	name string
	// leaf says the field is merged as a whole: everything except pointers
	// to non-atomic structs. Lists are atomic, as in Gateway API policy
	// merging.
	leaf bool
}

// fieldsOf holds the policy fields of the spec and of every struct under
// it; targetRefs is left out, it is not part of the effective policy.
// Filled at package initialisation and only read afterwards.
var fieldsOf = map[reflect.Type][]field{}

// allLeaves is leafPaths, computed once.
var allLeaves []string

func init() {
	var visit func(t reflect.Type)
	visit = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" || name == "targetRefs" {
				continue
			}
			sub := f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct
			fieldsOf[t] = append(fieldsOf[t], field{index: i, name: name, leaf: !sub || atomicTypes[f.Type.Elem()]})
			if sub {
				visit(f.Type.Elem())
			}
		}
	}
	visit(specType)
	allLeaves = leafPaths()
}

// isSet says whether a value was written by the policy. A list counts only
// when it has items: an empty list and an absent one look the same once
// they have been through JSON with omitempty.
func isSet(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Pointer:
		return !v.IsNil()
	case reflect.Slice:
		return v.Len() > 0
	}
	return !v.IsZero()
}

// leafPaths lists the JSON paths of every mergeable leaf of the spec, in
// declaration order.
func leafPaths() []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for _, f := range fieldsOf[t] {
			if f.leaf {
				out = append(out, prefix+f.name)
				continue
			}
			walk(t.Field(f.index).Type.Elem(), prefix+f.name+".")
		}
	}
	walk(specType, "")
	return out
}

// setLeaves returns the JSON paths of the leaves a spec sets, in
// declaration order.
func setLeaves(spec *fjordv1a1.ResiliencePolicySpec) []string {
	var out []string
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		for _, f := range fieldsOf[v.Type()] {
			fv := v.Field(f.index)
			if !isSet(fv) {
				continue
			}
			if f.leaf {
				out = append(out, prefix+f.name)
				continue
			}
			walk(fv.Elem(), prefix+f.name+".")
		}
	}
	walk(reflect.ValueOf(spec).Elem(), "")
	return out
}

// layer is one policy contributing to a port's effective policy.
type layer struct {
	policy *policyState
	level  Level
}

// merge overlays the layers, least specific first, onto an empty spec and
// records where every leaf came from. The layers' specs are deep-copied, so
// the result shares no memory with the input snapshot.
func merge(layers []layer) (fjordv1a1.ResiliencePolicySpec, []FieldSource) {
	var out fjordv1a1.ResiliencePolicySpec
	src := map[string]FieldSource{}
	for _, l := range layers {
		s := l.policy.used.Spec.DeepCopy()
		mergeStruct(reflect.ValueOf(&out).Elem(), reflect.ValueOf(s).Elem(), "", func(path string) {
			src[path] = FieldSource{Path: path, Policy: l.policy.key, Level: l.level}
		})
	}
	sources := make([]FieldSource, 0, len(src))
	for _, fs := range src {
		sources = append(sources, fs)
	}
	slices.SortFunc(sources, func(a, b FieldSource) int { return strings.Compare(a.Path, b.Path) })
	return out, sources
}

// mergeStruct copies every set leaf of src over dst, descending into nested
// sections so that a more specific policy overrides only the fields it sets.
// A section that is set but empty (outlierDetection: {}) still turns the
// section on in dst.
func mergeStruct(dst, src reflect.Value, prefix string, record func(path string)) {
	for _, f := range fieldsOf[src.Type()] {
		sv := src.Field(f.index)
		if !isSet(sv) {
			continue
		}
		dv := dst.Field(f.index)
		if f.leaf {
			dv.Set(sv)
			record(prefix + f.name)
			continue
		}
		if dv.IsNil() {
			dv.Set(reflect.New(sv.Type().Elem()))
		}
		mergeStruct(dv.Elem(), sv.Elem(), prefix+f.name+".", record)
	}
}

// grpcEnforced are the leaves proxyless gRPC (grpc-go's xDS client) acts on:
// the success-rate and failure-percentage detectors with their timing
// (gRFC A50), max_requests (A32), retries with gRPC conditions and backoff
// (A44), the request timeout as max_stream_duration (A31), and fault
// injection (A33).
var grpcEnforced = map[string]bool{
	"outlierDetection.interval":                            true,
	"outlierDetection.baseEjectionTime":                    true,
	"outlierDetection.maxEjectionTime":                     true,
	"outlierDetection.maxEjectionPercent":                  true,
	"outlierDetection.enforcingPercent":                    true,
	"outlierDetection.successRate.minimumHosts":            true,
	"outlierDetection.successRate.requestVolume":           true,
	"outlierDetection.successRate.standardDeviationFactor": true,
	"outlierDetection.failurePercentage.threshold":         true,
	"outlierDetection.failurePercentage.minimumHosts":      true,
	"outlierDetection.failurePercentage.requestVolume":     true,
	"connectionPool.maxRequests":                           true,
	"retry.attempts":                                       true,
	"retry.retryOn":                                        true,
	"retry.backoff":                                        true,
	"timeout.request":                                      true,
	"faultInjection.abort":                                 true,
	"faultInjection.delay":                                 true,
}

// grpcRetryOn are the retry conditions proxyless gRPC honours; it ignores
// the HTTP ones without rejecting the configuration.
var grpcRetryOn = map[fjordv1a1.RetryOn]bool{
	"cancelled":          true,
	"deadline-exceeded":  true,
	"internal":           true,
	"resource-exhausted": true,
	"unavailable":        true,
}

// Unenforced returns the JSON paths of the policy fields that a proxy kind
// ignores, sorted. Envoy enforces every field. retry.retryOn is enforced by
// proxyless gRPC for the gRPC conditions only; the status message names the
// HTTP conditions a policy uses separately.
func Unenforced(kind node.Kind) []string {
	return slices.Clone(unenforced[kind])
}

// unenforced holds Unenforced for each kind, computed at initialisation.
var unenforced = map[node.Kind][]string{}

func init() {
	for _, p := range allLeaves {
		if !grpcEnforced[p] {
			unenforced[node.GRPC] = append(unenforced[node.GRPC], p)
		}
	}
	slices.Sort(unenforced[node.GRPC])
}

// unenforcedBy lists what a proxy kind ignores of the fields one spec sets,
// sorted: leaf paths, and for retry.retryOn each ignored condition as
// retry.retryOn[value].
func unenforcedBy(kind node.Kind, spec *fjordv1a1.ResiliencePolicySpec) []string {
	var out []string
	for _, p := range setLeaves(spec) {
		if _, ok := slices.BinarySearch(unenforced[kind], p); ok {
			out = append(out, p)
		}
	}
	if kind == node.GRPC && spec.Retry != nil {
		for _, c := range spec.Retry.RetryOn {
			if !grpcRetryOn[c] {
				out = append(out, "retry.retryOn["+string(c)+"]")
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
