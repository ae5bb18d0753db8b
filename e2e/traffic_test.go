package e2e

import (
	"testing"
	"time"
)

// The client balances over the endpoints of the EndpointSlices in the
// directory, and follows them as files are added, edited and removed.
func TestTrafficFollowsEndpointSlices(t *testing.T) {
	b := startBackends(t, 3)
	cp := newControlPlane(t)
	writeMesh(t, cp, b, 1, 2)
	cp.start()
	l := startLoad(t, newClient(t, cp, "client"), 5*time.Millisecond)

	l.waitFor(t, time.Minute, "calls spread over echo-1 and echo-2", 60, func(s tally) bool {
		return s.errors() == 0 && sameSet(s.backends(), "echo-1", "echo-2") &&
			s.ok["echo-1"] >= 20 && s.ok["echo-2"] >= 20
	})
	steady := time.Now()

	// A second EndpointSlice adds echo-3.
	at := writeFile(t, cp.configDir, "endpoints-2.yaml", endpointSliceYAML("echo-2", b.port, ip(3)))
	l.waitFor(t, time.Minute, "calls spread over echo-1..3", 60, func(s tally) bool {
		return s.errors() == 0 && sameSet(s.backends(), "echo-1", "echo-2", "echo-3") &&
			s.ok["echo-1"] >= 10 && s.ok["echo-2"] >= 10 && s.ok["echo-3"] >= 10
	})
	measure(t, "endpoint added -> first call to it", at, firstTo(t, l.since(at), "echo-3").end)

	// Editing the first slice removes echo-1.
	at = writeFile(t, cp.configDir, "endpoints.yaml", endpointSliceYAML("echo-1", b.port, ip(2)))
	l.waitFor(t, time.Minute, "calls spread over echo-2 and echo-3 only", 60, func(s tally) bool {
		return s.errors() == 0 && sameSet(s.backends(), "echo-2", "echo-3")
	})
	measure(t, "endpoint removed -> calls stop reaching it", at, afterLastTo(l.since(at), "echo-1", at))

	// Deleting the second slice's file removes echo-3.
	at = removeFile(t, cp.configDir, "endpoints-2.yaml")
	l.waitFor(t, time.Minute, "calls to echo-2 only", 40, func(s tally) bool {
		return s.errors() == 0 && sameSet(s.backends(), "echo-2")
	})
	measure(t, "EndpointSlice file deleted -> calls stop reaching its endpoint", at, afterLastTo(l.since(at), "echo-3", at))

	// Endpoints came and went under live traffic without failing a call.
	if s := count(l.since(steady)); s.errors() != 0 {
		t.Errorf("calls failed while endpoints changed: %v", s)
	}
}

// firstTo is the first of calls that reached backend; it fails the test
// if there is none.
func firstTo(t *testing.T, calls []call, backend string) call {
	t.Helper()
	for _, c := range calls {
		if c.backend == backend {
			return c
		}
	}
	t.Fatalf("no call reached %s", backend)
	return call{}
}

// afterLastTo is when the first call after the last one to reach backend
// started: the moment the client stopped using it (from, if no call among
// calls reached it).
func afterLastTo(calls []call, backend string, from time.Time) time.Time {
	at := from
	for i, c := range calls {
		if c.backend == backend && i+1 < len(calls) {
			at = calls[i+1].start
		}
	}
	return at
}
