package watcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/fjordmesh/fjord/policy"
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// eventually polls cond until it holds, failing the test at the ceiling
// with cond's last explanation.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(waitCeiling)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %s", what, waitCeiling, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ancestorStatus is resolution's status for one Service target.
func ancestorStatus(ns, target string, gen int64, status metav1.ConditionStatus, reason, msg string) fjordv1a1.PolicyAncestorStatus {
	return fjordv1a1.PolicyAncestorStatus{
		AncestorRef:    fjordv1a1.AncestorRef{Kind: "Service", Namespace: ns, Name: target},
		ControllerName: fjordv1a1.ControllerName,
		Conditions: []metav1.Condition{{
			Type: fjordv1a1.ConditionAccepted, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen,
		}},
	}
}

func statusOf(ns, name string, gen int64, ancestors ...fjordv1a1.PolicyAncestorStatus) policy.Status {
	return policy.Status{Key: model.Key{Namespace: ns, Name: name}, Generation: gen, Ancestors: ancestors}
}

// getPolicy reads a policy from the API server, not a cache.
func getPolicy(t *testing.T, c client.Client, ns, name string) *fjordv1a1.ResiliencePolicy {
	t.Helper()
	rp := &fjordv1a1.ResiliencePolicy{}
	if err := c.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, rp); err != nil {
		t.Fatalf("reading ResiliencePolicy %s/%s: %v", ns, name, err)
	}
	return rp
}

// waitCached waits until the source's cache holds a version of the policy
// for which ok holds.
func waitCached(t *testing.T, src *KubeSource, ns, name string, ok func(*fjordv1a1.ResiliencePolicy) bool) {
	t.Helper()
	eventually(t, "the cache catching up with "+ns+"/"+name, func() (bool, string) {
		rp := &fjordv1a1.ResiliencePolicy{}
		if err := src.Client().Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, rp); err != nil {
			return false, err.Error()
		}
		return ok(rp), "cached resourceVersion " + rp.ResourceVersion
	})
}

// statusSetup makes a namespace with a Service and a policy, and a source
// whose cache holds them.
func statusSetup(t *testing.T, ns, name string) (*rest.Config, client.Client, *KubeSource) {
	t.Helper()
	cfg, c := apiServer(t)
	createNamespace(t, c, ns, nil)
	mustCreate(t, c, service(ns, "echo", corev1.ServicePort{Port: 80}))
	mustCreate(t, c, resiliencePolicy(ns, name, timeoutSpec("5s", "echo")))
	src, _ := runSource(t, cfg, KubeOptions{NamespaceSelector: corev1.LabelMetadataName + "=" + ns})
	waitCached(t, src, ns, name, func(*fjordv1a1.ResiliencePolicy) bool { return true })
	return cfg, c, src
}

// TestStatusWriterWritesOnlyChanges counts resourceVersion bumps on a real
// API server: a status is written once, an unchanged one never again, and
// a condition keeps its lastTransitionTime until its status, reason or
// message changes.
func TestStatusWriterWritesOnlyChanges(t *testing.T) {
	const ns, name = "status", "echo-timeout"
	_, c, src := statusSetup(t, ns, name)
	log, _ := newTestLog(t)
	w := NewStatusWriter(src, AlwaysLeader{}, log)
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	now := t0
	w.now = func() time.Time { return now }

	write := func(t *testing.T, st policy.Status, want int) {
		t.Helper()
		n, err := w.Write(t.Context(), []policy.Status{st})
		if err != nil {
			t.Fatalf("Write: %v", err)
		}
		if n != want {
			t.Errorf("Write wrote %d policies, want %d", n, want)
		}
	}
	// check compares the stored status with want, whose conditions carry
	// the expected lastTransitionTime.
	check := func(t *testing.T, want ...fjordv1a1.PolicyAncestorStatus) *fjordv1a1.ResiliencePolicy {
		t.Helper()
		rp := getPolicy(t, c, ns, name)
		if diff := cmp.Diff(fjordv1a1.PolicyStatus{Ancestors: want}, rp.Status,
			cmp.Comparer(func(a, b metav1.Time) bool { return a.Equal(&b) })); diff != "" {
			t.Errorf("stored status (-want +got):\n%s", diff)
		}
		return rp
	}
	at := func(a fjordv1a1.PolicyAncestorStatus, ts time.Time) fjordv1a1.PolicyAncestorStatus {
		a = *a.DeepCopy()
		a.Conditions[0].LastTransitionTime = metav1.NewTime(ts)
		return a
	}

	accepted := ancestorStatus(ns, "echo", 1, metav1.ConditionTrue, fjordv1a1.ReasonAccepted, "Applies to Service status/echo.")
	before := getPolicy(t, c, ns, name).ResourceVersion
	write(t, statusOf(ns, name, 1, accepted), 1)
	first := check(t, at(accepted, t0)).ResourceVersion
	if first == before {
		t.Fatal("the first write did not change the policy's resourceVersion")
	}

	t.Run("same status again", func(t *testing.T) {
		now = t0.Add(time.Minute)
		// Whether or not the cache has seen the first write yet, nothing
		// is written: a stale cache leads to a conflict, and the fresh
		// read shows the status is already there.
		write(t, statusOf(ns, name, 1, accepted), 0)
		write(t, statusOf(ns, name, 1, accepted), 0)
		if rv := check(t, at(accepted, t0)).ResourceVersion; rv != first {
			t.Errorf("resourceVersion went from %s to %s: an unchanged status was written", first, rv)
		}
	})

	// A spec edit makes generation 2.
	rp := getPolicy(t, c, ns, name)
	rp.Spec = timeoutSpec("6s", "echo")
	if err := c.Update(t.Context(), rp); err != nil {
		t.Fatalf("updating the policy: %v", err)
	}
	edited := rp.ResourceVersion

	t.Run("status of an older generation", func(t *testing.T) {
		write(t, statusOf(ns, name, 1, accepted), 0)
		if rv := getPolicy(t, c, ns, name).ResourceVersion; rv != edited {
			t.Errorf("resourceVersion went from %s to %s: a status for generation 1 was written on generation 2", edited, rv)
		}
	})

	waitCached(t, src, ns, name, func(rp *fjordv1a1.ResiliencePolicy) bool { return rp.Generation == 2 })
	accepted2 := ancestorStatus(ns, "echo", 2, metav1.ConditionTrue, fjordv1a1.ReasonAccepted, "Applies to Service status/echo.")

	t.Run("new generation, same condition", func(t *testing.T) {
		now = t0.Add(2 * time.Minute)
		write(t, statusOf(ns, name, 2, accepted2), 1)
		check(t, at(accepted2, t0)) // observedGeneration moves, the transition time does not
	})

	conflicted := ancestorStatus(ns, "echo", 2, metav1.ConditionFalse, fjordv1a1.ReasonConflicted, "Service status/echo: lost to status/other.")
	t.Run("changed condition", func(t *testing.T) {
		t3 := t0.Add(3 * time.Minute)
		now = t3
		write(t, statusOf(ns, name, 2, conflicted), 1)
		check(t, at(conflicted, t3))
	})

	t.Run("other controllers' ancestors are kept", func(t *testing.T) {
		rp := getPolicy(t, c, ns, name)
		theirs := ancestorStatus(ns, "echo", 2, metav1.ConditionTrue, "Programmed", "by someone else")
		theirs.ControllerName = "example.com/other"
		theirs = at(theirs, t0)
		rp.Status.Ancestors = append([]fjordv1a1.PolicyAncestorStatus{theirs}, rp.Status.Ancestors...)
		if err := c.Status().Update(t.Context(), rp); err != nil {
			t.Fatalf("writing another controller's status: %v", err)
		}
		t4 := t0.Add(4 * time.Minute)
		now = t4
		write(t, statusOf(ns, name, 2, conflicted), 0)
		write(t, statusOf(ns, name, 2, accepted2), 1)
		check(t, theirs, at(accepted2, t4))
	})

	t.Run("policy gone", func(t *testing.T) {
		write(t, statusOf(ns, "never-created", 1, accepted), 0)
	})
}

// staleReader returns an old copy of a policy, as a cache that has not yet
// seen the latest write would.
type staleReader struct {
	client.Reader
	stale *fjordv1a1.ResiliencePolicy
	gets  atomic.Int32
}

func (r *staleReader) Get(_ context.Context, _ client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	r.gets.Add(1)
	r.stale.DeepCopyInto(obj.(*fjordv1a1.ResiliencePolicy))
	return nil
}

// TestStatusWriterRetriesOnConflict writes from a stale cached copy: the
// API server refuses it, and the writer retries from a fresh read, keeping
// what was written meanwhile.
func TestStatusWriterRetriesOnConflict(t *testing.T) {
	const ns, name = "conflict", "echo-timeout"
	_, c, src := statusSetup(t, ns, name)
	log, _ := newTestLog(t)
	w := NewStatusWriter(src, AlwaysLeader{}, log)
	stale := getPolicy(t, c, ns, name)
	r := &staleReader{stale: stale}
	w.cached = r

	rp := stale.DeepCopy()
	theirs := ancestorStatus(ns, "echo", 1, metav1.ConditionTrue, "Programmed", "by someone else")
	theirs.ControllerName = "example.com/other"
	theirs.Conditions[0].LastTransitionTime = metav1.NewTime(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	rp.Status.Ancestors = []fjordv1a1.PolicyAncestorStatus{theirs}
	if err := c.Status().Update(t.Context(), rp); err != nil {
		t.Fatalf("writing another controller's status: %v", err)
	}

	ours := ancestorStatus(ns, "echo", 1, metav1.ConditionTrue, fjordv1a1.ReasonAccepted, "Applies.")
	n, err := w.Write(t.Context(), []policy.Status{statusOf(ns, name, 1, ours)})
	if err != nil || n != 1 {
		t.Fatalf("Write = %d, %v; want 1, nil", n, err)
	}
	if got := r.gets.Load(); got != 1 {
		t.Errorf("the stale cache was read %d times, want once (the retry reads the API server)", got)
	}
	got := getPolicy(t, c, ns, name).Status.Ancestors
	if len(got) != 2 || got[0].ControllerName != "example.com/other" || got[1].ControllerName != fjordv1a1.ControllerName {
		t.Errorf("ancestors after the retried write = %+v, want the other controller's, then ours", got)
	}
}

// TestStatusWriterOnlyWhenLeading: a replica that does not lead writes
// nothing.
func TestStatusWriterOnlyWhenLeading(t *testing.T) {
	const ns, name = "follower", "echo-timeout"
	cfg, c, src := statusSetup(t, ns, name)
	log, _ := newTestLog(t)
	follower, err := NewLeader(cfg, LeaderOptions{Namespace: meshNS, Name: "follower-test", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	w := NewStatusWriter(src, follower, log)
	before := getPolicy(t, c, ns, name).ResourceVersion
	st := statusOf(ns, name, 1, ancestorStatus(ns, "echo", 1, metav1.ConditionTrue, fjordv1a1.ReasonAccepted, "Applies."))
	if n, err := w.Write(t.Context(), []policy.Status{st}); !errors.Is(err, ErrNotLeader) || n != 0 {
		t.Errorf("Write on a replica that does not lead = %d, %v; want 0, ErrNotLeader", n, err)
	}
	if rv := getPolicy(t, c, ns, name).ResourceVersion; rv != before {
		t.Errorf("resourceVersion went from %s to %s on a replica that does not lead", before, rv)
	}
}

// TestStatusWriterRoutes writes route status: the parents to Services as
// resolution gives them, next to a Gateway parent another controller
// wrote; written once, then not again while nothing changes.
func TestStatusWriterRoutes(t *testing.T) {
	cfg, c := apiServer(t)
	const ns = "route-status"
	createNamespace(t, c, ns, nil)
	mustCreate(t, c, service(ns, "echo", corev1.ServicePort{Port: 80}))
	hr := httpRoute(ns, "split", "echo", "echo")
	gr := grpcRoute(ns, "by-method", "echo")
	mustCreate(t, c, hr)
	mustCreate(t, c, gr)
	src, _ := runSource(t, cfg, KubeOptions{NamespaceSelector: corev1.LabelMetadataName + "=" + ns})

	theirs := gatewayv1.RouteParentStatus{
		ParentRef: gatewayv1.ParentReference{ // as the CRD's defaults store it
			Group: ptr.To(gatewayv1.Group(gatewayv1.GroupName)), Kind: ptr.To(gatewayv1.Kind("Gateway")), Name: "edge",
		},
		ControllerName: "example.com/gateway",
		Conditions: []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted",
			Message: "by the gateway", ObservedGeneration: 1, LastTransitionTime: metav1.NewTime(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))}},
	}
	hr.Status.Parents = []gatewayv1.RouteParentStatus{theirs}
	if err := c.Status().Update(t.Context(), hr); err != nil {
		t.Fatalf("writing the gateway's route status: %v", err)
	}
	eventually(t, "the cache seeing the gateway's status", func() (bool, string) {
		var cached gatewayv1.HTTPRoute
		if err := src.Client().Get(t.Context(), client.ObjectKeyFromObject(hr), &cached); err != nil {
			return false, err.Error()
		}
		return len(cached.Status.Parents) == 1, fmt.Sprintf("%d parents", len(cached.Status.Parents))
	})

	log, _ := newTestLog(t)
	w := NewStatusWriter(src, AlwaysLeader{}, log)
	t0 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	w.now = func() time.Time { return t0 }
	parent := policy.RouteParentStatus{
		ParentRef:      model.ParentRef{Group: "", Kind: "Service", Name: "echo"},
		ControllerName: fjordv1a1.ControllerName,
		Conditions: []metav1.Condition{
			{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "Attached to Service route-status/echo.", ObservedGeneration: 1},
			{Type: "ResolvedRefs", Status: metav1.ConditionTrue, Reason: "ResolvedRefs", Message: "All references resolved.", ObservedGeneration: 1},
		},
	}
	statuses := []policy.RouteStatus{
		{Kind: model.KindGRPCRoute, Key: model.Key{Namespace: ns, Name: "by-method"}, Generation: 1, Parents: []policy.RouteParentStatus{parent}},
		{Kind: model.KindHTTPRoute, Key: model.Key{Namespace: ns, Name: "split"}, Generation: 1, Parents: []policy.RouteParentStatus{parent}},
	}
	if n, err := w.WriteRoutes(t.Context(), statuses); err != nil || n != 2 {
		t.Fatalf("WriteRoutes = %d, %v; want 2, nil", n, err)
	}
	ours := gatewayv1.RouteParentStatus{
		ParentRef: gatewayv1.ParentReference{
			Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")), Name: "echo",
		},
		ControllerName: fjordv1a1.ControllerName,
		Conditions:     slices.Clone(parent.Conditions),
	}
	for i := range ours.Conditions {
		ours.Conditions[i].LastTransitionTime = metav1.NewTime(t0)
	}
	opts := cmp.Comparer(func(a, b metav1.Time) bool { return a.Equal(&b) })
	if err := c.Get(t.Context(), client.ObjectKeyFromObject(hr), hr); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]gatewayv1.RouteParentStatus{theirs, ours}, hr.Status.Parents, opts); diff != "" {
		t.Errorf("HTTPRoute status parents (-want +got):\n%s", diff)
	}
	if err := c.Get(t.Context(), client.ObjectKeyFromObject(gr), gr); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]gatewayv1.RouteParentStatus{ours}, gr.Status.Parents, opts); diff != "" {
		t.Errorf("GRPCRoute status parents (-want +got):\n%s", diff)
	}

	// The parentRef written reads back equal, so an unchanged status is
	// not written again.
	rv := hr.ResourceVersion
	w.now = func() time.Time { return t0.Add(time.Hour) }
	if n, err := w.WriteRoutes(t.Context(), statuses); err != nil || n != 0 {
		t.Errorf("WriteRoutes with unchanged statuses = %d, %v; want 0, nil", n, err)
	}
	if err := c.Get(t.Context(), client.ObjectKeyFromObject(hr), hr); err != nil {
		t.Fatal(err)
	}
	if hr.ResourceVersion != rv {
		t.Errorf("resourceVersion went from %s to %s: an unchanged route status was written", rv, hr.ResourceVersion)
	}
}
