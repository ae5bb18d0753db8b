package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"google.golang.org/grpc/codes"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
)

// The behaviours of the standalone e2e tests, driven by objects written to
// the API server. Subtests run one after another on the suite's fjord-cp,
// each with its own client; each removes its policies when it ends.

func (k *kube) cleanupPolicy(t *testing.T, rp *fjordv1a1.ResiliencePolicy) {
	t.Cleanup(func() {
		if err := k.admin.Delete(context.Background(), rp); client.IgnoreNotFound(err) != nil {
			t.Errorf("deleting ResiliencePolicy %s/%s: %v", rp.Namespace, rp.Name, err)
		}
	})
}

func (k *kube) testOutlierEjection(t *testing.T) {
	echo3 := k.b.get("echo-3")
	echo3.FailEvery(1)
	t.Cleanup(func() { echo3.FailEvery(0) })
	l := startLoad(t, newClient(t, k.cp.client(), "outlier"), 10*time.Millisecond)
	l.waitFor(t, time.Minute, "calls spread over echo-1..3 with echo-3 failing", 60, func(s tally) bool {
		return sameSet(s.backends(), "echo-1", "echo-2", "echo-3") && s.errors() >= 10
	})

	at, rp := k.applyPolicy(t, "echo-outlier", breakerPolicy("100"))
	k.cleanupPolicy(t, rp)
	run := l.waitFor(t, time.Minute, "echo-3 ejected: no errors, no calls to it", 50, func(s tally) bool {
		return s.errors() == 0 && sameSet(s.backends(), "echo-1", "echo-2")
	})
	measure(t, "kube: failure-percentage policy created -> failing endpoint ejected (interval 1s)", at, run[0].start)
}

func (k *kube) testRetries(t *testing.T) {
	echo1 := k.b.get("echo-1")
	echo1.FailEvery(2)
	t.Cleanup(func() { echo1.FailEvery(0) })
	l := startLoad(t, newClient(t, k.cp.client(), "retry"), 5*time.Millisecond)
	failing := func(s tally) bool { return s.failed[codes.Unavailable] >= 5 }
	l.waitFor(t, time.Minute, "echo-1 failing every second call it gets", 60, failing)

	at, rp := k.applyPolicy(t, "echo-retry", "retry: {attempts: 2, retryOn: [unavailable]}")
	k.cleanupPolicy(t, rp)
	l.waitFor(t, time.Minute, "no call failing", 60, func(s tally) bool { return s.errors() == 0 })
	// Only one call in six fails without retries, so the change can land
	// before the next failure would have: then there is nothing to time.
	if stop := afterLastError(l.since(at), at); stop.After(at) {
		measure(t, "kube: retry policy created -> errors stop", at, stop)
	} else {
		t.Logf("the retry policy took effect before the next call that would have failed")
	}
	mark := time.Now()
	eventually(t, time.Minute, "100 more calls", func() (bool, string) {
		return len(l.since(mark)) >= 100, "calls still running"
	})
	if s := count(l.since(mark)); s.errors() != 0 {
		t.Fatalf("with retries, calls still failed: %v", s)
	}

	del := k.deletePolicy(t, rp)
	l.waitFor(t, time.Minute, "failures back once the retry policy is deleted", 60, failing)
	for _, c := range l.since(del) {
		if c.code != codes.OK {
			measure(t, "kube: retry policy deleted -> errors return", del, c.end)
			break
		}
	}
}

func (k *kube) testBreaker(t *testing.T) {
	cc := newClient(t, k.cp.client(), "breaker")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	eventually(t, time.Minute, "a first successful call", func() (bool, string) {
		c := doCall(ctx, cc, 10*time.Second)
		return c.code == codes.OK, c.code.String()
	})
	calls := func() (n int64) {
		for _, s := range k.b.servers {
			n += s.Calls()
		}
		return n
	}
	hold := func() func() {
		for _, s := range k.b.servers {
			s.Hold()
		}
		return func() {
			for _, s := range k.b.servers {
				s.Release()
			}
		}
	}
	// probe holds the backends and sends n concurrent calls; once each
	// has either been refused by the client's breaker or reached a
	// backend (where it is held), it releases them and returns both
	// counts.
	probe := func(n int) (refused, reached int) {
		release := hold()
		before := calls()
		var wg sync.WaitGroup
		var nrefused atomic.Int64
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := doCall(ctx, cc, 30*time.Second)
				if c.code == codes.Unavailable && c.backend == "" {
					nrefused.Add(1)
				}
			}()
		}
		eventually(t, time.Minute, "each probe call refused or held at a backend", func() (bool, string) {
			refused, reached = int(nrefused.Load()), int(calls()-before)
			return refused+reached >= n, fmt.Sprintf("%d refused, %d reached a backend", refused, reached)
		})
		release()
		wg.Wait()
		return refused, reached
	}

	at, rp := k.applyPolicy(t, "echo-pool", "connectionPool: {maxRequests: 2}")
	k.cleanupPolicy(t, rp)
	var tripped time.Time
	eventually(t, time.Minute, "the breaker refusing calls over maxRequests 2", func() (bool, string) {
		start := time.Now()
		refused, reached := probe(4)
		tripped = start
		return refused == 2 && reached == 2, fmt.Sprintf("%d of 4 held calls refused, %d reached a backend", refused, reached)
	})
	measure(t, "kube: maxRequests policy created -> breaker trips", at, tripped)

	del := k.deletePolicy(t, rp)
	eventually(t, time.Minute, "every held call reaching a backend once the policy is deleted", func() (bool, string) {
		start := time.Now()
		refused, reached := probe(4)
		tripped = start
		return refused == 0 && reached == 4, fmt.Sprintf("%d of 4 held calls refused, %d reached a backend", refused, reached)
	})
	measure(t, "kube: maxRequests policy deleted -> breaker gone", del, tripped)
}

// testStatus reads back the conditions the leader wrote.
func (k *kube) testStatus(t *testing.T) {
	_, good := k.applyPolicy(t, "echo-status", "timeout: {request: 5s}")
	k.cleanupPolicy(t, good)
	bad := good.DeepCopy()
	bad.ObjectMeta = metav1.ObjectMeta{Namespace: namespace, Name: "echo-lost"}
	bad.Spec.TargetRefs[0].Name = "nope"
	k.create(t, bad)
	k.cleanupPolicy(t, bad)

	for _, tc := range []struct {
		rp     *fjordv1a1.ResiliencePolicy
		status metav1.ConditionStatus
		reason string
	}{
		{good, metav1.ConditionTrue, fjordv1a1.ReasonAccepted},
		{bad, metav1.ConditionFalse, fjordv1a1.ReasonTargetNotFound},
	} {
		eventually(t, time.Minute, fmt.Sprintf("%s to read Accepted=%s %s", tc.rp.Name, tc.status, tc.reason), func() (bool, string) {
			var cur fjordv1a1.ResiliencePolicy
			if err := k.admin.Get(context.Background(), client.ObjectKeyFromObject(tc.rp), &cur); err != nil {
				return false, err.Error()
			}
			var got []string
			for _, a := range cur.Status.Ancestors {
				for _, c := range a.Conditions {
					got = append(got, fmt.Sprintf("%s=%s %s gen %d: %s", c.Type, c.Status, c.Reason, c.ObservedGeneration, c.Message))
					if c.Type == fjordv1a1.ConditionAccepted && c.Status == tc.status && c.Reason == tc.reason &&
						c.ObservedGeneration == cur.Generation && a.ControllerName == fjordv1a1.ControllerName {
						t.Logf("%s: %s", cur.Name, got[len(got)-1])
						return true, ""
					}
				}
			}
			return false, "conditions: " + strings.Join(got, "; ")
		})
	}

	// fjordctl explain reads the cluster as the control plane does.
	cmd := exec.Command(bin("fjordctl"), "explain", "service", namespace+"/"+service, "--kubeconfig", k.cp.kubeconfig)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fjordctl explain: %v\n%s", err, out)
	}
	t.Logf("fjordctl explain service %s/%s:\n%s", namespace, service, out)
	if !regexp.MustCompile(`(?m)^  timeout\.request +5s +demo/echo-status +service$`).Match(out) {
		t.Errorf("fjordctl explain does not show timeout.request 5s from demo/echo-status at service level:\n%s", out)
	}
}

// testRestart restarts fjord-cp under connected clients: a gRPC client
// keeps working throughout, and a raw ADS stream that reconnects at once
// never receives fewer clusters or endpoints than it had, because the new
// process serves nothing before its caches have synced.
func (k *kube) testRestart(t *testing.T) {
	l := startLoad(t, newClient(t, k.cp.client(), "restart"), 10*time.Millisecond)
	l.waitFor(t, time.Minute, "calls over echo-1..3", 30, func(s tally) bool {
		return s.errors() == 0 && sameSet(s.backends(), "echo-1", "echo-2", "echo-3")
	})
	rec := recordADS(t, k.cp.xdsAddr)
	eventually(t, time.Minute, "the ADS recorder to see the echo endpoints", func() (bool, string) {
		c, e, _ := rec.max()
		return c >= 1 && e >= kubeBackends, fmt.Sprintf("%d clusters, %d endpoints", c, e)
	})
	clusters, endpoints, _ := rec.max()

	mark := time.Now()
	if !k.cp.stop() {
		t.Fatalf("fjord-cp did not exit cleanly on SIGTERM:\n%s", k.cp.output())
	}
	if out := k.cp.output(); !strings.Contains(out, "leader election stopped") {
		t.Errorf("fjord-cp did not report the end of its election (the Lease release):\n%s", out)
	}
	restarted := time.Now()
	k.cp.start()
	t.Logf("fjord-cp restarted and ready in %v", time.Since(restarted).Round(time.Millisecond))
	eventually(t, time.Minute, "the ADS recorder to get the full config from the new process", func() (bool, string) {
		c, e, streams := rec.maxSince(restarted)
		return streams >= 2 && c >= clusters && e >= endpoints,
			fmt.Sprintf("since the restart: %d streams, %d clusters, %d endpoints", streams, c, e)
	})
	eventually(t, time.Minute, "100 calls after the restart", func() (bool, string) {
		return len(l.since(restarted)) >= 100, "calls still running"
	})
	if s := count(l.since(mark)); s.errors() != 0 {
		t.Errorf("calls failed across the restart: %v", s)
	}
	if shrink := rec.shrinks(); len(shrink) > 0 {
		t.Errorf("the ADS stream received less than it had before:\n%s", strings.Join(shrink, "\n"))
	}
	t.Logf("ADS recorder: %d responses over %d streams, at most %d clusters and %d endpoints",
		rec.responses(), rec.streams(), clusters, endpoints)
	// The old process released the Lease, so the new one leads at once
	// rather than after the lease duration.
	eventually(t, time.Minute, "the new process to lead", func() (bool, string) {
		out := k.cp.output()
		return strings.Contains(out[strings.LastIndex(out, "--- fjord-cp pid"):], "leader election: leading"), "not leading yet"
	})
	t.Logf("the new process leads %v after its start", time.Since(restarted).Round(time.Millisecond))
}
