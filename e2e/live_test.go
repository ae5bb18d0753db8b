package e2e

import (
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

const (
	retryOnUnavailable = "retry: {attempts: 2, retryOn: [unavailable]}"
	retryOnCancelled   = "retry: {attempts: 2, retryOn: [cancelled]}"
)

// Editing a policy file changes what clients do, both ways, while they
// run; a file that does not parse and a policy that does not validate leave
// the last good config in place.
func TestLivePolicyEditsAndBrokenFiles(t *testing.T) {
	b := startBackends(t, 2)
	b.get("echo-1").FailEvery(2)
	cp := newControlPlane(t)
	writeMesh(t, cp, b, 1)
	writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-retry", retryOnUnavailable))
	cp.start()
	l := startLoad(t, newClient(t, cp, "client"), 5*time.Millisecond)
	noErrors := func(s tally) bool { return s.errors() == 0 && s.ok["echo-1"] > 0 }
	l.waitFor(t, time.Minute, "retries hiding echo-1's failures", 40, noErrors)

	// An edit that stops retrying on UNAVAILABLE brings the failures back...
	at := writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-retry", retryOnCancelled))
	l.waitFor(t, time.Minute, "failures back without retries on unavailable", 40, func(s tally) bool {
		return s.failed[codes.Unavailable] >= 10
	})
	measure(t, "policy edited (retries off) -> errors return", at, firstError(l.since(at), at))

	// ...and editing it back hides them again.
	at = writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-retry", retryOnUnavailable))
	l.waitFor(t, time.Minute, "retries on unavailable again", 40, noErrors)
	measure(t, "policy edited (retries on) -> errors stop", at, afterLastError(l.since(at), at))

	// A file that is not YAML: the control plane reports it by path and keeps
	// serving the last good config.
	mark := cp.logLen()
	writeFile(t, cp.configDir, "broken.yaml", "kind: [this is not yaml\n")
	cp.waitLog(mark, "broken.yaml", time.Minute)
	assertNoErrorsFor(t, l, 100)

	// A policy that parses but does not validate (and would turn retries off
	// if it were served): the last accepted version of it stays in force.
	// The endpoint added after it is the barrier: once echo-2 gets calls, the
	// control plane has read the invalid policy too.
	removeFile(t, cp.configDir, "broken.yaml")
	writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-retry", retryOnCancelled+"\ntimeout: {request: soon}"))
	writeFile(t, cp.configDir, "endpoints.yaml", endpointSliceYAML("echo-1", b.port, ip(1), ip(2)))
	l.waitFor(t, time.Minute, "echo-2 added behind the invalid policy", 40, func(s tally) bool {
		return s.ok["echo-2"] > 0
	})
	assertNoErrorsFor(t, l, 100)
	if t.Failed() {
		t.Logf("control plane output mentions the policy file: %v", filepath.Join(cp.configDir, "policy.yaml"))
	}
}

// assertNoErrorsFor waits for n more calls and fails if any of them failed.
func assertNoErrorsFor(t *testing.T, l *load, n int) {
	t.Helper()
	mark := time.Now()
	eventually(t, time.Minute, "more calls", func() (bool, string) {
		return len(l.since(mark)) >= n, "calls still running"
	})
	if s := count(l.since(mark)); s.errors() != 0 {
		t.Fatalf("calls failed while the last good config should be served: %v", s)
	}
}

// firstError is when the first failed call among calls ended.
func firstError(calls []call, from time.Time) time.Time {
	for _, c := range calls {
		if c.code != codes.OK {
			return c.end
		}
	}
	return from
}

// After a restart whose config directory is now broken, the control plane
// serves the last accepted config from bbolt: a new client gets the
// endpoints and the policy.
func TestRestartServesLastGoodConfigFromBolt(t *testing.T) {
	b := startBackends(t, 2)
	echo2 := b.get("echo-2")
	echo2.FailEvery(1)
	cp := newControlPlane(t)
	writeMesh(t, cp, b, 1, 2)
	writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-retry", retryOnUnavailable))
	cp.start()
	l := startLoad(t, newClient(t, cp, "before"), 5*time.Millisecond)
	l.waitFor(t, time.Minute, "retries hiding echo-2's failures", 40, func(s tally) bool {
		return s.errors() == 0 && s.ok["echo-1"] > 0
	})
	if echo2.Calls() == 0 {
		t.Fatal("echo-2 got no calls: the endpoints were not served")
	}

	if err := cp.stop(); err != nil {
		t.Errorf("fjord-cp did not exit cleanly on SIGTERM: %v", err)
	}
	writeFile(t, cp.configDir, "service.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: [broken\n")
	writeFile(t, cp.configDir, "policy.yaml", "spec: {retry: {attempts: }\n  - :\n")
	restarted := time.Now()
	cp.start()

	echo0 := echo2.Calls()
	after := startLoad(t, newClient(t, cp, "after"), 5*time.Millisecond)
	after.waitFor(t, time.Minute, "the new client served from bbolt", 40, func(s tally) bool {
		return s.errors() == 0 && s.ok["echo-1"] > 0
	})
	measure(t, "restart on a broken directory -> new client's first call", restarted, after.since(restarted)[0].end)
	if echo2.Calls() == echo0 {
		t.Fatal("echo-2 got no calls from the new client: the endpoints from bbolt were not served")
	}
	if s := count(after.last(40)); s.errors() != 0 {
		t.Fatalf("the new client's calls failed: the retry policy from bbolt was not served: %v", s)
	}
}
