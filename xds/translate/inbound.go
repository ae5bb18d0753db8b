package translate

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
)

// A sidecar's inbound side is one listener and one cluster that are the
// same for every Envoy in the mesh, the way Istio handles inbound traffic
// on ports it has no Service for: iptables redirects every connection to
// the pod to VirtualInboundPort, the listener restores the connection's
// original destination and (with mTLS) terminates mutual TLS, and the
// connection goes on, in plaintext, to that same destination — the
// workload — through InboundPassthroughClusterName. Nothing in it names a
// Service, an endpoint or a certificate, so neither the mesh's changes nor
// a certificate rotation ever change it.

// Filter chain names of the virtual inbound listener, also the stat
// prefixes of their TCP proxies (tcp.<prefix>.* in Envoy's stats), so the
// stats say which kind of connection they count.
const (
	inboundMTLSChainName      = "inbound_mtls"
	inboundPlaintextChainName = "inbound_plaintext"
)

// envoyInbound is a sidecar's inbound side: the virtual inbound listener
// and the cluster it forwards to.
func envoyInbound(opts Options) (*listenerv3.Listener, *clusterv3.Cluster) {
	return virtualInboundListener(opts), inboundPassthroughCluster()
}

// virtualInboundListener receives every inbound connection iptables
// redirects to the sidecar.
//
// The original_dst listener filter "reads the SO_ORIGINAL_DST socket option
// set when a connection has been redirected by an iptables REDIRECT target"
// and makes the restored destination the connection's local address, which
// the ORIGINAL_DST cluster then connects to (Envoy docs, listener filters,
// Original Destination). It is configured explicitly rather than through
// use_original_dst, as on the virtual outbound listener: use_original_dst
// "hands off redirected connections to the listener associated with the
// original destination address" (Listener.use_original_dst), and the
// outbound port listeners (0.0.0.0_<port>, which match every IP) would
// then take inbound connections to their port.
//
// Without mTLS the listener passes every connection through untouched,
// whatever it carries, as an Istio sidecar does with mTLS disabled: the
// iptables rules that capture inbound traffic need not depend on the
// control plane's --mtls flag, and switching it changes one filter chain,
// not whether the pod can be reached. It has no TLS inspector then, since
// nothing is matched on, and a listener filter that waits for the client's
// first bytes would stall protocols where the server speaks first.
//
// With mTLS the tls_inspector listener filter detects "whether the
// transport appears to be TLS or plaintext" (Envoy docs, TLS Inspector),
// which the only filter chain's transport_protocol "tls" match requires.
// A plaintext connection matches no chain and Envoy closes it (counted in
// the listener's no_filter_chain_match stat): plaintext is refused, not
// let through, and there is no default_filter_chain.
func virtualInboundListener(opts Options) *listenerv3.Listener {
	l := &listenerv3.Listener{
		Name:             VirtualInboundListenerName,
		Address:          socketAddress("0.0.0.0", VirtualInboundPort),
		TrafficDirection: corev3.TrafficDirection_INBOUND,
		ListenerFilters:  []*listenerv3.ListenerFilter{listenerFilter(wellknown.OriginalDestination, &originaldstv3.OriginalDst{})},
	}
	if !opts.MTLS {
		l.FilterChains = []*listenerv3.FilterChain{inboundChain(inboundPlaintextChainName)}
		return l
	}
	l.ListenerFilters = append(l.ListenerFilters, listenerFilter(wellknown.TlsInspector, &tlsinspectorv3.TlsInspector{}))
	chain := inboundChain(inboundMTLSChainName)
	chain.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "tls"}
	chain.TransportSocket = envoyDownstreamTLS(opts.trustDomain())
	l.FilterChains = []*listenerv3.FilterChain{chain}
	return l
}

// inboundChain is a filter chain that proxies the connection's bytes to
// the inbound passthrough cluster; its name is also the TCP proxy's stat
// prefix.
func inboundChain(name string) *listenerv3.FilterChain {
	return tcpProxyChain(name, InboundPassthroughClusterName)
}

// tcpProxyChain is a filter chain named name that proxies the connection's
// bytes to cluster, with name as the TCP proxy's stat prefix.
func tcpProxyChain(name, cluster string) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{
		Name: name,
		Filters: []*listenerv3.Filter{{
			Name: wellknown.TCPProxy,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(&tcpproxyv3.TcpProxy{
				StatPrefix:       name,
				ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
			})},
		}},
	}
}

// listenerFilter packs a listener filter's config under its well-known
// name.
func listenerFilter(name string, config proto.Message) *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{
		Name:       name,
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: typed(config)},
	}
}

// inboundPassthroughCluster carries inbound connections to the workload.
//
// ORIGINAL_DST with the CLUSTER_PROVIDED load balancer opens each
// connection "to the same address as the destination address of the
// incoming connection was before the connection was redirected to Envoy"
// (Envoy docs, Original destination load balancer): the pod's own address
// and the port the client called, which the kernel delivers over the
// loopback interface because the address is local. The application sees
// the port it listens on, whichever Service (or none) the client used.
//
// upstream_bind_config binds those connections to
// InboundPassthroughSourceAddress, as Istio's inbound passthrough cluster
// does: they are new outbound connections of the sidecar, and without a
// source address the pod's iptables rules can tell apart they would be
// redirected to the sidecar again, looping. 127.0.0.6 needs no setup (the
// whole of 127.0.0.0/8 is the loopback interface's) and is not 127.0.0.1,
// which the application's own loopback traffic uses.
func inboundPassthroughCluster() *clusterv3.Cluster {
	c := passthroughCluster()
	c.Name = InboundPassthroughClusterName
	c.UpstreamBindConfig = &corev3.BindConfig{SourceAddress: &corev3.SocketAddress{
		Address:       InboundPassthroughSourceAddress,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0},
	}}
	return c
}
