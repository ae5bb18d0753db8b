package load

import (
	"encoding/xml"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDistOf(t *testing.T) {
	tests := map[string]struct {
		in   []time.Duration
		want Dist
	}{
		"empty": {},
		"one":   {in: []time.Duration{5 * time.Millisecond}, want: Dist{N: 1, P50: 5, P90: 5, P99: 5, Max: 5, Mean: 5}},
		"unsorted ten": {
			in:   []time.Duration{10, 1, 9, 2, 8, 3, 7, 4, 6, 5},
			want: Dist{N: 10, P50: 5e-6, P90: 9e-6, P99: 10e-6, Max: 10e-6, Mean: 5.5e-6},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, distOf(tc.in)); diff != "" {
				t.Errorf("distOf (-want +got):\n%s", diff)
			}
		})
	}
}

func TestQuantiles(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 200; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	q := quantiles(ds)
	if len(q) != 101 || q[0] != 1 || q[50] != 100 || q[99] != 198 || q[100] != 200 {
		t.Errorf("quantiles: len %d, p0 %v p50 %v p99 %v p100 %v; want 101, 1, 100, 198, 200", len(q), q[0], q[50], q[99], q[100])
	}
	if quantiles(nil) != nil {
		t.Error("quantiles of nothing is not nil")
	}
}

func TestSlope(t *testing.T) {
	tests := map[string]struct {
		xs, ys []float64
		want   float64
	}{
		"line":        {xs: []float64{0, 100, 200}, ys: []float64{50, 60, 70}, want: 0.1},
		"noisy":       {xs: []float64{0, 1, 2, 3}, ys: []float64{0, 3, 3, 6}, want: 1.8},
		"one point":   {xs: []float64{1}, ys: []float64{5}},
		"vertical":    {xs: []float64{2, 2}, ys: []float64{1, 5}},
		"no relation": {xs: []float64{0, 1, 2}, ys: []float64{4, 4, 4}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := slope(tc.xs, tc.ys); cmp.Diff(tc.want, got, floatEq) != "" {
				t.Errorf("slope = %v, want %v", got, tc.want)
			}
		})
	}
}

var floatEq = cmp.Comparer(func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 })

func TestParseScenarios(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    []ScenarioSpec
		wantErr string
	}{
		"all": {
			in: "flip:20, policy-service, churn:50x10,restart",
			want: []ScenarioSpec{
				{Kind: Flip, Changes: 20}, {Kind: PolicyService, Changes: 1},
				{Kind: Churn, Rate: 50, Seconds: 10}, {Kind: Restart},
			},
		},
		"unknown":         {in: "flip,teleport:3", wantErr: `unknown kind "teleport"`},
		"bad count":       {in: "flip:x", wantErr: "want flip:COUNT"},
		"zero count":      {in: "new-service:0", wantErr: "want new-service:COUNT"},
		"churn no rate":   {in: "churn:10", wantErr: "want churn:RATExSECONDS"},
		"restart count":   {in: "restart:2", wantErr: "restart takes no count"},
		"nothing":         {in: " , ", wantErr: "no scenario"},
		"negative churn":  {in: "churn:-1x5", wantErr: "want churn:RATExSECONDS"},
		"policy defaults": {in: "policy-mesh,policy-namespace", want: []ScenarioSpec{{Kind: PolicyMesh, Changes: 1}, {Kind: PolicyNamespace, Changes: 1}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseScenarios(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseScenarios (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMatrix(t *testing.T) {
	for _, name := range []string{"smoke", "reduced", "full"} {
		runs, err := Matrix(name)
		if err != nil || len(runs) == 0 {
			t.Errorf("Matrix(%q) = %d runs, %v", name, len(runs), err)
		}
		names := map[string]bool{}
		for _, r := range runs {
			if names[r.Name] {
				t.Errorf("matrix %s: run name %s twice", name, r.Name)
			}
			names[r.Name] = true
		}
	}
	if _, err := Matrix("huge"); err == nil {
		t.Error("Matrix of an unknown name succeeded")
	}
}

// wellFormed fails unless s is well-formed XML.
func wellFormed(t *testing.T, s string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	for {
		_, err := d.Token()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("not well-formed SVG: %v\n%s", err, s)
		}
	}
}

func TestCharts(t *testing.T) {
	line := LineChart{Title: "a < b & c", XLabel: "x", YLabel: "y", Points: true, Series: []Series{
		{Name: "one", X: []float64{0, 10, 1215}, Y: []float64{0, 50, 100}},
		{Name: "two", X: []float64{5}, Y: []float64{7}},
	}}
	svg := line.SVG()
	wellFormed(t, svg)
	if !strings.Contains(svg, "1500") {
		t.Errorf("x axis does not reach past the largest value 1215:\n%s", svg)
	}
	bars := BarChart{Title: "bars", YLabel: "ms", Categories: []string{"flip", "churn"}, Series: []Series{{Name: "p50", Y: []float64{1, 2}}, {Name: "p99", Y: []float64{3, 4}}}}
	wellFormed(t, bars.SVG())
	wellFormed(t, LineChart{Title: "empty"}.SVG())
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 42
fjord_xds_pushes_total{type="cluster"} 3
fjord_xds_pushes_total{type="endpoint"} 4
fjord_build_seconds_sum 1.5e-02
`
	got, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"go_goroutines": 42, "fjord_xds_pushes_total": 7, "fjord_build_seconds_sum": 0.015}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseMetrics (-want +got):\n%s", diff)
	}
	if _, err := parseMetrics(strings.NewReader("x{a=\"b\"} notanumber\n")); err == nil {
		t.Error("a malformed value parsed")
	}
}

func TestProcSelf(t *testing.T) {
	cpu, err := procCPUSeconds(os.Getpid())
	if err != nil || cpu < 0 {
		t.Errorf("procCPUSeconds = %v, %v", cpu, err)
	}
	rss, err := procRSS(os.Getpid())
	if err != nil || rss <= 0 {
		t.Errorf("procRSS = %v, %v", rss, err)
	}
	if _, err := procRSS(-1); err == nil {
		t.Error("procRSS of no process succeeded")
	}
}
