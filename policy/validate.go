package policy

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
)

// Validate checks a policy spec the way the CRD schema and its CEL rules do,
// and reports every problem as "spec.<path>: <reason>". In Kubernetes mode
// the API server has already rejected most of these, but standalone mode has
// no API server, and objects written before a rule existed are never
// re-validated by it; resolution therefore never trusts a spec it has not
// checked itself. The bounds below are kept equal to the CRD markers by a
// test that reads the generated CRD.
func Validate(spec *fjordv1a1.ResiliencePolicySpec) error {
	var errs []error
	fail := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("spec.%s: %s", path, fmt.Sprintf(format, args...)))
	}
	validateTargetRefs(spec.TargetRefs, fail)
	if spec.OutlierDetection == nil && spec.ConnectionPool == nil && spec.Retry == nil && spec.Timeout == nil && spec.FaultInjection == nil {
		errs = append(errs, errors.New("spec: must set at least one of outlierDetection, connectionPool, retry, timeout, faultInjection"))
	}
	validateLeaves(reflect.ValueOf(spec).Elem(), "", fail)
	if od := spec.OutlierDetection; od != nil {
		notShorter(od.BaseEjectionTime, od.MaxEjectionTime, "outlierDetection.maxEjectionTime", "baseEjectionTime", fail)
	}
	if r := spec.Retry; r != nil && r.Backoff != nil {
		notShorter(r.Backoff.BaseInterval, r.Backoff.MaxInterval, "retry.backoff.maxInterval", "baseInterval", fail)
	}
	if f := spec.FaultInjection; f != nil {
		validateFault(f, fail)
	}
	return errors.Join(errs...)
}

// validateFault checks the rules of the faultInjection section that its
// field types cannot express: which fields go together, and percentages.
func validateFault(f *fjordv1a1.FaultInjection, fail func(path, format string, args ...any)) {
	if f.Abort == nil && f.Delay == nil {
		fail("faultInjection", "must set abort, delay or both")
	}
	if a := f.Abort; a != nil {
		if (a.HTTPStatus == nil) == (a.GRPCStatus == nil) {
			fail("faultInjection.abort", "must set exactly one of httpStatus, grpcStatus")
		}
		checkPercentage("faultInjection.abort.percentage", a.Percentage, fail)
	}
	if d := f.Delay; d != nil {
		if d.FixedDelay == nil {
			fail("faultInjection.delay.fixedDelay", "required")
		}
		checkPercentage("faultInjection.delay.percentage", d.Percentage, fail)
	}
}

// checkPercentage fails a percentage above 100; a malformed one is
// reported by validateLeaves.
func checkPercentage(path string, p *fjordv1a1.Decimal, fail func(path, format string, args ...any)) {
	if p == nil {
		return
	}
	if m, err := p.Milli(); err == nil && m > maxPercentMilli {
		fail(path, "must be at most 100, got %s", *p)
	}
}

// maxPercentMilli is 100 percent as Decimal.Milli returns it.
const maxPercentMilli = 100_000

const (
	maxTargetRefs = 16
	maxListItems  = 16
	maxNameLength = 253
)

// maxima are the upper bounds of integer fields; every integer field is at
// least 0.
var maxima = map[string]int64{
	"outlierDetection.maxEjectionPercent":          100,
	"outlierDetection.minHealthPercent":            100,
	"outlierDetection.enforcingPercent":            100,
	"outlierDetection.failurePercentage.threshold": 100,
	"connectionPool.retryBudget.budgetPercent":     100,
	"retry.attempts":                               10,
	"faultInjection.abort.httpStatus":              maxStatusCode,
	"faultInjection.abort.grpcStatus":              16,
}

// minima are the lower bounds of the integer fields whose bound is not 0.
var minima = map[string]int64{
	"faultInjection.abort.httpStatus": 200,
}

// positive are the durations that must be above zero: Envoy rejects a zero
// outlier interval, ejection time, connect timeout or backoff interval.
var positive = map[string]bool{
	"outlierDetection.interval":         true,
	"outlierDetection.baseEjectionTime": true,
	"outlierDetection.maxEjectionTime":  true,
	"connectionPool.connectTimeout":     true,
	"retry.backoff.baseInterval":        true,
	"retry.backoff.maxInterval":         true,
	"faultInjection.delay.fixedDelay":   true,
}

// retryOnValues are the values the CRD's RetryOn enum allows.
var retryOnValues = []fjordv1a1.RetryOn{
	"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
	"envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
	"http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal",
	"resource-exhausted", "unavailable",
}

const (
	minStatusCode = 100
	maxStatusCode = 599
)

func validateTargetRefs(refs []fjordv1a1.TargetRef, fail func(path, format string, args ...any)) {
	if len(refs) > maxTargetRefs {
		fail("targetRefs", "must have at most %d items, has %d", maxTargetRefs, len(refs))
	}
	type refID struct {
		name, section string
		port          bool
	}
	seen := map[refID]int{}
	for i, r := range refs {
		p := fmt.Sprintf("targetRefs[%d]", i)
		if r.Group != "" {
			fail(p+".group", "must be \"\" (core): only Services can be targeted, got %q", r.Group)
		}
		if r.Kind != "Service" {
			fail(p+".kind", "must be Service, got %q", r.Kind)
		}
		if r.Name == "" || len(r.Name) > maxNameLength {
			fail(p+".name", "must have 1 to %d characters", maxNameLength)
		}
		id := refID{name: r.Name, port: r.SectionName != nil}
		if r.SectionName != nil {
			id.section = *r.SectionName
			if id.section == "" || len(id.section) > maxNameLength {
				fail(p+".sectionName", "must have 1 to %d characters when set", maxNameLength)
			}
		}
		if j, ok := seen[id]; ok {
			fail(p, "names the same Service (and sectionName) as targetRefs[%d]", j)
			continue
		}
		seen[id] = i
	}
}

// validateLeaves checks every set field under v by its type, descending
// into every section (also into atomic ones such as backoff).
func validateLeaves(v reflect.Value, prefix string, fail func(path, format string, args ...any)) {
	for _, f := range fieldsOf[v.Type()] {
		fv := v.Field(f.index)
		if !isSet(fv) {
			continue
		}
		path := prefix + f.name
		switch x := fv.Interface().(type) {
		case *fjordv1a1.Duration:
			d, err := x.Parse()
			switch {
			case err != nil:
				fail(path, "%v", err)
			case d == 0 && positive[path]:
				fail(path, "must be greater than 0")
			}
		case *fjordv1a1.Decimal:
			if _, err := x.Milli(); err != nil {
				fail(path, "%v", err)
			}
		case *int32:
			checkRange(path, int64(*x), minima[path], maxOf(path), fail)
		case *bool:
		case []fjordv1a1.RetryOn:
			checkList(path, x, fail, func(c fjordv1a1.RetryOn) string {
				if slices.Contains(retryOnValues, c) {
					return ""
				}
				return fmt.Sprintf("unsupported value %q: want one of %s", c, joinRetryOn(retryOnValues))
			})
		case []int32:
			checkList(path, x, fail, func(c int32) string {
				if c < minStatusCode || c > maxStatusCode {
					return fmt.Sprintf("%d is not an HTTP status code (%d to %d)", c, minStatusCode, maxStatusCode)
				}
				return ""
			})
		default:
			if fv.Kind() == reflect.Pointer && fv.Elem().Kind() == reflect.Struct {
				validateLeaves(fv.Elem(), path+".", fail)
				continue
			}
			// A new field type needs a rule here; failing loudly keeps an
			// unchecked field from reaching the proxies.
			fail(path, "field of type %s has no validation rule", fv.Type())
		}
	}
}

func maxOf(path string) int64 {
	if m, ok := maxima[path]; ok {
		return m
	}
	return 1<<31 - 1
}

func checkRange(path string, v, lo, hi int64, fail func(path, format string, args ...any)) {
	switch {
	case v < lo:
		fail(path, "must be at least %d, got %d", lo, v)
	case v > hi:
		fail(path, "must be at most %d, got %d", hi, v)
	}
}

// checkList enforces the CRD's listType=set and maxItems, and an item rule
// that returns "" for a good item.
func checkList[T comparable](path string, items []T, fail func(path, format string, args ...any), item func(T) string) {
	if len(items) > maxListItems {
		fail(path, "must have at most %d items, has %d", maxListItems, len(items))
	}
	seen := map[T]bool{}
	for i, it := range items {
		if msg := item(it); msg != "" {
			fail(fmt.Sprintf("%s[%d]", path, i), "%s", msg)
		}
		if seen[it] {
			fail(fmt.Sprintf("%s[%d]", path, i), "duplicate value %v", it)
		}
		seen[it] = true
	}
}

func joinRetryOn(vs []fjordv1a1.RetryOn) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = string(v)
	}
	return strings.Join(s, ", ")
}

// notShorter fails when both durations parse and hi is below lo; parse
// errors are reported by validateLeaves.
func notShorter(lo, hi *fjordv1a1.Duration, path, loName string, fail func(path, format string, args ...any)) {
	if lo == nil || hi == nil {
		return
	}
	l, errL := lo.Parse()
	h, errH := hi.Parse()
	if errL == nil && errH == nil && h < l {
		fail(path, "must not be shorter than %s (%s), got %s", loName, *lo, *hi)
	}
}
