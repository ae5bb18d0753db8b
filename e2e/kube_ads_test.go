package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fjordmesh/fjord/xds/node"
)

// adsRecorder is a raw state-of-the-world ADS client, as an Envoy would
// be: wildcard clusters, then the endpoints of every EDS cluster. It
// records how many clusters and endpoints each response carries, and
// reconnects at once whenever its stream ends, so it is the first client
// the control plane serves after a restart.
type adsRecorder struct {
	mu   sync.Mutex
	log  []adsResponse
	nstr int // streams opened
}

type adsResponse struct {
	stream   int
	typeURL  string
	n        int // clusters or endpoints
	received time.Time
}

// recordADS runs a recorder against addr until the test ends.
func recordADS(t *testing.T, addr string) *adsRecorder {
	r := &adsRecorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			r.stream(ctx, addr)
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// stream runs one ADS stream until it fails.
func (r *adsRecorder) stream(ctx context.Context, addr string) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return
	}
	r.mu.Lock()
	r.nstr++
	id := r.nstr
	r.mu.Unlock()
	n := node.Info{Namespace: namespace, Workload: "ads-recorder", ServiceAccount: "default", Kind: node.Envoy}.Node()
	if s.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.ClusterType}) != nil {
		return
	}
	var edsNames []string
	for {
		resp, err := s.Recv()
		if err != nil {
			return
		}
		count := 0
		var names []string
		for _, a := range resp.GetResources() {
			switch resp.GetTypeUrl() {
			case resourcev3.ClusterType:
				var c clusterv3.Cluster
				if a.UnmarshalTo(&c) != nil {
					return
				}
				count++
				if c.GetType() == clusterv3.Cluster_EDS {
					name := c.GetEdsClusterConfig().GetServiceName()
					if name == "" {
						name = c.GetName()
					}
					names = append(names, name)
				}
			case resourcev3.EndpointType:
				var cla endpointv3.ClusterLoadAssignment
				if a.UnmarshalTo(&cla) != nil {
					return
				}
				for _, l := range cla.GetEndpoints() {
					count += len(l.GetLbEndpoints())
				}
			}
		}
		r.mu.Lock()
		r.log = append(r.log, adsResponse{stream: id, typeURL: resp.GetTypeUrl(), n: count, received: time.Now()})
		r.mu.Unlock()
		ack := &discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(),
			ResponseNonce: resp.GetNonce()}
		if resp.GetTypeUrl() == resourcev3.EndpointType {
			ack.ResourceNames = edsNames
		}
		if s.Send(ack) != nil {
			return
		}
		if resp.GetTypeUrl() == resourcev3.ClusterType {
			slices.Sort(names)
			if !slices.Equal(names, edsNames) {
				edsNames = names
				if s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: names}) != nil {
					return
				}
			}
		}
	}
}

// max returns the most clusters and endpoints any response carried, and
// the number of streams.
func (r *adsRecorder) max() (clusters, endpoints, streams int) {
	return r.maxSince(time.Time{})
}

// maxSince is max over the responses received at or after from, and the
// number of streams opened in all.
func (r *adsRecorder) maxSince(from time.Time) (clusters, endpoints, streams int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.log {
		if a.received.Before(from) {
			continue
		}
		if a.typeURL == resourcev3.ClusterType {
			clusters = max(clusters, a.n)
		} else {
			endpoints = max(endpoints, a.n)
		}
	}
	return clusters, endpoints, r.nstr
}

// shrinks lists every response that carried fewer clusters or endpoints
// than an earlier one of its type, on any stream.
func (r *adsRecorder) shrinks() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	most := map[string]int{}
	var out []string
	for _, a := range r.log {
		if a.n < most[a.typeURL] {
			out = append(out, fmt.Sprintf("stream %d at %s: %d of %s, after %d before",
				a.stream, a.received.Format(time.StampMilli), a.n, a.typeURL, most[a.typeURL]))
		}
		most[a.typeURL] = max(most[a.typeURL], a.n)
	}
	return out
}

func (r *adsRecorder) responses() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.log)
}

func (r *adsRecorder) streams() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nstr
}
