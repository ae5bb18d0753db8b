package translate

import (
	"fmt"
	"net"
	"strconv"

	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/node"
)

// Every xDS resource name Fjord emits is made here, so that the translator,
// the cache, bootstraps and tests can never disagree about one.

// ClusterDomain is the DNS suffix of Service names. Proxyless gRPC clients
// dial xds:///<service>.<namespace>.svc.cluster.local:<port>, so it is fixed
// rather than configurable: a different suffix would change every listener
// name clients ask for.
const ClusterDomain = "cluster.local"

// Names of the resources an Envoy sidecar gets besides the per-Service ones.
const (
	// VirtualOutboundListenerName is the listener on VirtualOutboundPort
	// that iptables redirects outbound connections to; it hands each
	// connection to the listener of its original destination port.
	VirtualOutboundListenerName = "virtualOutbound"
	// VirtualOutboundPort is the sidecar's outbound capture port.
	VirtualOutboundPort = 15001
	// PassthroughClusterName is the ORIGINAL_DST cluster that carries
	// traffic for destinations the mesh does not know.
	PassthroughClusterName = "PassthroughCluster"
	// VirtualInboundListenerName is the listener on VirtualInboundPort
	// that iptables redirects inbound connections to; it hands each one to
	// the workload on its original destination, terminating mutual TLS
	// first when that is on.
	VirtualInboundListenerName = "virtualInbound"
	// VirtualInboundPort is the sidecar's inbound capture port.
	VirtualInboundPort = 15006
	// InboundPassthroughClusterName is the ORIGINAL_DST cluster that
	// carries inbound connections from the sidecar to its workload.
	InboundPassthroughClusterName = "InboundPassthroughCluster"
	// InboundPassthroughSourceAddress is the source address of the
	// sidecar's connections to its workload. The pod's iptables rules must
	// leave connections from it on the loopback interface alone, so that
	// they reach the application instead of being captured again.
	InboundPassthroughSourceAddress = "127.0.0.6"
)

// Host is the Service's fully qualified DNS name,
// <name>.<namespace>.svc.cluster.local.
func Host(svc model.Key) string {
	return svc.Name + "." + svc.Namespace + ".svc." + ClusterDomain
}

// Authority is Host with the port, the form gRPC clients dial and send.
func Authority(svc model.Key, port int32) string {
	return Host(svc) + ":" + strconv.Itoa(int(port))
}

// ClusterName names the cluster (and its ClusterLoadAssignment) of one
// Service port; it is the same for every proxy kind. The host comes last
// because Envoy's default cluster_name stats tag extractor recognises names
// that end in .svc.cluster.local and keeps them whole, and the layout is the
// one mesh dashboards already parse: outbound|<port>||<host>.
func ClusterName(svc model.Key, port int32) string {
	return "outbound|" + strconv.Itoa(int(port)) + "||" + Host(svc)
}

// ListenerName names the listener that carries a client's traffic to one
// Service port. For proxyless gRPC it is the dial target's authority, which
// is the resource name the client asks for. For Envoy it is the shared
// outbound listener of the port number, 0.0.0.0_<port>, so svc is not part
// of it: every Service with that port number is a virtual host behind it.
func ListenerName(kind node.Kind, svc model.Key, port int32) string {
	if kind == node.Envoy {
		return "0.0.0.0_" + strconv.Itoa(int(port))
	}
	return Authority(svc, port)
}

// RouteName names the route configuration the listener of ListenerName
// refers to: the port number for Envoy (one route configuration per port,
// one virtual host per Service), the authority for proxyless gRPC (one per
// Service port, named like its listener).
func RouteName(kind node.Kind, svc model.Key, port int32) string {
	if kind == node.Envoy {
		return strconv.Itoa(int(port))
	}
	return Authority(svc, port)
}

// ServerListenerName is the listener an xDS-enabled gRPC server
// (xds.NewGRPCServer) listening on address:port asks for, as its bootstrap's
// server_listener_resource_name_template makes it.
func ServerListenerName(address string, port int32) string {
	return fmt.Sprintf(bootstrap.ServerListenerTemplate, net.JoinHostPort(address, strconv.Itoa(int(port))))
}
