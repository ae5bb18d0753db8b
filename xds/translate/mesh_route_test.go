package translate

import (
	"testing"

	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
)

// TestFraction pins how a mirror's n/d share becomes a FractionalPercent:
// exact in the coarsest denominator that holds it, else per million.
func TestFraction(t *testing.T) {
	tests := map[string]struct {
		n, d int32
		want *typev3.FractionalPercent
	}{
		"percent":          {n: 25, d: 100, want: &typev3.FractionalPercent{Numerator: 25}},
		"half":             {n: 1, d: 2, want: &typev3.FractionalPercent{Numerator: 50}},
		"per mille":        {n: 1, d: 1000, want: &typev3.FractionalPercent{Numerator: 10, Denominator: typev3.FractionalPercent_TEN_THOUSAND}},
		"a third, rounded": {n: 1, d: 3, want: &typev3.FractionalPercent{Numerator: 333333, Denominator: typev3.FractionalPercent_MILLION}},
		"all":              {n: 7, d: 7, want: &typev3.FractionalPercent{Numerator: 100}},
		"none":             {n: 0, d: 100, want: &typev3.FractionalPercent{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, fraction(tc.n, tc.d), protocmp.Transform()); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

// TestPercentage pins fault percentages: per million, 100% when unset.
func TestPercentage(t *testing.T) {
	tests := map[string]struct {
		in   *fjordv1a1.Decimal
		want uint32
	}{
		"unset is all":     {want: 1_000_000},
		"whole":            {in: ptr(fjordv1a1.Decimal("30")), want: 300_000},
		"smallest":         {in: ptr(fjordv1a1.Decimal("0.001")), want: 10},
		"capped at 100%":   {in: ptr(fjordv1a1.Decimal("250")), want: 1_000_000},
		"malformed is all": {in: ptr(fjordv1a1.Decimal("x")), want: 1_000_000},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := percentage(tc.in)
			if got.GetNumerator() != tc.want || got.GetDenominator() != typev3.FractionalPercent_MILLION {
				t.Errorf("percentage = %v, want %d per million", got, tc.want)
			}
		})
	}
}

// TestFaultLeavesOutWhatProxiesReject: an abort without a status or a delay
// without a positive duration is not emitted (Envoy rejects both).
func TestFaultLeavesOutWhatProxiesReject(t *testing.T) {
	zero := fjordv1a1.Duration("0s")
	f := &fjordv1a1.FaultInjection{Abort: &fjordv1a1.FaultAbort{}, Delay: &fjordv1a1.FaultDelay{FixedDelay: &zero}}
	if got := fault(f); got != nil {
		t.Errorf("fault(%+v) = %v, want nil", f, got)
	}
	if got := faultOverride(nil); got != nil {
		t.Errorf("faultOverride(nil) = %v, want nil", got)
	}
}
