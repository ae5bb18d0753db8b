package cache_test

import (
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"github.com/google/go-cmp/cmp"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func proxy(kind node.Kind) *corev3.Node {
	return node.Info{Namespace: "demo", Workload: "client", ServiceAccount: "default", Kind: kind}.Node()
}

func cluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ConnectTimeout:       durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			ResourceApiVersion:    corev3.ApiVersion_V3,
		}},
	}
}

func loadAssignment(name, ip string) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LoadBalancingWeight: wrapperspb.UInt32(1),
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address:       ip,
						PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080},
					}}},
				}},
			}},
		}},
	}
}

// services builds a cluster and a load assignment per service, the endpoint
// of each given by the map (service name -> IP).
func services(endpoints map[string]string) *translate.Resources {
	r := &translate.Resources{}
	for _, name := range slices.Sorted(maps.Keys(endpoints)) {
		r.Clusters = append(r.Clusters, cluster(name))
		r.Endpoints = append(r.Endpoints, loadAssignment(name, endpoints[name]))
	}
	return r
}

func mustUpdate(t testing.TB, c *cache.Cache, kind node.Kind, r *translate.Resources) cache.Stats {
	t.Helper()
	st, err := c.Update(kind, r)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	return st
}

// sotwClient drives the cache the way go-control-plane's state-of-the-world
// server does for one type of one stream: a new watch and channel per
// request, the subscription carried across requests, ReturnedResources
// recorded when a response is sent. The cache delivers synchronously inside
// CreateWatch and Update, so "no response" is checked without waiting.
type sotwClient struct {
	t       testing.TB
	c       *cache.Cache
	node    *corev3.Node
	typeURL string
	legacy  bool // legacy wildcard: true for LDS/CDS as the server is configured

	started bool
	sub     stream.Subscription
	names   []string
	ch      chan cachev3.Response
	cancel  func()
	acked   string // version_info of the next request
	nonce   string
	sent    int
}

func newSotwClient(t testing.TB, c *cache.Cache, kind node.Kind, typeURL string, legacy bool) *sotwClient {
	s := &sotwClient{t: t, c: c, node: proxy(kind), typeURL: typeURL, legacy: legacy}
	t.Cleanup(func() {
		if s.cancel != nil {
			s.cancel()
		}
	})
	return s
}

// request sends a request for names; a non-empty nack makes it a NACK of the
// last response.
func (s *sotwClient) request(names []string, nack string) {
	s.t.Helper()
	if s.cancel != nil {
		s.cancel()
	}
	if !s.started {
		s.sub = stream.NewSotwSubscription(names, s.legacy)
		s.started = true
	} else {
		s.sub.SetResourceSubscription(names)
	}
	s.names = names
	req := &discoveryv3.DiscoveryRequest{
		Node: s.node, TypeUrl: s.typeURL, ResourceNames: names,
		VersionInfo: s.acked, ResponseNonce: s.nonce,
	}
	if nack != "" {
		req.ErrorDetail = &statuspb.Status{Code: 3, Message: nack}
	}
	s.ch = make(chan cachev3.Response, 1)
	cancel, err := s.c.CreateWatch(req, s.sub, s.ch)
	if err != nil {
		s.t.Fatalf("CreateWatch: %v", err)
	}
	s.cancel = cancel
}

// receive takes the pending response, which must be there.
func (s *sotwClient) receive() *discoveryv3.DiscoveryResponse {
	s.t.Helper()
	select {
	case r := <-s.ch:
		out, err := r.GetDiscoveryResponse()
		if err != nil {
			s.t.Fatalf("GetDiscoveryResponse: %v", err)
		}
		s.sent++
		s.nonce = strconv.Itoa(s.sent)
		s.sub.SetReturnedResources(r.GetReturnedResources())
		return out
	default:
		s.t.Fatalf("%s: expected a response, got none", s.typeURL)
		return nil
	}
}

// none asserts that no response is pending.
func (s *sotwClient) none() {
	s.t.Helper()
	select {
	case r := <-s.ch:
		out, _ := r.GetDiscoveryResponse()
		s.t.Fatalf("%s: expected no response, got version %s with %d resources", s.typeURL, out.GetVersionInfo(), len(out.GetResources()))
	default:
	}
}

// ack acknowledges a response and keeps the same subscription.
func (s *sotwClient) ack(out *discoveryv3.DiscoveryResponse) {
	s.t.Helper()
	s.acked = out.GetVersionInfo()
	s.request(s.names, "")
}

// deltaClient drives the cache the way go-control-plane's delta server does
// for one type of one stream: one channel for the stream, the subscription
// updated with each request.
type deltaClient struct {
	t       testing.TB
	c       *cache.Cache
	node    *corev3.Node
	typeURL string
	legacy  bool

	started bool
	sub     stream.Subscription
	ch      chan cachev3.DeltaResponse
	cancel  func()
	nonce   string
	sent    int
}

func newDeltaClient(t testing.TB, c *cache.Cache, kind node.Kind, typeURL string, legacy bool) *deltaClient {
	d := &deltaClient{t: t, c: c, node: proxy(kind), typeURL: typeURL, legacy: legacy, ch: make(chan cachev3.DeltaResponse, 20)}
	t.Cleanup(func() {
		if d.cancel != nil {
			d.cancel()
		}
	})
	return d
}

func (d *deltaClient) request(subscribe, unsubscribe []string, initial map[string]string, nack string) {
	d.t.Helper()
	if d.cancel != nil {
		d.cancel()
	}
	if !d.started {
		d.sub = stream.NewDeltaSubscription(subscribe, unsubscribe, initial, d.legacy)
		d.started = true
	} else {
		d.sub.UpdateResourceSubscriptions(subscribe, unsubscribe)
	}
	req := &discoveryv3.DeltaDiscoveryRequest{
		Node: d.node, TypeUrl: d.typeURL,
		ResourceNamesSubscribe: subscribe, ResourceNamesUnsubscribe: unsubscribe,
		InitialResourceVersions: initial, ResponseNonce: d.nonce,
	}
	if nack != "" {
		req.ErrorDetail = &statuspb.Status{Code: 3, Message: nack}
	}
	cancel, err := d.c.CreateDeltaWatch(req, d.sub, d.ch)
	if err != nil {
		d.t.Fatalf("CreateDeltaWatch: %v", err)
	}
	d.cancel = cancel
}

func (d *deltaClient) receive() *discoveryv3.DeltaDiscoveryResponse {
	d.t.Helper()
	select {
	case r := <-d.ch:
		out, err := r.GetDeltaDiscoveryResponse()
		if err != nil {
			d.t.Fatalf("GetDeltaDiscoveryResponse: %v", err)
		}
		d.sent++
		d.nonce = strconv.Itoa(d.sent)
		d.sub.SetReturnedResources(r.GetReturnedResources())
		return out
	default:
		d.t.Fatalf("%s: expected a delta response, got none", d.typeURL)
		return nil
	}
}

func (d *deltaClient) none() {
	d.t.Helper()
	select {
	case r := <-d.ch:
		out, _ := r.GetDeltaDiscoveryResponse()
		d.t.Fatalf("%s: expected no delta response, got %v removed %v", d.typeURL, deltaNames(out), out.GetRemovedResources())
	default:
	}
}

// ack acknowledges the last response without changing the subscription.
func (d *deltaClient) ack() {
	d.t.Helper()
	d.request(nil, nil, nil, "")
}

func names(out *discoveryv3.DiscoveryResponse, decode func([]byte) string) []string {
	var n []string
	for _, a := range out.GetResources() {
		n = append(n, decode(a.GetValue()))
	}
	return n
}

func clusterName(b []byte) string {
	var c clusterv3.Cluster
	if err := proto.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	return c.GetName()
}

func claName(b []byte) string {
	var c endpointv3.ClusterLoadAssignment
	if err := proto.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	return c.GetClusterName()
}

func claIP(b []byte) string {
	var c endpointv3.ClusterLoadAssignment
	if err := proto.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	return c.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
}

func deltaNames(out *discoveryv3.DeltaDiscoveryResponse) []string {
	var n []string
	for _, r := range out.GetResources() {
		n = append(n, r.GetName())
	}
	return n
}

// fullSotw is what a new client subscribing to names is sent: the whole
// selection, its version, and the ReturnedResources the server records.
func fullSotw(t *testing.T, c *cache.Cache, typeURL string, names []string) (*discoveryv3.DiscoveryResponse, map[string]string) {
	t.Helper()
	s := newSotwClient(t, c, node.GRPC, typeURL, false)
	s.request(names, "")
	out := s.receive()
	return out, maps.Clone(s.sub.ReturnedResources())
}

// checkHolds asserts that a client's recorded ReturnedResources and last
// version are what a new client with the same subscription gets: what the
// next request is judged against is the whole selection, however little the
// response carried.
func checkHolds(t *testing.T, c *cache.Cache, s *sotwClient, out *discoveryv3.DiscoveryResponse) {
	t.Helper()
	want, wantReturned := fullSotw(t, c, s.typeURL, s.names)
	if out.GetVersionInfo() != want.GetVersionInfo() {
		t.Errorf("version %s, want the whole selection's %s", out.GetVersionInfo(), want.GetVersionInfo())
	}
	if diff := cmp.Diff(wantReturned, s.sub.ReturnedResources()); diff != "" {
		t.Errorf("ReturnedResources (-whole selection +got):\n%s", diff)
	}
}

// receiveChange takes the client's pending response, asserts it carries
// exactly the resources named want (decoded by name), and checks the client
// is recorded as holding its whole selection (see checkHolds).
func receiveChange(t *testing.T, c *cache.Cache, s *sotwClient, name func([]byte) string, want []string, what string) *discoveryv3.DiscoveryResponse {
	t.Helper()
	out := s.receive()
	if diff := cmp.Diff(want, names(out, name)); diff != "" {
		t.Errorf("%s (-want +got):\n%s", what, diff)
	}
	checkHolds(t, c, s, out)
	return out
}
