package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"slices"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

var (
	privSvc = model.Key{Namespace: "a", Name: "priv"}
	pubSvc  = model.Key{Namespace: "a", Name: "pub"}
)

// visibilityYAML is namespace a's config: pub, visible to every namespace,
// and priv, exported to exportTo.
func visibilityYAML(exportTo string) string {
	return `apiVersion: v1
kind: Service
metadata: {name: priv, namespace: a, annotations: {fjord.dev/export-to: "` + exportTo + `"}}
spec: {ports: [{name: grpc, port: 50051, appProtocol: grpc}]}
---
apiVersion: v1
kind: Service
metadata: {name: pub, namespace: a}
spec: {ports: [{name: grpc, port: 50051, appProtocol: grpc}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: priv-1, namespace: a, labels: {kubernetes.io/service-name: priv}}
addressType: IPv4
ports: [{name: grpc, port: 50051}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: pub-1, namespace: a, labels: {kubernetes.io/service-name: pub}}
addressType: IPv4
ports: [{name: grpc, port: 50051}]
endpoints: [{addresses: [127.0.0.2]}]
`
}

// resourceName is the name of a listener or cluster.
func resourceName(t *testing.T, a *anypb.Any) string {
	t.Helper()
	switch a.GetTypeUrl() {
	case resourcev3.ListenerType:
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		return l.GetName()
	case resourcev3.ClusterType:
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		return c.GetName()
	}
	t.Fatalf("unexpected resource type %s", a.GetTypeUrl())
	return ""
}

// sotwStream is one state-of-the-world ADS stream for one type, which
// acknowledges every response it reads, as a proxy does.
type sotwStream struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	req    *discoveryv3.DiscoveryRequest
}

// dialXDS connects to the plaintext port, or to the secure one when
// bundle is set, presenting cert (none if nil).
func dialXDS(t *testing.T, r *running, bundle []*x509.Certificate, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	addr, creds := r.cp.XDSAddr().String(), insecure.NewCredentials()
	if bundle != nil {
		roots := x509.NewCertPool()
		for _, c := range bundle {
			roots.AddCert(c)
		}
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		addr, creds = r.cp.SecureAddr().String(), credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// streamContext bounds a test's streams, so that a missing response fails
// the test instead of hanging it; nothing is asserted about time.
func streamContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func openSotw(t *testing.T, conn *grpc.ClientConn, who node.Info, typeURL string, names ...string) *sotwStream {
	t.Helper()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(streamContext(t))
	if err != nil {
		t.Fatal(err)
	}
	s := &sotwStream{t: t, stream: stream, req: &discoveryv3.DiscoveryRequest{Node: who.Node(), TypeUrl: typeURL, ResourceNames: names}}
	if err := stream.Send(s.req); err != nil {
		t.Fatal(err)
	}
	return s
}

// next reads the next response, acknowledges it, and returns the names of
// its resources, sorted, or the stream's error.
func (s *sotwStream) next() ([]string, error) {
	s.t.Helper()
	resp, err := s.stream.Recv()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, a := range resp.GetResources() {
		names = append(names, resourceName(s.t, a))
	}
	slices.Sort(names)
	s.req.VersionInfo, s.req.ResponseNonce = resp.GetVersionInfo(), resp.GetNonce()
	if err := s.stream.Send(s.req); err != nil {
		s.t.Fatal(err)
	}
	return names, nil
}

func (s *sotwStream) want(what string, want ...string) {
	s.t.Helper()
	got, err := s.next()
	if err != nil {
		s.t.Fatalf("%s: %v", what, err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		s.t.Errorf("%s (-want +got):\n%s", what, diff)
	}
}

// deltaStream is one incremental ADS stream for one type, acknowledging
// every response.
type deltaStream struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	who    node.Info
	typ    string
}

func openDelta(t *testing.T, conn *grpc.ClientConn, who node.Info, typeURL string, subscribe ...string) *deltaStream {
	t.Helper()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(streamContext(t))
	if err != nil {
		t.Fatal(err)
	}
	d := &deltaStream{t: t, stream: stream, who: who, typ: typeURL}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: who.Node(), TypeUrl: typeURL, ResourceNamesSubscribe: subscribe}); err != nil {
		t.Fatal(err)
	}
	return d
}

// want reads the next response, checks the names it adds or changes and
// those it removes, and acknowledges it.
func (d *deltaStream) want(what string, names, removed []string) {
	d.t.Helper()
	resp, err := d.stream.Recv()
	if err != nil {
		d.t.Fatalf("%s: %v", what, err)
	}
	var got []string
	for _, r := range resp.GetResources() {
		got = append(got, r.GetName())
	}
	if diff := cmp.Diff(names, got); diff != "" {
		d.t.Errorf("%s: resources (-want +got):\n%s", what, diff)
	}
	if diff := cmp.Diff(removed, resp.GetRemovedResources()); diff != "" {
		d.t.Errorf("%s: removed (-want +got):\n%s", what, diff)
	}
	if err := d.stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: d.who.Node(), TypeUrl: d.typ, ResponseNonce: resp.GetNonce()}); err != nil {
		d.t.Fatal(err)
	}
}

// TestServiceVisibility: a Service exported to its own namespace is served
// to the proxies there and not to those of another namespace; exporting it
// to every namespace sends it to them on the streams they have open, and
// making it private again removes it from them, for state-of-the-world and
// delta clients alike. On the authenticated port, a workload of namespace b
// sees what b may see, and cannot claim namespace a.
func TestServiceVisibility(t *testing.T) {
	dir, data := t.TempDir(), t.TempDir()
	file := filepath.Join(dir, "a.yaml")
	writeFile(t, file, visibilityYAML("."))
	r := start(t, Config{ConfigDir: dir, DataDir: data, Identity: IdentityConfig{SecureAddress: "127.0.0.1:0"}})
	r.waitReady(t)

	inA := node.Info{Namespace: "a", Workload: "client", ServiceAccount: "client", Kind: node.GRPC}
	inB := node.Info{Namespace: "b", Workload: "client", ServiceAccount: "client", Kind: node.GRPC}
	envoyB := node.Info{Namespace: "b", Workload: "sidecar", ServiceAccount: "client", Kind: node.Envoy}
	priv, pub := translate.ListenerName(node.GRPC, privSvc, 50051), translate.ListenerName(node.GRPC, pubSvc, 50051)
	privCluster, pubCluster := translate.ClusterName(privSvc, 50051), translate.ClusterName(pubSvc, 50051)

	plain := dialXDS(t, r, nil, nil)
	a := openSotw(t, plain, inA, resourcev3.ListenerType, priv, pub)
	a.want("namespace a's listeners", priv, pub)
	b := openSotw(t, plain, inB, resourcev3.ListenerType, priv, pub)
	b.want("namespace b's listeners", pub)
	sidecar := openDelta(t, plain, envoyB, resourcev3.ClusterType, "*")
	resp, err := sidecar.stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var clusters []string
	for _, res := range resp.GetResources() {
		clusters = append(clusters, res.GetName())
	}
	if !slices.Contains(clusters, pubCluster) || slices.Contains(clusters, privCluster) {
		t.Errorf("namespace b's sidecar clusters %v: want %s and not %s", clusters, pubCluster, privCluster)
	}
	if err := sidecar.stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: envoyB.Node(), TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}

	// Exported to every namespace: b's streams receive it.
	writeFile(t, file, visibilityYAML("*"))
	b.want("namespace b's listeners once priv is exported to every namespace", priv, pub)
	sidecar.want("namespace b's sidecar once priv is exported to every namespace", []string{privCluster}, nil)

	// Private again: b loses it; a keeps it all along.
	writeFile(t, file, visibilityYAML("."))
	b.want("namespace b's listeners once priv is private again", pub)
	sidecar.want("namespace b's sidecar once priv is private again", nil, []string{privCluster})
	if got := r.fetchAs(t, inA, resourcev3.ListenerType, priv, pub); !cmp.Equal(got, []string{priv, pub}) {
		t.Errorf("a new stream of namespace a gets %v, want both listeners", got)
	}

	// The authenticated port: a workload of namespace b is served what b
	// may see, and may not say it is in namespace a.
	certB, bundle := workloadCertFor(t, r, data, inB)
	secure := dialXDS(t, r, bundle, certB)
	asB := openSotw(t, secure, inB, resourcev3.ListenerType, priv, pub)
	asB.want("namespace b's workload on the secure port", pub)
	asA := openSotw(t, secure, inA, resourcev3.ListenerType, priv, pub)
	if got, err := asA.next(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("namespace b's workload claiming namespace a: got %v, %v; want PermissionDenied", got, err)
	}
}

// fetchAs is fetch for a node of who's namespace: the first response of a
// new stream.
func (r *running) fetchAs(t *testing.T, who node.Info, typeURL string, names ...string) []string {
	t.Helper()
	conn := dialXDS(t, r, nil, nil)
	s := openSotw(t, conn, who, typeURL, names...)
	got, err := s.next()
	if err != nil {
		t.Fatal(err)
	}
	return got
}
