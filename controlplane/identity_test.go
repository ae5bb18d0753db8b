package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

var demoClient = node.Info{Namespace: "demo", Workload: "client", ServiceAccount: "client", Kind: node.GRPC}

// workloadCert mints a token for demo/client on the admin socket and has a
// certificate issued for a fresh key through the certificate API on the
// secure port, as the identity agent does.
func workloadCert(t *testing.T, r *running, dataDir string) (*tls.Certificate, []*x509.Certificate) {
	t.Helper()
	return workloadCertFor(t, r, dataDir, demoClient)
}

// workloadCertFor is workloadCert for the namespace and service account of
// who.
func workloadCertFor(t *testing.T, r *running, dataDir string, who node.Info) (*tls.Certificate, []*x509.Certificate) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	adminConn, err := api.DialAdmin(filepath.Join(dataDir, api.AdminSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer adminConn.Close()
	tok, err := api.NewAdminServiceClient(adminConn).CreateToken(ctx, &api.CreateTokenRequest{
		Namespace: who.Namespace, ServiceAccount: who.ServiceAccount, Ttl: durationpb.New(time.Hour),
	})
	if err != nil {
		t.Fatalf("CreateToken on the admin socket: %v", err)
	}
	bundle, err := certs.ParseCerts([]byte(tok.TrustBundlePem))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := api.DialCertificates(r.cp.SecureAddr().String(), bundle, func() (string, error) { return tok.Token, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, err := certs.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	id := certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: who.Namespace, ServiceAccount: who.ServiceAccount}
	csr, err := certs.NewCSR(*key, id)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := api.NewCertificateServiceClient(conn).Sign(ctx, &api.SignRequest{CsrPem: string(csr)})
	if err != nil {
		t.Fatalf("Sign on the secure port: %v", err)
	}
	chain, err := certs.ParseCerts([]byte(resp.CertChainPem))
	if err != nil {
		t.Fatal(err)
	}
	c := &tls.Certificate{PrivateKey: key.Signer(), Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c, bundle
}

// secureFetch asks the secure port for the echo listener as demo/client,
// presenting client (none if nil), and returns the listener names served
// or the stream's error.
func secureFetch(t *testing.T, r *running, bundle []*x509.Certificate, client *tls.Certificate) ([]string, error) {
	t.Helper()
	conn := dialXDS(t, r, bundle, client)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	name := translate.ListenerName(node.GRPC, echo, 50051)
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: demoClient.Node(), TypeUrl: resourcev3.ListenerType, ResourceNames: []string{name}})
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, a := range resp.GetResources() {
		names = append(names, resourceName(t, a))
	}
	return names, nil
}

// TestIdentity: the control plane creates its CA in fjord.db, serves the
// certificate API and authenticated xDS on the secure port and tokens on
// the admin socket, and a restart on the same data directory keeps the CA.
func TestIdentity(t *testing.T) {
	data := t.TempDir()
	cfg := Config{ConfigDir: copyExamples(t), DataDir: data, Identity: IdentityConfig{SecureAddress: "127.0.0.1:0"}}
	r := start(t, cfg)
	r.waitReady(t)
	root := r.cp.TrustBundle().BundlePEM()
	if len(root) == 0 {
		t.Fatal("no CA bundle")
	}

	client, bundle := workloadCert(t, r, data)
	if got := client.Leaf.URIs[0].String(); got != "spiffe://cluster.local/ns/demo/sa/client" {
		t.Errorf("issued identity %s", got)
	}
	names, err := secureFetch(t, r, bundle, client)
	if err != nil {
		t.Fatalf("authenticated xDS: %v", err)
	}
	if want := []string{translate.ListenerName(node.GRPC, echo, 50051)}; !cmp.Equal(names, want) {
		t.Errorf("listeners %v, want %v", names, want)
	}
	if _, err := secureFetch(t, r, bundle, nil); status.Code(err) != codes.Unauthenticated {
		t.Errorf("xDS without a client certificate: %v, want Unauthenticated", err)
	}
	if got := r.metric(t, `fjord_xds_auth_failures_total{reason="no_certificate"}`); got != 1 {
		t.Errorf("fjord_xds_auth_failures_total{reason=no_certificate} = %v, want 1", got)
	}
	if got := r.metric(t, `fjord_certs_issued_total`); got != 1 {
		t.Errorf("fjord_certs_issued_total = %v, want 1", got)
	}
	// The plaintext port still serves, unauthenticated.
	if !r.hasListener(t) {
		t.Error("plaintext port does not serve the echo listener")
	}

	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	again := start(t, cfg)
	again.waitReady(t)
	if d := cmp.Diff(string(root), string(again.cp.TrustBundle().BundlePEM())); d != "" {
		t.Errorf("the restarted control plane has another CA (-before +after):\n%s", d)
	}
	// A certificate from before the restart still authenticates.
	if _, err := secureFetch(t, again, bundle, client); err != nil {
		t.Errorf("authenticated xDS after a restart with an earlier certificate: %v", err)
	}
}

// TestPlaintextXDSOff: an empty XDSAddress serves no plaintext port; the
// secure one still serves.
func TestPlaintextXDSOff(t *testing.T) {
	data := t.TempDir()
	cp, err := New(Config{ConfigDir: copyExamples(t), DataDir: data, MonitoringAddress: "127.0.0.1:0",
		Identity: IdentityConfig{SecureAddress: "127.0.0.1:0"}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if cp.XDSAddr() != nil {
		t.Errorf("XDSAddr = %v, want none", cp.XDSAddr())
	}
	if cp.SecureAddr() == nil {
		t.Fatal("no secure address")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestIdentityNeedsStorage: without a data directory the CA must be given
// its storage.
func TestIdentityNeedsStorage(t *testing.T) {
	_, err := New(Config{Source: make(chanSource), SourceOfTruth: true, XDSAddress: "127.0.0.1:0", MonitoringAddress: "127.0.0.1:0",
		Identity: IdentityConfig{SecureAddress: "127.0.0.1:0"}, Log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "need a data directory") {
		t.Fatalf("New = %v, want an error about the CA's storage", err)
	}
}
