package translate

import (
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/xds/node"
)

// Mutual TLS only ever refers to credentials: Envoy's to the SDS secrets the
// pod-local agent serves on its socket, proxyless gRPC's to the certificate
// provider instance of its bootstrap (a file_watcher over the files the
// agent keeps fresh). No key or certificate is ever part of a resource, so a
// certificate rotation changes no cluster or listener.

// DefaultTrustDomain is the trust domain of SPIFFE IDs when Options names
// none; it is the certificate authority's default.
const DefaultTrustDomain = "cluster.local"

// Options are the mesh-wide settings of a translation that do not come from
// the mesh's objects.
type Options struct {
	// MTLS makes clients speak mutual TLS to every Service and verify its
	// SPIFFE IDs, and makes xDS-enabled gRPC servers require client
	// certificates.
	MTLS bool
	// TrustDomain is the trust domain of the SPIFFE IDs clients expect;
	// DefaultTrustDomain when empty.
	TrustDomain string
}

func (o Options) trustDomain() string {
	if o.TrustDomain == "" {
		return DefaultTrustDomain
	}
	return o.TrustDomain
}

// spiffeID is spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>,
// the URI SAN the certificate authority writes into every leaf (the certs
// package parses and validates it; this package only needs to produce it,
// and certs brings a clock and randomness a pure package must not import).
func spiffeID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

// peerIdentities are the SPIFFE IDs a client accepts from the backends of
// one Service port: those of the service accounts its endpoints' pods run
// as and those the Service declares, sorted and without duplicates. Empty
// when neither is known.
func peerIdentities(sp servicePort, trustDomain string) []string {
	var ids []string
	add := func(sa string) {
		if sa == "" {
			return
		}
		if id := spiffeID(trustDomain, sp.svc.Namespace, sa); !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	for _, sa := range sp.accounts {
		add(sa)
	}
	for _, e := range sp.port.Endpoints {
		add(e.ServiceAccount)
	}
	slices.Sort(ids)
	return ids
}

// sanMatchers accept exactly ids, or, when no identity of the destination
// is known, any identity of the trust domain: the connection is still
// authenticated by the mesh's roots and encrypted, but not bound to a
// service account. Binding to nothing would fail every request instead.
func sanMatchers(ids []string, trustDomain string) []*matcherv3.StringMatcher {
	if len(ids) == 0 {
		return []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + trustDomain + "/"}}}
	}
	ms := make([]*matcherv3.StringMatcher, len(ids))
	for i, id := range ids {
		ms[i] = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}
	}
	return ms
}

// tlsTransportSocket wraps a TLS context (Upstream or Downstream) as the
// transport socket both Envoy and gRPC recognise by name.
func tlsTransportSocket(ctx proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       wellknown.TransportSocketTLS,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(ctx)},
	}
}

// envoyUpstreamTLS is an Envoy cluster's client side: the workload's
// certificate and the trust bundle come from the agent over SDS; the peer
// must present one of ids as a URI SAN. SNI carries the destination host,
// for the server's logs and for TLS-inspecting middleboxes; nothing routes
// on it.
func envoyUpstreamTLS(host string, ids []string, trustDomain string) *corev3.TransportSocket {
	return tlsTransportSocket(&tlsv3.UpstreamTlsContext{
		Sni:              host,
		CommonTlsContext: envoySDSContext(sanMatchers(ids, trustDomain)),
	})
}

// envoySDSContext is the part of an Envoy TLS context both directions
// share: the workload's certificate is SDS secret SecretCertificate, the
// peer's chain is checked against SDS secret SecretRootCA, and the peer's
// URI SAN must match one of sans. The SAN matchers are static config
// (default_validation_context) combined with the dynamic roots, so a root
// rotation replaces the secret without touching the resource.
func envoySDSContext(sans []*matcherv3.StringMatcher) *tlsv3.CommonTlsContext {
	typedSANs := make([]*tlsv3.SubjectAltNameMatcher, len(sans))
	for i, m := range sans {
		typedSANs[i] = &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m}
	}
	return &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(bootstrap.SecretCertificate)},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: typedSANs},
				ValidationContextSdsSecretConfig: sdsSecret(bootstrap.SecretRootCA),
			},
		},
	}
}

// inboundALPN are the protocols the virtual inbound listener offers in
// ALPN, HTTP/2 first. The listener proxies bytes and speaks neither, so
// this only confirms to an ALPN-speaking client the protocol it will use
// with the workload: a client that offers one protocol (grpc-go's xDS
// client offers h2 and requires the server to choose it) gets that one, a
// client that offers none gets no ALPN and speaks what it was configured
// to. "If empty, Envoy will not expose ALPN"
// (CommonTlsContext.alpn_protocols), which would fail gRPC clients.
var inboundALPN = []string{"h2", "http/1.1"}

// envoyDownstreamTLS is the virtual inbound listener's server side of
// mutual TLS: the workload's certificate and roots from the agent's SDS
// secrets, exactly as in envoyUpstreamTLS. require_client_certificate
// makes Envoy "reject connections without a valid client certificate"
// (DownstreamTlsContext), and the SAN matcher then admits any identity of
// the trust domain: the listener is shared by every sidecar and has no
// per-port policy, so which callers may reach what is authorization, not
// decided here. TLS 1.2 is the lowest version accepted and 1.3 the
// highest, so two Envoys always agree on 1.3; these are Envoy's server
// defaults, written out so that a change of default cannot weaken a mesh
// silently.
func envoyDownstreamTLS(trustDomain string) *corev3.TransportSocket {
	common := envoySDSContext(sanMatchers(nil, trustDomain))
	common.TlsParams = &tlsv3.TlsParameters{
		TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2,
		TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
	}
	common.AlpnProtocols = inboundALPN
	return tlsTransportSocket(&tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext:         common,
	})
}

// sdsSecret refers to one of the agent's secrets, fetched over gRPC through
// the bootstrap's SDSCluster.
func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{
		Name: name,
		SdsConfig: &corev3.ConfigSource{
			ResourceApiVersion: corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
				ApiType:                   corev3.ApiConfigSource_GRPC,
				TransportApiVersion:       corev3.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: bootstrap.SDSCluster}},
				}},
			}},
		},
	}
}

// grpcProvider refers to the certificate provider of the gRPC bootstrap.
func grpcProvider() *tlsv3.CertificateProviderPluginInstance {
	return &tlsv3.CertificateProviderPluginInstance{InstanceName: bootstrap.CertProviderInstance}
}

// grpcUpstreamTLS is a proxyless gRPC cluster's client side. gRPC accepts
// only certificate provider instances (SDS and inline material are
// NACKed), and reads SAN matchers only from match_subject_alt_names, which
// it compares with every SAN of the peer's leaf, URIs included.
func grpcUpstreamTLS(ids []string, trustDomain string) *corev3.TransportSocket {
	return tlsTransportSocket(&tlsv3.UpstreamTlsContext{
		CommonTlsContext: grpcProviderContext(sanMatchers(ids, trustDomain)),
	})
}

// grpcProviderContext takes the workload's certificate and the roots from
// the bootstrap's certificate provider; sans, if any, restrict the peer.
func grpcProviderContext(sans []*matcherv3.StringMatcher) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: grpcProvider(),
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CaCertificateProviderInstance: grpcProvider(),
			MatchSubjectAltNames:          sans,
		}},
	}
}

// grpcDownstreamTLS is an xDS-enabled gRPC server's side: its certificate,
// and a client certificate chaining to the bundle is required. gRPC NACKs
// SAN matchers on the server, so which clients may call is not decided
// here.
func grpcDownstreamTLS() *corev3.TransportSocket {
	return tlsTransportSocket(&tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext:         grpcProviderContext(nil),
	})
}

// grpcServerListeners are the listeners xDS-enabled gRPC servers ask for,
// named by ServerListenerName after the address the server listens on,
// which gRPC also requires in the listener's address: those of
// ServerAddresses for the endpoints of every Service port.
func grpcServerListeners(m *policy.Mesh, opts Options) []*listenerv3.Listener {
	if m == nil {
		return nil
	}
	var addrs []ServerAddress
	for i := range m.Services {
		for j := range m.Services[i].Ports {
			addrs = ServerAddresses(addrs, m.Services[i].Ports[j].Endpoints)
		}
	}
	return ServerListeners(addrs, opts)
}

// ServerAddress is an address and port an xDS-enabled gRPC server may
// listen on, and so the identity of one server listener.
type ServerAddress struct {
	Address string
	Port    int32
}

// Name is the server listener's name, ServerListenerName of the address.
func (a ServerAddress) Name() string { return ServerListenerName(a.Address, a.Port) }

// ServerAddresses appends to dst the server listener addresses the
// endpoints eps of one Service port call for, one entry per endpoint and
// listener, repeats included:
//   - the endpoint's address and port, ready or not (a starting server
//     serves only once it has its listener, so it could never become ready
//     otherwise), for servers bound to their pod IP;
//   - 0.0.0.0 and :: with the endpoint's port, for servers bound to all
//     addresses (Go's ":port" listens on [::]), which is how most servers
//     listen in a pod.
//
// A server's config is the same whichever Service selects it, so an
// address that several Service ports call for is one listener. Counting
// the repeats is what lets the control plane's endpoint fast path tell when
// the last port calling for a listener stops doing so.
func ServerAddresses(dst []ServerAddress, eps []policy.Endpoint) []ServerAddress {
	for _, e := range eps {
		dst = append(dst,
			ServerAddress{Address: e.Address, Port: e.Port},
			ServerAddress{Address: "0.0.0.0", Port: e.Port},
			ServerAddress{Address: "::", Port: e.Port})
	}
	return dst
}

// ServerListeners builds one server listener per distinct name among
// addrs, sorted by name, as Translate does for proxyless gRPC. All of them
// share one filter chain, built and marshalled once: a mesh has about as
// many of these listeners as endpoints.
func ServerListeners(addrs []ServerAddress, opts Options) []*listenerv3.Listener {
	if len(addrs) == 0 {
		return nil
	}
	chain := grpcServerFilterChain(opts.MTLS)
	seen := map[string]bool{}
	var out []*listenerv3.Listener
	for _, a := range addrs {
		name := a.Name()
		if seen[name] {
			continue
		}
		seen[name] = true
		out = append(out, &listenerv3.Listener{
			Name:             name,
			Address:          socketAddress(a.Address, uint32(a.Port)),
			TrafficDirection: corev3.TrafficDirection_INBOUND,
			FilterChains:     []*listenerv3.FilterChain{chain},
		})
	}
	sortByName(out)
	return out
}

// grpcServerFilterChain accepts every RPC: gRPC requires a route
// configuration on a server listener and serves only routes whose action is
// non_forwarding_action. Without mTLS there is no transport socket, and
// the server uses its fallback (plaintext) credentials.
func grpcServerFilterChain(mtls bool) *listenerv3.FilterChain {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: grpcServerChainName,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: grpcServerChainName,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    grpcServerChainName,
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
				}},
			}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{routerFilter()},
	}
	chain := &listenerv3.FilterChain{
		Name: grpcServerChainName,
		Filters: []*listenerv3.Filter{{
			Name:       wellknown.HTTPConnectionManager,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(hcm)},
		}},
	}
	if mtls {
		chain.TransportSocket = grpcDownstreamTLS()
	}
	return chain
}

// grpcServerChainName names the filter chain of gRPC server listeners and
// the parts of it that need a name.
const grpcServerChainName = "inbound"

// upstreamTLS is the transport socket of the cluster of sp for kind; nil
// for a kind without mTLS support.
func upstreamTLS(kind node.Kind, sp servicePort, opts Options) *corev3.TransportSocket {
	ids := peerIdentities(sp, opts.trustDomain())
	switch kind {
	case node.Envoy:
		return envoyUpstreamTLS(Host(sp.svc), ids, opts.trustDomain())
	case node.GRPC:
		return grpcUpstreamTLS(ids, opts.trustDomain())
	}
	return nil
}
