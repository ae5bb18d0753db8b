package watcher

import (
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// fakeClock runs AfterFunc callbacks synchronously from Advance, so a test
// knows exactly which builds have happened after each step.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c       *fakeClock
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}

// Advance moves time forward by d, firing due timers in time order with the
// clock set to each timer's time.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
		var next *fakeTimer
		for len(c.timers) > 0 {
			t := c.timers[0]
			if t.stopped {
				c.timers = c.timers[1:]
				continue
			}
			if !t.at.After(end) {
				next = t
				c.timers = c.timers[1:]
			}
			break
		}
		if next == nil {
			c.now = end
			c.mu.Unlock()
			return
		}
		next.stopped = true
		if next.at.After(c.now) {
			c.now = next.at
		}
		c.mu.Unlock()
		next.f()
	}
}

type buildCounter struct {
	mu sync.Mutex
	n  int
}

func (b *buildCounter) build(Burst) { b.mu.Lock(); b.n++; b.mu.Unlock() }
func (b *buildCounter) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

func TestCoalescer(t *testing.T) {
	// step advances the clock, then marks synced and triggers as asked, then
	// expects a total number of builds.
	type step struct {
		trigger bool
		synced  bool
		advance time.Duration
		want    int
	}
	tests := map[string]struct {
		steps []step
	}{
		"no build before the initial sync": {steps: []step{
			{trigger: true, want: 0},
			{advance: 5 * time.Second, want: 0},
			{advance: 5 * time.Second, trigger: true, want: 0},
		}},
		"initial sync builds at once": {steps: []step{
			{trigger: true, want: 0},
			{synced: true, want: 1},
			{advance: 5 * time.Second, want: 1},
		}},
		"initial sync with nothing pending still builds": {steps: []step{
			{synced: true, want: 1},
		}},
		"a trigger builds after the hold-off": {steps: []step{
			{synced: true, want: 1},
			{trigger: true, want: 1},
			{advance: 99 * time.Millisecond, want: 1},
			{advance: time.Millisecond, want: 2},
			{advance: 10 * time.Second, want: 2},
		}},
		"a burst becomes one build": {steps: []step{
			{synced: true, want: 1},
			{trigger: true, want: 1},
			{advance: 50 * time.Millisecond, trigger: true, want: 1},
			{advance: 50 * time.Millisecond, trigger: true, want: 1},
			{advance: 99 * time.Millisecond, want: 1},
			{advance: time.Millisecond, want: 2},
		}},
		"max delay bounds a steady stream": {steps: func() []step {
			s := []step{{synced: true, want: 1}, {trigger: true, want: 1}}
			// A trigger every 60ms never leaves the hold-off quiet; the
			// max delay (1s after the first trigger) forces a build.
			for i := 0; i < 16; i++ {
				s = append(s, step{advance: 60 * time.Millisecond, trigger: true, want: 1})
			}
			s = append(s, step{advance: 39 * time.Millisecond, want: 1})
			s = append(s, step{advance: time.Millisecond, want: 2})
			// The last trigger (at 960ms) went into that build.
			s = append(s, step{advance: 5 * time.Second, want: 2})
			return s
		}()},
		"triggers after a build start a new window": {steps: []step{
			{synced: true, trigger: true, want: 1},
			{advance: 100 * time.Millisecond, trigger: true, want: 2},
			{advance: 100 * time.Millisecond, want: 3},
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			clk := newFakeClock()
			var b buildCounter
			c := NewCoalescer(b.build, CoalesceOptions{Clock: clk})
			defer c.Stop()
			for i, s := range tc.steps {
				clk.Advance(s.advance)
				if s.synced {
					c.MarkSynced()
				}
				if s.trigger {
					c.Trigger()
				}
				if got := b.count(); got != s.want {
					t.Fatalf("after step %d (%+v): %d builds, want %d", i, s, got, s.want)
				}
			}
		})
	}
}

func TestCoalescerTriggerDuringBuild(t *testing.T) {
	clk := newFakeClock()
	var c *Coalescer
	var builds int
	c = NewCoalescer(func(Burst) {
		builds++
		if builds == 2 {
			// A change that lands while a build runs is not lost.
			c.Trigger()
		}
	}, CoalesceOptions{Clock: clk})
	defer c.Stop()
	c.MarkSynced()
	c.Trigger()
	clk.Advance(100 * time.Millisecond)
	if builds != 2 {
		t.Fatalf("builds = %d, want 2", builds)
	}
	clk.Advance(100 * time.Millisecond)
	if builds != 3 {
		t.Fatalf("builds = %d, want 3 (trigger during build)", builds)
	}
}

func TestCoalescerStop(t *testing.T) {
	clk := newFakeClock()
	var b buildCounter
	c := NewCoalescer(b.build, CoalesceOptions{Clock: clk})
	c.MarkSynced()
	c.Trigger()
	c.Stop()
	clk.Advance(time.Minute)
	c.Trigger()
	clk.Advance(time.Minute)
	if got := b.count(); got != 1 {
		t.Fatalf("builds = %d after Stop, want 1", got)
	}
}

func TestCoalescerCustomWindows(t *testing.T) {
	clk := newFakeClock()
	var b buildCounter
	c := NewCoalescer(b.build, CoalesceOptions{Clock: clk, HoldOff: time.Second, MaxDelay: 3 * time.Second})
	defer c.Stop()
	c.MarkSynced()
	c.Trigger()
	clk.Advance(999 * time.Millisecond)
	if got := b.count(); got != 1 {
		t.Fatalf("builds = %d before hold-off, want 1", got)
	}
	clk.Advance(time.Millisecond)
	if got := b.count(); got != 2 {
		t.Fatalf("builds = %d after hold-off, want 2", got)
	}
}

// TestCoalescerRealClock checks the wiring to the wall clock: triggers from
// many goroutines end in a build.
func TestCoalescerRealClock(t *testing.T) {
	builds := make(chan struct{}, 100)
	c := NewCoalescer(func(Burst) { builds <- struct{}{} },
		CoalesceOptions{HoldOff: time.Millisecond, MaxDelay: 5 * time.Millisecond})
	defer c.Stop()
	c.MarkSynced()
	<-builds
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); c.Trigger() }()
	}
	wg.Wait()
	select {
	case <-builds:
	case <-time.After(30 * time.Second):
		t.Fatal("no build after concurrent triggers")
	}
}

// burstLog records the bursts the coalescer builds.
type burstLog struct {
	mu     sync.Mutex
	bursts []Burst
}

func (b *burstLog) build(x Burst) { b.mu.Lock(); b.bursts = append(b.bursts, x); b.mu.Unlock() }
func (b *burstLog) get() []Burst {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.bursts)
}

// TestCoalescerEndpointHoldOff checks which hold-off each burst gets: the
// 5ms endpoint one while every trigger was TriggerEndpoints, the 100ms
// normal one once any was not. Time is a fake clock: the steps say after
// which advance a build has happened, never how long it took.
func TestCoalescerEndpointHoldOff(t *testing.T) {
	const (
		none = iota
		cfg
		eps
	)
	type step struct {
		advance time.Duration
		trigger int
		want    []Burst // all the builds so far, the initial one left out
	}
	E, C := Burst{Endpoints: true}, Burst{}
	tests := map[string][]step{
		"an endpoint change waits the endpoint hold-off": {
			{trigger: eps, want: nil},
			{advance: 4 * time.Millisecond, want: nil},
			{advance: time.Millisecond, want: []Burst{E}},
			{advance: time.Second, want: []Burst{E}},
		},
		"a config change waits the normal hold-off": {
			{trigger: cfg},
			{advance: 5 * time.Millisecond},
			{advance: 94 * time.Millisecond},
			{advance: time.Millisecond, want: []Burst{C}},
		},
		"a mixed burst waits the normal hold-off": {
			{trigger: eps},
			{advance: 2 * time.Millisecond, trigger: cfg},
			{advance: 2 * time.Millisecond, trigger: eps},
			{advance: 99 * time.Millisecond},
			{advance: time.Millisecond, want: []Burst{C}},
		},
		"a config change pending makes a later endpoint change wait too": {
			{trigger: cfg},
			{advance: 50 * time.Millisecond, trigger: eps},
			{advance: 99 * time.Millisecond},
			{advance: time.Millisecond, want: []Burst{C}},
		},
		"endpoint changes closer than the hold-off coalesce": {
			{trigger: eps},
			{advance: 4 * time.Millisecond, trigger: eps},
			{advance: 4 * time.Millisecond, trigger: eps},
			{advance: 4 * time.Millisecond},
			{advance: time.Millisecond, want: []Burst{E}},
		},
		"endpoint changes further apart than the hold-off are built one by one": {
			{trigger: eps},
			{advance: 5 * time.Millisecond, trigger: eps, want: []Burst{E}},
			{advance: 5 * time.Millisecond, want: []Burst{E, E}},
		},
		"max delay bounds a steady stream of endpoint changes": func() []step {
			s := []step{{trigger: eps}}
			// Every 4ms for 1s: never quiet for 5ms.
			for range 249 {
				s = append(s, step{advance: 4 * time.Millisecond, trigger: eps})
			}
			s = append(s, step{advance: 3 * time.Millisecond})
			s = append(s, step{advance: time.Millisecond, want: []Burst{E}})
			return s
		}(),
		"after an endpoint build a config change waits the normal hold-off": {
			{trigger: eps},
			{advance: 5 * time.Millisecond, trigger: cfg, want: []Burst{E}},
			{advance: 99 * time.Millisecond, want: []Burst{E}},
			{advance: time.Millisecond, want: []Burst{E, C}},
		},
	}
	for name, steps := range tests {
		t.Run(name, func(t *testing.T) {
			clk := newFakeClock()
			var b burstLog
			c := NewCoalescer(b.build, CoalesceOptions{Clock: clk, EndpointHoldOff: 5 * time.Millisecond})
			defer c.Stop()
			c.MarkSynced()
			for i, s := range steps {
				clk.Advance(s.advance)
				switch s.trigger {
				case cfg:
					c.Trigger()
				case eps:
					c.TriggerEndpoints()
				}
				got := b.get()[1:] // the initial build is a config build
				if d := cmp.Diff(s.want, got, cmpopts.EquateEmpty()); d != "" {
					t.Fatalf("after step %d (%+v), builds (-want +got):\n%s", i, s, d)
				}
			}
		})
	}
}

// TestCoalescerHold: a build of an endpoint burst that turns out to be more
// than endpoints holds it, and it is built again as a config burst once the
// normal hold-off since its last trigger has passed, with the triggers that
// arrived meanwhile.
func TestCoalescerHold(t *testing.T) {
	clk := newFakeClock()
	var c *Coalescer
	var b burstLog
	holds := 0
	c = NewCoalescer(func(x Burst) {
		b.build(x)
		if x.Endpoints && holds > 0 {
			holds--
			c.Hold()
		}
	}, CoalesceOptions{Clock: clk})
	defer c.Stop()
	c.MarkSynced()
	E, C := Burst{Endpoints: true}, Burst{}

	holds = 1
	c.TriggerEndpoints()
	clk.Advance(5 * time.Millisecond)
	if d := cmp.Diff([]Burst{C, E}, b.get()); d != "" {
		t.Fatalf("builds after the endpoint hold-off (-want +got):\n%s", d)
	}
	// An endpoint trigger during the hold does not shorten it.
	clk.Advance(10 * time.Millisecond)
	c.TriggerEndpoints()
	clk.Advance(99 * time.Millisecond)
	if d := cmp.Diff([]Burst{C, E}, b.get()); d != "" {
		t.Fatalf("builds before the normal hold-off since the last trigger (-want +got):\n%s", d)
	}
	clk.Advance(time.Millisecond)
	if d := cmp.Diff([]Burst{C, E, C}, b.get()); d != "" {
		t.Fatalf("builds after the normal hold-off (-want +got):\n%s", d)
	}
	// Hold in a config build does nothing: no build follows.
	c.Hold()
	clk.Advance(time.Minute)
	if got := len(b.get()); got != 3 {
		t.Fatalf("%d builds after an idle minute, want 3", got)
	}

	// The held burst keeps its max delay: a steady stream of endpoint
	// triggers every 50ms after a hold is built 1s after the first one.
	holds = 1
	c.TriggerEndpoints()
	clk.Advance(5 * time.Millisecond) // held
	for range 19 {
		clk.Advance(50 * time.Millisecond)
		c.TriggerEndpoints()
	}
	clk.Advance(44 * time.Millisecond) // 999ms after the first trigger
	if got := len(b.get()); got != 4 {
		t.Fatalf("%d builds before the max delay, want 4", got)
	}
	clk.Advance(time.Millisecond)
	if d := cmp.Diff([]Burst{C, E, C, E, C}, b.get()); d != "" {
		t.Fatalf("builds at the max delay (-want +got):\n%s", d)
	}
}

// TestCoalescerEndpointHoldOffNeverExceedsHoldOff: an endpoint hold-off
// left at its default follows a shorter normal one.
// TestCoalescerDefaultEndpointHoldOff: without EndpointHoldOff an endpoint
// change waits DefaultEndpointHoldOff.
func TestCoalescerDefaultEndpointHoldOff(t *testing.T) {
	clk := newFakeClock()
	var b burstLog
	c := NewCoalescer(b.build, CoalesceOptions{Clock: clk})
	defer c.Stop()
	c.MarkSynced()
	c.TriggerEndpoints()
	clk.Advance(DefaultEndpointHoldOff - time.Nanosecond)
	if got := len(b.get()); got != 1 {
		t.Fatalf("%d builds before the default endpoint hold-off, want 1 (the initial one)", got)
	}
	clk.Advance(time.Nanosecond)
	if got := b.get(); len(got) != 2 || got[1] != (Burst{Endpoints: true}) {
		t.Fatalf("builds after the default endpoint hold-off: %+v, want the initial one and an endpoint build", got)
	}
}

func TestCoalescerEndpointHoldOffNeverExceedsHoldOff(t *testing.T) {
	clk := newFakeClock()
	var b burstLog
	c := NewCoalescer(b.build, CoalesceOptions{Clock: clk, HoldOff: 2 * time.Millisecond})
	defer c.Stop()
	c.MarkSynced()
	c.TriggerEndpoints()
	clk.Advance(2 * time.Millisecond)
	if got := len(b.get()); got != 2 {
		t.Fatalf("%d builds after the 2ms hold-off, want 2", got)
	}
}
