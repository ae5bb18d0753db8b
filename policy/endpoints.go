package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/fjordmesh/fjord/watcher/model"
)

// endpointIndex finds the EndpointSlices of a Service without scanning
// every slice for every port.
type endpointIndex map[model.Key][]*model.EndpointSlice

func newEndpointIndex(in []model.EndpointSlice) endpointIndex {
	idx := endpointIndex{}
	for i := range in {
		s := &in[i]
		k := model.Key{Namespace: s.Namespace, Name: s.Service}
		idx[k] = append(idx[k], s)
	}
	for _, ss := range idx {
		slices.SortFunc(ss, func(a, b *model.EndpointSlice) int { return compareKeys(a.Key, b.Key) })
	}
	return idx
}

// endpoints returns the backends of one Service port: every endpoint of the
// Service's slices that carry a port of that name, deduplicated by address
// and port and sorted. During a rollout the same address can appear in two
// slices; it is kept once, ready if either copy is ready, otherwise the copy
// from the first slice by name wins.
func (idx endpointIndex) endpoints(svc model.Key, port string) []Endpoint {
	type addrPort struct {
		addr string
		port int32
	}
	var out []Endpoint
	at := map[addrPort]int{}
	for _, s := range idx[svc] {
		i := slices.IndexFunc(s.Ports, func(p model.EndpointPort) bool { return p.Name == port })
		if i < 0 || s.Ports[i].Port <= 0 {
			continue
		}
		target := s.Ports[i].Port
		for _, e := range s.Endpoints {
			ep := Endpoint{
				Address:        e.Address,
				Port:           target,
				Ready:          e.Ready,
				Zone:           e.Zone,
				Workload:       e.Workload,
				ServiceAccount: e.ServiceAccount,
			}
			k := addrPort{e.Address, target}
			if j, ok := at[k]; ok {
				if !out[j].Ready && ep.Ready {
					out[j] = ep
				}
				continue
			}
			at[k] = len(out)
			out = append(out, ep)
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		return cmp.Or(compareAddresses(a.Address, b.Address), cmp.Compare(a.Port, b.Port))
	})
	return out
}

// compareAddresses orders IP addresses numerically (10.0.0.2 before
// 10.0.0.10), IPv4 before IPv6, and anything that is not an IP address
// after them as text.
func compareAddresses(a, b string) int {
	ia, errA := netip.ParseAddr(a)
	ib, errB := netip.ParseAddr(b)
	switch {
	case errA == nil && errB == nil:
		return cmp.Or(ia.Compare(ib), strings.Compare(a, b))
	case errA == nil:
		return -1
	case errB == nil:
		return 1
	}
	return strings.Compare(a, b)
}
