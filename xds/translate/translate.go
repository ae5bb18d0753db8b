package translate

import (
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fjordmesh/fjord/policy"
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/node"
)

// Translate builds everything a proxy of the given kind is served for the
// mesh m. Every Service port gets a cluster and a ClusterLoadAssignment
// (identical for both kinds); Envoy additionally gets one outbound listener
// and route configuration per port number plus the virtual outbound
// listener and the passthrough cluster, and its inbound side: the virtual
// inbound listener and the inbound passthrough cluster (see inbound.go).
// Proxyless gRPC gets one api_listener and route configuration per Service
// port. A kind other than Envoy or GRPC gets clusters and endpoints only.
// Each list is sorted by resource name; m is not modified and a nil m is an
// empty mesh.
//
// Proxyless gRPC also gets the listeners of xDS-enabled gRPC servers, one
// per endpoint address and port (see grpcServerListeners). With opts.MTLS,
// the clusters of both kinds, those server listeners and Envoy's virtual
// inbound listener carry TLS contexts that refer to the pod-local agent's
// credentials (see tls.go).
func Translate(m *policy.Mesh, kind node.Kind, opts Options) *Resources {
	r := &Resources{}
	var ports []servicePort
	if m != nil {
		for i := range m.Services {
			for j := range m.Services[i].Ports {
				ports = append(ports, servicePort{svc: m.Services[i].Key, port: &m.Services[i].Ports[j], accounts: m.Services[i].ServiceAccounts})
			}
		}
	}
	for _, sp := range ports {
		r.Clusters = append(r.Clusters, portCluster(kind, sp, opts))
		r.Endpoints = append(r.Endpoints, loadAssignment(sp))
	}
	switch kind {
	case node.Envoy:
		r.Clusters = append(r.Clusters, passthroughCluster())
		r.Listeners, r.Routes = envoyOutbound(ports)
		inbound, inboundCluster := envoyInbound(opts)
		r.Listeners = append(r.Listeners, inbound)
		r.Clusters = append(r.Clusters, inboundCluster)
	case node.GRPC:
		for _, sp := range ports {
			r.Listeners = append(r.Listeners, grpcListener(sp))
			r.Routes = append(r.Routes, grpcRouteConfiguration(sp))
		}
	}
	if HasServerListeners(kind) {
		r.Listeners = append(r.Listeners, grpcServerListeners(m, opts)...)
	}
	sortByName(r.Clusters)
	sortByName(r.Endpoints)
	sortByName(r.Listeners)
	sortByName(r.Routes)
	return r
}

// HasServerListeners says whether proxies of kind are served the
// listeners of xDS-enabled gRPC servers (see ServerListeners), which depend
// on endpoints: only proxyless gRPC.
func HasServerListeners(kind node.Kind) bool { return kind == node.GRPC }

// PortCluster is the cluster Translate builds for port of svc for kind.
// With opts.MTLS it depends on the port's endpoints (the identities a
// client accepts include their service accounts), so the control plane's
// endpoint fast path rebuilds it with the port's load assignment.
func PortCluster(kind node.Kind, svc *policy.Service, port *policy.Port, opts Options) *clusterv3.Cluster {
	return portCluster(kind, servicePort{svc: svc.Key, port: port, accounts: svc.ServiceAccounts}, opts)
}

// PortLoadAssignment is the ClusterLoadAssignment Translate builds for port
// of svc, the same for every kind.
func PortLoadAssignment(svc *policy.Service, port *policy.Port) *endpointv3.ClusterLoadAssignment {
	return loadAssignment(servicePort{svc: svc.Key, port: port, accounts: svc.ServiceAccounts})
}

func portCluster(kind node.Kind, sp servicePort, opts Options) *clusterv3.Cluster {
	c := cluster(sp)
	if opts.MTLS {
		c.TransportSocket = upstreamTLS(kind, sp, opts)
	}
	return c
}

// servicePort is one Service port with the Service it belongs to.
type servicePort struct {
	svc  model.Key
	port *policy.Port
	// accounts are the service accounts the Service declares.
	accounts []string
}

func (sp servicePort) clusterName() string { return ClusterName(sp.svc, sp.port.Port) }

// sortByName orders resources by name (a ClusterLoadAssignment's is its
// cluster_name). Names are unique within a type, so the order is total and
// the output does not depend on the input's order.
func sortByName[T proto.Message](rs []T) {
	slices.SortFunc(rs, func(a, b T) int { return strings.Compare(resourceName(a), resourceName(b)) })
}

func resourceName(m proto.Message) string {
	switch r := m.(type) {
	case interface{ GetName() string }:
		return r.GetName()
	case interface{ GetClusterName() string }:
		return r.GetClusterName()
	}
	return ""
}

// adsSource is where every referenced resource (EDS of a cluster, RDS of a
// listener) comes from: the same ADS stream. It is the only config source
// proxyless gRPC accepts besides self.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

// typed packs an extension config into an Any. Marshalling is deterministic
// so that equal configs are equal bytes, which the cache's content hash
// relies on. The messages packed here are built by this package from valid
// UTF-8 names, so marshalling cannot fail; if it ever did, that would be a
// bug in this package, not bad input, hence the panic.
func typed(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic("translate: marshal " + string(m.ProtoReflect().Descriptor().FullName()) + ": " + err.Error())
	}
	return a
}

// typeName is the name Envoy registers an extension config under: its
// message's full name.
func typeName(m protoreflect.ProtoMessage) string {
	return string(m.ProtoReflect().Descriptor().FullName())
}

// Policy values reach the translator only after policy.Resolve has validated
// them (durations parse and, where Envoy needs it, are positive; numbers are
// in range), so the helpers below never see a malformed value from a real
// pipeline. They still read one as "field not set" rather than emitting a
// zero or panicking: a hand-built Mesh then gets the proxy's default instead
// of config a proxy rejects, and one bad field cannot fail a whole cache
// update.

// duration converts a policy duration; nil when unset or malformed.
func duration(d *fjordv1a1.Duration) *durationpb.Duration {
	if d == nil {
		return nil
	}
	v, err := d.Parse()
	if err != nil {
		return nil
	}
	return durationpb.New(v)
}

// positiveDuration is duration for the Envoy fields that must be greater
// than zero (intervals, ejection times, backoff, connect timeout); zero
// reads as "not set" there too, so the proxy's default applies.
func positiveDuration(d *fjordv1a1.Duration) *durationpb.Duration {
	v := duration(d)
	if v == nil || v.AsDuration() <= 0 {
		return nil
	}
	return v
}

// u32 converts a policy count; nil when unset or negative.
func u32(v *int32) *wrapperspb.UInt32Value {
	if v == nil || *v < 0 {
		return nil
	}
	return wrapperspb.UInt32(uint32(*v))
}
