package load

// Change is one change the harness made to the mesh, with the content that
// proves a proxy has received it: the flipped address present or absent in
// the load assignment, the new connection-pool limit in the clusters, the
// new Service's cluster, endpoints and route.
type Change struct {
	What  string
	probe probe
	// write makes the change: it writes the files concerned and returns
	// once they are in place, which is the moment the change counts as
	// accepted.
	write func() error
}

// probe decides which proxies a change concerns, from what they subscribe
// to (never from what the control plane sent them), and whether a proxy
// holds content containing the change.
type probe interface {
	affects(p *proxy) bool
	// holds is called with p.mu held.
	holds(p *proxy) bool
}

// endpointProbe: the load assignment of cluster has addr, or has not.
type endpointProbe struct {
	svc           int
	cluster, addr string
	present       bool
}

func (e *endpointProbe) affects(p *proxy) bool { return p.interested(e.svc) }

func (e *endpointProbe) holds(p *proxy) bool {
	d, ok := p.holds(endpointType, e.cluster)
	if !ok {
		return false
	}
	_, in := d.addrs[e.addr]
	return in == e.present
}

// limitProbe: every cluster the proxy uses among those of the changed
// scope carries the new value of the limit.
type limitProbe struct {
	field    limit
	value    uint32
	clusters map[int]string // service -> cluster name
}

func (c *limitProbe) affects(p *proxy) bool {
	for svc := range c.clusters {
		if p.interested(svc) {
			return true
		}
	}
	return false
}

func (c *limitProbe) holds(p *proxy) bool {
	for svc, name := range c.clusters {
		if !p.interested(svc) {
			continue
		}
		d, ok := p.holds(clusterType, name)
		if !ok || d.limits[c.field] != c.value {
			return false
		}
	}
	return true
}

// newServiceProbe: the proxy holds the new Service's cluster, its endpoints,
// and a route to it. Only sidecars are affected: a gRPC client dials the
// Services it was started with.
type newServiceProbe struct {
	svc     int
	cluster string
	addrs   []string
}

func (n *newServiceProbe) affects(p *proxy) bool { return p.interested(n.svc) }

func (n *newServiceProbe) holds(p *proxy) bool {
	if _, ok := p.holds(clusterType, n.cluster); !ok {
		return false
	}
	cla, ok := p.holds(endpointType, n.cluster)
	if !ok {
		return false
	}
	for _, a := range n.addrs {
		if _, ok := cla.addrs[a]; !ok {
			return false
		}
	}
	for _, h := range p.types[routeType].held {
		for _, c := range h.d.routeClusters {
			if c == n.cluster {
				return true
			}
		}
	}
	return false
}

// syncProbe: a newly connected proxy holds its whole configuration: for
// every Service it uses, the cluster and load assignment, and every
// listener and route configuration it subscribes to.
type syncProbe struct {
	from, to int      // proxy ids concerned
	clusters []string // by Service index
}

func (s *syncProbe) affects(p *proxy) bool { return p.id >= s.from && p.id < s.to }

func (s *syncProbe) holds(p *proxy) bool {
	for svc, c := range s.clusters {
		if !p.interested(svc) {
			continue
		}
		if _, ok := p.holds(clusterType, c); !ok {
			return false
		}
		if _, ok := p.holds(endpointType, c); !ok {
			return false
		}
	}
	for _, t := range []typ{listenerType, routeType} {
		ts := &p.types[t]
		if len(ts.names) == 0 && len(ts.held) == 0 {
			return false
		}
		for n := range ts.names {
			if _, ok := ts.held[n]; !ok {
				return false
			}
		}
	}
	return true
}
