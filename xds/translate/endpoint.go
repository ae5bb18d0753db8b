package translate

import (
	"cmp"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/fjordmesh/fjord/policy"
)

// loadAssignment is the ClusterLoadAssignment of one Service port, the same
// for both proxy kinds.
//
// Only ready endpoints are sent. Sending not-ready ones as UNHEALTHY would
// let them count towards the panic threshold: with minHealthPercent 50 and
// half the pods starting up, Envoy would enter panic mode and route to pods
// that cannot serve. A pod becomes an endpoint here when Kubernetes says it
// is ready, and stops being one when it stops being ready.
//
// Endpoints are grouped into one locality per zone (endpoints without a zone
// share the locality with an empty zone), sorted by zone, all at priority 0.
// A locality's load_balancing_weight is its number of endpoints: proxyless
// gRPC always splits traffic between localities by that weight (and drops a
// locality of weight 0), so weighting by size keeps the load per endpoint
// even across zones. Envoy ignores locality weights unless locality-weighted balancing
// is on, which Fjord does not turn on.
func loadAssignment(sp servicePort) *endpointv3.ClusterLoadAssignment {
	ready := make([]policy.Endpoint, 0, len(sp.port.Endpoints))
	for _, e := range sp.port.Endpoints {
		if e.Ready {
			ready = append(ready, e)
		}
	}
	slices.SortFunc(ready, func(a, b policy.Endpoint) int {
		return cmp.Or(cmp.Compare(a.Zone, b.Zone), cmp.Compare(a.Address, b.Address), cmp.Compare(a.Port, b.Port))
	})
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: sp.clusterName()}
	// seen drops a repeated address:port, which proxyless gRPC rejects
	// (the whole assignment) even across localities.
	seen := make(map[policy.Endpoint]bool, len(ready))
	var loc *endpointv3.LocalityLbEndpoints
	for _, e := range ready {
		key := policy.Endpoint{Address: e.Address, Port: e.Port}
		if seen[key] {
			continue
		}
		seen[key] = true
		if loc == nil || loc.GetLocality().GetZone() != e.Zone {
			loc = &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Zone: e.Zone}}
			cla.Endpoints = append(cla.Endpoints, loc)
		}
		loc.LbEndpoints = append(loc.LbEndpoints, lbEndpoint(e))
	}
	for _, l := range cla.Endpoints {
		l.LoadBalancingWeight = wrapperspb.UInt32(uint32(len(l.LbEndpoints)))
	}
	return cla
}

func lbEndpoint(e policy.Endpoint) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: socketAddress(e.Address, uint32(e.Port)),
		}},
		HealthStatus:        corev3.HealthStatus_HEALTHY,
		LoadBalancingWeight: wrapperspb.UInt32(1),
	}
}

func socketAddress(address string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       address,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}
