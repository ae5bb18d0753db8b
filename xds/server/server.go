package server

import (
	"context"
	"log/slog"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/fjordmesh/fjord/xds/cache"
)

// Server serves one cache to every proxy, on a plaintext port (Register)
// and on the authenticated secure port (RegisterAuthenticated).
type Server struct {
	// cache is the xds/cache Cache; tests put a recorder in front of it.
	cache   cachev3.Cache
	ctx     context.Context
	log     *slog.Logger
	metrics *metrics
	stop    context.CancelFunc
	names   *interner
}

// New builds a server over c and registers its metrics on reg (nil: not
// registered). Registering twice on one registry panics, as with any
// collector.
func New(c *cache.Cache, reg prometheus.Registerer, log *slog.Logger) *Server {
	return newServer(c, reg, log)
}

func newServer(c cachev3.Cache, reg prometheus.Registerer, log *slog.Logger) *Server {
	ctx, stop := context.WithCancel(context.Background())
	return &Server{
		cache:   c,
		ctx:     ctx,
		log:     log,
		metrics: newMetrics(reg),
		stop:    stop,
		names:   newInterner(internLimit),
	}
}

// Register adds the aggregated service (state-of-the-world and delta) and
// the per-type cluster, endpoint, listener and route services to g.
// Streams there are not authenticated: it is the development port.
func (s *Server) Register(g *grpc.Server) {
	(&port{s: s}).register(g)
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
	(&port{s: s, trustDomain: trustDomain}).register(g)
}

// Close ends every open stream (the proxies reconnect elsewhere or later),
// cancelling its watches; streams opened afterwards end at once. xDS
// streams never end on their own, so call it before
// grpc.Server.GracefulStop, which would otherwise wait for them forever.
func (s *Server) Close() {
	s.stop()
}

// receiveWindow is the fixed HTTP/2 receive window of every xDS stream and
// connection (see GRPCOptions).
const receiveWindow = 1 << 20

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
//
// Requests are decoded with codec, which hands a state-of-the-world request
// naming a list of resources some stream has sent before the shared copy of
// that list, and a request carrying a node seen before the shared copy of
// that node, instead of decoding them again.
//
// Flow control: every stream and connection gets a fixed 1 MiB receive
// window. gRPC's default starts at 64 KiB and estimates bandwidth with a
// ping per burst of data; a state-of-the-world Envoy's ACK names every
// resource it holds (40 KB at 1,000 clusters), so with the default most
// ACKs drew a window update and a ping, each a frame, a write and a wakeup
// on both ends. A fixed window turns the estimation off. It bounds only
// how much a client may send ahead of the server reading it, which for an
// xDS client is one request at a time.
func GRPCOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(newCodec()),
		grpc.InitialWindowSize(receiveWindow),
		grpc.InitialConnWindowSize(receiveWindow),
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
