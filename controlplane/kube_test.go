package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/fjordmesh/fjord/policy"
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher"
	"github.com/fjordmesh/fjord/watcher/model"
)

// statusRecorder is a Config.Status that keeps every update.
type statusRecorder struct {
	mu      sync.Mutex
	updates [][]policy.Status
}

func (s *statusRecorder) Update(p []policy.Status, _ []policy.RouteStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updates = append(s.updates, p)
}

func (s *statusRecorder) last() ([]policy.Status, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.updates) == 0 {
		return nil, 0
	}
	return s.updates[len(s.updates)-1], len(s.updates)
}

// With the source as the source of truth (Kubernetes mode) there is no data
// directory: nothing is served before the source's first snapshot, and the
// statuses of each build go to Config.Status.
func TestSourceOfTruthHandsStatusesOn(t *testing.T) {
	src := make(chanSource)
	rec := &statusRecorder{}
	r := start(t, Config{Source: src, SourceOfTruth: true, Status: rec})
	if code, _ := get(t, r.url("/readyz")); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d before the first snapshot, want 503", code)
	}
	src <- &model.Snapshot{
		Services: []model.Service{{Key: echo, Ports: []model.ServicePort{{Name: "grpc", Port: 50051}}}},
		Policies: []model.Policy{{Key: model.Key{Namespace: "demo", Name: "lost"}, Generation: 3,
			Spec: fjordv1a1.ResiliencePolicySpec{
				TargetRefs: []fjordv1a1.TargetRef{{Kind: "Service", Name: "nope"}},
				Retry:      &fjordv1a1.Retry{Attempts: ptrTo(int32(2))},
			}}},
	}
	r.waitReady(t)
	eventually(t, "the statuses handed to Config.Status", func() (bool, string) {
		st, n := rec.last()
		if n == 0 {
			return false, "no update"
		}
		return len(st) == 1 && st[0].Name == "lost" && st[0].Generation == 3, "got other statuses"
	})
	st, _ := rec.last()
	if reason := st[0].Ancestors[0].Conditions[0].Reason; reason != fjordv1a1.ReasonTargetNotFound {
		t.Errorf("reason %q, want %q", reason, fjordv1a1.ReasonTargetNotFound)
	}
	_, body := get(t, r.url("/debug/status"))
	if !strings.Contains(body, `"policies"`) || !strings.Contains(body, fjordv1a1.ReasonTargetNotFound) {
		t.Errorf("/debug/status lacks the policy status:\n%s", body)
	}
}

// A route whose parent Service does not exist is logged, once, with its
// condition, and its status is in /debug/status.
func TestRouteStatusLoggedOnce(t *testing.T) {
	src := make(chanSource)
	r := start(t, Config{Source: src, SourceOfTruth: true})
	snap := func() *model.Snapshot {
		return &model.Snapshot{
			Services: []model.Service{{Key: echo, Ports: []model.ServicePort{{Name: "grpc", Port: 50051}}}},
			Routes: []model.Route{{Key: model.Key{Namespace: "demo", Name: "lost-route"}, Kind: model.KindHTTPRoute, Generation: 2,
				ParentRefs: []model.ParentRef{{Group: "", Kind: "Service", Namespace: "demo", Name: "nope"}}}},
		}
	}
	src <- snap()
	r.waitReady(t)
	eventually(t, "the route's condition logged", func() (bool, string) {
		return strings.Contains(r.logs.String(), `msg="route not accepted" route=demo/lost-route kind=HTTPRoute generation=2 parent="Service demo/nope"`), "not logged"
	})
	_, body := get(t, r.url("/debug/status"))
	if !strings.Contains(body, `"routes"`) || !strings.Contains(body, "lost-route") {
		t.Errorf("/debug/status lacks the route status:\n%s", body)
	}
	// The same build again: nothing new to say.
	src <- snap()
	src <- &model.Snapshot{Services: []model.Service{{Key: echo, Ports: []model.ServicePort{{Name: "grpc", Port: 50051}}}}}
	eventually(t, "the third build", func() (bool, string) {
		return strings.Count(r.logs.String(), "config built") >= 3, "not built"
	})
	if n := strings.Count(r.logs.String(), "route not accepted"); n != 1 {
		t.Errorf("route condition logged %d times over two identical builds, want once per condition:\n%s", n, r.logs.String())
	}
}

// An endpoint build leaves the statuses as they were, so they are not
// handed on again; the next full build hands on its own.
func TestEndpointBuildKeepsStatuses(t *testing.T) {
	src := make(chanSource)
	rec := &statusRecorder{}
	r := start(t, Config{Source: src, SourceOfTruth: true, Status: rec})
	snap := func(gen int64, eps ...model.EndpointSlice) *model.Snapshot {
		return &model.Snapshot{
			Services:       []model.Service{{Key: echo, Ports: []model.ServicePort{{Name: "grpc", Port: 50051}}}},
			EndpointSlices: eps,
			Policies: []model.Policy{{Key: model.Key{Namespace: "demo", Name: "lost"}, Generation: gen,
				Spec: fjordv1a1.ResiliencePolicySpec{TargetRefs: []fjordv1a1.TargetRef{{Kind: "Service", Name: "nope"}}}}},
		}
	}
	builds := func(want int) {
		t.Helper()
		eventually(t, fmt.Sprintf("build %d", want), func() (bool, string) {
			return strings.Count(r.logs.String(), "config built") >= want, "not built"
		})
	}
	src <- snap(3)
	builds(1)
	slice := model.EndpointSlice{Key: model.Key{Namespace: "demo", Name: "echo-abcde"}, Service: "echo",
		Ports: []model.EndpointPort{{Name: "grpc", Port: 50051}}, Endpoints: []model.Endpoint{{Address: "127.0.0.10", Ready: true}}}
	src <- snap(3, slice)
	builds(2)
	if !strings.Contains(r.logs.String(), "endpointsOnly=true") {
		t.Fatalf("the second build was not an endpoint build:\n%s", r.logs.String())
	}
	// Each send returns once the build before it is done, Update included.
	src <- snap(4, slice)
	eventually(t, "the statuses of the policy change", func() (bool, string) {
		st, _ := rec.last()
		return len(st) == 1 && st[0].Generation == 4, "not handed on"
	})
	if _, n := rec.last(); n != 2 {
		t.Errorf("%d status updates over a full, an endpoint and a full build, want 2", n)
	}
}

func TestSourceOfTruthNeedsASource(t *testing.T) {
	if _, err := New(Config{SourceOfTruth: true, XDSAddress: "127.0.0.1:0", MonitoringAddress: "127.0.0.1:0"}); err == nil {
		t.Fatal("New without a source succeeded")
	}
}

func TestRunKubeNeedsAnAPIServer(t *testing.T) {
	if err := RunKube(context.Background(), Config{}, KubeOptions{}); err == nil || !strings.Contains(err.Error(), "API server") {
		t.Fatalf("RunKube without a REST config: %v, want an error naming the API server", err)
	}
}

func ptrTo[T any](v T) *T { return &v }

// termElector hands out the terms a test starts and ends; with keep set,
// it hands out a live term even after ctx has ended, as watcher.Leader does
// while it still leads.
type termElector struct {
	terms chan context.Context
	keep  context.Context
}

func (e *termElector) Leading() bool { return false }

func (e *termElector) Await(ctx context.Context) (context.Context, error) {
	if e.keep != nil {
		return e.keep, nil
	}
	select {
	case term := <-e.terms:
		return term, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// The root CA publisher runs during each term only, and stops when its own
// context ends even though this replica still leads.
func TestPublishWhileLeading(t *testing.T) {
	e := &termElector{terms: make(chan context.Context)}
	runs := make(chan context.Context)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- publishWhileLeading(ctx, e, func(ctx context.Context) error {
			runs <- ctx
			<-ctx.Done()
			return nil
		})
	}()

	term1, end1 := context.WithCancel(context.Background())
	e.terms <- term1
	run1 := <-runs
	end1()
	<-run1.Done() // the first term's run stops with the term

	term2, end2 := context.WithCancel(context.Background())
	defer end2()
	e.terms <- term2
	run2 := <-runs
	e.keep = term2 // from now on Await answers at once with the live term
	cancel()
	<-run2.Done()
	if err := <-done; err != nil {
		t.Fatalf("publishWhileLeading = %v, want nil after ctx ended", err)
	}
}

// A publisher that fails ends the loop with its error.
func TestPublishWhileLeadingFails(t *testing.T) {
	want := errors.New("listing namespaces")
	err := publishWhileLeading(context.Background(), watcher.AlwaysLeader{}, func(context.Context) error { return want })
	if !errors.Is(err, want) {
		t.Fatalf("publishWhileLeading = %v, want %v", err, want)
	}
}
