package watcher

import (
	"sync"
	"time"
)

// Default coalescing windows. A burst of edits (an editor saving several
// files, a tool applying a set of manifests) becomes one build; the max
// delay bounds how stale the served config can get under a steady stream.
//
// Endpoint changes get a much shorter hold-off, because a proxy that keeps
// sending to a pod that is gone fails requests, while a late route or policy
// only delays a planned change. 2 ms still merges the events one write
// produces (a rename, or a truncate and its writes, arrive microseconds
// apart) and keeps a rollout's stream of slice updates to at most one build
// per 2 ms; under a steady stream the builds themselves batch what arrives
// while they run. The EndpointSlice controller's updates of one Service's
// slices, each an API write, may land in separate builds: each build is
// consistent, it only pushes once more. Of a 50 ms end-to-end budget, the
// hold-off is pure waiting: 5 ms, the earlier default, measured 3 ms more
// from a file write to the build than 2 ms.
const (
	DefaultHoldOff         = 100 * time.Millisecond
	DefaultEndpointHoldOff = 2 * time.Millisecond
	DefaultMaxDelay        = time.Second
)

// Clock is the time source of a Coalescer, so that tests drive it with a fake
// clock instead of sleeping.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f once, in its own goroutine or synchronously from the
	// clock's own advance, after d has passed.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
type Timer interface {
	// Stop prevents the call if it has not happened yet.
	Stop() bool
}

// RealClock is the wall clock.
type RealClock struct{}

// Now returns the current time.
func (RealClock) Now() time.Time { return time.Now() }

// AfterFunc wraps time.AfterFunc.
func (RealClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// CoalesceOptions tunes a Coalescer. Zero values take the defaults.
type CoalesceOptions struct {
	// HoldOff is how long the triggers must be quiet before a build.
	HoldOff time.Duration
	// EndpointHoldOff replaces HoldOff for a burst made only of
	// TriggerEndpoints calls. Zero means DefaultEndpointHoldOff; it never
	// exceeds HoldOff.
	EndpointHoldOff time.Duration
	// MaxDelay bounds the time from the first unbuilt trigger to the build,
	// however busy the stream of triggers is.
	MaxDelay time.Duration
	// Clock defaults to the wall clock.
	Clock Clock
}

// Burst describes the triggers that one build covers.
type Burst struct {
	// Endpoints is true when every trigger was TriggerEndpoints, so the
	// build ran after the endpoint hold-off.
	Endpoints bool
}

// Coalescer turns a stream of change notifications into few builds: the
// build runs once the triggers have been quiet for the hold-off, or once the
// max delay has passed since the first trigger not yet built, whichever
// comes first. The hold-off is the short endpoint one while every trigger
// since the last build was TriggerEndpoints, and the normal one as soon as
// one was not. Nothing is built before MarkSynced, so no consumer ever sees
// the partial view of a source that is still loading. Builds never overlap:
// a trigger that arrives during a build schedules the next one.
type Coalescer struct {
	holdOff, endpointHoldOff, maxDelay time.Duration
	clock                              Clock
	build                              func(Burst)

	mu       sync.Mutex
	idle     *sync.Cond // signalled when a build ends
	synced   bool
	stopped  bool
	pending  bool      // a trigger has not been built yet
	config   bool      // one of the pending triggers was not TriggerEndpoints
	first    time.Time // first unbuilt trigger
	last     time.Time // latest trigger
	running  bool      // build in progress
	current  Burst     // what the running build covers
	held     bool      // the running build called Hold
	timer    Timer
	timerDue time.Time
}

// NewCoalescer returns a Coalescer that calls build.
func NewCoalescer(build func(Burst), o CoalesceOptions) *Coalescer {
	if o.HoldOff <= 0 {
		o.HoldOff = DefaultHoldOff
	}
	if o.EndpointHoldOff <= 0 {
		o.EndpointHoldOff = DefaultEndpointHoldOff
	}
	o.EndpointHoldOff = min(o.EndpointHoldOff, o.HoldOff)
	if o.MaxDelay <= 0 {
		o.MaxDelay = DefaultMaxDelay
	}
	if o.MaxDelay < o.HoldOff {
		o.MaxDelay = o.HoldOff
	}
	if o.Clock == nil {
		o.Clock = RealClock{}
	}
	c := &Coalescer{
		holdOff: o.HoldOff, endpointHoldOff: o.EndpointHoldOff, maxDelay: o.MaxDelay,
		clock: o.Clock, build: build,
	}
	c.idle = sync.NewCond(&c.mu)
	return c
}

// Trigger records that something changed.
func (c *Coalescer) Trigger() { c.trigger(true) }

// TriggerEndpoints records a change that affects only endpoints (an
// EndpointSlice, or the pods named in one). On its own, or with other
// endpoint changes, it is built after the endpoint hold-off.
func (c *Coalescer) TriggerEndpoints() { c.trigger(false) }

func (c *Coalescer) trigger(config bool) {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	now := c.clock.Now()
	if !c.pending {
		c.pending = true
		c.first = now
	}
	c.config = c.config || config
	c.last = now
	c.mu.Unlock()
	c.fire()
}

// Hold, called by a build of an endpoint burst, puts the burst back as a
// config change: it is built again once the normal hold-off has passed since
// its last trigger (or its max delay since its first), together with any
// trigger that arrives meanwhile. It is for sources that learn only while
// building that a change they announced as endpoints-only was more. Outside
// such a build it does nothing.
func (c *Coalescer) Hold() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running && c.current.Endpoints {
		c.held = true
	}
}

// MarkSynced declares the initial sync complete and runs the first build
// before it returns, without waiting for the hold-off: the first snapshot
// should reach the proxies as soon as it is whole.
func (c *Coalescer) MarkSynced() {
	c.mu.Lock()
	if c.stopped || c.synced {
		c.mu.Unlock()
		return
	}
	c.synced = true
	c.pending, c.config = true, true
	// Date the pending trigger back so that it is due now.
	now := c.clock.Now()
	c.first, c.last = now.Add(-c.maxDelay), now.Add(-c.holdOff)
	c.mu.Unlock()
	c.fire()
}

// Stop cancels any scheduled build and waits for a running one to finish;
// after Stop returns, build is never called again.
func (c *Coalescer) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	for c.running {
		c.idle.Wait()
	}
}

// fire builds if a build is due and none is running, and otherwise makes sure
// a timer will call it again when the next build is due.
func (c *Coalescer) fire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.stopped || !c.synced || !c.pending || c.running {
			return
		}
		holdOff := c.endpointHoldOff
		if c.config {
			holdOff = c.holdOff
		}
		due := c.last.Add(holdOff)
		if limit := c.first.Add(c.maxDelay); limit.Before(due) {
			due = limit
		}
		if wait := due.Sub(c.clock.Now()); wait > 0 {
			c.schedule(due, wait)
			return
		}
		first, last := c.first, c.last
		burst := Burst{Endpoints: !c.config}
		c.current = burst
		c.pending, c.config, c.held = false, false, false
		c.running = true
		c.mu.Unlock()
		c.build(burst)
		c.mu.Lock()
		c.running = false
		if c.held {
			c.requeue(first, last)
		}
		c.idle.Broadcast()
		// Loop: triggers that arrived during the build may already be due.
	}
}

// requeue makes a held burst pending again as a config change, merged with
// the triggers that arrived during its build. Called with c.mu held.
func (c *Coalescer) requeue(first, last time.Time) {
	if !c.pending {
		c.pending, c.first, c.last = true, first, last
	} else if first.Before(c.first) {
		c.first = first
	}
	c.config = true
}

// schedule arms the timer for due unless it is already armed for that time.
// Called with c.mu held.
func (c *Coalescer) schedule(due time.Time, wait time.Duration) {
	if c.timer != nil {
		if c.timerDue.Equal(due) {
			return
		}
		c.timer.Stop()
	}
	c.timerDue = due
	c.timer = c.clock.AfterFunc(wait, c.fire)
}
