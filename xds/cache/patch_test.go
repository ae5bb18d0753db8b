package cache_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

// fetchAll returns every resource of one type served to kind, name -> bytes.
func fetchAll(t *testing.T, c *cache.Cache, kind node.Kind, typeURL string, name func([]byte) string) (map[string]string, string) {
	t.Helper()
	resp, err := c.Fetch(context.Background(), &discoveryv3.DiscoveryRequest{Node: proxy(kind), TypeUrl: typeURL})
	if err != nil {
		t.Fatalf("Fetch %s: %v", typeURL, err)
	}
	out, _ := resp.GetDiscoveryResponse()
	got := map[string]string{}
	for _, a := range out.GetResources() {
		got[name(a.GetValue())] = string(a.GetValue())
	}
	return got, out.GetVersionInfo()
}

func TestPatchEqualsUpdateOfThePatchedSet(t *testing.T) {
	patched := newCache(t, services(abc))
	moved := map[string]string{"a": "10.0.0.1", "b": "10.0.0.99", "d": "10.0.0.4"}
	st, err := patched.Patch(node.GRPC, &translate.Resources{
		Clusters:  []*clusterv3.Cluster{cluster("d")},
		Endpoints: []*endpointv3.ClusterLoadAssignment{loadAssignment("a", "10.0.0.1"), loadAssignment("b", "10.0.0.99"), loadAssignment("d", "10.0.0.4")},
	}, cache.Names{Clusters: []string{"c", "missing"}, Endpoints: []string{"c"}})
	if err != nil {
		t.Fatalf("Patch: %v", err)
	}
	if want := (cache.Stats{Changed: 3, Removed: 2}); st != want {
		t.Errorf("stats = %+v, want %+v (a unchanged, b changed, d added; c removed twice)", st, want)
	}
	full := newCache(t, services(moved))
	for typeURL, name := range map[string]func([]byte) string{resourcev3.ClusterType: clusterName, resourcev3.EndpointType: claName} {
		got, gotVersion := fetchAll(t, patched, node.GRPC, typeURL, name)
		want, wantVersion := fetchAll(t, full, node.GRPC, typeURL, name)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s after Patch differs from Update (-update +patch):\n%s", typeURL, diff)
		}
		if gotVersion != wantVersion {
			t.Errorf("%s version after Patch = %s, after Update %s", typeURL, gotVersion, wantVersion)
		}
	}
}

func TestPatchWakesOnlyWatchesOnChangedResources(t *testing.T) {
	c := newCache(t, services(abc))
	watchers := map[string]*sotwClient{}
	for _, n := range []string{"a", "b", "c"} {
		w := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
		w.request([]string{n}, "")
		w.ack(w.receive())
		watchers[n] = w
	}
	cds := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	cds.request(nil, "")
	cds.ack(cds.receive())
	deltaEDS := newDeltaClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	deltaEDS.request([]string{"a", "b"}, nil, nil, "")
	deltaEDS.receive()
	deltaEDS.ack()
	envoyEDS := newSotwClient(t, c, node.Envoy, resourcev3.EndpointType, false)
	envoyEDS.request([]string{"b"}, "")
	mustUpdate(t, c, node.Envoy, services(abc))
	envoyEDS.ack(envoyEDS.receive())

	// b changes; a is upserted with its current content.
	st, err := c.Patch(node.GRPC, &translate.Resources{Endpoints: []*endpointv3.ClusterLoadAssignment{
		loadAssignment("a", "10.0.0.1"), loadAssignment("b", "10.0.0.99"),
	}}, cache.Names{})
	if err != nil {
		t.Fatalf("Patch: %v", err)
	}
	if st != (cache.Stats{Changed: 1}) {
		t.Errorf("stats = %+v, want one change", st)
	}
	if got := claIP(watchers["b"].receive().GetResources()[0].GetValue()); got != "10.0.0.99" {
		t.Errorf("b's endpoint = %s, want 10.0.0.99", got)
	}
	if diff := cmp.Diff([]string{"b"}, deltaNames(deltaEDS.receive())); diff != "" {
		t.Errorf("delta response (-want +got):\n%s", diff)
	}
	watchers["a"].none()
	watchers["c"].none()
	cds.none()
	envoyEDS.none()

	// A removal wakes its subscribers with the removal.
	if _, err := c.Patch(node.GRPC, nil, cache.Names{Endpoints: []string{"b"}}); err != nil {
		t.Fatalf("Patch: %v", err)
	}
	deltaEDS.ack()
	if diff := cmp.Diff([]string{"b"}, deltaEDS.receive().GetRemovedResources()); diff != "" {
		t.Errorf("delta removal (-want +got):\n%s", diff)
	}
	watchers["a"].none()

	// A patch that changes nothing wakes nobody.
	if st, err := c.Patch(node.GRPC, &translate.Resources{Endpoints: []*endpointv3.ClusterLoadAssignment{loadAssignment("a", "10.0.0.1")}}, cache.Names{Endpoints: []string{"b"}}); err != nil || st != (cache.Stats{}) {
		t.Errorf("no-op Patch = %+v, %v; want zero stats", st, err)
	}
	watchers["a"].none()
	cds.none()
}

func TestInvalidPatchChangesNothing(t *testing.T) {
	c := newCache(t, services(abc))
	cds := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	cds.request(nil, "")
	before := cds.receive()
	cds.ack(before)

	bad := cluster("d")
	bad.ConnectTimeout = durationpb.New(-1)
	tests := map[string]struct {
		kind   node.Kind
		upsert *translate.Resources
		remove cache.Names
		want   string
	}{
		"validation": {
			kind:   node.GRPC,
			upsert: &translate.Resources{Clusters: []*clusterv3.Cluster{cluster("a"), bad}},
			remove: cache.Names{Clusters: []string{"b"}},
			want:   `cluster "d"`,
		},
		"upserted and removed": {
			kind:   node.GRPC,
			upsert: &translate.Resources{Clusters: []*clusterv3.Cluster{cluster("e")}},
			remove: cache.Names{Clusters: []string{"e", "a"}},
			want:   `cluster "e": both upserted and removed`,
		},
		"duplicate": {
			kind:   node.GRPC,
			upsert: &translate.Resources{Clusters: []*clusterv3.Cluster{cluster("e"), cluster("e")}},
			want:   `cluster "e": name appears more than once`,
		},
		"before the first update": {
			kind:   node.Envoy,
			upsert: &translate.Resources{Clusters: []*clusterv3.Cluster{cluster("e")}},
			want:   "no update yet",
		},
		"unknown kind": {kind: "istio", want: "istio"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st, err := c.Patch(tc.kind, tc.upsert, tc.remove)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Patch error = %v, want one containing %q", err, tc.want)
			}
			if st != (cache.Stats{}) {
				t.Errorf("stats = %+v, want zero", st)
			}
			cds.none()
			fresh := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
			fresh.request(nil, "")
			if got := fresh.receive().GetVersionInfo(); got != before.GetVersionInfo() {
				t.Errorf("version after a failed Patch = %s, want the old %s", got, before.GetVersionInfo())
			}
		})
	}
}

// TestReplacingPatchEqualsUpdate patches a set of several version chunks
// by replacing resources only, the endpoint fast path, and checks that
// what is served and its version are what Update of the same set serves.
func TestReplacingPatchEqualsUpdate(t *testing.T) {
	eps := map[string]string{}
	for i := range 300 {
		eps[fmt.Sprintf("s%03d", i)] = fmt.Sprintf("10.0.%d.%d", i/256, i%256)
	}
	patched := newCache(t, services(eps))
	tests := map[string][]string{
		"first":            {"s000"},
		"one chunk, twice": {"s001", "s063"},
		"several chunks":   {"s064", "s200", "s150"},
		"last, partial":    {"s299"},
	}
	for name, replace := range tests {
		t.Run(name, func(t *testing.T) {
			var upsert []*endpointv3.ClusterLoadAssignment
			for i, n := range replace {
				eps[n] = fmt.Sprintf("10.1.%d.%d", len(name), i)
				upsert = append(upsert, loadAssignment(n, eps[n]))
			}
			st, err := patched.Patch(node.GRPC, &translate.Resources{Endpoints: upsert}, cache.Names{})
			if err != nil {
				t.Fatalf("Patch: %v", err)
			}
			if want := (cache.Stats{Changed: len(replace)}); st != want {
				t.Errorf("stats = %+v, want %+v", st, want)
			}
			full := newCache(t, services(eps))
			got, gotVersion := fetchAll(t, patched, node.GRPC, resourcev3.EndpointType, claName)
			want, wantVersion := fetchAll(t, full, node.GRPC, resourcev3.EndpointType, claName)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("after Patch differs from Update (-update +patch):\n%s", diff)
			}
			if gotVersion != wantVersion {
				t.Errorf("version after Patch = %s, after Update %s", gotVersion, wantVersion)
			}
		})
	}
}

// TestRandomPatchesEqualUpdate patches a set of several version chunks
// with random sequences of additions, removals and replacements, and checks
// after each patch that what is served and its version are what Update of
// the resulting set serves.
func TestRandomPatchesEqualUpdate(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	eps := map[string]string{}
	for i := range 400 {
		eps[fmt.Sprintf("s%04d", i*3)] = "10.0.0.1"
	}
	patched := newCache(t, services(eps))
	for step := range 30 {
		upsert := &translate.Resources{}
		var remove cache.Names
		touched := map[string]bool{}
		for range 1 + rng.IntN(3) {
			n := fmt.Sprintf("s%04d", rng.IntN(1200))
			if touched[n] {
				continue
			}
			touched[n] = true
			if _, held := eps[n]; held && rng.IntN(2) == 0 {
				remove.Clusters = append(remove.Clusters, n)
				remove.Endpoints = append(remove.Endpoints, n)
				delete(eps, n)
				continue
			}
			eps[n] = fmt.Sprintf("10.1.%d.%d", step, rng.IntN(256))
			upsert.Clusters = append(upsert.Clusters, cluster(n))
			upsert.Endpoints = append(upsert.Endpoints, loadAssignment(n, eps[n]))
		}
		if _, err := patched.Patch(node.GRPC, upsert, remove); err != nil {
			t.Fatalf("step %d: Patch: %v", step, err)
		}
		full := newCache(t, services(eps))
		for typeURL, name := range map[string]func([]byte) string{resourcev3.ClusterType: clusterName, resourcev3.EndpointType: claName} {
			got, gotVersion := fetchAll(t, patched, node.GRPC, typeURL, name)
			want, wantVersion := fetchAll(t, full, node.GRPC, typeURL, name)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("step %d: %s after Patch differs from Update (-update +patch):\n%s", step, typeURL, diff)
			}
			if gotVersion != wantVersion {
				t.Fatalf("step %d: %s version after Patch = %s, after Update %s", step, typeURL, gotVersion, wantVersion)
			}
		}
	}
}
