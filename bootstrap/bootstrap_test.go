package bootstrap

import (
	"context"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/fjordmesh/fjord/xds/node"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func info(kind node.Kind) node.Info {
	return node.Info{Namespace: "demo", Workload: "client", ServiceAccount: "client-sa", Kind: kind}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./bootstrap -update)", err)
	}
	if d := cmp.Diff(string(want), string(got)); d != "" {
		t.Errorf("%s (-golden +got):\n%s", name, d)
	}
}

func TestGolden(t *testing.T) {
	tests := map[string]struct {
		kind node.Kind
		addr string
	}{
		"grpc.json":              {node.GRPC, DefaultXDSAddress},
		"envoy.yaml":             {node.Envoy, DefaultXDSAddress},
		"envoy-dns-address.yaml": {node.Envoy, "fjord-cp.fjord-system.svc:15010"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Render(info(tc.kind), tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name, got)
		})
	}
}

// TestEnvoyValidates reads the YAML back the way Envoy does and runs the
// protos' own validation on it.
func TestEnvoyValidates(t *testing.T) {
	for addr, wantType := range map[string]clusterv3.Cluster_DiscoveryType{
		"127.0.0.1:15010":                 clusterv3.Cluster_STATIC,
		"[::1]:15010":                     clusterv3.Cluster_STATIC,
		"fjord-cp.fjord-system.svc:15010": clusterv3.Cluster_STRICT_DNS,
	} {
		t.Run(addr, func(t *testing.T) {
			out, err := Envoy(info(node.Envoy), addr)
			if err != nil {
				t.Fatal(err)
			}
			b := parseEnvoy(t, out)
			got, err := node.FromNode(b.GetNode())
			if err != nil {
				t.Fatal(err)
			}
			if got != info(node.Envoy) {
				t.Errorf("node identity = %+v, want %+v", got, info(node.Envoy))
			}
			c := b.GetStaticResources().GetClusters()[0]
			if c.GetType() != wantType {
				t.Errorf("xds cluster type = %v, want %v", c.GetType(), wantType)
			}
			if b.GetDynamicResources().GetCdsConfig().GetAds() == nil || b.GetDynamicResources().GetLdsConfig().GetAds() == nil {
				t.Errorf("CDS and LDS must come over ADS: %v", b.GetDynamicResources())
			}
		})
	}
}

func TestErrors(t *testing.T) {
	tests := map[string]struct {
		info node.Info
		addr string
		want string
	}{
		"missing service account": {node.Info{Namespace: "a", Workload: "b", Kind: node.GRPC}, DefaultXDSAddress, "SERVICE_ACCOUNT"},
		"bad kind":                {node.Info{Namespace: "a", Workload: "b", ServiceAccount: "c", Kind: "istio"}, DefaultXDSAddress, "istio"},
		"address without port":    {info(node.GRPC), "127.0.0.1", `xds address "127.0.0.1"`},
		"port out of range":       {info(node.Envoy), "127.0.0.1:70000", "port from 1 to 65535"},
		"empty host":              {info(node.Envoy), ":15010", "want host:port"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Render(tc.info, tc.addr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Render = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestGRPCBootstrapReachesServer hands the bootstrap to grpc-go's own xDS
// client and checks, at a real xDS server on loopback, that it connects and
// presents the identity the control plane expects.
func TestGRPCBootstrapReachesServer(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nodes := make(chan *corev3.Node, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := serverv3.NewServer(ctx, cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			select {
			case nodes <- req.GetNode():
			default:
			}
			return nil
		},
	})
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	go g.Serve(lis)
	defer g.Stop()

	want := info(node.GRPC)
	bs, err := GRPC(want, lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	resolver, err := xds.NewXDSResolverWithConfigForTesting(bs)
	if err != nil {
		t.Fatalf("grpc-go rejects the bootstrap: %v\n%s", err, bs)
	}
	conn, err := grpc.NewClient("xds:///echo.demo.svc.cluster.local:50051",
		grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Connect()
	select {
	case n := <-nodes:
		got, err := node.FromNode(n)
		if err != nil {
			t.Fatalf("server cannot read the node: %v", err)
		}
		if got != want || n.GetId() != want.ID() {
			t.Errorf("server saw %+v (id %q), want %+v (id %q)", got, n.GetId(), want, want.ID())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the xDS client never sent a request")
	}
}

func secureFiles() FileWatcher {
	return FileWatcher{
		CertificateFile:   "/run/fjord/certs/cert.pem",
		PrivateKeyFile:    "/run/fjord/certs/key.pem",
		CACertificateFile: "/run/fjord/certs/ca.pem",
		RefreshInterval:   time.Minute,
	}
}

// TestGRPCWith: the secure bootstrap's golden form, and grpc-go (whose
// parser builds the file_watcher providers and the TLS channel credentials
// from it) accepts it.
func TestGRPCWith(t *testing.T) {
	files := secureFiles()
	got, err := GRPCWith(info(node.GRPC), DefaultSecureXDSAddress, GRPCOptions{
		CertificateProviders: map[string]FileWatcher{CertProviderInstance: files},
		ChannelTLS:           &files,
	})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "grpc-secure.json", got)
	if _, err := xds.NewXDSResolverWithConfigForTesting(got); err != nil {
		t.Fatalf("grpc-go rejects the bootstrap: %v\n%s", err, got)
	}
	plain, err := GRPCWith(info(node.GRPC), DefaultXDSAddress, GRPCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "grpc.json", plain)
}

func TestGRPCWithErrors(t *testing.T) {
	noKey := secureFiles()
	noKey.PrivateKeyFile = ""
	negative := secureFiles()
	negative.RefreshInterval = -time.Second
	tests := map[string]struct {
		opts GRPCOptions
		want string
	}{
		"certificate without key": {GRPCOptions{ChannelTLS: &noKey}, "go together"},
		"no files":                {GRPCOptions{ChannelTLS: &FileWatcher{}}, "neither a certificate nor a CA certificate file"},
		"negative refresh":        {GRPCOptions{CertificateProviders: map[string]FileWatcher{"default": negative}}, `certificate provider "default"`},
		"unnamed provider":        {GRPCOptions{CertificateProviders: map[string]FileWatcher{"": secureFiles()}}, "empty name"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := GRPCWith(info(node.GRPC), DefaultSecureXDSAddress, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("GRPCWith = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestEnvoyADSVariant: Envoy speaks delta ADS unless told otherwise, sends
// its node once per stream in either variant, and either variant passes
// Envoy's validation.
func TestEnvoyADSVariant(t *testing.T) {
	for name, tc := range map[string]struct {
		opts EnvoyOptions
		want corev3.ApiConfigSource_ApiType
	}{
		"default":            {EnvoyOptions{}, corev3.ApiConfigSource_DELTA_GRPC},
		"state of the world": {EnvoyOptions{StateOfTheWorld: true}, corev3.ApiConfigSource_GRPC},
		"sotw with SDS":      {EnvoyOptions{StateOfTheWorld: true, SDSSocket: "/run/sds.sock"}, corev3.ApiConfigSource_GRPC},
	} {
		t.Run(name, func(t *testing.T) {
			out, err := EnvoyWith(info(node.Envoy), DefaultXDSAddress, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			b := parseEnvoy(t, out)
			if got := b.GetDynamicResources().GetAdsConfig().GetApiType(); got != tc.want {
				t.Errorf("ADS api_type = %v, want %v", got, tc.want)
			}
			if !b.GetDynamicResources().GetAdsConfig().GetSetNodeOnFirstMessageOnly() {
				t.Error("ADS must send the node on the stream's first request only")
			}
		})
	}
}

// TestEnvoyWithSDS: with the agent's socket, the bootstrap defines the SDS
// cluster mTLS resources name, and reaches the control plane over TLS with
// the agent's secrets; the whole thing still passes Envoy's validation.
func TestEnvoyWithSDS(t *testing.T) {
	out, err := EnvoyWith(info(node.Envoy), DefaultSecureXDSAddress, EnvoyOptions{SDSSocket: "/var/run/fjord/sds.sock"})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "envoy-sds.yaml", out)
	b := parseEnvoy(t, out)
	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range b.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = c
	}
	sds := clusters[SDSCluster]
	if got := sds.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath(); got != "/var/run/fjord/sds.sock" {
		t.Errorf("SDS cluster pipe = %q, want the agent's socket", got)
	}
	var tlsCtx tlsv3.UpstreamTlsContext
	if err := clusters[XDSCluster].GetTransportSocket().GetTypedConfig().UnmarshalTo(&tlsCtx); err != nil {
		t.Fatalf("xDS cluster has no TLS context: %v", err)
	}
	common := tlsCtx.GetCommonTlsContext()
	if n := common.GetTlsCertificateSdsSecretConfigs()[0].GetName(); n != SecretCertificate {
		t.Errorf("client certificate secret = %q, want %q", n, SecretCertificate)
	}
	if n := common.GetValidationContextSdsSecretConfig().GetName(); n != SecretRootCA {
		t.Errorf("validation secret = %q, want %q", n, SecretRootCA)
	}
}

// parseEnvoy reads an Envoy bootstrap as Envoy would and validates it.
func parseEnvoy(t *testing.T, out []byte) *bootstrapv3.Bootstrap {
	t.Helper()
	js, err := yaml.YAMLToJSON(out)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("not an Envoy bootstrap: %v\n%s", err, out)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	return &b
}
