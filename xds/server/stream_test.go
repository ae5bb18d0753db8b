package server_test

import (
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fjordmesh/fjord/xds/node"
)

// sotwStream plays a state-of-the-world client on a raw ADS stream.
type sotwStream struct {
	t *testing.T
	s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
}

func openSotw(t *testing.T, cp *controlPlane) *sotwStream {
	t.Helper()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cp.dial(t)).StreamAggregatedResources(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	return &sotwStream{t: t, s: s}
}

func (c *sotwStream) send(req *discoveryv3.DiscoveryRequest) {
	c.t.Helper()
	if err := c.s.Send(req); err != nil {
		c.t.Fatalf("send %s: %v", req.GetTypeUrl(), err)
	}
}

// recv receives the next response and checks its type and the names of
// the load assignments (or other resources) it carries.
func (c *sotwStream) recv(typeURL string, want []string) *discoveryv3.DiscoveryResponse {
	c.t.Helper()
	out, err := c.s.Recv()
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	got := namesOf(c.t, out)
	if out.GetTypeUrl() != typeURL {
		c.t.Fatalf("next response is %s %v, want %s %v", short(out.GetTypeUrl()), got, short(typeURL), want)
	}
	if want != nil {
		if diff := cmp.Diff(want, got); diff != "" {
			c.t.Errorf("%s resources (-want +got):\n%s", short(typeURL), diff)
		}
	}
	return out
}

// ack acknowledges out, naming names.
func (c *sotwStream) ack(out *discoveryv3.DiscoveryResponse, names ...string) {
	c.t.Helper()
	c.send(&discoveryv3.DiscoveryRequest{TypeUrl: out.GetTypeUrl(), ResourceNames: names, VersionInfo: out.GetVersionInfo(), ResponseNonce: out.GetNonce()})
}

// barrier subscribes to the clusters by name and expects their response
// next: the stream serves its requests and the cache's responses in order,
// so anything a request before it made the server send would come first.
func (c *sotwStream) barrier(clusters ...string) {
	c.t.Helper()
	c.send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNames: clusters})
	c.ack(c.recv(resourcev3.ClusterType, clusters), clusters...)
}

// namesOf lists the resource names a state-of-the-world response carries.
func namesOf(t *testing.T, out *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var names []string
	for _, a := range out.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		switch r := m.(type) {
		case *endpointv3.ClusterLoadAssignment:
			names = append(names, r.GetClusterName())
		case *clusterv3.Cluster:
			names = append(names, r.GetName())
		default:
			t.Fatalf("unexpected %s in a response", a.GetTypeUrl())
		}
	}
	return names
}

// TestSotwStaleRequestIgnored: a request that does not carry the nonce of
// the type's last response is not applied, even when it changes the
// subscription; the one answering the last response is.
func TestSotwStaleRequestIgnored(t *testing.T) {
	cp := startControlPlane(t)
	eps := map[string]string{"a": "10.0.0.1:8080", "b": "10.0.0.2:8080", "c": "10.0.0.3:8080"}
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b", "c"))
	c := openSotw(t, cp)
	c.send(&discoveryv3.DiscoveryRequest{Node: envoySidecar.Node(), TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"a"}})
	first := c.recv(resourcev3.EndpointType, []string{"a"})
	c.ack(first, "a")

	eps["a"] = "10.0.0.11:8080"
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b", "c"))
	second := c.recv(resourcev3.EndpointType, []string{"a"})

	// Stale: it answers the first response, not the second.
	c.ack(first, "a", "b")
	c.barrier("c")
	// The current one is applied: b is sent.
	c.ack(second, "a", "b")
	c.recv(resourcev3.EndpointType, []string{"b"})
}

// TestSotwNACKIsNotAnsweredAgain: a NACK is counted and logged, and the
// rejected content is not sent again; new content is.
func TestSotwNACKIsNotAnsweredAgain(t *testing.T) {
	cp := startControlPlane(t)
	eps := map[string]string{"a": "10.0.0.1:8080", "b": "10.0.0.2:8080"}
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b"))
	c := openSotw(t, cp)
	c.send(&discoveryv3.DiscoveryRequest{Node: envoySidecar.Node(), TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"a"}})
	rejected := c.recv(resourcev3.EndpointType, []string{"a"})
	c.send(&discoveryv3.DiscoveryRequest{
		TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"a"}, ResponseNonce: rejected.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "rejected by test"},
	})
	// Were the NACK answered, that response would come before the barrier's.
	c.barrier("b")
	if got := cp.metric(t, "fjord_xds_nacks_total", "type", "endpoint"); got != 1 {
		t.Errorf("endpoint NACKs = %v, want 1", got)
	}

	eps["a"] = "10.0.0.11:8080"
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b"))
	if next := c.recv(resourcev3.EndpointType, []string{"a"}); next.GetVersionInfo() == rejected.GetVersionInfo() {
		t.Error("the new content has the rejected version")
	}
}

// TestSotwUnsubscribeByOmission: a name left out of a request is no longer
// served; named again, it is sent again although it has not changed.
func TestSotwUnsubscribeByOmission(t *testing.T) {
	cp := startControlPlane(t)
	eps := map[string]string{"a": "10.0.0.1:8080", "b": "10.0.0.2:8080", "c": "10.0.0.3:8080"}
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b", "c"))
	c := openSotw(t, cp)
	c.send(&discoveryv3.DiscoveryRequest{Node: envoySidecar.Node(), TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"a", "b"}})
	out := c.recv(resourcev3.EndpointType, []string{"a", "b"})
	c.ack(out, "a", "b")
	// Dropping b needs no response: the client holds a.
	c.ack(out, "a")
	c.barrier("c")

	// A change to b alone is not pushed; one to a is, and only a.
	eps["b"] = "10.0.0.12:8080"
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b", "c"))
	eps["a"] = "10.0.0.11:8080"
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b", "c"))
	out = c.recv(resourcev3.EndpointType, []string{"a"})
	c.ack(out, "a")

	// Named again, b is sent again.
	c.ack(out, "a", "b")
	if got := namesOf(t, c.recv(resourcev3.EndpointType, nil)); !slices.Contains(got, "b") {
		t.Errorf("subscribing to b again sent %v, want b among them", got)
	}
}

// TestDeltaInitialVersionsAndRemovals: a reconnecting delta client is sent
// only what it holds at another version, and the removal of what it holds
// that no longer exists; unsubscribing and removals follow.
func TestDeltaInitialVersionsAndRemovals(t *testing.T) {
	cp := startControlPlane(t)
	eps := map[string]string{"a": "10.0.0.1:8080", "b": "10.0.0.2:8080", "c": "10.0.0.3:8080"}
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b", "c"))

	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cp.dial(t))
	s, err := ads.DeltaAggregatedResources(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	d := &deltaStream{t: t, s: s}
	d.send(&discoveryv3.DeltaDiscoveryRequest{Node: envoySidecar.Node(), TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"a", "b"}})
	out := d.recv()
	held := map[string]string{}
	for _, r := range out.GetResources() {
		held[r.GetName()] = r.GetVersion()
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}

	// The control plane moves b while the client is away; it reconnects
	// holding a and b at the old versions and a "gone" it once had.
	eps["b"] = "10.0.0.12:8080"
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b", "c"))
	held["gone"] = "0123456789abcdef"
	s, err = ads.DeltaAggregatedResources(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	d = &deltaStream{t: t, s: s}
	d.send(&discoveryv3.DeltaDiscoveryRequest{
		Node: envoySidecar.Node(), TypeUrl: resourcev3.EndpointType,
		ResourceNamesSubscribe: []string{"a", "b", "gone"}, InitialResourceVersions: held,
	})
	d.expect(resourcev3.EndpointType, []string{"b"}, []string{"gone"})

	// Unsubscribed, a is not pushed; subscribed again, it is sent.
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesUnsubscribe: []string{"a", "gone"}})
	// Requests are served in order: once the clusters asked for next are
	// there, the unsubscription has been applied.
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{"c"}})
	d.expect(resourcev3.ClusterType, []string{"c"}, nil)
	eps["a"] = "10.0.0.11:8080"
	eps["b"] = "10.0.0.22:8080"
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "b", "c"))
	d.expect(resourcev3.EndpointType, []string{"b"}, nil)
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"a"}})
	d.expect(resourcev3.EndpointType, []string{"a"}, nil)

	// b removed from the mesh: its removal is sent.
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a", "c"))
	d.expect(resourcev3.EndpointType, nil, []string{"b"})
}

// TestPerTypeStreams: the per-type services serve their own type, both
// protocols, and refuse a request for another type.
func TestPerTypeStreams(t *testing.T) {
	cp := startControlPlane(t)
	eps := map[string]string{"a": "10.0.0.1:8080"}
	update(t, cp.cache, node.Envoy, sidecarServices(t, eps, "a"))
	eds := endpointservice.NewEndpointDiscoveryServiceClient(cp.dial(t))

	s, err := eds.StreamEndpoints(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	// The type URL may be left out on a per-type stream.
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: envoySidecar.Node(), ResourceNames: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	out, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if out.GetTypeUrl() != resourcev3.EndpointType || len(out.GetResources()) != 1 {
		t.Fatalf("EDS answered %s with %d resources, want one load assignment", out.GetTypeUrl(), len(out.GetResources()))
	}
	_ = s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a cluster request on the EDS stream ended it with %v, want InvalidArgument", err)
	}

	d, err := eds.DeltaEndpoints(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(&discoveryv3.DeltaDiscoveryRequest{Node: envoySidecar.Node(), ResourceNamesSubscribe: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	dout, err := d.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if dout.GetTypeUrl() != resourcev3.EndpointType || len(dout.GetResources()) != 1 || dout.GetResources()[0].GetName() != "a" {
		t.Errorf("delta EDS answered %s with %v, want load assignment a", dout.GetTypeUrl(), dout.GetResources())
	}
	// An empty first request for endpoints subscribes to nothing.
	d2, err := eds.DeltaEndpoints(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Send(&discoveryv3.DeltaDiscoveryRequest{Node: envoySidecar.Node()}); err != nil {
		t.Fatal(err)
	}
	if err := d2.Send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	if dout, err = d2.Recv(); err != nil {
		t.Fatal(err)
	}
	if len(dout.GetResources()) != 1 || dout.GetResources()[0].GetName() != "a" {
		t.Errorf("first delta EDS response %v, want only a (an empty request is no wildcard for endpoints)", dout.GetResources())
	}
}
