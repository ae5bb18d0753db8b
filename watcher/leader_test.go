package watcher

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/fjordmesh/fjord/policy"
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// replica is one control plane as cmd wires it in Kubernetes mode: a
// source whose snapshots go through resolution into a status writer, and
// a leader election that decides whether the writer writes.
type replica struct {
	src    *KubeSource
	pub    *published
	leader *Leader
	writer *StatusWriter
	// writes counts the status updates the replica sent to the API server.
	writes atomic.Int64
	// stopLeading ends the replica's election (the Lease is released);
	// its source and writer keep running.
	stopLeading context.CancelFunc
}

func startReplica(t *testing.T, cfg *rest.Config, identity, lease, ns string) *replica {
	t.Helper()
	log, _ := newTestLog(t)
	log = log.With("replica", identity)
	r := &replica{}
	var err error
	r.leader, err = NewLeader(cfg, LeaderOptions{
		Namespace: meshNS, Name: lease, Identity: identity, Log: log,
		// A quick retry so that the hand-over is quick; the lease and
		// renew deadline keep their defaults so that a slow machine does
		// not lose a lease by accident.
		RetryPeriod: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	var writer atomic.Pointer[StatusWriter]
	r.src, r.pub = runSource(t, cfg, KubeOptions{NamespaceSelector: corev1.LabelMetadataName + "=" + ns, Log: log},
		func(s *model.Snapshot) {
			m := policy.Resolve(s, policy.Options{MeshNamespace: meshNS})
			writer.Load().Update(m.Statuses, m.RouteStatuses)
		})
	r.writer = NewStatusWriter(r.src, r.leader, log)
	r.writer.owner = identity
	r.writer.client = countingClient{Client: r.src.Client(), updates: &r.writes}
	writer.Store(r.writer)

	ctx, cancel := context.WithCancel(context.Background())
	leaderCtx, stopLeading := context.WithCancel(ctx)
	r.stopLeading = stopLeading
	leaderDone, writerDone := make(chan error, 1), make(chan error, 1)
	go func() { leaderDone <- r.leader.Run(leaderCtx) }()
	go func() { writerDone <- r.writer.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-leaderDone; err != nil {
			t.Errorf("%s: Leader.Run: %v", identity, err)
		}
		if err := <-writerDone; err != nil {
			t.Errorf("%s: StatusWriter.Run: %v", identity, err)
		}
	})
	return r
}

// countingClient counts status updates.
type countingClient struct {
	client.Client
	updates *atomic.Int64
}

func (c countingClient) Status() client.SubResourceWriter {
	return countingStatus{SubResourceWriter: c.Client.Status(), updates: c.updates}
}

type countingStatus struct {
	client.SubResourceWriter
	updates *atomic.Int64
}

func (s countingStatus) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	s.updates.Add(1)
	return s.SubResourceWriter.Update(ctx, obj, opts...)
}

// awaitLeading waits until the elector leads.
func awaitLeading(t *testing.T, e Elector, who string) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitCeiling)
	defer cancel()
	term, err := e.Await(ctx)
	if err != nil {
		t.Fatalf("%s did not become leader within %s: %v", who, waitCeiling, err)
	}
	return term
}

// waitReason waits until the policy's stored status has our condition for
// its first target with reason, and returns the policy.
func waitReason(t *testing.T, c client.Client, ns, name, reason string) *fjordv1a1.ResiliencePolicy {
	t.Helper()
	var rp *fjordv1a1.ResiliencePolicy
	eventually(t, fmt.Sprintf("status of %s/%s with reason %s", ns, name, reason), func() (bool, string) {
		rp = getPolicy(t, c, ns, name)
		for _, a := range rp.Status.Ancestors {
			if a.ControllerName == fjordv1a1.ControllerName && len(a.Conditions) > 0 &&
				a.Conditions[0].Reason == reason && a.Conditions[0].ObservedGeneration == rp.Generation {
				return true, ""
			}
		}
		return false, fmt.Sprintf("status is %+v", rp.Status)
	})
	return rp
}

// statusManagers lists the field managers of a policy's status.
func statusManagers(rp *fjordv1a1.ResiliencePolicy) []string {
	var out []string
	for _, m := range rp.ManagedFields {
		if m.Subresource == "status" {
			out = append(out, m.Manager)
		}
	}
	return out
}

// TestLeaderHandsOverStatusWrites runs two replicas against one API server:
// both serve (publish models), exactly one writes status; when the
// leader's election ends, the other takes over writing while the first
// keeps serving.
func TestLeaderHandsOverStatusWrites(t *testing.T) {
	cfg, c := apiServer(t)
	const ns, lease = "ha", "ha-test"
	createNamespace(t, c, ns, nil)
	mustCreate(t, c, service(ns, "echo", corev1.ServicePort{Port: 80}))
	mustCreate(t, c, resiliencePolicy(ns, "p1", timeoutSpec("5s", "echo")))

	a := startReplica(t, cfg, "replica-a", lease, ns)
	awaitLeading(t, a.leader, "replica-a")
	b := startReplica(t, cfg, "replica-b", lease, ns)

	waitReason(t, c, ns, "p1", fjordv1a1.ReasonAccepted)
	mustCreate(t, c, resiliencePolicy(ns, "p2", timeoutSpec("5s", "missing")))
	rp := waitReason(t, c, ns, "p2", fjordv1a1.ReasonTargetNotFound)
	if got := statusManagers(rp); !slices.Equal(got, []string{"replica-a"}) {
		t.Errorf("status of p2 written by %q, want only the leader replica-a", got)
	}
	// Both replicas serve: the follower's source has the new policy too,
	// and it resolved the same statuses, yet wrote none of them.
	hasPolicy := func(name string) func(*model.Snapshot) bool {
		return func(s *model.Snapshot) bool {
			return slices.ContainsFunc(s.Policies, func(p model.Policy) bool { return p.Key == model.Key{Namespace: ns, Name: name} })
		}
	}
	waitPublished(t, b.pub, "replica-b serving p2", hasPolicy("p2"))
	if n := b.writes.Load(); n != 0 || b.leader.Leading() {
		t.Fatalf("follower replica-b wrote %d statuses (leading: %v), want none", n, b.leader.Leading())
	}
	if a.writes.Load() == 0 {
		t.Fatal("leader replica-a wrote no status")
	}

	a.stopLeading()
	awaitLeading(t, b.leader, "replica-b")
	if a.leader.Leading() {
		t.Fatal("replica-a still leads after its election ended")
	}
	aWrites := a.writes.Load()

	// p3 ties with p1 on Service echo and is younger: Conflicted.
	mustCreate(t, c, resiliencePolicy(ns, "p3", timeoutSpec("8s", "echo")))
	rp = waitReason(t, c, ns, "p3", fjordv1a1.ReasonConflicted)
	if got := statusManagers(rp); !slices.Equal(got, []string{"replica-b"}) {
		t.Errorf("status of p3 written by %q, want only the new leader replica-b", got)
	}
	waitPublished(t, a.pub, "replica-a still serving, p3 included", hasPolicy("p3"))
	if n := a.writes.Load(); n != aWrites {
		t.Errorf("replica-a wrote %d more statuses after its leadership ended", n-aWrites)
	}
}

// waitPublished waits until a snapshot for which ok holds is published.
func waitPublished(t *testing.T, p *published, what string, ok func(*model.Snapshot) bool) {
	t.Helper()
	eventually(t, what, func() (bool, string) {
		all := p.all()
		return len(all) > 0 && ok(all[len(all)-1]), fmt.Sprintf("%d snapshots published", len(all))
	})
}

// TestLeaderStepsDownAndCampaignsAgain takes the Lease away from the
// leader, as a partition that outlasts the renew deadline would: the
// replica stops leading without exiting, and leads again once the Lease is
// free.
func TestLeaderStepsDownAndCampaignsAgain(t *testing.T) {
	cfg, c := apiServer(t)
	const lease = "steal-test"
	log, _ := newTestLog(t)
	l, err := NewLeader(cfg, LeaderOptions{
		Namespace: meshNS, Name: lease, Identity: "replica-a", Log: log,
		LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Leader.Run: %v", err)
		}
	})

	term := awaitLeading(t, l, "replica-a")
	steal := func() error {
		var ls coordinationv1.Lease
		if err := c.Get(t.Context(), client.ObjectKey{Namespace: meshNS, Name: lease}, &ls); err != nil {
			return err
		}
		ls.Spec.HolderIdentity = ptr.To("intruder")
		ls.Spec.LeaseDurationSeconds = ptr.To[int32](3600)
		ls.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
		return c.Update(t.Context(), &ls)
	}
	eventually(t, "taking the lease", func() (bool, string) {
		err := steal() // a renewal may race with the update
		return err == nil, fmt.Sprint(err)
	})
	select {
	case <-term.Done():
	case <-time.After(waitCeiling):
		t.Fatalf("replica-a still leads %s after its Lease was taken", waitCeiling)
	}
	if l.Leading() {
		t.Fatal("Leading() is true after the term ended")
	}

	if err := c.Delete(t.Context(), &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: lease}}); err != nil {
		t.Fatalf("freeing the lease: %v", err)
	}
	if term2 := awaitLeading(t, l, "replica-a, again"); term2 == term {
		t.Error("Await returned the ended term")
	}
}

// TestGeneratedRBAC runs a replica as a user bound to exactly the roles in
// manifests/rbac. First the role lacks Pods: the source must publish
// nothing while that cache cannot sync, although the others have. Then,
// with the full role, the source publishes, the replica leads (recording
// an Event), and writes status.
func TestGeneratedRBAC(t *testing.T) {
	_, c := apiServer(t)
	const ns, user = "rbac", "fjord-cp-rbac"
	createNamespace(t, c, ns, nil)
	mustCreate(t, c, service(ns, "echo", corev1.ServicePort{Port: 80}))
	mustCreate(t, c, pod(ns, "echo-6c9f-a1b2c", "echo-sa", map[string]string{"pod-template-hash": "6c9f"},
		owner("apps/v1", "ReplicaSet", "echo-6c9f")))
	mustCreate(t, c, endpointSlice(ns, "echo-1", "echo", []discoveryv1.EndpointPort{{Port: ptr.To[int32](8080)}},
		endpoint("10.0.3.1", true, "echo-6c9f-a1b2c")))
	mustCreate(t, c, resiliencePolicy(ns, "p", timeoutSpec("5s", "echo")))

	clusterRole, role := generatedRBAC(t)
	noPods := clusterRole.DeepCopy()
	noPods.Name = "fjord-test-no-pods"
	for i := range noPods.Rules {
		noPods.Rules[i].Resources = slices.DeleteFunc(noPods.Rules[i].Resources, func(r string) bool { return r == "pods" })
	}
	u := addUser(t, user)
	bindClusterRole(t, c, user, noPods)
	bindRole(t, c, user, role)

	log, logs := newTestLog(t)
	src, pub := runSource(t, u.Config(), KubeOptions{NamespaceSelector: corev1.LabelMetadataName + "=" + ns, Log: log})
	for _, list := range []client.ObjectList{&corev1.ServiceList{}, &discoveryv1.EndpointSliceList{},
		&corev1.NamespaceList{}, &fjordv1a1.ResiliencePolicyList{}} {
		// A cache read fails until Run has set the informers up and
		// started them, then returns once that informer has synced.
		eventually(t, fmt.Sprintf("listing %T from the cache", list), func() (bool, string) {
			err := src.Client().List(t.Context(), list)
			return err == nil, fmt.Sprint(err)
		})
	}
	// Two failed lists of Pods, the second after the reflector's backoff,
	// leave a source that ignored the missing cache ample time to publish.
	logs.waitForN(t, 2, "list/watch failed", "Pod", "forbidden")
	if n := len(pub.all()); n != 0 {
		t.Fatalf("published %d snapshots while the Pod cache had not synced, want none", n)
	}

	bindClusterRole(t, c, user, clusterRole)
	want := &model.Snapshot{
		Services: []model.Service{{Key: model.Key{Namespace: ns, Name: "echo"}, Ports: []model.ServicePort{{Port: 80}}}},
		EndpointSlices: []model.EndpointSlice{{Key: model.Key{Namespace: ns, Name: "echo-1"}, Service: "echo",
			Ports:     []model.EndpointPort{{Port: 8080}},
			Endpoints: []model.Endpoint{{Address: "10.0.3.1", Ready: true, Workload: "echo", ServiceAccount: "echo-sa"}}}},
		Policies: []model.Policy{modelPolicy(ns, "p", 1, timeoutSpec("5s", "echo"))},
	}
	pub.waitFor(t, want, ns)
	if diff := diffModel(want, only(pub.all()[0], ns)); diff != "" {
		t.Errorf("the first snapshot is not complete (-want +got):\n%s", diff)
	}

	const lease = "rbac-test"
	leader, err := NewLeader(u.Config(), LeaderOptions{Namespace: meshNS, Name: lease, Identity: "rbac-replica", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	w := NewStatusWriter(src, leader, log)
	m := policy.Resolve(pub.all()[len(pub.all())-1], policy.Options{MeshNamespace: meshNS})
	w.Update(m.Statuses, m.RouteStatuses)
	ctx, cancel := context.WithCancel(context.Background())
	leaderDone, writerDone := make(chan error, 1), make(chan error, 1)
	go func() { leaderDone <- leader.Run(ctx) }()
	go func() { writerDone <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-leaderDone; err != nil {
			t.Errorf("Leader.Run: %v", err)
		}
		if err := <-writerDone; err != nil {
			t.Errorf("StatusWriter.Run: %v", err)
		}
	})
	awaitLeading(t, leader, "rbac-replica")
	waitReason(t, c, ns, "p", fjordv1a1.ReasonAccepted)
	eventually(t, "a LeaderElection Event on the Lease", func() (bool, string) {
		var evs corev1.EventList
		if err := c.List(t.Context(), &evs, client.InNamespace(meshNS)); err != nil {
			return false, err.Error()
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "Lease" && e.InvolvedObject.Name == lease && e.Reason == "LeaderElection" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events in %s, none for lease %s", len(evs.Items), meshNS, lease)
	})
}

func TestNewLeaderRejectsImpossibleSettings(t *testing.T) {
	cfg := &rest.Config{Host: "https://127.0.0.1:1"} // never dialled
	cases := map[string]struct {
		opts LeaderOptions
		want string
	}{
		"no namespace": {
			opts: LeaderOptions{},
			want: "namespace: required",
		},
		"renew deadline beyond the lease": {
			opts: LeaderOptions{Namespace: meshNS, LeaseDuration: 5 * time.Second, RenewDeadline: 10 * time.Second},
			want: "leaseDuration must be greater than renewDeadline",
		},
		"retry period beyond the renew deadline": {
			opts: LeaderOptions{Namespace: meshNS, RetryPeriod: 20 * time.Second},
			want: "renewDeadline must be greater than retryPeriod",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := NewLeader(cfg, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewLeader: got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
