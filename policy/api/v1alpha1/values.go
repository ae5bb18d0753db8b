package v1alpha1

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The patterns below are the same ones the CRD schema enforces (see the
// markers on Duration and Decimal), so that standalone mode, which has no API
// server, accepts exactly what a cluster accepts.
var (
	durationPattern = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)
	decimalPattern  = regexp.MustCompile(`^[0-9]{1,4}(\.[0-9]{1,3})?$`)
)

// Duration is a Kubernetes-style duration string such as "500ms", "5s" or
// "1m30s": up to four groups of a whole number and a unit (h, m, s, ms).
// It is a string rather than metav1.Duration so that the CRD schema can reject
// negative and malformed values at the API server with a pattern, the way
// Gateway API does; Parse turns it into a time.Duration.
// +kubebuilder:validation:Pattern=`^([0-9]{1,5}(h|m|s|ms)){1,4}$`
// +kubebuilder:validation:MaxLength=32
type Duration string

// Parse returns the duration, or an error naming the bad value. It accepts
// exactly what the CRD pattern accepts, so it never returns a negative value.
func (d Duration) Parse() (time.Duration, error) {
	if !durationPattern.MatchString(string(d)) {
		return 0, fmt.Errorf("invalid duration %q: want whole numbers of h, m, s or ms, such as \"500ms\" or \"1m30s\"", string(d))
	}
	v, err := time.ParseDuration(string(d))
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: %w", string(d), err)
	}
	return v, nil
}

// Decimal is a non-negative decimal number written as a string ("1.9"), because
// CRDs discourage floating-point fields; at most three fractional digits are
// allowed, which is the precision Envoy's success-rate factor has.
// +kubebuilder:validation:Pattern=`^[0-9]{1,4}(\.[0-9]{1,3})?$`
// +kubebuilder:validation:MaxLength=8
type Decimal string

// Milli returns the value multiplied by 1000, as Envoy's
// success_rate_stdev_factor expects. It accepts exactly what the CRD pattern
// accepts.
func (d Decimal) Milli() (uint32, error) {
	s := string(d)
	if !decimalPattern.MatchString(s) {
		return 0, fmt.Errorf("invalid decimal %q: want up to four digits and at most three decimals, such as \"1.9\"", s)
	}
	whole, frac, _ := strings.Cut(s, ".")
	w, err := strconv.ParseUint(whole, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid decimal %q: %w", s, err)
	}
	f, err := strconv.ParseUint((frac + "000")[:3], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid decimal %q: %w", s, err)
	}
	// At most 9999999: the pattern bounds both parts, so this cannot overflow.
	return uint32(w*1000 + f), nil
}
