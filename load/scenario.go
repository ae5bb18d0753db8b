package load

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// scenario runs one scenario.
func (r *runner) scenario(ctx context.Context, sc ScenarioSpec) (*ScenarioResult, error) {
	switch sc.Kind {
	case Flip:
		return r.discrete(ctx, sc, func() (*Change, error) {
			return r.mesh.FlipEndpoint(r.rng.IntN(len(r.mesh.services)), r.rng.IntN(r.mesh.spec.Endpoints)), nil
		})
	case PolicyService, PolicyNamespace, PolicyMesh:
		scope := map[ScenarioKind]Scope{PolicyService: ScopeService, PolicyNamespace: ScopeNamespace, PolicyMesh: ScopeMesh}[sc.Kind]
		return r.discrete(ctx, sc, func() (*Change, error) {
			return r.mesh.SetLimit(scope, r.rng.IntN(len(r.mesh.services)))
		})
	case NewService:
		return r.discrete(ctx, sc, r.mesh.AddService)
	case Churn:
		return r.churn(ctx, sc)
	case Restart:
		return r.restart(ctx)
	}
	return nil, fmt.Errorf("unknown scenario %q", sc.Kind)
}

// observation is a batch of changes written and watched together, with
// what the proxies received and the control plane spent meanwhile.
type observation struct {
	changes   []*Change
	pcs       []*pendingChange
	written   []time.Time
	c0, c1    counters
	s0, s1    Sample
	load0     float64
	load1     float64
	converged bool
	// stragglers describes affected proxies that did not converge.
	stragglers []string
}

// observe writes changes one every interval (all at once when 0), waits
// until every affected proxy has each of them or the change timeout passes,
// then the settle time, and samples before and after.
func (r *runner) observe(ctx context.Context, changes []*Change, interval time.Duration) (*observation, error) {
	o := &observation{changes: changes}
	var err error
	if o.s0, err = r.cp.Sample(ctx); err != nil {
		return nil, err
	}
	o.c0 = r.fleet.counters()
	o.load0, _ = procCPUSeconds(os.Getpid())
	for _, c := range changes {
		o.pcs = append(o.pcs, r.fleet.Watch(c))
	}
	defer func() {
		for _, pc := range o.pcs {
			r.fleet.Forget(pc)
		}
	}()
	start := time.Now()
	for i, c := range changes {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		if err := c.write(); err != nil {
			return nil, err
		}
		o.written = append(o.written, time.Now())
	}
	deadline := o.written[len(o.written)-1].Add(seconds(r.spec.ChangeTimeoutSeconds))
	o.converged = true
	for _, pc := range o.pcs {
		if !r.waitChange(ctx, pc, deadline) {
			o.converged = false
			o.stragglers = append(o.stragglers, r.fleet.stragglers(pc, 5)...)
		}
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(seconds(r.spec.SettleSeconds)):
	}
	o.c1 = r.fleet.counters()
	o.load1, _ = procCPUSeconds(os.Getpid())
	if o.s1, err = r.cp.Sample(ctx); err != nil {
		return nil, err
	}
	return o, nil
}

// tally accumulates observations into a ScenarioResult.
type tally struct {
	res                  ScenarioResult
	lat, changeLat       []time.Duration
	queue, build, cache  []time.Duration
	delivery             []time.Duration
	affected, unaffected int
	pushes, bytes        []float64
	cpu, load            float64
}

func (t *tally) add(r *runner, o *observation, phases bool) {
	if t.res.Changes == 0 {
		t.res.Before = o.s0
	}
	t.res.After = o.s1
	t.res.Changes += len(o.changes)
	if len(t.res.Stragglers) < 10 {
		t.res.Stragglers = append(t.res.Stragglers, o.stragglers[:min(len(o.stragglers), 10-len(t.res.Stragglers))]...)
	}
	for _, c := range o.changes {
		if len(t.res.Examples) < 3 {
			t.res.Examples = append(t.res.Examples, c.What)
		}
	}
	// per proxy: how many changes of the observation concern it
	concerns := make([]int, len(r.fleet.specs))
	var lastACK time.Time
	for i, pc := range o.pcs {
		lat, missing := pc.latencies(o.written[i])
		t.lat = append(t.lat, lat...)
		t.res.NotConverged += missing
		t.affected += pc.count
		if missing == 0 && len(lat) > 0 {
			worst := lat[0]
			for _, l := range lat {
				worst = max(worst, l)
			}
			t.changeLat = append(t.changeLat, worst)
			if len(t.res.ChangeRecords) < maxChangeRecords {
				t.res.ChangeRecords = append(t.res.ChangeRecords, ChangeRecord{Written: o.written[i], LastMs: ms(worst)})
			}
			lastACK = maxTime(lastACK, o.written[i].Add(worst))
		}
		for id, a := range pc.affected {
			if a {
				concerns[id]++
			}
		}
	}
	for _, p := range r.fleet.started() {
		dr := o.c1.responses[p.id] - o.c0.responses[p.id]
		db := o.c1.bytes[p.id] - o.c0.bytes[p.id]
		if concerns[p.id] == 0 {
			t.unaffected++
			t.res.UnaffectedPushes += dr
			continue
		}
		t.pushes = append(t.pushes, float64(dr)/float64(concerns[p.id]))
		t.bytes = append(t.bytes, float64(db)/float64(concerns[p.id]))
	}
	t.cpu += o.s1.CPUSeconds - o.s0.CPUSeconds
	t.load += o.load1 - o.load0
	builds := r.cp.builds(o.written[0])
	n := 0
	for _, b := range builds {
		if !b.end.After(o.s1.At) {
			n++
		}
	}
	t.res.Builds += n
	if phases && len(builds) > 0 && !lastACK.IsZero() {
		b := builds[0]
		t.queue = append(t.queue, b.start.Sub(o.written[0]))
		t.build = append(t.build, b.took)
		t.cache = append(t.cache, b.cache)
		t.delivery = append(t.delivery, lastACK.Sub(b.start))
	}
}

func (t *tally) result(observations int) *ScenarioResult {
	res := t.res
	res.Latency, res.LatencyQuantiles = distOf(t.lat), quantiles(t.lat)
	res.ChangeLatency = distOf(t.changeLat)
	res.Queue, res.Build, res.Cache, res.Delivery = distOf(t.queue), distOf(t.build), distOf(t.cache), distOf(t.delivery)
	res.PushesPerAffectedProxy = statOf(t.pushes)
	res.BytesPerAffectedProxy = statOf(t.bytes)
	if res.Changes > 0 {
		res.AffectedPerChange = float64(t.affected) / float64(res.Changes)
		res.CPUSecondsPerChange = t.cpu / float64(res.Changes)
		res.LoadCPUSecondsPerChange = t.load / float64(res.Changes)
	}
	if observations > 0 {
		res.UnaffectedProxies = float64(t.unaffected) / float64(observations)
	}
	return &res
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// discrete makes sc.Changes changes one at a time (more while a CPU
// profile is being taken).
func (r *runner) discrete(ctx context.Context, sc ScenarioSpec, next func() (*Change, error)) (*ScenarioResult, error) {
	t := &tally{res: ScenarioResult{Kind: sc.Kind}}
	profiling := r.startProfile(ctx, sc.Kind)
	observations := 0
	for i := 0; i < max(1, sc.Changes) || profiling != nil; i++ {
		if profiling != nil && i >= max(1, sc.Changes) {
			select {
			case <-profiling:
				profiling = nil
				continue
			default:
			}
		}
		c, err := next()
		if err != nil {
			return t.result(observations), err
		}
		o, err := r.observe(ctx, []*Change{c}, 0)
		if err != nil {
			return t.result(observations), err
		}
		observations++
		t.add(r, o, true)
		if !o.converged {
			r.log.Warn("change did not converge", "change", c.What, "timeout", seconds(r.spec.ChangeTimeoutSeconds),
				"stragglers", o.stragglers)
		}
	}
	return t.result(observations), nil
}

// churn flips distinct endpoints at sc.Rate per second for sc.Seconds:
// Service perm[i mod M], endpoint i div M, so no endpoint is flipped twice
// and every change stays observable.
func (r *runner) churn(ctx context.Context, sc ScenarioSpec) (*ScenarioResult, error) {
	n := max(1, int(sc.Rate*sc.Seconds+0.5))
	m := len(r.mesh.services)
	if n > m*r.mesh.spec.Endpoints {
		return nil, fmt.Errorf("churn of %d changes: the mesh has %d endpoints", n, m*r.mesh.spec.Endpoints)
	}
	perm := r.rng.Perm(m)
	changes := make([]*Change, n)
	for i := range changes {
		changes[i] = r.mesh.FlipEndpoint(perm[i%m], i/m)
	}
	profiling := r.startProfile(ctx, sc.Kind)
	o, err := r.observe(ctx, changes, time.Duration(float64(time.Second)/sc.Rate))
	if profiling != nil {
		<-profiling
	}
	t := &tally{res: ScenarioResult{Kind: sc.Kind}}
	if err != nil {
		return nil, err
	}
	t.add(r, o, false)
	return t.result(1), nil
}

// restart stops the control plane, flips an endpoint while it is down and
// starts it again on the same data directory.
func (r *runner) restart(ctx context.Context) (*ScenarioResult, error) {
	if !r.cp.Started() {
		return nil, fmt.Errorf("the harness did not start the control plane, so it cannot restart it")
	}
	c := r.mesh.FlipEndpoint(r.rng.IntN(len(r.mesh.services)), r.rng.IntN(r.mesh.spec.Endpoints))
	res := &ScenarioResult{Kind: Restart, Changes: 1, Examples: []string{c.What}, Restart: &RestartResult{}}
	var err error
	if res.Before, err = r.cp.Sample(ctx); err != nil {
		return nil, err
	}
	shrinks0 := len(r.fleet.Shrinks())
	c0 := r.fleet.counters()
	load0, _ := procCPUSeconds(os.Getpid())
	pc := r.fleet.Watch(c)
	defer r.fleet.Forget(pc)

	// 30 s is Kubernetes' default termination grace period: a control
	// plane that takes longer is killed there too, and restarted.
	stop := time.Now()
	if err := r.cp.Stop(30 * time.Second); errors.Is(err, ErrKilled) {
		res.Restart.Killed = true
		r.log.Warn("restart: the control plane did not exit after SIGTERM and was killed", "error", err)
	} else if err != nil {
		return nil, fmt.Errorf("stopping the control plane: %w", err)
	}
	res.Restart.StopSeconds = time.Since(stop).Seconds()
	if err := c.write(); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := r.cp.Start(); err != nil {
		return nil, err
	}
	timeout := seconds(r.spec.ChangeTimeoutSeconds)
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := r.cp.WaitListening(wctx); err != nil {
		return nil, err
	}
	res.Restart.ListeningSeconds = time.Since(start).Seconds()
	// The new process's reconnects and resync, profiled from here on.
	profiling := r.startProfile(ctx, Restart)
	// Every proxy has a stream opened after the start.
	proxies := r.fleet.started()
	for {
		up := 0
		for _, p := range proxies {
			if p.upAt.Load() > start.UnixNano() {
				up++
			}
		}
		res.Restart.NotReconnected = len(proxies) - up
		if up == len(proxies) || wctx.Err() != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.Restart.ReconnectedSeconds = time.Since(start).Seconds()
	converged := r.waitChange(ctx, pc, start.Add(timeout))
	if !converged {
		res.Stragglers = r.fleet.stragglers(pc, 10)
	}
	lat, missing := pc.latencies(start)
	res.Latency, res.LatencyQuantiles = distOf(lat), quantiles(lat)
	if missing == 0 && len(lat) > 0 {
		res.ChangeLatency = distOf([]time.Duration{slices.Max(lat)})
	}
	res.NotConverged = missing
	res.AffectedPerChange = float64(pc.count)
	last := res.Restart.ReconnectedSeconds
	for _, l := range lat {
		last = max(last, l.Seconds())
	}
	res.Restart.ConvergedSeconds = last
	if !converged || res.Restart.NotReconnected > 0 {
		r.log.Warn("restart did not converge", "notReconnected", res.Restart.NotReconnected, "notConverged", missing)
	}
	if err := r.cp.WaitReady(ctx, timeout); err != nil {
		return res, err
	}
	time.Sleep(seconds(r.spec.SettleSeconds))
	c1 := r.fleet.counters()
	var pushes, bytes []float64
	for _, p := range proxies {
		pushes = append(pushes, float64(c1.responses[p.id]-c0.responses[p.id]))
		bytes = append(bytes, float64(c1.bytes[p.id]-c0.bytes[p.id]))
	}
	res.PushesPerAffectedProxy, res.BytesPerAffectedProxy = statOf(pushes), statOf(bytes)
	res.Restart.Shrinks = len(r.fleet.Shrinks()) - shrinks0
	if res.After, err = r.cp.Sample(ctx); err != nil {
		return res, err
	}
	// The new process's whole CPU time: startup, the rebuild and the resync.
	res.CPUSecondsPerChange = res.After.CPUSeconds
	load1, _ := procCPUSeconds(os.Getpid())
	res.LoadCPUSecondsPerChange = load1 - load0
	res.Builds = int(res.After.Builds)
	if profiling != nil {
		<-profiling
	}
	return res, nil
}
