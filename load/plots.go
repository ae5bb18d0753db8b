package load

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// WritePlots writes the report's charts into dir as SVG and returns their
// paths: per run, the latency distribution of every scenario and p50/p99 by
// scenario; over all runs, memory against connected proxies and, when runs
// differ in size, against Services.
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

	mem := LineChart{Title: "Control-plane memory against connected proxies", XLabel: "connected proxies", YLabel: "MB", Points: true}
	for _, run := range rep.Runs {
		if len(run.Ramp) < 2 {
			continue
		}
		rss := Series{Name: run.Spec.Name + " RSS"}
		heap := Series{Name: run.Spec.Name + " heap"}
		for _, st := range run.Ramp {
			rss.X, rss.Y = append(rss.X, float64(st.Proxies)), append(rss.Y, st.Sample.RSSBytes/(1<<20))
			heap.X, heap.Y = append(heap.X, float64(st.Proxies)), append(heap.Y, st.Sample.HeapInuseBytes/(1<<20))
		}
		mem.Series = append(mem.Series, rss, heap)
	}
	if len(mem.Series) > 0 {
		if err := write("memory-proxies.svg", mem.SVG()); err != nil {
			return out, err
		}
	}

	// Memory against Services: the idle control plane (no proxy) of every
	// run, and per proxy count the fully connected one.
	bySize := map[string]*Series{}
	var keys []string
	add := func(key string, x, y float64) {
		s := bySize[key]
		if s == nil {
			s = &Series{Name: key}
			bySize[key] = s
			keys = append(keys, key)
		}
		s.X, s.Y = append(s.X, x), append(s.Y, y/(1<<20))
	}
	services := map[int]bool{}
	for _, run := range rep.Runs {
		if len(run.Ramp) == 0 {
			continue
		}
		m := float64(run.Spec.Mesh.Services)
		services[run.Spec.Mesh.Services] = true
		add("RSS, no proxy", m, run.Ramp[0].Sample.RSSBytes)
		last := run.Ramp[len(run.Ramp)-1]
		if last.Proxies > 0 {
			add(fmt.Sprintf("RSS, %d proxies", last.Proxies), m, last.Sample.RSSBytes)
		}
	}
	if len(services) >= 2 {
		chart := LineChart{Title: "Control-plane memory against Services", XLabel: "Services (× endpoints each as in the run)", YLabel: "MB", Points: true}
		for _, k := range keys {
			s := bySize[k]
			idx := make([]int, len(s.X))
			for i := range idx {
				idx[i] = i
			}
			slices.SortFunc(idx, func(a, b int) int { return int(s.X[a] - s.X[b]) })
			var sorted Series
			sorted.Name = s.Name
			for _, i := range idx {
				sorted.X, sorted.Y = append(sorted.X, s.X[i]), append(sorted.Y, s.Y[i])
			}
			chart.Series = append(chart.Series, sorted)
		}
		if err := write("memory-services.svg", chart.SVG()); err != nil {
			return out, err
		}
	}
	return out, nil
}
