package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fjordmesh/fjord/xds/node"
)

// envoyOutbound builds a sidecar's outbound side: the virtual outbound
// listener, and per Service port number one listener and one route
// configuration shared by every Service with that port number.
//
// A port equal to VirtualOutboundPort or VirtualInboundPort gets neither:
// Envoy cannot hold two listeners on 0.0.0.0:15001 (or :15006), and
// connections to such a port still reach their destination through the
// passthrough chain.
func envoyOutbound(ports []servicePort) ([]*listenerv3.Listener, []*routev3.RouteConfiguration) {
	byPort := make(map[int32][]servicePort)
	for _, sp := range ports {
		if sp.port.Port != VirtualOutboundPort && sp.port.Port != VirtualInboundPort {
			byPort[sp.port.Port] = append(byPort[sp.port.Port], sp)
		}
	}
	listeners := []*listenerv3.Listener{virtualOutboundListener()}
	routes := make([]*routev3.RouteConfiguration, 0, len(byPort))
	for port, sps := range byPort {
		listeners = append(listeners, outboundListener(sps[0], port))
		routes = append(routes, envoyRouteConfiguration(sps, port))
	}
	return listeners, routes
}

// virtualOutboundListener receives every outbound connection iptables
// redirects to the sidecar. use_original_dst makes Envoy restore the
// connection's original destination (it installs the original_dst listener
// filter itself) and hand the connection to the listener bound to that
// destination's port; a connection whose port has no listener takes the
// default chain straight to its original destination.
func virtualOutboundListener() *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:               VirtualOutboundListenerName,
		Address:            socketAddress("0.0.0.0", VirtualOutboundPort),
		UseOriginalDst:     wrapperspb.Bool(true),
		TrafficDirection:   corev3.TrafficDirection_OUTBOUND,
		DefaultFilterChain: tcpProxyChain(PassthroughClusterName, PassthroughClusterName),
	}
}

// outboundListener is the listener of one port number. It does not bind:
// connections reach it only through the virtual outbound listener, which
// matches them by their original destination port whatever the IP.
func outboundListener(sp servicePort, port int32) *listenerv3.Listener {
	name := ListenerName(node.Envoy, sp.svc, port)
	hcm := httpConnectionManager("outbound_"+name, RouteName(node.Envoy, sp.svc, port))
	return &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress("0.0.0.0", uint32(port)),
		BindToPort:       wrapperspb.Bool(false),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       wellknown.HTTPConnectionManager,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(hcm)},
			}},
		}},
	}
}

// grpcListener is the api_listener a proxyless gRPC client asks for when it
// dials xds:///<authority>: a connection manager whose routes come over the
// same ADS stream, with the router as the last HTTP filter, as gRPC
// requires.
func grpcListener(sp servicePort) *listenerv3.Listener {
	name := ListenerName(node.GRPC, sp.svc, sp.port.Port)
	hcm := httpConnectionManager(name, RouteName(node.GRPC, sp.svc, sp.port.Port))
	return &listenerv3.Listener{
		Name:        name,
		ApiListener: &listenerv3.ApiListener{ApiListener: typed(hcm)},
	}
}

// httpConnectionManager routes with RDS over ADS; its filters are the
// fault filter, which routes configure (see fault.go), and the router last.
func httpConnectionManager(statPrefix, routeName string) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix: statPrefix,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: routeName,
		}},
		HttpFilters: []*hcmv3.HttpFilter{faultFilter(), routerFilter()},
	}
}

// routerFilter is the router, the last HTTP filter of every connection
// manager (gRPC requires it there too).
func routerFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{
		Name:       wellknown.Router,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&routerv3.Router{})},
	}
}
