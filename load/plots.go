package load

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// WritePlots writes the report's charts into dir as SVG and returns their
// paths: per run, the latency distribution of every scenario, p50/p99 by
// scenario and memory against connected proxies; per mode (standalone,
// Kubernetes), memory against Services when runs differ in size.
func WritePlots(dir string, rep *Report) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var out []string
	write := func(name, svg string) error {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(svg), 0o644); err != nil {
			return err
		}
		out = append(out, p)
		return nil
	}
	for _, run := range rep.Runs {
		lat := LineChart{
			Title:  fmt.Sprintf("%s: convergence latency distribution", run.Spec.Name),
			XLabel: "ms from write to ACK (per change × affected proxy)", YLabel: "percentile",
		}
		bars := BarChart{Title: fmt.Sprintf("%s: convergence latency by scenario", run.Spec.Name), YLabel: "ms"}
		p50, p99 := Series{Name: "p50"}, Series{Name: "p99"}
		for _, s := range run.Scenarios {
			if len(s.LatencyQuantiles) == 0 {
				continue
			}
			ser := Series{Name: string(s.Kind)}
			for p, v := range s.LatencyQuantiles {
				ser.X, ser.Y = append(ser.X, v), append(ser.Y, float64(p))
			}
			lat.Series = append(lat.Series, ser)
			bars.Categories = append(bars.Categories, string(s.Kind))
			p50.Y, p99.Y = append(p50.Y, s.Latency.P50), append(p99.Y, s.Latency.P99)
		}
		bars.Series = []Series{p50, p99}
		if len(lat.Series) == 0 {
			continue
		}
		if err := write(run.Spec.Name+"-latency.svg", lat.SVG()); err != nil {
			return out, err
		}
		if err := write(run.Spec.Name+"-scenarios.svg", bars.SVG()); err != nil {
			return out, err
		}
	}

	for _, kube := range []bool{false, true} {
		var runs []RunResult
		for _, run := range rep.Runs {
			if run.Kubernetes == kube {
				runs = append(runs, run)
			}
		}
		prefix, mode := "", "standalone"
		if kube {
			prefix, mode = "kube-", "Kubernetes mode"
		}
		if err := writeMemoryPlots(runs, prefix, mode, write); err != nil {
			return out, err
		}
	}
	return out, nil
}

// writeMemoryPlots charts memory against connected proxies for every run
// that connected them in steps, and against Services when the runs differ
// in size.
func writeMemoryPlots(runs []RunResult, prefix, mode string, write func(name, svg string) error) error {
	for _, run := range runs {
		if len(run.Ramp) < 3 {
			continue // a line needs a ramp of a few steps
		}
		gc := ""
		if run.Ramp[len(run.Ramp)-1].GCForced {
			gc = " after a forced GC"
		}
		mem := LineChart{
			Title:  fmt.Sprintf("%s: control-plane memory against connected proxies", run.Spec.Name),
			XLabel: "connected proxies", YLabel: "MB", Points: true,
		}
		rss := Series{Name: "resident (RSS)"}
		heap := Series{Name: "Go heap in use" + gc}
		for _, st := range run.Ramp {
			rss.X, rss.Y = append(rss.X, float64(st.Proxies)), append(rss.Y, st.Sample.RSSBytes/(1<<20))
			heap.X, heap.Y = append(heap.X, float64(st.Proxies)), append(heap.Y, st.Sample.HeapInuseBytes/(1<<20))
		}
		mem.Series = []Series{rss, heap}
		if err := write(run.Spec.Name+"-memory.svg", mem.SVG()); err != nil {
			return err
		}
	}

	// Memory against Services: the idle control plane (no proxy) of every
	// run, and the fully connected one per fleet, as Go heap in use (after
	// a forced collection when the control plane serves pprof: resident
	// memory also holds what the last burst freed). The first run of a
	// fleet at a size stands for the others.
	bySize := map[string]*Series{}
	var keys []string
	seen := map[string]bool{}
	add := func(key string, x, y float64) {
		if seen[fmt.Sprint(key, x)] {
			return
		}
		seen[fmt.Sprint(key, x)] = true
		s := bySize[key]
		if s == nil {
			s = &Series{Name: key}
			bySize[key] = s
			keys = append(keys, key)
		}
		s.X, s.Y = append(s.X, x), append(s.Y, y/(1<<20))
	}
	services := map[int]bool{}
	for _, run := range runs {
		if len(run.Ramp) == 0 {
			continue
		}
		m := float64(run.Spec.Mesh.Services)
		services[run.Spec.Mesh.Services] = true
		add("no proxy", m, run.Ramp[0].Sample.HeapInuseBytes)
		last := run.Ramp[len(run.Ramp)-1]
		if last.Proxies > 0 {
			add(fmt.Sprintf("%d proxies, %.0f%% Envoy-like, %s delta", last.Proxies,
				100*run.Spec.Fleet.EnvoyFraction, run.Spec.Fleet.DeltaShare()), m, last.Sample.HeapInuseBytes)
		}
	}
	if len(services) < 2 {
		return nil
	}
	chart := LineChart{
		Title:  "Control-plane heap in use against Services (" + mode + ")",
		XLabel: "Services (10 endpoints each)", YLabel: "MB", Points: true,
	}
	for _, k := range keys {
		s := bySize[k]
		idx := make([]int, len(s.X))
		for i := range idx {
			idx[i] = i
		}
		slices.SortFunc(idx, func(a, b int) int { return int(s.X[a] - s.X[b]) })
		sorted := Series{Name: s.Name}
		for _, i := range idx {
			sorted.X, sorted.Y = append(sorted.X, s.X[i]), append(sorted.Y, s.Y[i])
		}
		chart.Series = append(chart.Series, sorted)
	}
	return write(prefix+"memory-services.svg", chart.SVG())
}
