package load

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// pendingChange is a change being watched: which proxies it affects and
// when each of them acknowledged content containing it.
type pendingChange struct {
	change   *Change
	affected []bool // by proxy id
	count    int    // affected proxies
	// at is the time (unix nanoseconds) the proxy sent the ACK of the first
	// response after which it held the change; 0 while it does not.
	at        []atomic.Int64
	remaining atomic.Int64
	done      chan struct{}
}

// tracker holds the changes being watched. Proxies consult it after every
// response, so the list is read without a lock.
type tracker struct {
	mu     sync.Mutex
	active atomic.Pointer[[]*pendingChange]
}

// watch starts watching c on proxies, before the change is written: a
// proxy can only hold it once the control plane has pushed it, which comes
// after the write.
func (tr *tracker) watch(c *Change, proxies []*proxy, total int) *pendingChange {
	pc := &pendingChange{
		change:   c,
		affected: make([]bool, total),
		at:       make([]atomic.Int64, total),
		done:     make(chan struct{}),
	}
	for _, p := range proxies {
		if c.probe.affects(p) {
			pc.affected[p.id] = true
			pc.count++
		}
	}
	pc.remaining.Store(int64(pc.count))
	if pc.count == 0 {
		close(pc.done)
		return pc
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var next []*pendingChange
	if cur := tr.active.Load(); cur != nil {
		next = slices.Clone(*cur)
	}
	next = append(next, pc)
	tr.active.Store(&next)
	return pc
}

// forget stops watching pc.
func (tr *tracker) forget(pc *pendingChange) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	cur := tr.active.Load()
	if cur == nil {
		return
	}
	next := slices.DeleteFunc(slices.Clone(*cur), func(x *pendingChange) bool { return x == pc })
	tr.active.Store(&next)
}

// holding returns the watched changes that concern p, that p had not held
// yet, and that it holds now. p.mu must be held.
func (tr *tracker) holding(p *proxy) []*pendingChange {
	cur := tr.active.Load()
	if cur == nil {
		return nil
	}
	var out []*pendingChange
	for _, pc := range *cur {
		if pc.affected[p.id] && pc.at[p.id].Load() == 0 && pc.change.probe.holds(p) {
			out = append(out, pc)
		}
	}
	return out
}

// converged stamps the changes holding returned with the time p's ACK went
// out.
func (tr *tracker) converged(p *proxy, done []*pendingChange, now time.Time) {
	for _, pc := range done {
		if pc.at[p.id].CompareAndSwap(0, now.UnixNano()) && pc.remaining.Add(-1) == 0 {
			close(pc.done)
		}
	}
}

// latencies returns, for every affected proxy that converged, the time from
// start to its ACK, and the number of affected proxies that did not.
func (pc *pendingChange) latencies(start time.Time) (lat []time.Duration, missing int) {
	for id, a := range pc.affected {
		if !a {
			continue
		}
		at := pc.at[id].Load()
		if at == 0 {
			missing++
			continue
		}
		lat = append(lat, time.Duration(at-start.UnixNano()))
	}
	return lat, missing
}
