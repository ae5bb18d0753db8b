package load

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// AllScenarios is every scenario with a count sized for a mesh of M
// Services: enough flips for percentiles to mean something, fewer of the
// costlier changes.
func AllScenarios(flips, policies int, churnRate, churnSeconds float64) []ScenarioSpec {
	return []ScenarioSpec{
		{Kind: Flip, Changes: flips},
		{Kind: PolicyService, Changes: policies},
		{Kind: PolicyNamespace, Changes: policies},
		{Kind: PolicyMesh, Changes: policies},
		{Kind: NewService, Changes: policies},
		{Kind: Churn, Rate: churnRate, Seconds: churnSeconds},
		{Kind: Restart},
	}
}

// Matrix returns a named set of runs:
//
//   - smoke: seconds; 20 proxies × 20 Services, every scenario once or twice.
//   - reduced: under five minutes on two cores; 200 proxies × 200 Services
//     × 10 endpoints with every scenario, the same flips with the
//     debounce at 1 ms, flips and a restart at 1,000 Services, and flips
//     at the target size, 1,000 proxies × 1,000 Services.
//   - full: the targets; 1,000 proxies × 1,000 Services × 10
//     endpoints with every scenario, the same fleet all Envoy-like delta
//     (the sidecar benchmark), flips without debounce, memory at 100 and
//     300 Services, and 10,000 proxies.
//
// Every run mixes Envoy-like and gRPC-like proxies half and half, each half
// half delta, unless its name says otherwise: "bootstrapped" runs have the
// fleet fjordctl bootstrap makes (Envoy-like on delta, gRPC-like on state
// of the world, and every proxy sending its node once per stream). The
// other runs' Envoy-like proxies send their node in every request, as
// Envoys with the default bootstrap setting do.
func Matrix(name string) ([]RunSpec, error) {
	mixed := func(n int) FleetSpec {
		return FleetSpec{Proxies: n, EnvoyFraction: 0.5, DeltaFraction: 0.5, GRPCServices: 3, Seed: 1}
	}
	// bootstrapped is the fleet fjordctl bootstrap makes: Envoy on delta,
	// sending its node once per stream, proxyless gRPC on state of the
	// world.
	bootstrapped := func(n int) FleetSpec {
		f := mixed(n)
		f.DeltaFraction = 1
		f.GRPCDeltaFraction = new(float64)
		f.NodeOnce = true
		return f
	}
	mesh := func(m, e int) MeshSpec { return MeshSpec{Services: m, Endpoints: e, PolicyEvery: 10} }
	noDebounce := []string{"--debounce", "1ms", "--max-delay", "100ms"}
	switch name {
	case "smoke":
		return []RunSpec{{
			Name: "smoke", Mesh: MeshSpec{Services: 20, Endpoints: 3, Namespaces: 2, PolicyEvery: 10}, Fleet: mixed(20), RampSteps: 2,
			CPArgs:        []string{"--debounce", "10ms", "--max-delay", "100ms"},
			Scenarios:     AllScenarios(2, 1, 10, 0.5),
			SettleSeconds: 0.3, ChangeTimeoutSeconds: 60, ReconnectMaxSeconds: 0.5,
		}}, nil
	case "reduced":
		return []RunSpec{
			{
				Name: "reduced-200x200", Mesh: mesh(200, 10), Fleet: mixed(200), RampSteps: 4,
				Scenarios: AllScenarios(20, 3, 20, 5), SettleSeconds: 0.5,
			},
			{
				Name: "reduced-200x200-nodebounce", Mesh: mesh(200, 10), Fleet: mixed(200), RampSteps: 1,
				CPArgs: noDebounce, Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 20}}, SettleSeconds: 0.5,
			},
			{
				Name: "reduced-200x1000", Mesh: mesh(1000, 10), Fleet: mixed(200), RampSteps: 2,
				Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 10}, {Kind: Restart}}, SettleSeconds: 0.5,
			},
			{
				Name: "reduced-1000x1000", Mesh: mesh(1000, 10), Fleet: mixed(1000), RampSteps: 1,
				Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 10}}, SettleSeconds: 0.5,
			},
			{
				Name: "reduced-1000x1000-bootstrapped", Mesh: mesh(1000, 10), Fleet: bootstrapped(1000), RampSteps: 1,
				Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 10}}, SettleSeconds: 0.5,
			},
		}, nil
	case "full":
		envoyDelta := FleetSpec{Proxies: 1000, EnvoyFraction: 1, DeltaFraction: 1, Seed: 1}
		return []RunSpec{
			{
				Name: "full-1000x1000", Mesh: mesh(1000, 10), Fleet: mixed(1000), RampSteps: 5,
				Scenarios: AllScenarios(30, 5, 50, 10), SettleSeconds: 1,
			},
			{
				Name: "full-1000x1000-envoy-delta", Mesh: mesh(1000, 10), Fleet: envoyDelta, RampSteps: 2,
				Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 30}, {Kind: Restart}}, SettleSeconds: 1,
			},
			{
				Name: "full-1000x1000-bootstrapped", Mesh: mesh(1000, 10), Fleet: bootstrapped(1000), RampSteps: 2,
				Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 30}, {Kind: Restart}}, SettleSeconds: 1,
			},
			{
				Name: "full-10000x1000-bootstrapped", Mesh: mesh(1000, 10), Fleet: bootstrapped(10000), RampSteps: 2,
				Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 10}}, SettleSeconds: 2,
				ChangeTimeoutSeconds: 300, ReconnectMaxSeconds: 2,
			},
			{
				Name: "full-1000x1000-nodebounce", Mesh: mesh(1000, 10), Fleet: mixed(1000), RampSteps: 1,
				CPArgs: noDebounce, Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 30}}, SettleSeconds: 1,
			},
			{
				Name: "full-1000x100", Mesh: mesh(100, 10), Fleet: mixed(1000), RampSteps: 2,
				Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 10}}, SettleSeconds: 1,
			},
			{
				Name: "full-1000x300", Mesh: mesh(300, 10), Fleet: mixed(1000), RampSteps: 2,
				Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 10}}, SettleSeconds: 1,
			},
			{
				Name: "full-10000x1000", Mesh: mesh(1000, 10), Fleet: mixed(10000), RampSteps: 5,
				Scenarios: []ScenarioSpec{{Kind: Flip, Changes: 10}, {Kind: Restart}}, SettleSeconds: 2,
				ChangeTimeoutSeconds: 300, ReconnectMaxSeconds: 2,
			},
		}, nil
	}
	return nil, fmt.Errorf("unknown matrix %q: want smoke, reduced or full", name)
}

// ParseScenarios reads a scenario list such as
// "flip:20,policy-service:3,churn:50x10,restart": kind, then the number of
// changes, or for churn the rate per second and the seconds.
func ParseScenarios(s string) ([]ScenarioSpec, error) {
	known := []ScenarioKind{Flip, Churn, PolicyService, PolicyNamespace, PolicyMesh, NewService, Restart}
	var out []ScenarioSpec
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		kind, arg, _ := strings.Cut(item, ":")
		sc := ScenarioSpec{Kind: ScenarioKind(kind)}
		if !slices.Contains(known, sc.Kind) {
			return nil, fmt.Errorf("scenario %q: unknown kind %q", item, kind)
		}
		switch {
		case sc.Kind == Churn:
			rate, secs, ok := strings.Cut(arg, "x")
			var err1, err2 error
			sc.Rate, err1 = strconv.ParseFloat(rate, 64)
			sc.Seconds, err2 = strconv.ParseFloat(secs, 64)
			if !ok || err1 != nil || err2 != nil || sc.Rate <= 0 || sc.Seconds <= 0 {
				return nil, fmt.Errorf("scenario %q: want churn:RATExSECONDS, e.g. churn:50x10", item)
			}
		case sc.Kind == Restart:
			if arg != "" {
				return nil, fmt.Errorf("scenario %q: restart takes no count", item)
			}
		default:
			sc.Changes = 1
			if arg != "" {
				n, err := strconv.Atoi(arg)
				if err != nil || n <= 0 {
					return nil, fmt.Errorf("scenario %q: want %s:COUNT", item, kind)
				}
				sc.Changes = n
			}
		}
		out = append(out, sc)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no scenario in %q", s)
	}
	return out, nil
}
