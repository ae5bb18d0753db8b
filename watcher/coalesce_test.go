package watcher

import (
	"sort"
	"sync"
	"testing"
	"time"
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
