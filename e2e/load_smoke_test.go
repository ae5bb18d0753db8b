package e2e

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	loadharness "github.com/fjordmesh/fjord/load"
)

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestLoadSmoke runs the load harness's smoke matrix (20 simulated proxies,
// 20 Services, every scenario) against the fjord-cp binary: it checks that
// the harness works end to end — every affected proxy converges on every
// change, the restart reconnects everyone without a shrunk config — and
// reports the figures. It asserts no latency: CI machines are too uneven.
func TestLoadSmoke(t *testing.T) {
	specs, err := loadharness.Matrix("smoke")
	if err != nil {
		t.Fatal(err)
	}
	spec := specs[0]
	env := loadharness.Env{
		WorkDir:           t.TempDir(),
		CPCommand:         []string{bin("fjord-cp")},
		SecureAddressFlag: "--secure-address",
		Log:               slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := loadharness.Run(ctx, env, spec)
	if err != nil {
		t.Fatalf("load run: %v", err)
	}
	var md strings.Builder
	loadharness.WriteMarkdown(&md, &loadharness.Report{Machine: loadharness.DescribeMachine(), Runs: []loadharness.RunResult{*res}})
	t.Logf("report:\n%s", md.String())

	for _, e := range res.Errors {
		t.Errorf("run error: %s", e)
	}
	for _, p := range res.PolicyProblems {
		t.Errorf("generated policy not accepted: %s", p)
	}
	if res.ShrinkCount != 0 {
		t.Errorf("%d responses left a proxy with fewer resources than before, e.g. %+v", res.ShrinkCount, res.Shrinks[0])
	}
	if res.NACKs != 0 {
		t.Errorf("proxies could not decode %d responses", res.NACKs)
	}
	last := res.Ramp[len(res.Ramp)-1]
	if last.Proxies != spec.Fleet.Proxies || last.NotSynced != 0 {
		t.Errorf("ramp ended with %d proxies, %d without their configuration; want %d, 0", last.Proxies, last.NotSynced, spec.Fleet.Proxies)
	}
	if last.Sample.Connected != float64(spec.Fleet.Proxies) {
		t.Errorf("fjord_xds_connected_proxies = %v, want %d", last.Sample.Connected, spec.Fleet.Proxies)
	}

	var kinds []loadharness.ScenarioKind
	for _, s := range res.Scenarios {
		kinds = append(kinds, s.Kind)
		if s.NotConverged != 0 {
			t.Errorf("%s: %d affected proxies never acknowledged the change", s.Kind, s.NotConverged)
		}
		// Every scenario of the smoke matrix concerns some proxy, so a
		// convergence was observed; a probe that never matches would fail
		// NotConverged above instead.
		if s.AffectedPerChange == 0 || s.Latency.N == 0 {
			t.Errorf("%s: no affected proxy (%.1f per change, %d latencies)", s.Kind, s.AffectedPerChange, s.Latency.N)
		}
		t.Logf("%s: %d changes, %.1f affected and %.1f unaffected proxies per change, %d pushes to unaffected proxies",
			s.Kind, s.Changes, s.AffectedPerChange, s.UnaffectedProxies, s.UnaffectedPushes)
		if r := s.Restart; r != nil {
			if r.NotReconnected != 0 || r.Shrinks != 0 {
				t.Errorf("restart: %d proxies not reconnected, %d shrunk configs", r.NotReconnected, r.Shrinks)
			}
		}
	}
	for _, sc := range spec.Scenarios {
		if !slices.Contains(kinds, sc.Kind) {
			t.Errorf("scenario %s has no result", sc.Kind)
		}
	}
	// A flip of one Service concerns every Envoy-like proxy and the gRPC
	// clients that dial it, so some proxies are unaffected and the
	// unaffected-push figure means something.
	for _, s := range res.Scenarios {
		if s.Kind == loadharness.Flip && s.UnaffectedProxies == 0 {
			t.Errorf("flip: every proxy counted as affected; the unaffected-push figure measures nothing")
		}
	}
}
