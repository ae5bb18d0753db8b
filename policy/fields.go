package policy

import (
	"reflect"
	"slices"
	"strings"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/xds/node"
)

// The spec is walked by reflection rather than by hand so that a field added
// to the API is merged, attributed and checked for enforcement without anyone
// remembering to extend a list here; the tests pin the resulting paths.

// atomicTypes are struct types merged as one value: their fields constrain
// each other (backoff's maxInterval must not be below its baseInterval), so
// taking them from different policies could produce a combination that
// nobody wrote and that is invalid.
var atomicTypes = map[reflect.Type]bool{
	reflect.TypeFor[fjordv1a1.Backoff](): true,
}

var specType = reflect.TypeFor[fjordv1a1.ResiliencePolicySpec]()

// jsonName returns a field's JSON name, or "" for fields that are not part
// of the policy's sections (targetRefs, untagged or inlined fields).
func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "-" || name == "targetRefs" {
		return ""
	}
	return name
}

// isLeaf says whether a field type is merged as a whole: everything except
// pointers to non-atomic structs. Lists are atomic, as in Gateway API
// policy merging.
func isLeaf(t reflect.Type) bool {
	if t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return true
	}
	return atomicTypes[t.Elem()]
}

// isSet says whether a leaf value was written by the policy. A list counts
// only when it has items: an empty list and an absent one look the same
// once they have been through JSON with omitempty.
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
		for i := range t.NumField() {
			f := t.Field(i)
			name := jsonName(f)
			if name == "" {
				continue
			}
			if isLeaf(f.Type) {
				out = append(out, prefix+name)
				continue
			}
			walk(f.Type.Elem(), prefix+name+".")
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
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name := jsonName(f)
			fv := v.Field(i)
			if name == "" || !isSet(fv) {
				continue
			}
			if isLeaf(f.Type) {
				out = append(out, prefix+name)
				continue
			}
			walk(fv.Elem(), prefix+name+".")
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
		s.TargetRefs = nil
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
	t := src.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name := jsonName(f)
		sv := src.Field(i)
		if name == "" || !isSet(sv) {
			continue
		}
		dv := dst.Field(i)
		if isLeaf(f.Type) {
			dv.Set(sv)
			record(prefix + name)
			continue
		}
		if dv.IsNil() {
			dv.Set(reflect.New(f.Type.Elem()))
		}
		mergeStruct(dv.Elem(), sv.Elem(), prefix+name+".", record)
	}
}

// grpcEnforced are the leaves proxyless gRPC (grpc-go's xDS client) acts on:
// the success-rate and failure-percentage detectors with their timing
// (gRFC A50), max_requests (A32), retries with gRPC conditions and backoff
// (A44), and the request timeout as max_stream_duration (A31).
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
	if kind != node.GRPC {
		return nil
	}
	var out []string
	for _, p := range leafPaths() {
		if !grpcEnforced[p] {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// unenforcedBy lists what a proxy kind ignores of the fields one spec sets,
// sorted: leaf paths, and for retry.retryOn each ignored condition as
// retry.retryOn[value].
func unenforcedBy(kind node.Kind, spec *fjordv1a1.ResiliencePolicySpec) []string {
	skip := map[string]bool{}
	for _, p := range Unenforced(kind) {
		skip[p] = true
	}
	var out []string
	for _, p := range setLeaves(spec) {
		if skip[p] {
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
