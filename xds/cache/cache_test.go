package cache_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

var abc = map[string]string{"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}

func newCache(t testing.TB, r *translate.Resources) *cache.Cache {
	c := cache.New(discardLogger())
	if r != nil {
		mustUpdate(t, c, node.GRPC, r)
	}
	return c
}

func TestSotwSubsetRequestIsAnswered(t *testing.T) {
	c := newCache(t, services(abc))

	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"b"}, "")
	out := eds.receive()
	if diff := cmp.Diff([]string{"b"}, names(out, claName)); diff != "" {
		t.Errorf("subset response (-want +got):\n%s", diff)
	}

	cds := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	cds.request(nil, "")
	if diff := cmp.Diff([]string{"a", "b", "c"}, names(cds.receive(), clusterName)); diff != "" {
		t.Errorf("wildcard response (-want +got):\n%s", diff)
	}

	star := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	star.request([]string{"*"}, "")
	if diff := cmp.Diff([]string{"a", "b", "c"}, names(star.receive(), clusterName)); diff != "" {
		t.Errorf("explicit wildcard response (-want +got):\n%s", diff)
	}

	// Growing the subscription after an ACK answers with what the client
	// lacks of the larger set; a name that does not exist is simply absent.
	eds.ack(out)
	eds.none()
	eds.request([]string{"b", "c", "missing"}, "")
	if diff := cmp.Diff([]string{"c"}, names(eds.receive(), claName)); diff != "" {
		t.Errorf("grown subscription (-want +got):\n%s", diff)
	}
}

func TestSotwVersionIsTheSetHash(t *testing.T) {
	c := newCache(t, services(abc))
	one := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	one.request([]string{"a", "b"}, "")
	v1 := one.receive().GetVersionInfo()

	// Another client with the same subscription, reconnecting at v1, is not
	// sent anything; one at another version is.
	two := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	two.acked = v1
	two.request([]string{"b", "a"}, "")
	two.none()
	three := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	three.acked = "stale"
	three.request([]string{"a", "b"}, "")
	if got := three.receive().GetVersionInfo(); got != v1 {
		t.Errorf("version for the same set = %q, want %q", got, v1)
	}
}

func TestIdenticalUpdateSendsNothing(t *testing.T) {
	c := newCache(t, services(abc))
	cds := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	cds.request(nil, "")
	cds.ack(cds.receive())
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b", "c"}, "")
	eds.ack(eds.receive())
	delta := newDeltaClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	delta.request(nil, nil, nil, "")
	delta.receive()
	delta.ack()

	// A fresh but equal value, as the translator would produce.
	st := mustUpdate(t, c, node.GRPC, services(abc))
	if st != (cache.Stats{}) {
		t.Errorf("identical Update stats = %+v, want zero", st)
	}
	cds.none()
	eds.none()
	delta.none()
}

func TestOnlyWatchesOnChangedResourcesFire(t *testing.T) {
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
	edsAll := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, true)
	edsAll.request(nil, "")
	edsAll.ack(edsAll.receive())
	// Envoy proxies see other content; their watches must not move either.
	envoyEDS := newSotwClient(t, c, node.Envoy, resourcev3.EndpointType, false)
	envoyEDS.request([]string{"b"}, "")
	mustUpdate(t, c, node.Envoy, services(abc))
	envoyEDS.ack(envoyEDS.receive())

	moved := map[string]string{"a": "10.0.0.1", "b": "10.0.0.99", "c": "10.0.0.3"}
	st := mustUpdate(t, c, node.GRPC, services(moved))
	if st != (cache.Stats{Changed: 1}) {
		t.Errorf("stats = %+v, want one change", st)
	}
	out := watchers["b"].receive()
	if got := claIP(out.GetResources()[0].GetValue()); got != "10.0.0.99" {
		t.Errorf("b's endpoint = %s, want 10.0.0.99", got)
	}
	// Load assignments in state of the world need only what changed.
	if diff := cmp.Diff([]string{"b"}, names(edsAll.receive(), claName)); diff != "" {
		t.Errorf("wildcard EDS response (-want +got):\n%s", diff)
	}
	watchers["a"].none()
	watchers["c"].none()
	cds.none()
	envoyEDS.none()
}

func TestRemovalWakesSubscribers(t *testing.T) {
	c := newCache(t, services(abc))
	cds := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	cds.request(nil, "")
	cds.ack(cds.receive())
	named := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	named.request([]string{"c"}, "")
	named.ack(named.receive())
	other := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	other.request([]string{"a"}, "")
	other.ack(other.receive())

	st := mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.2"}))
	if st != (cache.Stats{Removed: 2}) {
		t.Errorf("stats = %+v, want cluster and load assignment removed", st)
	}
	if diff := cmp.Diff([]string{"a", "b"}, names(cds.receive(), clusterName)); diff != "" {
		t.Errorf("wildcard CDS after removal (-want +got):\n%s", diff)
	}
	// State of the world for CDS: an empty response is how a removal is said.
	if got := named.receive().GetResources(); len(got) != 0 {
		t.Errorf("response for removed c has %d resources, want 0", len(got))
	}
	other.none()
}

func TestNACKIsNotAnsweredWithTheSameContent(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a"}, "")
	eds.ack(eds.receive())
	good := eds.acked

	// The client rejects the next version and keeps the last good one.
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.50", "b": "10.0.0.2", "c": "10.0.0.3"}))
	rejected := eds.receive()
	eds.request([]string{"a"}, "endpoint rejected")
	eds.none()
	if eds.acked != good {
		t.Fatalf("test client moved its accepted version")
	}
	// Asking again (as a client reconnecting a watch would) does not bring
	// the rejected content back, nor does an Update that changes nothing.
	eds.request([]string{"a"}, "endpoint rejected")
	eds.none()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.50", "b": "10.0.0.2", "c": "10.0.0.3"}))
	eds.none()
	// A change elsewhere does not either.
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.50", "b": "10.0.0.22", "c": "10.0.0.3"}))
	eds.none()

	// A real change of a is sent.
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.51", "b": "10.0.0.22", "c": "10.0.0.3"}))
	fixed := eds.receive()
	if fixed.GetVersionInfo() == rejected.GetVersionInfo() {
		t.Fatalf("resent the rejected version %s", fixed.GetVersionInfo())
	}
	if got := claIP(fixed.GetResources()[0].GetValue()); got != "10.0.0.51" {
		t.Errorf("endpoint after fix = %s, want 10.0.0.51", got)
	}
}

func TestWatchesWaitForTheFirstUpdate(t *testing.T) {
	c := newCache(t, nil)
	lds := newSotwClient(t, c, node.GRPC, resourcev3.ListenerType, true)
	lds.request(nil, "")
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a"}, "")
	cds := newDeltaClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	cds.request(nil, nil, nil, "")
	lds.none()
	eds.none()
	cds.none()

	// Another kind being built does not release them.
	mustUpdate(t, c, node.Envoy, services(abc))
	lds.none()
	eds.none()
	cds.none()

	mustUpdate(t, c, node.GRPC, services(abc))
	if got := lds.receive().GetResources(); len(got) != 0 {
		t.Errorf("LDS has %d listeners, want an empty answer", len(got))
	}
	if diff := cmp.Diff([]string{"a"}, names(eds.receive(), claName)); diff != "" {
		t.Errorf("EDS (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, deltaNames(cds.receive())); diff != "" {
		t.Errorf("delta CDS (-want +got):\n%s", diff)
	}
}

func TestInvalidUpdateChangesNothing(t *testing.T) {
	c := newCache(t, services(abc))
	cds := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
	cds.request(nil, "")
	before := cds.receive()
	cds.ack(before)

	bad := services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3", "d": "10.0.0.4"})
	bad.Clusters[3].ConnectTimeout = durationpb.New(-1)
	tests := map[string]struct {
		in   *translate.Resources
		want string
	}{
		"validation": {in: bad, want: `cluster "d"`},
		"empty name": {
			in:   &translate.Resources{Clusters: []*clusterv3.Cluster{cluster("a"), cluster("")}},
			want: "cluster at index 1: name is empty",
		},
		"duplicate": {
			in:   &translate.Resources{Clusters: []*clusterv3.Cluster{cluster("a"), cluster("a")}},
			want: `cluster "a": name appears more than once`,
		},
		"nil": {in: nil, want: "resources are nil"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st, err := c.Update(node.GRPC, tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Update error = %v, want one containing %q", err, tc.want)
			}
			if st != (cache.Stats{}) {
				t.Errorf("stats = %+v, want zero", st)
			}
			cds.none()
			fresh := newSotwClient(t, c, node.GRPC, resourcev3.ClusterType, true)
			fresh.request(nil, "")
			if got := fresh.receive().GetVersionInfo(); got != before.GetVersionInfo() {
				t.Errorf("version after a failed Update = %s, want the old %s", got, before.GetVersionInfo())
			}
		})
	}
	if _, err := c.Update("istio", services(abc)); err == nil {
		t.Errorf("Update for an unknown kind succeeded")
	}
}

func TestDeltaSendsOnlyChanges(t *testing.T) {
	c := newCache(t, services(abc))
	cds := newDeltaClient(t, c, node.Envoy, resourcev3.ClusterType, true)
	eds := newDeltaClient(t, c, node.Envoy, resourcev3.EndpointType, false)
	mustUpdate(t, c, node.Envoy, services(abc))

	cds.request(nil, nil, nil, "")
	if diff := cmp.Diff([]string{"a", "b", "c"}, deltaNames(cds.receive())); diff != "" {
		t.Errorf("initial CDS (-want +got):\n%s", diff)
	}
	cds.ack()
	cds.none()
	eds.request([]string{"a", "b"}, nil, nil, "")
	if diff := cmp.Diff([]string{"a", "b"}, deltaNames(eds.receive())); diff != "" {
		t.Errorf("initial EDS (-want +got):\n%s", diff)
	}
	eds.ack()
	eds.none()

	// One endpoint moves: EDS gets only that load assignment, CDS nothing.
	mustUpdate(t, c, node.Envoy, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.20", "c": "10.0.0.3"}))
	out := eds.receive()
	if diff := cmp.Diff([]string{"b"}, deltaNames(out)); diff != "" {
		t.Errorf("EDS after one change (-want +got):\n%s", diff)
	}
	if got := claIP(out.GetResources()[0].GetResource().GetValue()); got != "10.0.0.20" {
		t.Errorf("b's endpoint = %s", got)
	}
	eds.ack()
	cds.none()

	// c is not subscribed by EDS: its change reaches nobody but CDS-wildcard
	// if the cluster changed, which it did not.
	mustUpdate(t, c, node.Envoy, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.20", "c": "10.0.0.30"}))
	eds.none()
	cds.none()

	// b is removed: CDS and EDS get removals, nothing else.
	mustUpdate(t, c, node.Envoy, services(map[string]string{"a": "10.0.0.1", "c": "10.0.0.30"}))
	out = eds.receive()
	if diff := cmp.Diff([]string{"b"}, out.GetRemovedResources()); diff != "" || len(out.GetResources()) != 0 {
		t.Errorf("EDS removal: resources %v, removed diff (-want +got):\n%s", deltaNames(out), diff)
	}
	eds.ack()
	cout := cds.receive()
	if diff := cmp.Diff([]string{"b"}, cout.GetRemovedResources()); diff != "" || len(cout.GetResources()) != 0 {
		t.Errorf("CDS removal: resources %v, removed diff (-want +got):\n%s", deltaNames(cout), diff)
	}
	cds.ack()

	// Subscribing to one more name sends just that one.
	eds.request([]string{"c"}, nil, nil, "")
	if diff := cmp.Diff([]string{"c"}, deltaNames(eds.receive())); diff != "" {
		t.Errorf("EDS after subscribing c (-want +got):\n%s", diff)
	}
}

func TestDeltaNACKIsNotAnsweredWithTheSameContent(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newDeltaClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a"}, nil, nil, "")
	eds.receive()
	eds.ack()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.50", "b": "10.0.0.2", "c": "10.0.0.3"}))
	eds.receive()
	eds.request(nil, nil, nil, "rejected")
	eds.none()
	eds.request(nil, nil, nil, "rejected")
	eds.none()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.51", "b": "10.0.0.2", "c": "10.0.0.3"}))
	out := eds.receive()
	if got := claIP(out.GetResources()[0].GetResource().GetValue()); got != "10.0.0.51" {
		t.Errorf("endpoint after fix = %s, want 10.0.0.51", got)
	}
}

func TestDeltaReconnectWithInitialVersions(t *testing.T) {
	c := newCache(t, services(abc))
	first := newDeltaClient(t, c, node.Envoy, resourcev3.ClusterType, true)
	mustUpdate(t, c, node.Envoy, services(abc))
	first.request(nil, nil, nil, "")
	held := map[string]string{}
	for _, r := range first.receive().GetResources() {
		held[r.GetName()] = r.GetVersion()
	}

	// While it was away, c changed and b went; it comes back with what it
	// holds.
	mustUpdate(t, c, node.Envoy, services(map[string]string{"a": "10.0.0.1", "c": "10.0.0.3"}))
	held["c"] = "old"
	again := newDeltaClient(t, c, node.Envoy, resourcev3.ClusterType, true)
	again.request(nil, nil, held, "")
	out := again.receive()
	if diff := cmp.Diff([]string{"c"}, deltaNames(out)); diff != "" {
		t.Errorf("reconnect resources (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"b"}, out.GetRemovedResources()); diff != "" {
		t.Errorf("reconnect removals (-want +got):\n%s", diff)
	}

	// A wildcard client that is fully up to date still gets one (empty)
	// answer, so its initial fetch completes; a named one gets nothing.
	current := map[string]string{}
	for _, r := range out.GetResources() {
		current[r.GetName()] = r.GetVersion()
	}
	current["a"] = held["a"]
	upToDate := newDeltaClient(t, c, node.Envoy, resourcev3.ClusterType, true)
	upToDate.request(nil, nil, current, "")
	if out := upToDate.receive(); len(out.GetResources())+len(out.GetRemovedResources()) != 0 {
		t.Errorf("up-to-date wildcard got %v / removed %v", deltaNames(out), out.GetRemovedResources())
	}
	named := newDeltaClient(t, c, node.Envoy, resourcev3.ClusterType, false)
	named.request([]string{"a"}, nil, map[string]string{"a": held["a"]}, "")
	named.none()
}

func TestCancelledWatchIsNeverAnswered(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a"}, "")
	eds.ack(eds.receive())
	eds.cancel()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.9"}))
	eds.none()
}

func TestUnservedTypeIsHeld(t *testing.T) {
	c := newCache(t, services(abc))
	sds := newSotwClient(t, c, node.Envoy, resourcev3.SecretType, false)
	sds.request([]string{"default"}, "")
	mustUpdate(t, c, node.Envoy, services(abc))
	sds.none()
}

func TestWatchWithoutIdentityFails(t *testing.T) {
	c := newCache(t, services(abc))
	_, err := c.CreateWatch(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType}, nil, make(chan cachev3.Response, 1))
	if err == nil {
		t.Errorf("CreateWatch without a node succeeded")
	}
	_, err = c.CreateDeltaWatch(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType}, nil, make(chan cachev3.DeltaResponse, 1))
	if err == nil {
		t.Errorf("CreateDeltaWatch without a node succeeded")
	}
}

func TestFetch(t *testing.T) {
	c := cache.New(discardLogger())
	req := &discoveryv3.DiscoveryRequest{Node: proxy(node.GRPC), TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"c", "a"}}
	if _, err := c.Fetch(context.Background(), req); err == nil {
		t.Fatalf("Fetch before the first Update succeeded")
	}
	mustUpdate(t, c, node.GRPC, services(abc))
	resp, err := c.Fetch(context.Background(), req)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	out, _ := resp.GetDiscoveryResponse()
	if diff := cmp.Diff([]string{"a", "c"}, names(out, claName)); diff != "" {
		t.Errorf("Fetch (-want +got):\n%s", diff)
	}
	req.VersionInfo = out.GetVersionInfo()
	var skip *types.SkipFetchError
	if _, err := c.Fetch(context.Background(), req); !errors.As(err, &skip) {
		t.Errorf("Fetch at the current version: err = %v, want SkipFetchError", err)
	}
	if _, err := c.Fetch(context.Background(), &discoveryv3.DiscoveryRequest{Node: proxy(node.GRPC), TypeUrl: resourcev3.RuntimeType}); err == nil {
		t.Errorf("Fetch of an unserved type succeeded")
	}
}

// TestConcurrentWatchesAndUpdates is for the race detector: streams opening,
// answering and cancelling watches while updates land.
func TestConcurrentWatchesAndUpdates(t *testing.T) {
	c := newCache(t, services(abc))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch := make(chan cachev3.DeltaResponse, 20)
			var cancel func()
			for range 200 {
				if cancel != nil {
					cancel()
				}
				select {
				case <-ch:
				default:
				}
				req := &discoveryv3.DeltaDiscoveryRequest{Node: proxy(node.GRPC), TypeUrl: resourcev3.EndpointType}
				var err error
				cancel, err = c.CreateDeltaWatch(req, newDeltaSub(i), ch)
				if err != nil {
					t.Error(err)
					return
				}
			}
			cancel()
		}()
	}
	for i := range 100 {
		ip := "10.0.1." + string(rune('0'+i%10))
		mustUpdate(t, c, node.GRPC, services(map[string]string{"a": ip, "b": "10.0.0.2"}))
	}
	wg.Wait()
}

func newDeltaSub(i int) stream.Subscription {
	if i%2 == 0 {
		return stream.NewDeltaSubscription(nil, nil, nil, true)
	}
	return stream.NewDeltaSubscription([]string{"a"}, nil, nil, false)
}

// A change that lands between a response and its ACK is sent when the ACK
// comes, even though the ACK changes nothing about the subscription.
func TestDeltaChangeBeforeACKIsSent(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newDeltaClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b"}, nil, nil, "")
	eds.receive()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.7", "b": "10.0.0.2", "c": "10.0.0.3"}))
	eds.ack()
	out := eds.receive()
	if diff := cmp.Diff([]string{"a"}, deltaNames(out)); diff != "" {
		t.Errorf("after the ACK (-want +got):\n%s", diff)
	}
	// And an ACK with nothing new gets nothing.
	eds.ack()
	eds.none()
	// A change elsewhere before the next ACK does not confuse it either.
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.7", "b": "10.0.0.2", "c": "10.0.0.33"}))
	eds.ack()
	eds.none()
}
