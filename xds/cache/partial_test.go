package cache_test

import (
	"maps"
	"sync"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

// holder is what an Envoy or grpc-go client holds of load assignments in
// state of the world: every response merged in, nothing removed by absence.
type holder map[string]string

func (h holder) apply(out *discoveryv3.DiscoveryResponse) {
	for _, a := range out.GetResources() {
		h[claName(a.GetValue())] = claIP(a.GetValue())
	}
}

func TestSotwEndpointsCarryOnlyWhatChanged(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b", "c"}, "")
	first := eds.receive()
	if diff := cmp.Diff([]string{"a", "b", "c"}, names(first, claName)); diff != "" {
		t.Fatalf("first response (-want +got):\n%s", diff)
	}
	held := holder{}
	held.apply(first)
	eds.ack(first)
	eds.none()

	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.99", "c": "10.0.0.3"}))
	out := receiveChange(t, c, eds, claName, []string{"b"}, "after b moved")
	held.apply(out)
	eds.ack(out)
	eds.none()

	// Patch, the endpoint fast path, the same.
	if _, err := c.Patch(node.GRPC, &translate.Resources{Endpoints: []*endpointv3.ClusterLoadAssignment{loadAssignment("c", "10.0.0.33")}}, cache.Names{}); err != nil {
		t.Fatalf("Patch: %v", err)
	}
	out = receiveChange(t, c, eds, claName, []string{"c"}, "after c patched")
	held.apply(out)
	eds.ack(out)
	eds.none()
	want := holder{"a": "10.0.0.1", "b": "10.0.0.99", "c": "10.0.0.33"}
	if diff := cmp.Diff(want, held); diff != "" {
		t.Errorf("client holds (-want +got):\n%s", diff)
	}

	// A change of more than a client subscribes to brings it its part.
	one := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	one.request([]string{"a", "b"}, "")
	one.ack(one.receive())
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.5", "b": "10.0.0.99", "c": "10.0.0.6", "d": "10.0.0.7"}))
	out = receiveChange(t, c, one, claName, []string{"a"}, "a, c and d changed, a and b subscribed")
}

// Clusters (and listeners) stay the state of the world: a client takes a
// missing one as removed.
func TestSotwClustersStayWhole(t *testing.T) {
	c := newCache(t, services(abc))
	cds := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, false)
	cds.request([]string{"a", "b", "c"}, "")
	cds.ack(cds.receive())
	r := services(abc)
	r.Clusters[1] = proto.Clone(r.Clusters[1]).(*clusterv3.Cluster)
	r.Clusters[1].LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	mustUpdate(t, c, node.GRPC, r)
	if diff := cmp.Diff([]string{"a", "b", "c"}, names(cds.receive(), clusterName)); diff != "" {
		t.Errorf("named CDS after b changed (-want +got):\n%s", diff)
	}
}

func routeConfig(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name: name, Domains: []string{name},
		Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
		}},
	}}}
}

func routeName(b []byte) string {
	var r routev3.RouteConfiguration
	if err := proto.Unmarshal(b, &r); err != nil {
		panic(err)
	}
	return r.GetName()
}

func TestSotwRoutesCarryOnlyWhatChanged(t *testing.T) {
	withRoutes := func(target map[string]string) *translate.Resources {
		r := services(abc)
		for _, n := range []string{"a", "b", "c"} {
			r.Routes = append(r.Routes, routeConfig(n, target[n]))
		}
		return r
	}
	c := newCache(t, withRoutes(map[string]string{"a": "a", "b": "b", "c": "c"}))
	rds := newSotwClient(t, c, node.GRPC, resourcev3.RouteType, false)
	rds.request([]string{"a", "b", "c"}, "")
	rds.ack(rds.receive())
	mustUpdate(t, c, node.GRPC, withRoutes(map[string]string{"a": "a", "b": "c", "c": "c"}))
	out := receiveChange(t, c, rds, routeName, []string{"b"}, "RDS after b rerouted")
	rds.ack(out)
	rds.none()
}

// After a NACK the server cannot know what the client holds (Envoy rejects
// the whole response, grpc-go only the bad resources), so the next change
// sends the whole selection, and the rejected content alone never comes
// back.
func TestSotwAfterNACKTheWholeSelection(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b", "c"}, "")
	eds.ack(eds.receive())

	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.50", "c": "10.0.0.3"}))
	if diff := cmp.Diff([]string{"b"}, names(eds.receive(), claName)); diff != "" {
		t.Fatalf("after b moved (-want +got):\n%s", diff)
	}
	eds.request(eds.names, "b rejected")
	eds.none()
	eds.request(eds.names, "b rejected")
	eds.none()

	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.50", "c": "10.0.0.30"}))
	out := receiveChange(t, c, eds, claName, []string{"a", "b", "c"}, "first change after a NACK")
	eds.ack(out)
	eds.none()
	// Accepted again: back to changes only.
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.10", "b": "10.0.0.50", "c": "10.0.0.30"}))
	if diff := cmp.Diff([]string{"a"}, names(eds.receive(), claName)); diff != "" {
		t.Errorf("after the NACKed content was accepted (-want +got):\n%s", diff)
	}
}

// A subscription that grows after an ACK is answered with what the client
// lacks: the client holds what it acknowledged. When the new name does not
// exist yet, the watch waits, and the change that creates it sends the new
// resource with whatever else changed.
func TestSotwGrowingSubscription(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b"}, "")
	eds.ack(eds.receive())

	eds.request([]string{"a", "b", "d"}, "")
	eds.none()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.11", "b": "10.0.0.2", "c": "10.0.0.3", "d": "10.0.0.4"}))
	out := receiveChange(t, c, eds, claName, []string{"a", "d"}, "d created and a moved")
	eds.ack(out)
	eds.none()

	eds.request([]string{"a", "b", "c", "d"}, "")
	out = receiveChange(t, c, eds, claName, []string{"c"}, "grown by an existing name")
	eds.ack(out)
	eds.none()

	// Shrinking is answered with nothing: the client holds the rest.
	eds.request([]string{"a", "b"}, "")
	eds.none()
	// The next change to a name still subscribed comes whole (the client's
	// version is of the larger set), then partial again.
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.12", "b": "10.0.0.2", "c": "10.0.0.3", "d": "10.0.0.4"}))
	out = receiveChange(t, c, eds, claName, []string{"a", "b"}, "first change after shrinking")
	eds.ack(out)
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.13", "b": "10.0.0.2", "c": "10.0.0.3", "d": "10.0.0.4"}))
	if diff := cmp.Diff([]string{"a"}, names(eds.receive(), claName)); diff != "" {
		t.Errorf("second change after shrinking (-want +got):\n%s", diff)
	}
}

// A change that lands between a response and its ACK is sent when the ACK
// comes, alone.
func TestSotwChangeBeforeACKSendsOnlyIt(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b", "c"}, "")
	eds.ack(eds.receive())

	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.20", "c": "10.0.0.3"}))
	first := eds.receive()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.20", "c": "10.0.0.30"}))
	eds.ack(first)
	out := receiveChange(t, c, eds, claName, []string{"c"}, "change before the ACK")
	eds.ack(out)
	eds.none()
}

// A request after a NACK that changes the subscription carries no
// error_detail but the version before the rejected one: what the client
// holds is unknown, so it gets the whole selection.
func TestSotwSubscriptionChangeAfterNACK(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b"}, "")
	eds.ack(eds.receive())
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.10", "b": "10.0.0.2", "c": "10.0.0.3"}))
	eds.receive()
	eds.request(eds.names, "a rejected")
	eds.none()

	eds.request([]string{"a", "b", "c"}, "")
	receiveChange(t, c, eds, claName, []string{"a", "b", "c"}, "grown after a NACK")
}

// A client on a new stream holds what its version_info says, nothing else
// is known about it: a stale version gets everything, the current one
// nothing, and then only what changes.
func TestSotwReconnect(t *testing.T) {
	c := newCache(t, services(abc))
	old, _ := fullSotw(t, c, resourcev3.EndpointType, []string{"a", "b", "c"})
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.20", "c": "10.0.0.3"}))
	cur, _ := fullSotw(t, c, resourcev3.EndpointType, []string{"a", "b", "c"})

	for name, version := range map[string]string{"never sent": "stale", "older": old.GetVersionInfo()} {
		s := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
		s.acked = version
		s.request([]string{"a", "b", "c"}, "")
		if diff := cmp.Diff([]string{"a", "b", "c"}, names(s.receive(), claName)); diff != "" {
			t.Errorf("reconnect at a %s version (-want +got):\n%s", name, diff)
		}
	}

	s := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	s.acked = cur.GetVersionInfo()
	s.request([]string{"c", "b", "a"}, "")
	s.none()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.20", "c": "10.0.0.30"}))
	receiveChange(t, c, s, claName, []string{"c"}, "change after reconnecting up to date")
}

// State of the world cannot remove a load assignment: the response that
// follows a removal carries nothing, at the version of what is left, and the
// removed name is no longer counted as held: when it comes back it is sent.
func TestSotwRemovedEndpointsLeaveTheReturnedMap(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b", "c"}, "")
	eds.ack(eds.receive())

	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.2"}))
	out := eds.receive()
	if len(out.GetResources()) != 0 {
		t.Errorf("response after c was removed carries %v", names(out, claName))
	}
	checkHolds(t, c, eds, out)
	eds.ack(out)
	eds.none()

	mustUpdate(t, c, node.GRPC, services(abc))
	if diff := cmp.Diff([]string{"c"}, names(eds.receive(), claName)); diff != "" {
		t.Errorf("c back (-want +got):\n%s", diff)
	}
}

// TestSotwFanOutAndCancel is for the race detector and the watch
// guarantees, with enough watches that an Update answers them on several
// goroutines: one response per watch, none after cancel has returned.
func TestSotwFanOutAndCancel(t *testing.T) {
	c := newCache(t, services(abc))
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		cancelled []chan cachev3.Response
	)
	for i := range 100 {
		wg.Go(func() {
			sub := stream.NewSotwSubscription([]string{"a", "b"}, false)
			version, nonce := "", ""
			take := func(r cachev3.Response) {
				sub.SetReturnedResources(r.GetReturnedResources())
				version, nonce = r.GetResponseVersion(), version+nonce+"x"
			}
			for k := range 30 {
				ch := make(chan cachev3.Response, 2)
				req := &discoveryv3.DiscoveryRequest{Node: proxy(node.GRPC), TypeUrl: resourcev3.EndpointType,
					ResourceNames: []string{"a", "b"}, VersionInfo: version, ResponseNonce: nonce}
				cancel, err := c.CreateWatch(req, sub, ch)
				if err != nil {
					t.Error(err)
					return
				}
				if (i+k)%3 == 0 {
					// Cancel without waiting, as a stream closing would.
					cancel()
					if len(ch) > 0 {
						take(<-ch)
					}
					mu.Lock()
					cancelled = append(cancelled, ch)
					mu.Unlock()
					continue
				}
				r := <-ch
				cancel()
				take(r)
			}
		})
	}
	done := make(chan struct{})
	updated := make(chan struct{})
	go func() {
		defer close(updated)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			ip := "10.0.1." + string(rune('0'+i%10))
			if _, err := c.Update(node.GRPC, services(map[string]string{"a": ip, "b": "10.0.0.2"})); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	close(done)
	<-updated
	for _, ch := range cancelled {
		if len(ch) != 0 {
			t.Fatalf("a cancelled watch got %d responses after cancel returned", len(ch))
		}
	}
}

// Clients with the same subscription share a selection, but each response's
// ReturnedResources is the client's own: the server deletes from it when
// that client's subscription shrinks, and the cache may rewrite it.
func TestSotwReturnedResourcesAreNotShared(t *testing.T) {
	c := newCache(t, services(abc))
	x := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	y := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	for _, s := range []*sotwClient{x, y} {
		s.request([]string{"a", "b", "c"}, "")
		s.ack(s.receive())
	}
	before := maps.Clone(y.sub.ReturnedResources())
	for _, shrunk := range [][]string{{"b", "c"}, {"c"}} {
		x.request(shrunk, "")
		x.none()
		if diff := cmp.Diff(before, y.sub.ReturnedResources()); diff != "" {
			t.Errorf("another client's shrink to %v changed ReturnedResources (-before +after):\n%s", shrunk, diff)
		}
	}
	// y is still known to hold all three: a change sends only it.
	y.request(y.names, "")
	y.none()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.33"}))
	if diff := cmp.Diff([]string{"c"}, names(y.receive(), claName)); diff != "" {
		t.Errorf("change after another client shrank (-want +got):\n%s", diff)
	}
}
