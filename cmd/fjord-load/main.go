// Command fjord-load measures how fast fjord-cp brings simulated proxies to
// a changed configuration, what each change costs, and how memory grows
// with proxies and Services. It only turns flags into load.RunSpecs and
// writes the report; the harness is package load.
//
//	fjord-load --matrix reduced --out .bench
//	fjord-load --proxies 1000 --services 1000 --scenarios flip:30,restart
//	fjord-load controlplane ...   (fjord-cp with /debug/pprof, for --profile)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/fjordmesh/fjord/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "controlplane" {
		os.Exit(runControlPlane(ctx, os.Args[2:], os.Stderr))
	}
	harnessGC()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// harnessGCPercent is the harness's GOGC unless the environment sets one.
// The simulated proxies hold every resource they are sent (hundreds of MB
// at 1,000 proxies), so each of the harness's collections marks all of
// that: 100 ms and more of CPU on the two cores it shares with the control
// plane, during which the proxies' ACKs wait. With the default GOGC the
// flip a collection landed in was the slowest of its run; proxies on
// machines of their own would not have taken that time from the control
// plane. Collecting at 5× the live heap instead of 2×
// makes it rare; the control plane's own GOGC is untouched. A memory
// limit of a third of the machine's memory keeps that from growing the
// heap past what the machine has: at 10,000 proxies the harness holds
// about 3 GB live (16 GB resident at 5× without the cap, 7 GB with it,
// in full-matrix runs).
const harnessGCPercent = 400

func harnessGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(harnessGCPercent)
	}
	if gb := load.DescribeMachine().MemoryGB; gb > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(gb * (1 << 30) / 3))
	}
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// run returns the exit code: 0 when every run completed without a fault
// (a shrunk config, a NACK, a change that never converged), 1 otherwise,
// 2 for bad flags.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fjord-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		matrix     = fs.String("matrix", "", "named matrix to run: smoke, reduced or full (otherwise one run from the flags below)")
		only       = fs.String("runs", "", "comma-separated run names of the matrix to run (default all)")
		name       = fs.String("name", "custom", "name of the single run")
		proxies    = fs.Int("proxies", 100, "simulated proxies")
		envoy      = fs.Float64("envoy", 0.5, "share of Envoy-like proxies (the rest are gRPC-like)")
		delta      = fs.Float64("delta", 0.5, "share of each kind using delta xDS (the rest state of the world)")
		grpcDelta  = fs.Float64("grpc-delta", -1, "share of gRPC-like proxies using delta xDS, if not --delta's (e.g. --delta 1 --grpc-delta 0: the fleet fjordctl bootstrap makes)")
		nodeOnce   = fs.Bool("node-once", false, "Envoy-like proxies send their node only in the first request of each stream, as fjordctl bootstrap's Envoys do (with --delta 1 --grpc-delta 0: that fleet); by default in every request, as Envoy's default")
		dials      = fs.Int("grpc-services", 3, "Services each gRPC-like proxy dials")
		services   = fs.Int("services", 100, "Services")
		endpoints  = fs.Int("endpoints", 10, "endpoints per Service")
		namespaces = fs.Int("namespaces", 0, "namespaces (default one per 50 Services)")
		policyN    = fs.Int("policy-every", 10, "every n-th Service gets its own ResiliencePolicy (0: none)")
		scenarios  = fs.String("scenarios", "flip:20,policy-service:3,policy-namespace:3,policy-mesh:3,new-service:3,churn:20x5,restart", "scenarios of the single run")
		ramp       = fs.Int("ramp-steps", 4, "steps the proxies connect in (memory is sampled after each)")
		settle     = fs.Float64("settle", 0.5, "seconds to keep counting pushes after a change converged")
		timeout    = fs.Float64("change-timeout", 60, "seconds to wait for a change to converge")
		reconnect  = fs.Float64("reconnect-max", 1, "proxies' maximum reconnect backoff, seconds")
		seed       = fs.Uint64("seed", 1, "seed of the proxy mix and of the changes")
		cpMode     = fs.String("cp", "", "how to run the control plane: exec (--cp-bin) or embedded (this binary's controlplane command, which serves /debug/pprof); default exec, embedded with --profile")
		cpBin      = fs.String("cp-bin", "", "fjord-cp binary (default: fjord-cp next to this binary)")
		attachXDS  = fs.String("attach-xds", "", "measure a running fjord-cp at this xDS address instead of starting one")
		attachMon  = fs.String("attach-monitoring", "", "its monitoring address")
		attachPid  = fs.Int("attach-pid", 0, "its pid, to read CPU and memory from /proc (default: from /metrics)")
		attachDir  = fs.String("attach-config-dir", "", "the empty directory it serves (--config-dir), which the harness fills")
		workDir    = fs.String("work-dir", "", "where runs keep their config, data and control-plane log (default a temporary directory, removed afterwards)")
		outDir     = fs.String("out", "", "write report.json and report.md here")
		plotsDir   = fs.String("plots", "", "write SVG plots here")
		profileDir = fs.String("profile", "", "write control-plane CPU profiles (one per scenario) and heap profiles here")
		profileSec = fs.Int("profile-seconds", 20, "length of each CPU profile; scenarios repeat changes until it is taken")
		kube       = fs.Bool("kube", false, "Kubernetes mode: write the mesh into a real kube-apiserver and etcd (envtest) and run fjord-cp --kubeconfig; run names get the prefix kube-")
		kubeAssets = fs.String("kube-assets", "", "directory with kube-apiserver and etcd (default $KUBEBUILDER_ASSETS, else k8s next to this binary: make envtest-assets builds bin/k8s)")
		kubeCRDs   = fs.String("kube-crds", "manifests/crd", "directory of the CRDs to install")
		render     = fs.String("render", "", "comma-separated report.json files: run nothing, merge their runs and write the table, --out and --plots from them")
		cpArgs     stringList
		cpEnv      stringList
	)
	fs.Var(&cpArgs, "cp-arg", "extra control-plane flag for the single run, repeatable (e.g. --cp-arg=--debounce=1ms)")
	fs.Var(&cpEnv, "cp-env", "KEY=VALUE added to the control plane's environment, repeatable, for every run (e.g. --cp-env=GOGC=200)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if *render != "" {
		rep, err := merge(strings.Split(*render, ","))
		if err == nil {
			err = write(rep, *outDir, *plotsDir)
		}
		if err != nil {
			fmt.Fprintln(stderr, "fjord-load:", err)
			return 1
		}
		load.WriteMarkdown(stdout, rep)
		return 0
	}

	var specs []load.RunSpec
	if *matrix != "" {
		var err error
		if specs, err = load.Matrix(*matrix); err != nil {
			fmt.Fprintln(stderr, "fjord-load:", err)
			return 2
		}
		if *only != "" {
			want := map[string]bool{}
			for _, n := range strings.Split(*only, ",") {
				want[strings.TrimSpace(n)] = true
			}
			var kept []load.RunSpec
			for _, s := range specs {
				if want[s.Name] {
					kept = append(kept, s)
					delete(want, s.Name)
				}
			}
			if len(want) > 0 {
				fmt.Fprintf(stderr, "fjord-load: matrix %s has no run named %v\n", *matrix, keys(want))
				return 2
			}
			specs = kept
		}
	} else {
		sc, err := load.ParseScenarios(*scenarios)
		if err != nil {
			fmt.Fprintln(stderr, "fjord-load:", err)
			return 2
		}
		fleet := load.FleetSpec{Proxies: *proxies, EnvoyFraction: *envoy, DeltaFraction: *delta, GRPCServices: *dials, Seed: *seed, NodeOnce: *nodeOnce}
		if *grpcDelta >= 0 {
			fleet.GRPCDeltaFraction = grpcDelta
		}
		specs = []load.RunSpec{{
			Name:   *name,
			Mesh:   load.MeshSpec{Services: *services, Endpoints: *endpoints, Namespaces: *namespaces, PolicyEvery: *policyN},
			Fleet:  fleet,
			CPArgs: cpArgs, Scenarios: sc, RampSteps: *ramp,
			SettleSeconds: *settle, ChangeTimeoutSeconds: *timeout, ReconnectMaxSeconds: *reconnect,
		}}
	}

	env := load.Env{WorkDir: *workDir, ProfileDir: *profileDir, Log: log}
	if *kube {
		if *cpMode == "embedded" || *attachXDS != "" {
			fmt.Fprintln(stderr, "fjord-load: --kube runs fjord-cp itself (--cp exec)")
			return 2
		}
		env.KubeAssets, env.KubeCRDs = *kubeAssets, *kubeCRDs
		if env.KubeAssets == "" {
			env.KubeAssets = os.Getenv("KUBEBUILDER_ASSETS")
		}
		if env.KubeAssets == "" {
			self, err := os.Executable()
			if err != nil {
				fmt.Fprintln(stderr, "fjord-load:", err)
				return 1
			}
			env.KubeAssets = filepath.Join(filepath.Dir(self), "k8s")
		}
		for i := range specs {
			specs[i].Name = "kube-" + specs[i].Name
		}
	}
	if *profileDir != "" {
		env.ProfileSeconds = *profileSec
	}
	if env.WorkDir == "" {
		dir, err := os.MkdirTemp("", "fjord-load-")
		if err != nil {
			fmt.Fprintln(stderr, "fjord-load:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		env.WorkDir = dir
	}
	switch {
	case *attachXDS != "":
		if *attachMon == "" || *attachDir == "" || len(specs) != 1 {
			fmt.Fprintln(stderr, "fjord-load: --attach-xds needs --attach-monitoring, --attach-config-dir and a single run")
			return 2
		}
		pprof := ""
		if load.HasPprof(ctx, *attachMon) {
			pprof = "http://" + *attachMon
		}
		env.Attach = load.AttachControlPlane(*attachXDS, *attachMon, *attachPid, pprof)
		env.AttachConfigDir = *attachDir
	default:
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(stderr, "fjord-load:", err)
			return 1
		}
		mode := *cpMode
		if mode == "" {
			mode = "exec"
			if *profileDir != "" && !*kube {
				mode = "embedded"
			}
		}
		switch mode {
		case "exec":
			bin := *cpBin
			if bin == "" {
				bin = filepath.Join(filepath.Dir(self), "fjord-cp")
			}
			env.CPCommand = []string{bin}
			env.SecureAddressFlag = "--secure-address"
		case "embedded":
			env.CPCommand = []string{self, "controlplane"}
			env.PprofFlag = "--pprof-address"
		default:
			fmt.Fprintf(stderr, "fjord-load: --cp %q: want exec or embedded\n", mode)
			return 2
		}
	}

	for i := range specs {
		specs[i].CPEnv = append(specs[i].CPEnv, cpEnv...)
	}
	rep := &load.Report{Machine: load.DescribeMachine(), Command: "fjord-load " + strings.Join(args, " ")}
	code := 0
	for _, spec := range specs {
		log.Info("run", "name", spec.Name, "proxies", spec.Fleet.Proxies, "services", spec.Mesh.Services, "endpoints", spec.Mesh.Endpoints)
		res, err := load.Run(ctx, env, spec)
		if err != nil {
			log.Error("run failed", "name", spec.Name, "error", err)
			code = 1
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if faulty(res) {
			code = 1
		}
		rep.Runs = append(rep.Runs, *res)
		if err := write(rep, *outDir, *plotsDir); err != nil {
			fmt.Fprintln(stderr, "fjord-load:", err)
			return 1
		}
	}
	load.WriteMarkdown(stdout, rep)
	return code
}

// faulty reports a run whose proxies saw something a real proxy must never
// see, or that could not finish its changes.
func faulty(r *load.RunResult) bool {
	if r.ShrinkCount > 0 || r.NACKs > 0 || len(r.Errors) > 0 {
		return true
	}
	for _, s := range r.Scenarios {
		if s.NotConverged > 0 {
			return true
		}
	}
	return false
}

// write saves the report so far: a long matrix keeps what it measured if
// it is interrupted.
func write(rep *load.Report, outDir, plotsDir string) error {
	if outDir != "" {
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			return err
		}
		js, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(outDir, "report.json"), append(js, '\n'), 0o644); err != nil {
			return err
		}
		f, err := os.Create(filepath.Join(outDir, "report.md"))
		if err != nil {
			return err
		}
		load.WriteMarkdown(f, rep)
		if err := f.Close(); err != nil {
			return err
		}
	}
	if plotsDir != "" {
		if _, err := load.WritePlots(plotsDir, rep); err != nil {
			return err
		}
	}
	return nil
}

// merge reads reports and returns one with all their runs, in order; the
// machine and command are the first report's.
func merge(paths []string) (*load.Report, error) {
	out := &load.Report{}
	for i, p := range paths {
		b, err := os.ReadFile(strings.TrimSpace(p))
		if err != nil {
			return nil, err
		}
		var rep load.Report
		if err := json.Unmarshal(b, &rep); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if i == 0 {
			out.Machine, out.Command = rep.Machine, rep.Command
		}
		out.Runs = append(out.Runs, rep.Runs...)
	}
	return out, nil
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
