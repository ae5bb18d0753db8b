package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/fjordmesh/fjord/examples/echo"
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

	sum := func(f func(*echo.Server) int64) (n int64) {
		for _, s := range b.servers {
			n += f(s)
		}
		return n
	}
	inFlight := func() int64 { return sum((*echo.Server).InFlight) }
	calls0 := sum((*echo.Server).Calls)
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
	// The two admitted calls reach the backends (they may still be on
	// their way) and stay there.
	eventually(t, time.Minute, "the admitted calls held at the backends", func() (bool, string) {
		n := inFlight()
		return n == 2, fmt.Sprintf("%d calls in flight at the backends", n)
	})
	var slowest time.Duration
	for _, c := range failed {
		if c.code != codes.Unavailable || c.backend != "" {
			t.Errorf("a call over the limit ended with %v from backend %q, want Unavailable from none: %+v", c.code, c.backend, c)
		}
		slowest = max(slowest, c.end.Sub(c.start))
	}
	t.Logf("%d calls over the limit failed fast, the slowest in %v", len(failed), slowest)

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
	if got := sum((*echo.Server).Calls) - calls0; got != 2 {
		t.Errorf("%d of the %d calls reached a backend, want maxRequests = 2", got, n)
	}
}
