package translate

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/xds/node"
)

// TestPortBuildersMatchTranslate: the per-port builders the endpoint fast
// path uses give exactly the resources Translate gives, for every golden
// mesh, kind and mTLS setting.
func TestPortBuildersMatchTranslate(t *testing.T) {
	ins, err := filepath.Glob(filepath.Join("testdata", "*.in.yaml"))
	if err != nil || len(ins) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		m := &policy.Mesh{}
		if err := readMeshFile(name, m); err != nil {
			t.Fatal(err)
		}
		for _, kind := range node.Kinds {
			for _, opts := range []Options{{}, {MTLS: true, TrustDomain: "example.org"}} {
				t.Run(name+"/"+string(kind), func(t *testing.T) {
					want := Translate(m, kind, opts)
					got := &Resources{}
					var addrs []ServerAddress
					for i := range m.Services {
						for j := range m.Services[i].Ports {
							got.Clusters = append(got.Clusters, PortCluster(kind, &m.Services[i], &m.Services[i].Ports[j], opts))
							got.Endpoints = append(got.Endpoints, PortLoadAssignment(&m.Services[i], &m.Services[i].Ports[j]))
							addrs = ServerAddresses(addrs, m.Services[i].Ports[j].Endpoints)
						}
					}
					sortByName(got.Clusters)
					sortByName(got.Endpoints)
					if HasServerListeners(kind) {
						got.Listeners = ServerListeners(addrs, opts)
					}
					// Translate's extras (passthrough clusters, outbound,
					// inbound and api listeners) are not per-port endpoint
					// resources; keep only what the builders cover.
					wantClusters := want.Clusters[:0:0]
					for _, c := range want.Clusters {
						if c.GetName() != PassthroughClusterName && c.GetName() != InboundPassthroughClusterName {
							wantClusters = append(wantClusters, c)
						}
					}
					serverPrefix, _, _ := strings.Cut(bootstrap.ServerListenerTemplate, "%s")
					wantServers := want.Listeners[:0:0]
					for _, l := range want.Listeners {
						if strings.HasPrefix(l.GetName(), serverPrefix) {
							wantServers = append(wantServers, l)
						}
					}
					if diff := cmp.Diff(wantClusters, got.Clusters, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
						t.Errorf("clusters (-Translate +PortCluster):\n%s", diff)
					}
					if diff := cmp.Diff(want.Endpoints, got.Endpoints, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
						t.Errorf("load assignments (-Translate +PortLoadAssignment):\n%s", diff)
					}
					if diff := cmp.Diff(wantServers, got.Listeners, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
						t.Errorf("server listeners (-Translate +ServerListeners):\n%s", diff)
					}
				})
			}
		}
	}
}
