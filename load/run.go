package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"
)

// ScenarioKind names a change scenario.
type ScenarioKind string

// The scenarios. Each discrete one writes one change at a time and waits
// until every affected proxy has it (or the change timeout passes) and the
// settle time after, so its pushes and CPU are its own.
const (
	// Flip removes one endpoint of a random Service, or adds it back.
	Flip ScenarioKind = "flip"
	// Churn flips distinct endpoints at a steady rate, as a rollout does,
	// without waiting between changes.
	Churn ScenarioKind = "churn"
	// PolicyService, PolicyNamespace and PolicyMesh change a connection-pool
	// limit in one Service's policy, a namespace default, the mesh default.
	PolicyService   ScenarioKind = "policy-service"
	PolicyNamespace ScenarioKind = "policy-namespace"
	PolicyMesh      ScenarioKind = "policy-mesh"
	// NewService adds a Service with its endpoints.
	NewService ScenarioKind = "new-service"
	// Restart stops the control plane, flips an endpoint while it is down,
	// and starts it again: every proxy reconnects, and must converge on the
	// flip without ever holding fewer resources than before.
	Restart ScenarioKind = "restart"
)

// ScenarioSpec is one scenario of a run.
type ScenarioSpec struct {
	Kind ScenarioKind `json:"kind"`
	// Changes is the number of changes of a discrete scenario (at least;
	// with profiling on, changes continue until the profile is taken).
	Changes int `json:"changes,omitempty"`
	// Rate (changes per second) and Seconds size a churn.
	Rate    float64 `json:"rate,omitempty"`
	Seconds float64 `json:"seconds,omitempty"`
}

// RunSpec is one point of the matrix: a mesh, a fleet, the control plane's
// flags and the scenarios to run against them.
type RunSpec struct {
	Name   string    `json:"name"`
	Mesh   MeshSpec  `json:"mesh"`
	Fleet  FleetSpec `json:"fleet"`
	CPArgs []string  `json:"cpArgs,omitempty"`
	// CPEnv is added to the control plane's environment (KEY=VALUE).
	CPEnv     []string       `json:"cpEnv,omitempty"`
	Scenarios []ScenarioSpec `json:"scenarios"`
	// RampSteps is the number of steps proxies connect in; memory is
	// sampled after each.
	RampSteps int `json:"rampSteps"`
	// SettleSeconds is how long to keep counting pushes after the last
	// affected proxy converged.
	SettleSeconds float64 `json:"settleSeconds"`
	// ChangeTimeoutSeconds bounds the wait for one change (and for a ramp
	// step's initial sync, ten times that).
	ChangeTimeoutSeconds float64 `json:"changeTimeoutSeconds"`
	// ReconnectMaxSeconds caps the proxies' reconnect backoff.
	ReconnectMaxSeconds float64 `json:"reconnectMaxSeconds"`
}

func (s *RunSpec) defaults() {
	if s.RampSteps <= 0 {
		s.RampSteps = 1
	}
	if s.SettleSeconds <= 0 {
		s.SettleSeconds = 0.5
	}
	if s.ChangeTimeoutSeconds <= 0 {
		s.ChangeTimeoutSeconds = 60
	}
	if s.ReconnectMaxSeconds <= 0 {
		s.ReconnectMaxSeconds = 1
	}
	if s.Fleet.GRPCServices <= 0 {
		s.Fleet.GRPCServices = 3
	}
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// Env is where and how runs execute.
type Env struct {
	// WorkDir gets one directory per run: config/, data/, fjord-cp.log.
	WorkDir string
	// CPCommand runs the control plane (program and leading arguments).
	// Empty means Attach.
	CPCommand []string
	// PprofFlag, if set, is a flag of CPCommand that takes an address to
	// serve /debug/pprof on (fjord-load controlplane --pprof-address).
	// Otherwise pprof is used if the monitoring address serves it.
	PprofFlag string
	// SecureAddressFlag, if set, is a flag of CPCommand that takes the
	// certificate API's listen address (fjord-cp --secure-address). Its
	// default is a fixed port, so every run is given a free one instead and
	// runs never collide.
	SecureAddressFlag string
	// KubeAssets, if set, runs every run in Kubernetes mode: a real
	// kube-apiserver and etcd from this directory (bin/k8s) with the CRDs
	// of KubeCRDs, the mesh written through the API, and the control plane
	// started with --kubeconfig.
	KubeAssets, KubeCRDs string
	// Attach is a running control plane to measure instead, with the
	// (empty) directory it serves as AttachConfigDir.
	Attach          *ControlPlane
	AttachConfigDir string
	// ProfileDir, with ProfileSeconds > 0, receives a CPU profile per
	// scenario and heap profiles.
	ProfileDir     string
	ProfileSeconds int
	Log            *slog.Logger
}

// runner is the state of one run.
type runner struct {
	env   Env
	spec  RunSpec
	res   *RunResult
	mesh  *Mesh
	kube  *Kube
	cp    *ControlPlane
	fleet *Fleet
	rng   *rand.Rand
	log   *slog.Logger
	// loadCPU0 is the harness's own CPU time when the run started.
	loadCPU0 float64
}

// Run executes one run. A failure to set up returns an error; a scenario
// that fails is recorded in the result's Errors and the run goes on.
func Run(ctx context.Context, env Env, spec RunSpec) (*RunResult, error) {
	spec.defaults()
	r := &runner{
		env: env, spec: spec,
		res: &RunResult{Spec: spec, Started: time.Now()},
		rng: rand.New(rand.NewPCG(spec.Fleet.Seed, 0x666c6970)),
		log: env.Log.With("run", spec.Name),
	}
	r.loadCPU0, _ = procCPUSeconds(os.Getpid())
	r.res.LoadAverage[0] = loadAverage()
	if err := r.setUp(ctx); err != nil {
		r.tearDown()
		return nil, err
	}
	defer r.tearDown()
	if err := r.ramp(ctx); err != nil {
		return nil, err
	}
	for _, sc := range spec.Scenarios {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		r.log.Info("scenario", "kind", sc.Kind)
		sr, err := r.scenario(ctx, sc)
		if err != nil {
			r.res.Errors = append(r.res.Errors, fmt.Sprintf("%s: %v", sc.Kind, err))
			r.log.Error("scenario failed", "kind", sc.Kind, "error", err)
		}
		if sr != nil {
			r.res.Scenarios = append(r.res.Scenarios, *sr)
			r.log.Info("scenario done", "kind", sc.Kind, "changes", sr.Changes,
				"p50ms", sr.Latency.P50, "p99ms", sr.Latency.P99, "maxms", sr.Latency.Max,
				"unaffectedPushes", sr.UnaffectedPushes, "notConverged", sr.NotConverged)
		}
	}
	r.finish()
	return r.res, nil
}

func (r *runner) setUp(ctx context.Context) error {
	dir := filepath.Join(r.env.WorkDir, r.spec.Name)
	configDir := filepath.Join(dir, "config")
	if r.env.Attach != nil {
		configDir = r.env.AttachConfigDir
	} else if err := os.RemoveAll(dir); err != nil {
		return err
	}
	var err error
	if r.env.KubeAssets != "" {
		if r.env.Attach != nil {
			return errors.New("Kubernetes mode starts its own control plane: it cannot attach to one")
		}
		start := time.Now()
		if r.kube, err = StartKube(r.env.KubeAssets, r.env.KubeCRDs, filepath.Join(dir, "kube")); err != nil {
			return err
		}
		if r.mesh, err = GenerateKubeMesh(ctx, r.kube, r.spec.Mesh); err != nil {
			return err
		}
		r.res.Kubernetes = true
		r.log.Info("API server holds the mesh", "took", time.Since(start))
	} else if r.mesh, err = GenerateMesh(configDir, r.spec.Mesh); err != nil {
		return err
	}
	r.res.Spec.Mesh = r.mesh.spec
	start := time.Now()
	if r.env.Attach != nil {
		r.cp = r.env.Attach
		if err := r.cp.WaitReady(ctx, 10*time.Minute); err != nil {
			return err
		}
	} else {
		cs := CPSpec{
			Command:   r.env.CPCommand,
			ConfigDir: configDir,
			DataDir:   filepath.Join(dir, "data"),
			Args:      r.spec.CPArgs,
			Env:       r.spec.CPEnv,
			LogPath:   filepath.Join(dir, "fjord-cp.log"),
		}
		if r.kube != nil {
			cs.Kubeconfig = r.kube.Kubeconfig
		}
		if err := r.startCP(ctx, cs); err != nil {
			return err
		}
	}
	r.res.ReadySeconds = time.Since(start).Seconds()
	// The first build is ready; wait for it to be quiet (the file source may
	// still be publishing the tail of a large directory).
	if err := r.waitQuiet(ctx); err != nil {
		return err
	}
	r.res.PolicyProblems = r.policyProblems(ctx)
	r.fleet = NewFleet(r.cp.XDSAddress(), PlanProxies(r.spec.Fleet, r.mesh), seconds(r.spec.ReconnectMaxSeconds))
	return nil
}

// waitQuiet waits until no build has happened for two seconds.
func (r *runner) waitQuiet(ctx context.Context) error {
	var last float64 = -1
	quietSince := time.Now()
	deadline := time.Now().Add(10 * time.Minute)
	for time.Since(quietSince) < 2*time.Second {
		if time.Now().After(deadline) {
			return errors.New("the control plane keeps rebuilding")
		}
		s, err := r.cp.Sample(ctx)
		if err != nil {
			return err
		}
		if s.Builds != last {
			last, quietSince = s.Builds, time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// policyProblems lists the policy conditions that are not Accepted: the
// generated policies must all be, or the policy scenarios measure nothing.
func (r *runner) policyProblems(ctx context.Context) []string {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.cp.spec.MonitoringAddress+"/debug/status", nil)
	resp, err := r.cp.http.Do(req)
	if err != nil {
		return []string{"reading /debug/status: " + err.Error()}
	}
	defer resp.Body.Close()
	var statuses struct {
		Policies []struct {
			Namespace, Name string
			Ancestors       []struct {
				Conditions []struct{ Type, Reason, Message string }
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&statuses); err != nil {
		return []string{"reading /debug/status: " + err.Error()}
	}
	var out []string
	for _, st := range statuses.Policies {
		for _, a := range st.Ancestors {
			for _, c := range a.Conditions {
				if c.Reason != "Accepted" {
					out = append(out, fmt.Sprintf("%s/%s: %s %s: %s", st.Namespace, st.Name, c.Type, c.Reason, c.Message))
				}
			}
		}
	}
	return out
}

func (r *runner) tearDown() {
	if r.fleet != nil {
		r.fleet.Close()
	}
	if r.cp != nil && r.cp.Started() {
		if err := r.cp.Stop(30 * time.Second); err != nil {
			r.res.Errors = append(r.res.Errors, fmt.Sprintf("control plane exit: %v", err))
		}
	}
	if r.kube != nil {
		if err := r.kube.Stop(); err != nil {
			r.res.Errors = append(r.res.Errors, fmt.Sprintf("stopping kube-apiserver and etcd: %v", err))
		}
	}
}

// ramp connects the proxies in steps, waiting after each until every new
// proxy holds its whole configuration, and samples memory.
func (r *runner) ramp(ctx context.Context) error {
	gc := r.forceGC(ctx)
	s, err := r.cp.Sample(ctx)
	if err != nil {
		return err
	}
	r.res.Ramp = append(r.res.Ramp, RampStep{Sample: s, LoadRSSBytes: selfRSS(), GCForced: gc})
	clusters := make([]string, len(r.mesh.services))
	for i, svc := range r.mesh.services {
		clusters[i] = svc.cluster()
	}
	total := r.spec.Fleet.Proxies
	for step := 1; step <= r.spec.RampSteps && total > 0; step++ {
		from, to := r.fleet.Started(), total*step/r.spec.RampSteps
		if to <= from {
			continue
		}
		pc := r.fleet.tracker.watch(&Change{What: "initial sync", probe: &syncProbe{from: from, to: to, clusters: clusters}},
			r.fleet.prepare(to), len(r.fleet.specs))
		start := time.Now()
		if err := r.fleet.start(); err != nil {
			return err
		}
		r.waitChange(ctx, pc, start.Add(10*seconds(r.spec.ChangeTimeoutSeconds)))
		r.fleet.Forget(pc)
		lat, missing := pc.latencies(start)
		step := RampStep{Proxies: to, NewProxies: to - from, Sync: distOf(lat), NotSynced: missing,
			Stragglers: r.fleet.stragglers(pc, 5)}
		r.log.Info("ramp step", "proxies", to, "syncP50ms", step.Sync.P50, "syncMaxMs", step.Sync.Max, "notSynced", missing)
		if missing > 0 {
			r.res.Errors = append(r.res.Errors, fmt.Sprintf("ramp to %d proxies: %d proxies did not get their configuration", to, missing))
		}
		// Let the burst of initial pushes and their garbage settle before
		// sampling memory.
		time.Sleep(seconds(max(1, r.spec.SettleSeconds)))
		step.GCForced = r.forceGC(ctx)
		if step.Sample, err = r.cp.Sample(ctx); err != nil {
			return err
		}
		step.LoadRSSBytes = selfRSS()
		r.res.Ramp = append(r.res.Ramp, step)
	}
	if r.env.ProfileSeconds > 0 && r.cp.spec.PprofURL != "" {
		r.profile(ctx, "heap", "heap-connected")
	}
	return nil
}

// forceGC makes the control plane collect its garbage, through pprof's
// heap endpoint (gc=1), so that heap in use measures live memory rather
// than how long ago the last collection ran. Twice: buffers parked in a
// sync.Pool (gRPC keeps its marshalling buffers there) survive one
// collection. It reports whether it could.
func (r *runner) forceGC(ctx context.Context) bool {
	if r.cp.spec.PprofURL == "" {
		return false
	}
	for range 2 {
		if r.cp.Profile(ctx, "heap?gc=1", os.DevNull) != nil {
			return false
		}
	}
	return true
}

// waitChange waits until every affected proxy has the change, or deadline.
func (r *runner) waitChange(ctx context.Context, pc *pendingChange, deadline time.Time) bool {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-pc.done:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// startAttempts is how often startCP tries to start the control plane.
const startAttempts = 3

// startCP starts the control plane of cs on free loopback ports and waits
// until it is ready. A port found free can be taken before the control
// plane binds it (by an outgoing connection of the harness's proxies, whose
// ephemeral ports come from the same range), so a start that fails with
// "address already in use" is tried again on other ports.
func (r *runner) startCP(ctx context.Context, cs CPSpec) error {
	base, command := cs.Args, cs.Command
	for attempt := 1; ; attempt++ {
		var err error
		if cs.XDSAddress, err = FreeAddress(); err != nil {
			return err
		}
		if cs.MonitoringAddress, err = FreeAddress(); err != nil {
			return err
		}
		cs.Args, cs.Command, cs.PprofURL = base, command, ""
		if r.env.SecureAddressFlag != "" {
			addr, err := FreeAddress()
			if err != nil {
				return err
			}
			cs.Args = append([]string{r.env.SecureAddressFlag, addr}, base...)
		}
		if r.env.PprofFlag != "" {
			addr, err := FreeAddress()
			if err != nil {
				return err
			}
			cs.Command = append(command[:len(command):len(command)], r.env.PprofFlag, addr)
			cs.PprofURL = "http://" + addr
		}
		r.cp = NewControlPlane(cs)
		if err := r.cp.Start(); err != nil {
			return err
		}
		if cs.PprofURL == "" && HasPprof(ctx, cs.MonitoringAddress) {
			r.cp.spec.PprofURL = "http://" + cs.MonitoringAddress
		}
		err = r.cp.WaitReady(ctx, 10*time.Minute)
		if err == nil {
			return nil
		}
		if attempt == startAttempts || !logSays(cs.LogPath, "address already in use") {
			return err
		}
		r.log.Warn("control plane could not bind a port; trying other ports", "attempt", attempt, "error", err)
	}
}

// logSays reports whether the file at path contains s.
func logSays(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.Contains(string(b), s)
}

// profile fetches a profile into ProfileDir as <run>-<name>.pprof.
func (r *runner) profile(ctx context.Context, which, name string) {
	path := filepath.Join(r.env.ProfileDir, r.spec.Name+"-"+name+".pprof")
	if err := os.MkdirAll(r.env.ProfileDir, 0o755); err != nil {
		r.res.Errors = append(r.res.Errors, err.Error())
		return
	}
	if err := r.cp.Profile(ctx, which, path); err != nil {
		r.res.Errors = append(r.res.Errors, fmt.Sprintf("profile %s: %v", name, err))
		return
	}
	r.res.Profiles = append(r.res.Profiles, path)
}

// startProfile starts a CPU profile of ProfileSeconds for a scenario and
// returns a channel closed when it has been written, or nil when not
// profiling.
func (r *runner) startProfile(ctx context.Context, kind ScenarioKind) chan struct{} {
	if r.env.ProfileSeconds <= 0 || r.cp.spec.PprofURL == "" {
		return nil
	}
	done := make(chan struct{})
	path := filepath.Join(r.env.ProfileDir, fmt.Sprintf("%s-%s.cpu.pprof", r.spec.Name, kind))
	harness := filepath.Join(r.env.ProfileDir, fmt.Sprintf("%s-%s.harness.cpu.pprof", r.spec.Name, kind))
	if err := os.MkdirAll(r.env.ProfileDir, 0o755); err != nil {
		r.log.Error("cpu profile", "scenario", kind, "error", err)
		close(done)
		return done
	}
	// Heap profiles around the window (each after a collection, so that
	// their allocation counts are current) give what the scenario
	// allocated: go tool pprof -sample_index=alloc_space -base BEFORE AFTER.
	// The first is taken before the scenario's first change, which its
	// collection would otherwise slow down.
	heap := func(when string) {
		_ = r.cp.Profile(ctx, "heap?gc=1", filepath.Join(r.env.ProfileDir, fmt.Sprintf("%s-%s.heap-%s.pprof", r.spec.Name, kind, when)))
	}
	heap("before")
	go func() {
		defer close(done)
		stop := r.profileHarness(harness)
		err := r.cp.Profile(ctx, fmt.Sprintf("profile?seconds=%d", r.env.ProfileSeconds), path)
		stop()
		heap("after")
		if err != nil {
			r.log.Error("cpu profile", "scenario", kind, "error", err)
			return
		}
		r.log.Info("cpu profile written", "scenario", kind, "path", path, "harness", harness)
	}()
	r.res.Profiles = append(r.res.Profiles, path, harness)
	return done
}

// profileHarness profiles this process, the simulated proxies, over the
// same window as the control plane's profile, and returns the function
// that ends it. On two cores the harness takes about as much CPU per
// change as the control plane does (LoadCPUSecondsPerChange), so where
// its time goes is part of where a change's latency goes.
func (r *runner) profileHarness(path string) (stop func()) {
	f, err := os.Create(path)
	if err != nil {
		r.log.Error("harness cpu profile", "error", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		r.log.Error("harness cpu profile", "error", err)
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			r.log.Error("harness cpu profile", "error", err)
		}
	}
}

func (r *runner) finish() {
	r.res.Shrinks = r.fleet.Shrinks()
	r.res.NACKs = r.fleet.NACKs()
	r.res.StreamErrors, r.res.StreamErrorKinds = r.fleet.StreamErrors()
	if len(r.res.Shrinks) > 20 {
		r.res.ShrinkCount, r.res.Shrinks = len(r.res.Shrinks), r.res.Shrinks[:20]
	} else {
		r.res.ShrinkCount = len(r.res.Shrinks)
	}
	var xs, rss, heap []float64
	for _, st := range r.res.Ramp {
		xs = append(xs, float64(st.Proxies))
		rss = append(rss, st.Sample.RSSBytes)
		heap = append(heap, st.Sample.HeapInuseBytes)
	}
	r.res.RSSPerProxyBytes = slope(xs, rss)
	r.res.HeapPerProxyBytes = slope(xs, heap)
	if cpu, err := procCPUSeconds(os.Getpid()); err == nil {
		r.res.LoadCPUSeconds = cpu - r.loadCPU0
	}
	r.res.Finished = time.Now()
	r.res.LoadAverage[1] = loadAverage()
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func selfRSS() float64 {
	v, _ := procRSS(os.Getpid())
	return v
}
