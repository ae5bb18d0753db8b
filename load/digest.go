package load

import (
	"fmt"
	"hash/maphash"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// typ indexes the xDS types a simulated proxy follows, in the order an ADS
// server sends them.
type typ int

const (
	clusterType typ = iota
	endpointType
	listenerType
	routeType
	numTypes
)

var typeURLs = [numTypes]string{
	clusterType:  resourcev3.ClusterType,
	endpointType: resourcev3.EndpointType,
	listenerType: resourcev3.ListenerType,
	routeType:    resourcev3.RouteType,
}

var typeNames = [numTypes]string{"cluster", "endpoint", "listener", "route"}

func typeOf(url string) (typ, bool) {
	for t, u := range typeURLs {
		if u == url {
			return typ(t), true
		}
	}
	return 0, false
}

// limit indexes the circuit-breaker thresholds the policy changes set.
type limit int

const (
	maxConnections limit = iota
	maxPendingRequests
	maxRequests
	numLimits
)

// digest is what the harness needs to know about one resource's content:
// the references a proxy follows (cluster -> load assignment, listener ->
// route configuration, route -> clusters) and the fields the change probes
// look at. Proxies share digests of equal content.
type digest struct {
	name string
	size int

	// Cluster.
	edsName string // load assignment to ask for; "" unless type EDS
	// limits are the DEFAULT-priority circuit-breaker thresholds, 0 if
	// unset.
	limits [numLimits]uint32

	// ClusterLoadAssignment.
	addrs map[string]struct{}

	// Listener.
	routeConfig string // RDS name of its connection manager

	// RouteConfiguration.
	routeClusters []string
}

// interner decodes each distinct resource content once, whatever the number
// of proxies that receive it: 10,000 simulated sidecars hold the same
// thousand clusters, and decoding them 10,000 times would make the harness,
// not the control plane, the bottleneck.
type interner struct {
	seed   maphash.Seed
	shards [numTypes][64]internShard
}

type internShard struct {
	mu sync.Mutex
	m  map[string]*digest
}

func newInterner() *interner {
	in := &interner{seed: maphash.MakeSeed()}
	for t := range in.shards {
		for i := range in.shards[t] {
			in.shards[t][i].m = map[string]*digest{}
		}
	}
	return in
}

// get returns the digest of a serialised resource of type t.
func (in *interner) get(t typ, b []byte) (*digest, error) {
	sh := &in.shards[t][maphash.Bytes(in.seed, b)%64]
	sh.mu.Lock()
	d := sh.m[string(b)]
	sh.mu.Unlock()
	if d != nil {
		return d, nil
	}
	d, err := decode(t, b)
	if err != nil {
		return nil, err
	}
	sh.mu.Lock()
	if prev := sh.m[string(b)]; prev != nil {
		d = prev
	} else {
		sh.m[string(b)] = d
	}
	sh.mu.Unlock()
	return d, nil
}

func decode(t typ, b []byte) (*digest, error) {
	d := &digest{size: len(b)}
	switch t {
	case clusterType:
		var c clusterv3.Cluster
		if err := proto.Unmarshal(b, &c); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		d.name = c.GetName()
		if c.GetType() == clusterv3.Cluster_EDS {
			d.edsName = c.GetEdsClusterConfig().GetServiceName()
			if d.edsName == "" {
				d.edsName = c.GetName()
			}
		}
		for _, th := range c.GetCircuitBreakers().GetThresholds() {
			if th.GetPriority() == corev3.RoutingPriority_DEFAULT {
				d.limits[maxConnections] = th.GetMaxConnections().GetValue()
				d.limits[maxPendingRequests] = th.GetMaxPendingRequests().GetValue()
				d.limits[maxRequests] = th.GetMaxRequests().GetValue()
			}
		}
	case endpointType:
		var cla endpointv3.ClusterLoadAssignment
		if err := proto.Unmarshal(b, &cla); err != nil {
			return nil, fmt.Errorf("load assignment: %w", err)
		}
		d.name = cla.GetClusterName()
		d.addrs = map[string]struct{}{}
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				d.addrs[e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()] = struct{}{}
			}
		}
	case listenerType:
		var l listenerv3.Listener
		if err := proto.Unmarshal(b, &l); err != nil {
			return nil, fmt.Errorf("listener: %w", err)
		}
		d.name = l.GetName()
		hcms := []*anypb.Any{l.GetApiListener().GetApiListener()}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				hcms = append(hcms, f.GetTypedConfig())
			}
		}
		for _, a := range hcms {
			var hcm hcmv3.HttpConnectionManager
			if a == nil || !a.MessageIs(&hcm) {
				continue
			}
			if err := a.UnmarshalTo(&hcm); err != nil {
				return nil, fmt.Errorf("listener %s: connection manager: %w", l.GetName(), err)
			}
			if n := hcm.GetRds().GetRouteConfigName(); n != "" {
				d.routeConfig = n
			}
		}
	case routeType:
		var rc routev3.RouteConfiguration
		if err := proto.Unmarshal(b, &rc); err != nil {
			return nil, fmt.Errorf("route configuration: %w", err)
		}
		d.name = rc.GetName()
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if c := r.GetRoute().GetCluster(); c != "" {
					d.routeClusters = append(d.routeClusters, c)
				}
				for _, w := range r.GetRoute().GetWeightedClusters().GetClusters() {
					d.routeClusters = append(d.routeClusters, w.GetName())
				}
			}
		}
	}
	if d.name == "" {
		return nil, fmt.Errorf("%s without a name", typeNames[t])
	}
	return d, nil
}
