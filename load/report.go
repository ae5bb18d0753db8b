package load

import (
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
)

// Machine describes where a report was measured.
type Machine struct {
	CPUs     int     `json:"cpus"`
	CPUModel string  `json:"cpuModel"`
	MemoryGB float64 `json:"memoryGB"`
	Kernel   string  `json:"kernel"`
	Go       string  `json:"go"`
}

// DescribeMachine reads /proc for the CPU model, memory and kernel.
func DescribeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb float64
				fmt.Sscanf(strings.TrimSpace(rest), "%f", &kb)
				m.MemoryGB = kb / (1 << 20)
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func mb(b float64) string { return fmt.Sprintf("%.1f", b/(1<<20)) }
func kb(b float64) string { return fmt.Sprintf("%.1f", b/(1<<10)) }
func f1(x float64) string { return fmt.Sprintf("%.1f", x) }

// WriteMarkdown renders the report as tables: one row per scenario of
// every run, then the memory ramp of every run, then restarts and faults.
func WriteMarkdown(w io.Writer, rep *Report) {
	fmt.Fprintf(w, "Machine: %d CPUs (%s), %.1f GB, Linux %s, %s.\n\n", rep.Machine.CPUs, rep.Machine.CPUModel, rep.Machine.MemoryGB, rep.Machine.Kernel, rep.Machine.Go)
	fmt.Fprintln(w, "Convergence: from the file write returning to each affected proxy's ACK of content containing the change (ms, over every change × affected proxy; \"last\" is per change, until the last affected proxy).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| run | scenario | changes | affected/change | p50 | p90 | p99 | max | last p50 | last max | not conv. | unaffected proxies | pushes to unaffected | pushes/affected | KB/affected (mean, max) | cp CPU-s/change | builds | queue p50 | build p50 | build start→last ACK p50 |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, run := range rep.Runs {
		for _, s := range run.Scenarios {
			fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %d | %s | %d | %s | %s, %s | %.3f | %d | %s | %s | %s |\n",
				run.Spec.Name, s.Kind, s.Changes, f1(s.AffectedPerChange),
				f1(s.Latency.P50), f1(s.Latency.P90), f1(s.Latency.P99), f1(s.Latency.Max),
				f1(s.ChangeLatency.P50), f1(s.ChangeLatency.Max), s.NotConverged,
				f1(s.UnaffectedProxies), s.UnaffectedPushes, f1(s.PushesPerAffectedProxy.Mean),
				kb(s.BytesPerAffectedProxy.Mean), kb(s.BytesPerAffectedProxy.Max),
				s.CPUSecondsPerChange, s.Builds, f1(s.Queue.P50), f1(s.Build.P50), f1(s.Delivery.P50))
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Memory and initial sync as proxies connect (control plane after each step settled; sync: from the step's start to each new proxy's ACK of its whole configuration).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| run | services × endpoints | proxies | sync p50 ms | sync max ms | not synced | RSS MB | heap in use MB | free heap kept MB | stacks MB | after forced GC | goroutines | harness RSS MB |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
	for _, run := range rep.Runs {
		for _, st := range run.Ramp {
			gc := "no"
			if st.GCForced {
				gc = "yes"
			}
			fmt.Fprintf(w, "| %s | %d × %d | %d | %s | %s | %d | %s | %s | %s | %s | %s | %.0f | %s |\n",
				run.Spec.Name, run.Spec.Mesh.Services, run.Spec.Mesh.Endpoints, st.Proxies,
				f1(st.Sync.P50), f1(st.Sync.Max), st.NotSynced,
				mb(st.Sample.RSSBytes), mb(st.Sample.HeapInuseBytes), mb(st.Sample.HeapFreeBytes), mb(st.Sample.StackInuseBytes),
				gc, st.Sample.Goroutines, mb(st.LoadRSSBytes))
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| run | proxies (envoy-like share, delta share) | load average (start; end) | ready s | RSS/proxy KB | heap/proxy KB | restart: stop s | listening s | reconnected s | converged s | shrinks | NACKs | stream errors | harness CPU s |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, run := range rep.Runs {
		rs := "–"
		for _, s := range run.Scenarios {
			if s.Restart != nil {
				killed := ""
				if s.Restart.Killed {
					killed = " (killed)"
				}
				rs = fmt.Sprintf("%.2f%s | %.2f | %.2f | %.2f", s.Restart.StopSeconds, killed, s.Restart.ListeningSeconds, s.Restart.ReconnectedSeconds, s.Restart.ConvergedSeconds)
			}
		}
		if rs == "–" {
			rs = "– | – | – | –"
		}
		delta := run.Spec.Fleet.DeltaShare()
		if run.Spec.Fleet.NodeOnce {
			delta += ", node once"
		}
		fmt.Fprintf(w, "| %s | %d (%.0f%%, %s) | %s; %s | %.1f | %s | %s | %s | %d | %d | %d | %.1f |\n",
			run.Spec.Name, run.Spec.Fleet.Proxies, 100*run.Spec.Fleet.EnvoyFraction, delta,
			run.LoadAverage[0], run.LoadAverage[1], run.ReadySeconds, kb(run.RSSPerProxyBytes), kb(run.HeapPerProxyBytes), rs,
			run.ShrinkCount, run.NACKs, run.StreamErrors, run.LoadCPUSeconds)
	}
	for _, run := range rep.Runs {
		for _, e := range run.Errors {
			fmt.Fprintf(w, "\n- %s: error: %s", run.Spec.Name, e)
		}
		for _, p := range run.PolicyProblems {
			fmt.Fprintf(w, "\n- %s: policy not accepted: %s", run.Spec.Name, p)
		}
		for _, s := range run.Scenarios {
			for _, p := range s.Stragglers {
				fmt.Fprintf(w, "\n- %s: %s: not converged: %s", run.Spec.Name, s.Kind, p)
			}
		}
		for _, st := range run.Ramp {
			for _, p := range st.Stragglers {
				fmt.Fprintf(w, "\n- %s: ramp to %d: not synced: %s", run.Spec.Name, st.Proxies, p)
			}
		}
		for _, msg := range slices.Sorted(maps.Keys(run.StreamErrorKinds)) {
			fmt.Fprintf(w, "\n- %s: %d streams ended with: %s", run.Spec.Name, run.StreamErrorKinds[msg], msg)
		}
		for _, s := range run.Shrinks {
			fmt.Fprintf(w, "\n- %s: shrink: proxy %s %s %d -> %d at %s", run.Spec.Name, s.Proxy, s.Type, s.Before, s.After, s.At.Format("15:04:05.000"))
		}
	}
	fmt.Fprintln(w)
}
