package server

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	cplog "github.com/envoyproxy/go-control-plane/pkg/log"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/config"
	sotw "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/fjordmesh/fjord/xds/cache"
)

// Server serves one cache to every proxy, on a plaintext port (Register)
// and on the authenticated secure port (RegisterAuthenticated).
type Server struct {
	xds     serverv3.Server
	cache   *cache.Cache
	ctx     context.Context
	log     *slog.Logger
	metrics *metrics
	stop    context.CancelFunc
	names   *interner

	mu      sync.Mutex
	streams map[streamKey]*stream
}

// New builds a server over c and registers its metrics on reg (nil: not
// registered). Registering twice on one registry panics, as with any
// collector.
func New(c *cache.Cache, reg prometheus.Registerer, log *slog.Logger) *Server {
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{
		cache:   c,
		ctx:     ctx,
		log:     log,
		metrics: newMetrics(reg),
		stop:    stop,
		names:   newInterner(internLimit),
		streams: map[streamKey]*stream{},
	}
	s.xds = s.newXDS(callbacks{s: s})
	return s
}

// newXDS is a go-control-plane server over the cache reporting to cb. Each
// port has its own, so its callbacks know how the stream came in.
func (s *Server) newXDS(cb serverv3.Callbacks) serverv3.Server {
	log := s.log
	return serverv3.NewServer(s.ctx, s.cache, cb,
		// One response channel per ADS stream, so a change reaches the proxy
		// in the order the cache emits it: clusters, endpoints, listeners,
		// routes, which lets a new cluster warm before a route uses it.
		sotw.WithOrderedADS(),
		// A first request naming nothing is a wildcard only for listeners
		// and clusters, the roots Envoy discovers that way. Routes and
		// endpoints are always asked for by name; an empty request for them
		// subscribes to nothing, never to every route in the mesh.
		config.DeactivateLegacyWildcardForTypes([]string{resourcev3.EndpointType, resourcev3.RouteType}),
		// The library's own messages are per-request chatter (stale nonces,
		// new subscriptions): debug, except its warnings and errors.
		sotw.WithLogger(cplog.LoggerFuncs{
			DebugFunc: func(f string, a ...any) { log.Debug(fmt.Sprintf(f, a...)) },
			InfoFunc:  func(f string, a ...any) { log.Debug(fmt.Sprintf(f, a...)) },
			WarnFunc:  func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...)) },
			ErrorFunc: func(f string, a ...any) { log.Error(fmt.Sprintf(f, a...)) },
		}),
	)
}

// Register adds the aggregated service (state-of-the-world and delta) and
// the per-type cluster, endpoint, listener and route services to g.
// Streams there are not authenticated: it is the development port.
func (s *Server) Register(g *grpc.Server) {
	register(g, s.xds)
}

// RegisterAuthenticated adds the same services to g, the secure port, whose
// TLS config verifies client certificates against the mesh's CA bundle
// (certs.Serving). There every stream and fetch must present a certificate
// with a SPIFFE ID in trustDomain (else Unauthenticated), and the node's
// namespace and service account must be the certificate's (else
// PermissionDenied); the node is pinned for the stream's life, so the
// binding holds for all of it. Refusals are logged and counted in
// fjord_xds_auth_failures_total{reason}.
func (s *Server) RegisterAuthenticated(g *grpc.Server, trustDomain string) {
	register(g, s.newXDS(callbacks{s: s, trustDomain: trustDomain}))
}

func register(g *grpc.Server, x serverv3.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, x)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, x)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, x)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, x)
	routeservice.RegisterRouteDiscoveryServiceServer(g, x)
}

// Close ends every open stream (the proxies reconnect elsewhere or later).
// xDS streams never end on their own, so call it before
// grpc.Server.GracefulStop, which would otherwise wait for them forever.
func (s *Server) Close() {
	s.stop()
}

// GRPCOptions are the gRPC server options xDS serving needs on a plaintext
// port (TLSGRPCOptions on a TLS one).
//
// Keepalive: the server pings an idle connection after 30 s and drops it if
// no answer comes within 10 s, so a proxy that vanished (node lost, network
// partition) stops counting as connected and its watches are released within
// a minute. Clients may ping as often as every 10 s, also without an open
// stream: Envoy bootstraps commonly use 30 s or more, grpc-go's xDS client
// uses 5 min; anything stricter would make the server answer a legitimate
// proxy with GOAWAY "too_many_pings". There is no maximum connection age:
// every reconnect costs a resync, and one control plane instance gains
// nothing from rebalancing.
func GRPCOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second,
			Timeout: 10 * time.Second,
		}),
	}
}

// TLSGRPCOptions are GRPCOptions for a port whose connections are TLS. They
// turn off gRPC's 32 KB read buffer, which every connection would otherwise
// keep for its life: gRPC pools that buffer only on plain TCP connections,
// and on a TLS one crypto/tls already holds each record it decrypts, so the
// buffer would only copy records a second time. Without it a connected
// proxy costs about 33 KB less (BenchmarkSecureStreamMemory); the price is a
// few more Read calls per frame, served from the record crypto/tls holds, for
// requests that are small and few. Writes need no such option: gRPC shares
// its write buffers between connections.
func TLSGRPCOptions() []grpc.ServerOption {
	return append(GRPCOptions(), grpc.ReadBufferSize(0))
}
