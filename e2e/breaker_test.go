package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// connectionPool.maxRequests is a circuit breaker over the whole Service,
// per client: with 2 calls held in flight, every further call fails at once
// with UNAVAILABLE without reaching a backend.
func TestMaxRequestsBreaker(t *testing.T) {
	b := startBackends(t, 3)
	cp := newControlPlane(t)
	writeMesh(t, cp, b, 1, 2, 3)
	writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-pool", "connectionPool: {maxRequests: 2}"))
	cp.start()
	cc := newClient(t, cp, "client")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	eventually(t, time.Minute, "a first successful call", func() (bool, string) {
		c := doCall(ctx, cc, 10*time.Second)
		return c.code == codes.OK, c.code.String()
	})

	inFlight := func() (n int64) {
		for _, s := range b.servers {
			n += s.InFlight()
		}
		return n
	}
	for _, s := range b.servers {
		s.Hold()
		defer s.Release() // also on failure, so no call stays held
	}
	const n = 10
	results := make(chan call, n)
	for range n {
		go func() { results <- doCall(ctx, cc, time.Minute) }()
	}

	// Eight calls end while the two admitted ones are still held.
	var failed []call
	for len(failed) < n-2 {
		select {
		case c := <-results:
			if c.code == codes.OK {
				t.Fatalf("a call succeeded while the backends held every call: %+v", c)
			}
			failed = append(failed, c)
		case <-ctx.Done():
			t.Fatalf("only %d calls failed fast, want %d (in flight at the backends: %d)", len(failed), n-2, inFlight())
		}
	}
	if got := inFlight(); got != 2 {
		t.Errorf("%d calls in flight at the backends, want maxRequests = 2", got)
	}
	var slowest time.Duration
	for _, c := range failed {
		if c.code != codes.Unavailable || c.backend != "" {
			t.Errorf("a call over the limit ended with %v from backend %q, want Unavailable from none", c.code, c.backend)
		}
		slowest = max(slowest, c.end.Sub(c.start))
	}
	t.Logf("%d calls over the limit failed fast, the slowest in %v", len(failed), slowest.Round(time.Millisecond))

	// Released, the two admitted calls succeed.
	for _, s := range b.servers {
		s.Release()
	}
	for range 2 {
		select {
		case c := <-results:
			if c.code != codes.OK {
				t.Errorf("an admitted call ended with %v from %q, want OK", c.code, c.backend)
			}
		case <-ctx.Done():
			t.Fatal("the admitted calls did not end after the backends released them")
		}
	}
	var max int64
	for _, s := range b.servers {
		max += s.MaxInFlight()
	}
	if max > 2 {
		t.Errorf("the backends saw up to %d calls at once, want at most maxRequests = 2", max)
	}
}
