package cache_test

import (
	"slices"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

func nodeIn(kind node.Kind, ns string) node.Info {
	return node.Info{Namespace: ns, Workload: "client", ServiceAccount: "default", Kind: kind}
}

func mustUpdateView(t *testing.T, c *cache.Cache, view string, r *translate.Resources) {
	t.Helper()
	if _, err := c.UpdateView(node.Envoy, view, r); err != nil {
		t.Fatalf("UpdateView %q: %v", view, err)
	}
}

// TestViewsServePerNamespace: each namespace is served its view, an Update
// or Patch of one view wakes only that view's watches, and a view no
// namespace is in any more is dropped.
func TestViewsServePerNamespace(t *testing.T) {
	c := cache.New(discardLogger())
	mustUpdate(t, c, node.Envoy, services(map[string]string{"pub": "10.0.0.1"}))
	mustUpdateView(t, c, "x", services(map[string]string{"pub": "10.0.0.1", "priv": "10.0.0.2"}))
	c.SetViews(map[string]string{"a": "x"})

	inA := newSotwClient(t, c, node.Envoy, resourcev3.ClusterType, true)
	inA.node = nodeIn(node.Envoy, "a").Node()
	inB := newSotwClient(t, c, node.Envoy, resourcev3.ClusterType, true)
	inB.node = nodeIn(node.Envoy, "b").Node()
	inA.request(nil, "")
	outA := inA.receive()
	if got := names(outA, clusterName); !slices.Equal(got, []string{"priv", "pub"}) {
		t.Errorf("namespace a (view x) got %v, want [priv pub]", got)
	}
	inA.ack(outA)
	inB.request(nil, "")
	outB := inB.receive()
	if got := names(outB, clusterName); !slices.Equal(got, []string{"pub"}) {
		t.Errorf("namespace b (default view) got %v, want [pub]", got)
	}
	inB.ack(outB)

	// Fetch reads the node's view too.
	r, err := c.Fetch(t.Context(), &discoveryv3.DiscoveryRequest{Node: inA.node, TypeUrl: resourcev3.ClusterType})
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := r.GetDiscoveryResponse(); len(out.GetResources()) != 2 {
		t.Errorf("Fetch for namespace a: %d clusters, want 2", len(out.GetResources()))
	}

	// A Patch of view x wakes namespace a's client and not b's.
	if _, err := c.PatchView(node.Envoy, "x", &translate.Resources{Clusters: services(map[string]string{"priv2": "10.0.0.3"}).Clusters}, cache.Names{}); err != nil {
		t.Fatal(err)
	}
	if got := names(inA.receive(), clusterName); !slices.Equal(got, []string{"priv", "priv2", "pub"}) {
		t.Errorf("namespace a after the patch got %v, want [priv priv2 pub]", got)
	}
	inB.none()
	// An Update of the default view wakes b's client and not a's.
	inA.none()
	mustUpdate(t, c, node.Envoy, services(map[string]string{"pub": "10.0.0.1", "pub2": "10.0.0.4"}))
	if got := names(inB.receive(), clusterName); !slices.Equal(got, []string{"pub", "pub2"}) {
		t.Errorf("namespace b after the update got %v, want [pub pub2]", got)
	}
	inA.none()

	// Namespace a back in the default view: view x is dropped.
	c.SetViews(nil)
	if _, err := c.PatchView(node.Envoy, "x", nil, cache.Names{Clusters: []string{"priv"}}); err == nil || !strings.Contains(err.Error(), "no update yet") {
		t.Errorf("PatchView of a dropped view: %v, want a refusal", err)
	}
}

// TestViewsMoveSotwWatches: a state-of-the-world client whose namespace
// changes view is answered from the new view on the same stream, with the
// whole set there (clusters: what is gone is gone), and not at all when it
// already holds that set.
func TestViewsMoveSotwWatches(t *testing.T) {
	c := cache.New(discardLogger())
	pub := map[string]string{"pub": "10.0.0.1"}
	mustUpdate(t, c, node.Envoy, services(pub))
	mustUpdateView(t, c, "x", services(map[string]string{"pub": "10.0.0.1", "priv": "10.0.0.2"}))
	mustUpdateView(t, c, "same", services(pub))

	s := newSotwClient(t, c, node.Envoy, resourcev3.ClusterType, true)
	s.node = nodeIn(node.Envoy, "a").Node()
	s.request(nil, "")
	s.ack(s.receive())
	s.none()

	c.SetViews(map[string]string{"a": "x"})
	out := s.receive()
	if got := names(out, clusterName); !slices.Equal(got, []string{"priv", "pub"}) {
		t.Errorf("moved to view x: got %v, want [priv pub]", got)
	}
	s.ack(out)
	s.none()

	c.SetViews(nil)
	out = s.receive()
	if got := names(out, clusterName); !slices.Equal(got, []string{"pub"}) {
		t.Errorf("moved back: got %v, want [pub]", got)
	}
	s.ack(out)

	// A view with the same content: nothing to send.
	mustUpdateView(t, c, "same", services(pub))
	c.SetViews(map[string]string{"a": "same"})
	s.none()
	// And its later changes reach the client.
	mustUpdateView(t, c, "same", services(map[string]string{"pub": "10.0.0.1", "pub3": "10.0.0.9"}))
	if got := names(s.receive(), clusterName); !slices.Equal(got, []string{"pub", "pub3"}) {
		t.Errorf("changed in the new view: got %v, want [pub pub3]", got)
	}
}

// TestViewsMoveDeltaWatches: a delta client whose namespace changes view
// gets exactly what it lacks there and the removal of what the new view
// does not have, on the same stream; a move to identical content sends
// nothing, and the view's later changes are sent one by one though the
// client's record names a snapshot of the other view.
func TestViewsMoveDeltaWatches(t *testing.T) {
	for name, wildcard := range map[string]bool{"wildcard": true, "by name": false} {
		t.Run(name, func(t *testing.T) {
			c := cache.New(discardLogger())
			pub := map[string]string{"pub": "10.0.0.1", "shared": "10.0.0.5"}
			mustUpdate(t, c, node.Envoy, services(pub))
			mustUpdateView(t, c, "x", services(map[string]string{"pub": "10.0.0.1", "shared": "10.0.0.6", "priv": "10.0.0.2"}))
			mustUpdateView(t, c, "same", services(pub))

			d := newDeltaClient(t, c, node.Envoy, resourcev3.EndpointType, false)
			d.node = nodeIn(node.Envoy, "a").Node()
			var sub []string
			if wildcard {
				sub = []string{"*"}
			} else {
				sub = []string{"priv", "pub", "shared"}
			}
			d.request(sub, nil, nil, "")
			first := d.receive()
			if got := deltaNames(first); !slices.Equal(got, []string{"pub", "shared"}) {
				t.Fatalf("first response %v, want [pub shared]", got)
			}
			d.ack()
			d.none()

			check := func(what string, wantNames, wantRemoved []string) {
				t.Helper()
				out := d.receive()
				if diff := cmp.Diff(wantNames, deltaNames(out)); diff != "" {
					t.Errorf("%s: resources (-want +got):\n%s", what, diff)
				}
				if diff := cmp.Diff(wantRemoved, out.GetRemovedResources()); diff != "" {
					t.Errorf("%s: removed (-want +got):\n%s", what, diff)
				}
				d.ack()
				d.none()
			}
			c.SetViews(map[string]string{"a": "x"})
			check("moved to view x", []string{"priv", "shared"}, nil)
			c.SetViews(nil)
			check("moved back", []string{"shared"}, []string{"priv"})

			c.SetViews(map[string]string{"a": "same"})
			d.none()
			mustUpdateView(t, c, "same", services(map[string]string{"pub": "10.0.0.1", "shared": "10.0.0.7"}))
			check("changed in the new view", []string{"shared"}, nil)
			// Its record now names the new view's snapshot; back to the
			// default view (still at the first content).
			c.SetViews(nil)
			check("back to the default view", []string{"shared"}, nil)
		})
	}
}

// TestPublishMovesAtOnce: a Service turning private to namespace a leaves
// the default view and enters a's new view in one Publish. A client in a
// holds the same set before and after, so it is sent nothing (it never
// sees the Service vanish and come back); a client in b loses it; and a
// Publish whose resources fail validation changes nothing at all.
func TestPublishMovesAtOnce(t *testing.T) {
	c := cache.New(discardLogger())
	both := map[string]string{"pub": "10.0.0.1", "priv": "10.0.0.2"}
	mustUpdate(t, c, node.Envoy, services(both))

	clients := map[string]*deltaClient{}
	for _, ns := range []string{"a", "b"} {
		d := newDeltaClient(t, c, node.Envoy, resourcev3.ClusterType, false)
		d.node = nodeIn(node.Envoy, ns).Node()
		d.request([]string{"*"}, nil, nil, "")
		if got := deltaNames(d.receive()); !slices.Equal(got, []string{"priv", "pub"}) {
			t.Fatalf("namespace %s first got %v", ns, got)
		}
		d.ack()
		clients[ns] = d
	}

	bad := services(map[string]string{"pub": "10.0.0.1"})
	bad.Clusters[0].ConnectTimeout.Seconds = -1
	if _, err := c.Publish([]cache.ViewUpdate{
		{Kind: node.Envoy, View: cache.DefaultView, Resources: services(map[string]string{"pub": "10.0.0.1"})},
		{Kind: node.Envoy, View: "x", Resources: bad},
	}, map[string]string{"a": "x"}); err == nil {
		t.Fatal("Publish with an invalid cluster succeeded")
	}
	clients["a"].none()
	clients["b"].none()

	st, err := c.Publish([]cache.ViewUpdate{
		{Kind: node.Envoy, View: cache.DefaultView, Resources: services(map[string]string{"pub": "10.0.0.1"})},
		{Kind: node.Envoy, View: "x", Resources: services(both)},
	}, map[string]string{"a": "x"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Removed != 2 {
		t.Errorf("stats %+v, want the default view's cluster and load assignment removed", st)
	}
	clients["a"].none()
	out := clients["b"].receive()
	if len(out.GetResources()) != 0 || !slices.Equal(out.GetRemovedResources(), []string{"priv"}) {
		t.Errorf("namespace b got %v, removed %v; want only priv removed", deltaNames(out), out.GetRemovedResources())
	}
}

// TestViewsMoveSotwPartial: a state-of-the-world client of load
// assignments, subscribed by name, that moves to a view with one more of
// its names is sent just that one (it proved it holds the rest), and
// holds the new view's whole selection afterwards.
func TestViewsMoveSotwPartial(t *testing.T) {
	c := cache.New(discardLogger())
	mustUpdate(t, c, node.Envoy, services(map[string]string{"pub": "10.0.0.1"}))
	mustUpdateView(t, c, "x", services(map[string]string{"pub": "10.0.0.1", "priv": "10.0.0.2"}))

	s := newSotwClient(t, c, node.Envoy, resourcev3.EndpointType, false)
	s.node = nodeIn(node.Envoy, "a").Node()
	s.request([]string{"priv", "pub"}, "")
	out := s.receive()
	if got := names(out, claName); !slices.Equal(got, []string{"pub"}) {
		t.Fatalf("first response %v, want [pub]", got)
	}
	s.ack(out)
	s.none()

	c.SetViews(map[string]string{"a": "x"})
	out = s.receive()
	if got := names(out, claName); !slices.Equal(got, []string{"priv"}) {
		t.Errorf("moved to view x: got %v, want [priv]", got)
	}
	s.ack(out)
	s.none()
	r, err := c.Fetch(t.Context(), &discoveryv3.DiscoveryRequest{Node: s.node, TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"priv", "pub"}})
	if err != nil {
		t.Fatal(err)
	}
	if whole, _ := r.GetDiscoveryResponse(); whole.GetVersionInfo() != out.GetVersionInfo() {
		t.Errorf("version %s after the move, want the view's whole selection's %s", out.GetVersionInfo(), whole.GetVersionInfo())
	}
}
