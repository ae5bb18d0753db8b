package e2e

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fjordmesh/fjord/examples/echo"
)

// The route tests run two Services side by side: echo (backend echo-1 on
// 127.0.0.1), which clients dial and routes attach to, and echo-v2 (backend
// echo-2 on 127.0.0.2), which routes send traffic to. Every backend names
// itself in a trailer, so each call says which Service served it.

// splitCalls is the number of calls a traffic share is measured over; the
// tolerance is ±5 percentage points (about six standard deviations for an
// 80/20 split over 2,000 calls, so the test does not flake).
const (
	splitCalls     = 2000
	splitTolerance = 5.0
)

// writeTwoServices writes echo and echo-v2 with one endpoint each.
func writeTwoServices(t *testing.T, cp *controlPlane, b *backends) {
	t.Helper()
	writeFile(t, cp.configDir, "service.yaml", serviceYAML(b.port))
	writeFile(t, cp.configDir, "endpoints.yaml", endpointSliceYAML("echo-1", b.port, ip(1)))
	writeFile(t, cp.configDir, "service-v2.yaml", fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: %[1]s}
spec:
  ports:
  - {name: grpc, port: %[2]d, targetPort: %[3]d, protocol: TCP, appProtocol: grpc}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-v2-1
  namespace: %[1]s
  labels: {kubernetes.io/service-name: echo-v2}
addressType: IPv4
ports:
- {name: grpc, port: %[3]d, protocol: TCP}
endpoints:
- addresses: [%[4]q]
  conditions: {ready: true}
`, namespace, servicePort, b.port, ip(2)))
}

// routeYAML is a route of the given kind attached to port servicePort of
// echo; rules holds its rules as YAML at column zero.
func routeYAML(kind, name, rules string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: gateway.networking.k8s.io/v1
kind: %s
metadata:
  name: %s
  namespace: %s
spec:
  parentRefs:
  - {group: "", kind: Service, name: %s, port: %d}
  rules:
`, kind, name, namespace, service, servicePort)
	for _, line := range strings.Split(strings.TrimSpace(rules), "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

// splitRule sends v1 and v2 percent of the calls to echo and echo-v2.
func splitRule(v1, v2 int) string {
	return fmt.Sprintf(`- backendRefs:
  - {name: echo, port: %[1]d, weight: %[2]d}
  - {name: echo-v2, port: %[1]d, weight: %[3]d}
`, servicePort, v1, v2)
}

// callAs makes one call of the given method (UnaryCall or EmptyCall) with
// the metadata md, and returns the backend that answered or failed it ("" if
// none did) and the status code.
func callAs(ctx context.Context, cc *grpc.ClientConn, method string, md metadata.MD) (string, codes.Code) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if md != nil {
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	var tr metadata.MD
	client := testpb.NewTestServiceClient(cc)
	var err error
	switch method {
	case "EmptyCall":
		_, err = client.EmptyCall(ctx, &testpb.Empty{}, grpc.Trailer(&tr))
	default:
		_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&tr))
	}
	backend := ""
	if v := tr.Get(echo.TrailerKey); len(v) > 0 {
		backend = v[0]
	}
	return backend, status.Code(err)
}

// calls makes n UnaryCalls one after another and tallies them.
func calls(ctx context.Context, cc *grpc.ClientConn, n int) tally {
	var cs []call
	for range n {
		cs = append(cs, doCall(ctx, cc, 10*time.Second))
	}
	return count(cs)
}

// share is the percentage of s's calls that backend answered.
func share(s tally, backend string) float64 {
	if s.total == 0 {
		return 0
	}
	return 100 * float64(s.ok[backend]) / float64(s.total)
}

// waitServed waits until a call is answered by backend.
func waitServed(t *testing.T, cc *grpc.ClientConn, backend string, md metadata.MD) {
	t.Helper()
	eventually(t, time.Minute, "a call answered by "+backend, func() (bool, string) {
		got, code := callAs(context.Background(), cc, "UnaryCall", md)
		return got == backend && code == codes.OK, fmt.Sprintf("answered by %q with %v", got, code)
	})
}

// An HTTPRoute splits the Service's traffic 80/20 between two Services,
// within ±5 points over 2,000 calls, and a new split takes effect while the
// client runs.
func TestRouteWeightedSplit(t *testing.T) {
	b := startBackends(t, 2)
	cp := newControlPlane(t)
	writeTwoServices(t, cp, b)
	writeFile(t, cp.configDir, "route.yaml", routeYAML("HTTPRoute", "echo-split", splitRule(80, 20)))
	cp.start()
	cc := newClient(t, cp, "client")
	ctx := context.Background()
	waitServed(t, cc, "echo-2", nil)

	s := calls(ctx, cc, splitCalls)
	if s.errors() != 0 || math.Abs(share(s, "echo-1")-80) > splitTolerance || math.Abs(share(s, "echo-2")-20) > splitTolerance {
		t.Fatalf("80/20 split: %v (echo-1 %.1f%%, echo-2 %.1f%%), want 80/20 ±%.0f points", s, share(s, "echo-1"), share(s, "echo-2"), splitTolerance)
	}
	t.Logf("80/20 split over %d calls: echo-1 %.1f%%, echo-2 %.1f%%", s.total, share(s, "echo-1"), share(s, "echo-2"))

	// Re-weight live: the client keeps running and soon follows the new
	// split, then holds it over a fresh 2,000 calls.
	l := startLoad(t, cc, time.Millisecond)
	at := writeFile(t, cp.configDir, "route.yaml", routeYAML("HTTPRoute", "echo-split", splitRule(20, 80)))
	l.waitFor(t, time.Minute, "the 20/80 split in the last 200 calls", 200, func(s tally) bool {
		return s.errors() == 0 && share(s, "echo-2") >= 65
	})
	measure(t, "route re-weighted -> last 200 calls follow the new split", at, time.Now())
	s = calls(ctx, cc, splitCalls)
	if s.errors() != 0 || math.Abs(share(s, "echo-1")-20) > splitTolerance || math.Abs(share(s, "echo-2")-80) > splitTolerance {
		t.Fatalf("20/80 split: %v (echo-1 %.1f%%, echo-2 %.1f%%), want 20/80 ±%.0f points", s, share(s, "echo-1"), share(s, "echo-2"), splitTolerance)
	}
	t.Logf("20/80 split over %d calls: echo-1 %.1f%%, echo-2 %.1f%%", s.total, share(s, "echo-1"), share(s, "echo-2"))
}

// A header match sends exactly the calls that carry the header to v2; the
// rest take the Service's default route.
func TestRouteHeaderMatch(t *testing.T) {
	b := startBackends(t, 2)
	cp := newControlPlane(t)
	writeTwoServices(t, cp, b)
	writeFile(t, cp.configDir, "route.yaml", routeYAML("HTTPRoute", "echo-v2-header", fmt.Sprintf(`- matches:
  - headers: [{name: x-version, value: v2}]
  backendRefs:
  - {name: echo-v2, port: %d}
`, servicePort)))
	cp.start()
	cc := newClient(t, cp, "client")
	v2 := metadata.Pairs("x-version", "v2")
	waitServed(t, cc, "echo-2", v2)

	ctx := context.Background()
	tagged, plain := map[string]int{}, map[string]int{}
	for i := range 400 {
		md, into := metadata.MD(nil), plain
		switch i % 4 {
		case 0:
			md, into = v2, tagged
		case 1:
			md = metadata.Pairs("x-version", "v3") // another value is no match
		}
		backend, code := callAs(ctx, cc, "UnaryCall", md)
		if code != codes.OK {
			t.Fatalf("call %d failed: %v (backend %q)", i, code, backend)
		}
		into[backend]++
	}
	if tagged["echo-2"] != 100 || len(tagged) != 1 || plain["echo-1"] != 300 || len(plain) != 1 {
		t.Fatalf("with x-version: v2 %v, without it %v; want all of the first on echo-2 and all of the rest on echo-1", tagged, plain)
	}
}

// A GRPCRoute method match sends EmptyCall to v2 while UnaryCall stays on
// the Service.
func TestGRPCRouteMethodMatch(t *testing.T) {
	b := startBackends(t, 2)
	cp := newControlPlane(t)
	writeTwoServices(t, cp, b)
	writeFile(t, cp.configDir, "route.yaml", routeYAML("GRPCRoute", "echo-empty", fmt.Sprintf(`- matches:
  - method: {service: grpc.testing.TestService, method: EmptyCall}
  backendRefs:
  - {name: echo-v2, port: %d}
`, servicePort)))
	cp.start()
	cc := newClient(t, cp, "client")
	ctx := context.Background()
	eventually(t, time.Minute, "EmptyCall answered by echo-2", func() (bool, string) {
		got, code := callAs(ctx, cc, "EmptyCall", nil)
		return got == "echo-2" && code == codes.OK, fmt.Sprintf("answered by %q with %v", got, code)
	})
	got := map[string]map[string]int{"EmptyCall": {}, "UnaryCall": {}}
	for i := range 200 {
		method := "UnaryCall"
		if i%2 == 0 {
			method = "EmptyCall"
		}
		backend, code := callAs(ctx, cc, method, nil)
		if code != codes.OK {
			t.Fatalf("%s failed: %v (backend %q)", method, code, backend)
		}
		got[method][backend]++
	}
	if got["EmptyCall"]["echo-2"] != 100 || got["UnaryCall"]["echo-1"] != 100 {
		t.Fatalf("EmptyCall went to %v, UnaryCall to %v; want EmptyCall on echo-2 and UnaryCall on echo-1", got["EmptyCall"], got["UnaryCall"])
	}
}

// A route's timeouts.request bounds its calls: a call to a backend that
// never answers ends with DEADLINE_EXCEEDED after the route's 1s, although
// the Service's policy allows a minute.
func TestRouteTimeout(t *testing.T) {
	b := startBackends(t, 2)
	cp := newControlPlane(t)
	writeTwoServices(t, cp, b)
	writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-timeout", "timeout: {request: 1m}"))
	writeFile(t, cp.configDir, "route.yaml", routeYAML("HTTPRoute", "echo-timeout", fmt.Sprintf(`- backendRefs:
  - {name: echo-v2, port: %d}
  timeouts: {request: 1s}
`, servicePort)))
	cp.start()
	cc := newClient(t, cp, "client")
	waitServed(t, cc, "echo-2", nil)

	echo2 := b.get("echo-2")
	echo2.Hold()
	defer echo2.Release()
	const callerDeadline = 2 * time.Minute
	c := doCall(context.Background(), cc, callerDeadline)
	took := c.end.Sub(c.start)
	if c.code != codes.DeadlineExceeded {
		t.Fatalf("call to a backend that never answers ended with %v after %v, want DeadlineExceeded", c.code, took)
	}
	// The route's deadline: not before 1s, and well before the policy's
	// minute or the caller's two.
	if took < time.Second || took >= 30*time.Second {
		t.Fatalf("the call took %v, want the route's 1s (policy 1m, caller %v)", took, callerDeadline)
	}
	t.Logf("route timeouts.request 1s: the call ended with DeadlineExceeded after %v", took.Round(time.Millisecond))
}

// A route's retry turns a backend that fails every second call into a
// Service that never fails; the Service itself has no retry policy.
func TestRouteRetries(t *testing.T) {
	b := startBackends(t, 2)
	b.get("echo-2").FailEvery(2)
	cp := newControlPlane(t)
	writeTwoServices(t, cp, b)
	noRetry := routeYAML("HTTPRoute", "echo-retry", fmt.Sprintf(`- backendRefs:
  - {name: echo-v2, port: %d}
`, servicePort))
	writeFile(t, cp.configDir, "route.yaml", noRetry)
	cp.start()
	l := startLoad(t, newClient(t, cp, "client"), 2*time.Millisecond)
	l.waitFor(t, time.Minute, "half the calls to echo-2 failing", 40, func(s tally) bool {
		return s.ok["echo-2"] >= 15 && s.failed[codes.Unavailable] >= 15
	})

	at := writeFile(t, cp.configDir, "route.yaml", routeYAML("HTTPRoute", "echo-retry", fmt.Sprintf(`- backendRefs:
  - {name: echo-v2, port: %d}
  retry: {attempts: 2}
`, servicePort)))
	l.waitFor(t, time.Minute, "no call failing", 40, func(s tally) bool { return s.errors() == 0 })
	measure(t, "route retry written -> errors stop", at, afterLastError(l.since(at), at))

	mark := time.Now()
	eventually(t, time.Minute, "500 more calls", func() (bool, string) {
		return len(l.since(mark)) >= 500, "calls still running"
	})
	s := count(l.since(mark))
	if s.errors() != 0 || s.ok["echo-2"] != s.total {
		t.Fatalf("with route retries: %v; want every call answered by echo-2", s)
	}
	if f := b.get("echo-2").Failures(); f < int64(s.total)/3 {
		t.Fatalf("echo-2 failed only %d calls in all; the retries had nothing to hide", f)
	}
}

// Fault injection in a ResiliencePolicy aborts the configured share of the
// calls on the client, before they reach any backend.
func TestFaultInjectionAborts(t *testing.T) {
	b := startBackends(t, 1)
	cp := newControlPlane(t)
	writeMesh(t, cp, b, 1)
	cp.start()
	cc := newClient(t, cp, "client")
	waitServed(t, cc, "echo-1", nil)

	at := writeFile(t, cp.configDir, "policy.yaml", policyYAML("echo-faults", `faultInjection: {abort: {grpcStatus: 14, percentage: "30"}}`))
	ctx := context.Background()
	eventually(t, time.Minute, "a call aborted by the fault filter", func() (bool, string) {
		backend, code := callAs(ctx, cc, "UnaryCall", nil)
		return code == codes.Unavailable && backend == "", fmt.Sprintf("answered by %q with %v", backend, code)
	})
	measure(t, "fault injection written -> first aborted call", at, time.Now())

	before := b.get("echo-1").Calls()
	s := calls(ctx, cc, splitCalls)
	aborted := 100 * float64(s.failed[codes.Unavailable]) / float64(s.total)
	if math.Abs(aborted-30) > splitTolerance || s.errors() != s.failed[codes.Unavailable] || s.hit["echo-1"] != s.ok["echo-1"] {
		t.Fatalf("abort 30%%: %v (%.1f%% aborted), want 30%% ±%.0f points of UNAVAILABLE that reach no backend", s, aborted, splitTolerance)
	}
	if reached := b.get("echo-1").Calls() - before; reached != int64(s.ok["echo-1"]) {
		t.Fatalf("echo-1 got %d calls, want only the %d that were not aborted", reached, s.ok["echo-1"])
	}
	t.Logf("abort 30%% over %d calls: %.1f%% aborted", s.total, aborted)
}
