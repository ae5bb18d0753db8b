package server

import (
	"context"
	"errors"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fjordmesh/fjord/xds/node"
)

// port serves the xDS services on one gRPC server. trustDomain is empty on
// the plaintext port; on the secure port every stream and fetch must
// authenticate in it.
type port struct {
	s           *Server
	trustDomain string
}

var (
	_ discoveryv3.AggregatedDiscoveryServiceServer   = (*port)(nil)
	_ clusterservice.ClusterDiscoveryServiceServer   = (*port)(nil)
	_ endpointservice.EndpointDiscoveryServiceServer = (*port)(nil)
	_ listenerservice.ListenerDiscoveryServiceServer = (*port)(nil)
	_ routeservice.RouteDiscoveryServiceServer       = (*port)(nil)
)

func (p *port) register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, p)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, p)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, p)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, p)
	routeservice.RegisterRouteDiscoveryServiceServer(g, p)
}

// legacyWildcard says whether a first request naming nothing subscribes to
// every resource of the type: only for listeners and clusters, the roots
// Envoy discovers that way. Routes and endpoints are always asked for by
// name; an empty request for them subscribes to nothing, never to every
// route in the mesh.
func legacyWildcard(typeURL string) bool {
	return typeURL != resourcev3.EndpointType && typeURL != resourcev3.RouteType
}

func (p *port) StreamAggregatedResources(st sotwServerStream) error {
	return p.streamSotw(st, "")
}

func (p *port) DeltaAggregatedResources(st deltaServerStream) error {
	return p.streamDelta(st, "")
}

func (p *port) StreamClusters(st sotwServerStream) error {
	return p.streamSotw(st, resourcev3.ClusterType)
}

func (p *port) DeltaClusters(st deltaServerStream) error {
	return p.streamDelta(st, resourcev3.ClusterType)
}

func (p *port) FetchClusters(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	return p.fetch(ctx, req, resourcev3.ClusterType)
}

func (p *port) StreamEndpoints(st sotwServerStream) error {
	return p.streamSotw(st, resourcev3.EndpointType)
}

func (p *port) DeltaEndpoints(st deltaServerStream) error {
	return p.streamDelta(st, resourcev3.EndpointType)
}

func (p *port) FetchEndpoints(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	return p.fetch(ctx, req, resourcev3.EndpointType)
}

func (p *port) StreamListeners(st sotwServerStream) error {
	return p.streamSotw(st, resourcev3.ListenerType)
}

func (p *port) DeltaListeners(st deltaServerStream) error {
	return p.streamDelta(st, resourcev3.ListenerType)
}

func (p *port) FetchListeners(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	return p.fetch(ctx, req, resourcev3.ListenerType)
}

func (p *port) StreamRoutes(st sotwServerStream) error {
	return p.streamSotw(st, resourcev3.RouteType)
}

func (p *port) DeltaRoutes(st deltaServerStream) error {
	return p.streamDelta(st, resourcev3.RouteType)
}

func (p *port) FetchRoutes(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	return p.fetch(ctx, req, resourcev3.RouteType)
}

// fetch answers a one-shot request from the cache's current content, after
// checking its node, on the secure port against the caller's certificate.
// A request at the current version gets the cache's SkipFetchError.
func (p *port) fetch(ctx context.Context, req *discoveryv3.DiscoveryRequest, typeURL string) (*discoveryv3.DiscoveryResponse, error) {
	peer, err := p.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	req.TypeUrl = typeURL
	info, err := node.FromNode(req.GetNode())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "node identity: %v", err)
	}
	if err := p.s.authorize(peer, info, req.GetNode(), typeURL); err != nil {
		return nil, err
	}
	resp, err := p.s.cache.Fetch(ctx, req)
	if err != nil {
		return nil, err
	}
	if resp == nil {
		return nil, errors.New("xds fetch: the cache gave no response")
	}
	return resp.GetDiscoveryResponse()
}
