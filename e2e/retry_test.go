package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// Retries on UNAVAILABLE turn a backend that fails every second call into
// a Service that never fails.
func TestRetriesHideFailures(t *testing.T) {
	b := startBackends(t, 1)
	b.get("echo-1").FailEvery(2)
	cp := newControlPlane(t)
	writeMesh(t, cp, b, 1)
	cp.start()
	l := startLoad(t, newClient(t, cp, "client"), 5*time.Millisecond)

	l.waitFor(t, time.Minute, "half the calls failing", 40, func(s tally) bool {
		return s.ok["echo-1"] >= 15 && s.failed[codes.Unavailable] >= 15
	})

	at := writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-retry", "retry: {attempts: 2, retryOn: [unavailable]}"))
	l.waitFor(t, time.Minute, "no call failing", 40, func(s tally) bool {
		return s.errors() == 0
	})
	measure(t, "retry policy written -> errors stop", at, afterLastError(l.since(at), at))

	mark := time.Now()
	eventually(t, time.Minute, "100 more calls", func() (bool, string) {
		return len(l.since(mark)) >= 100, "calls still running"
	})
	if s := count(l.since(mark)); s.errors() != 0 {
		t.Fatalf("with retries, calls still failed: %v", s)
	}
}

// afterLastError is when the first call after the last failed one started
// (from, if none failed).
func afterLastError(calls []call, from time.Time) time.Time {
	at := from
	for i, c := range calls {
		if c.code != codes.OK && i+1 < len(calls) {
			at = calls[i+1].start
		}
	}
	return at
}

// timeout.request bounds every call: a call to a backend that never answers
// ends with DEADLINE_EXCEEDED after the configured time, long before the
// caller's own deadline.
func TestRequestTimeout(t *testing.T) {
	b := startBackends(t, 1)
	cp := newControlPlane(t)
	writeMesh(t, cp, b, 1)
	writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-timeout", "timeout: {request: 1s}"))
	cp.start()
	cc := newClient(t, cp, "client")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	eventually(t, time.Minute, "a first successful call", func() (bool, string) {
		c := doCall(ctx, cc, 10*time.Second)
		return c.code == codes.OK, c.code.String()
	})

	echo1 := b.get("echo-1")
	echo1.Hold()
	defer echo1.Release()
	const callerDeadline = time.Minute
	c := doCall(ctx, cc, callerDeadline)
	took := c.end.Sub(c.start)
	if c.code != codes.DeadlineExceeded {
		t.Fatalf("call to a backend that never answers ended with %v after %v, want DeadlineExceeded", c.code, took)
	}
	// The policy's deadline, not the caller's: it cannot fire before 1s,
	// and the caller's would only fire after a minute.
	if took < time.Second || took >= callerDeadline/2 {
		t.Fatalf("the call took %v, want the policy's 1s (caller deadline %v)", took, callerDeadline)
	}
	t.Logf("timeout.request 1s: the call ended with DeadlineExceeded after %v", took.Round(time.Millisecond))
}
