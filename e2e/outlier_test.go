package e2e

import (
	"testing"
	"time"
)

// breakerPolicy is failure-percentage outlier detection tuned for three
// endpoints and short test times; enforcing is enforcingPercent.
func breakerPolicy(enforcing string) string {
	return `
outlierDetection:
  interval: 1s
  baseEjectionTime: 3s
  maxEjectionPercent: 50
  enforcingPercent: ` + enforcing + `
  failurePercentage: {threshold: 60, minimumHosts: 3, requestVolume: 3}
`
}

// A backend that fails every call is ejected by failure-percentage
// detection, so the client sees no more errors; after baseEjectionTime it
// gets traffic again, fails again and is ejected again.
func TestFailurePercentageEjection(t *testing.T) {
	b := startBackends(t, 3)
	b.get("echo-3").FailEvery(1)
	cp := newControlPlane(t)
	writeMesh(t, cp, b, 1, 2, 3)
	cp.start()
	l := startLoad(t, newClient(t, cp, "client"), 10*time.Millisecond)

	l.waitFor(t, time.Minute, "calls spread over echo-1..3 with echo-3 failing", 60, func(s tally) bool {
		return sameSet(s.backends(), "echo-1", "echo-2", "echo-3") && s.errors() >= 10
	})

	at := writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-breaker", breakerPolicy("100")))
	run := l.waitFor(t, time.Minute, "echo-3 ejected: no errors, no calls to it", 50, func(s tally) bool {
		return s.errors() == 0 && sameSet(s.backends(), "echo-1", "echo-2")
	})
	ejected := run[0].start
	measure(t, "failure-percentage policy written -> failing endpoint ejected (interval 1s)", at, ejected)

	// The ejection ends after baseEjectionTime: echo-3 is tried again.
	eventually(t, time.Minute, "echo-3 to get calls again after its ejection", func() (bool, string) {
		for _, c := range l.since(ejected) {
			if c.backend == "echo-3" {
				return true, ""
			}
		}
		return false, "no call reached echo-3 since the ejection"
	})
	// Whatever the machine's speed, the gap in echo-3's traffic covers the
	// whole ejection: from before the last call that could have been picked
	// ahead of it to after the first call once it ended.
	last, back := ejectionGap(l.since(at), "echo-3", ejected)
	if gap := back.Sub(last); gap < 3*time.Second {
		t.Errorf("echo-3 was out of traffic for %v, less than baseEjectionTime 3s", gap)
	} else {
		t.Logf("echo-3 was out of traffic for %v (baseEjectionTime 3s, interval 1s)", gap.Round(time.Millisecond))
	}

	// It still fails every call, so it is ejected again.
	l.waitFor(t, time.Minute, "echo-3 ejected a second time", 50, func(s tally) bool {
		return s.from.After(back) && s.errors() == 0 && sameSet(s.backends(), "echo-1", "echo-2")
	})
}

// ejectionGap returns the start of the last call to backend before the
// ejection and the end of the first call to it after.
func ejectionGap(calls []call, backend string, ejected time.Time) (last, back time.Time) {
	for _, c := range calls {
		if c.backend != backend {
			continue
		}
		if c.start.Before(ejected) {
			last = c.start
		} else if back.IsZero() {
			back = c.end
		}
	}
	return last, back
}

// With enforcingPercent 0 the detector runs but ejects nothing (shadow
// mode); the same policy with 100 does eject. Retries in the policy make it
// visible that the policy reached the client while echo-3 keeps failing.
func TestEnforcingPercentZeroEjectsNothing(t *testing.T) {
	retry := "retry: {attempts: 2, retryOn: [unavailable]}\n"
	b := startBackends(t, 3)
	echo3 := b.get("echo-3")
	echo3.FailEvery(1)
	cp := newControlPlane(t)
	writeMesh(t, cp, b, 1, 2, 3)
	writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-shadow", breakerPolicy("0")+retry))
	cp.start()
	l := startLoad(t, newClient(t, cp, "client"), 10*time.Millisecond)

	l.waitFor(t, time.Minute, "retries hiding echo-3's failures", 60, func(s tally) bool {
		return s.errors() == 0 && sameSet(s.backends(), "echo-1", "echo-2")
	})

	// For several detection intervals, echo-3 keeps getting its share of
	// first attempts. Only seconds in which the client made progress count,
	// so a stalled machine cannot fake an ejection.
	const want = 6
	seen := 0
	for tick := 0; seen < want; tick++ {
		if tick == 40 {
			t.Fatalf("only %d of %d one-second windows had enough traffic in 40s", seen, want)
		}
		calls0, echo0 := l.n(), echo3.Calls()
		time.Sleep(time.Second) // one detection interval: absence is what is tested
		calls, echo := l.n()-calls0, echo3.Calls()-echo0
		if calls < 10 {
			continue
		}
		seen++
		if echo == 0 {
			t.Fatalf("echo-3 got none of %d calls in one second: ejected although enforcingPercent is 0", calls)
		}
	}
	if s := count(l.last(60)); s.errors() != 0 {
		t.Fatalf("calls failed although retries were on: %v", s)
	}

	// The same policy enforcing: echo-3 stops getting calls at all.
	at := writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-shadow", breakerPolicy("100")+retry))
	var (
		calls0, echo0 = -1, int64(-1)
		lastCall      time.Time // when echo-3 was last seen getting a call
	)
	eventually(t, time.Minute, "echo-3 ejected once enforcingPercent is 100", func() (bool, string) {
		calls, echo := l.n(), echo3.Calls()
		if echo != echo0 {
			calls0, echo0, lastCall = calls, echo, time.Now()
			return false, "echo-3 still gets calls"
		}
		return calls-calls0 >= 30, "echo-3 got no call, but the client made too few calls to tell"
	})
	if s := count(l.last(30)); s.errors() != 0 {
		t.Fatalf("calls failed with echo-3 ejected: %v", s)
	}
	measure(t, "enforcingPercent 0 -> 100 written -> endpoint ejected (interval 1s)", at, lastCall)
}
