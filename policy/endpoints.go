package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/fjordmesh/fjord/watcher/model"
)

// EndpointIndex finds the EndpointSlices of a Service without scanning
// every slice for every port. Resolve builds one over the whole snapshot;
// the control plane's endpoint fast path builds one over the slices of the
// Services an endpoint change touched and recomputes only their ports, with
// exactly the result Resolve would give.
type EndpointIndex map[model.Key][]*model.EndpointSlice

// NewEndpointIndex indexes slices by their owning Service. The slices are
// referenced, not copied, and must not change while the index is used.
func NewEndpointIndex(in []model.EndpointSlice) EndpointIndex {
	idx := EndpointIndex{}
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

// Endpoints returns the backends of one Service port: every endpoint of the
// Service's slices that carry a port of that name, deduplicated by address
// and port and sorted. During a rollout the same address can appear in two
// slices; it is kept once, ready if either copy is ready, otherwise the copy
// from the first slice by name wins.
func (idx EndpointIndex) Endpoints(svc model.Key, port string) []Endpoint {
	// candidate carries the parsed address so that sorting does not parse
	// it on every comparison, and seq, the position in slice-name order,
	// so that "first" is well defined after sorting.
	type candidate struct {
		ep   Endpoint
		addr netip.Addr
		ip   bool
		seq  int
	}
	var cands []candidate
	for _, s := range idx[svc] {
		i := slices.IndexFunc(s.Ports, func(p model.EndpointPort) bool { return p.Name == port })
		if i < 0 || s.Ports[i].Port <= 0 {
			continue
		}
		if cands == nil {
			cands = make([]candidate, 0, len(s.Endpoints))
		}
		target := s.Ports[i].Port
		for _, e := range s.Endpoints {
			addr, err := netip.ParseAddr(e.Address)
			cands = append(cands, candidate{
				ep: Endpoint{
					Address:        e.Address,
					Port:           target,
					Ready:          e.Ready,
					Zone:           e.Zone,
					Workload:       e.Workload,
					ServiceAccount: e.ServiceAccount,
				},
				addr: addr,
				ip:   err == nil,
				seq:  len(cands),
			})
		}
	}
	if len(cands) == 0 {
		return nil
	}
	slices.SortFunc(cands, func(a, b candidate) int {
		return cmp.Or(compareAddresses(a.addr, a.ip, a.ep.Address, b.addr, b.ip, b.ep.Address),
			cmp.Compare(a.ep.Port, b.ep.Port), cmp.Compare(a.seq, b.seq))
	})
	out := make([]Endpoint, 0, len(cands))
	for _, c := range cands {
		if n := len(out); n > 0 && out[n-1].Address == c.ep.Address && out[n-1].Port == c.ep.Port {
			if !out[n-1].Ready && c.ep.Ready {
				out[n-1] = c.ep
			}
			continue
		}
		out = append(out, c.ep)
	}
	return out
}

// compareAddresses orders IP addresses numerically (10.0.0.2 before
// 10.0.0.10), IPv4 before IPv6, and anything that is not an IP address
// after them as text.
func compareAddresses(a netip.Addr, aIP bool, aText string, b netip.Addr, bIP bool, bText string) int {
	switch {
	case aIP && bIP:
		return cmp.Or(a.Compare(b), strings.Compare(aText, bText))
	case aIP:
		return -1
	case bIP:
		return 1
	}
	return strings.Compare(aText, bText)
}
