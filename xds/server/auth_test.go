package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/store"
	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/server"
)

// secureControlPlane is a cache served on an authenticated TLS port, with
// the CA that issues its serving certificate and the clients' certificates.
type secureControlPlane struct {
	*controlPlane
	ca *certs.CA
}

func newCA(t testing.TB) *certs.CA {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ca, err := certs.New(context.Background(), certs.Options{Storage: st.CA(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func startSecureControlPlane(t testing.TB) *secureControlPlane {
	t.Helper()
	ca := newCA(t)
	serving, err := certs.NewServing(ca, certs.ServingOptions{
		Identity: certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: "fjord-system", ServiceAccount: "fjord-cp"},
		IPs:      []net.IP{net.IPv4(127, 0, 0, 1)},
		Log:      slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	cp := &controlPlane{cache: cache.New(log), reg: prometheus.NewRegistry(), logs: logs}
	xds := server.New(cp.cache, cp.reg, log)
	g := grpc.NewServer(append(server.TLSGRPCOptions(), grpc.Creds(credentials.NewTLS(serving.TLSConfig())))...)
	xds.RegisterAuthenticated(g, certs.DefaultTrustDomain)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp.addr = lis.Addr().String()
	done := make(chan error, 1)
	go func() { done <- g.Serve(lis) }()
	t.Cleanup(func() {
		xds.Close()
		g.GracefulStop()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("xDS server: %v", err)
		}
	})
	return &secureControlPlane{controlPlane: cp, ca: ca}
}

// leaf issues a client certificate for id from ca, as the certificate API
// would for the workload's own key.
func leaf(t testing.TB, ca *certs.CA, id certs.Identity) *tls.Certificate {
	t.Helper()
	key, err := certs.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := certs.NewCSR(*key, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := certs.ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Sign(csr, id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &tls.Certificate{PrivateKey: key.Signer(), Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// dialTLS connects to the secure port trusting cp's CA, presenting client
// (none if nil).
func (cp *secureControlPlane) dialTLS(t testing.TB, client *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	roots := x509.NewCertPool()
	for _, c := range cp.ca.Bundle() {
		roots.AddCert(c)
	}
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if client != nil {
		cfg.Certificates = []tls.Certificate{*client}
	}
	cc, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func identity(td, ns, sa string) certs.Identity {
	return certs.Identity{TrustDomain: td, Namespace: ns, ServiceAccount: sa}
}

// TestAuthenticatedXDS: on the secure port a stream needs a certificate
// from the mesh CA whose SPIFFE ID is the node's namespace and service
// account, for its whole life; every refusal is counted by reason.
func TestAuthenticatedXDS(t *testing.T) {
	cp := startSecureControlPlane(t)
	update(t, cp.cache, node.GRPC, proxylessService(t, target, "127.0.0.1:9001"))
	update(t, cp.cache, node.Envoy, sidecarServices(t, map[string]string{"a": "10.0.0.1:8080"}, "a"))

	td := certs.DefaultTrustDomain
	client := leaf(t, cp.ca, identity(td, "demo", "client"))
	web := leaf(t, cp.ca, identity(td, "demo", "web"))
	otherDomain := leaf(t, cp.ca, identity("other.example", "demo", "client"))
	foreign := leaf(t, newCA(t), identity(td, "demo", "client"))

	otherSA := grpcClient
	otherSA.ServiceAccount = "other"
	otherNS := grpcClient
	otherNS.Namespace = "prod"
	sameSAOtherWorkload := grpcClient
	sameSAOtherWorkload.Workload = "client-2"
	otherEnvoy := envoySidecar
	otherEnvoy.ServiceAccount = "admin"

	tests := map[string]struct {
		cert          *tls.Certificate
		delta         bool
		first, second *corev3.Node
		want          codes.Code
		reason        string // counted in fjord_xds_auth_failures_total
	}{
		"matching certificate":                {cert: client, first: grpcClient.Node(), want: codes.OK},
		"delta matching certificate":          {cert: web, delta: true, first: envoySidecar.Node(), want: codes.OK},
		"no certificate":                      {first: grpcClient.Node(), want: codes.Unauthenticated, reason: "no_certificate"},
		"delta no certificate":                {delta: true, first: envoySidecar.Node(), want: codes.Unauthenticated, reason: "no_certificate"},
		"certificate of another trust domain": {cert: otherDomain, first: grpcClient.Node(), want: codes.Unauthenticated, reason: "bad_certificate"},
		"node claims another service account": {cert: client, first: otherSA.Node(), want: codes.PermissionDenied, reason: "identity_mismatch"},
		"node claims another namespace":       {cert: client, first: otherNS.Node(), want: codes.PermissionDenied, reason: "identity_mismatch"},
		"delta node claims another identity":  {cert: client, delta: true, first: envoySidecar.Node(), want: codes.PermissionDenied, reason: "identity_mismatch"},
		"node switched mid-stream":            {cert: client, first: grpcClient.Node(), second: otherSA.Node(), want: codes.PermissionDenied, reason: "node_changed"},
		"node switched within the identity":   {cert: client, first: grpcClient.Node(), second: sameSAOtherWorkload.Node(), want: codes.PermissionDenied, reason: "node_changed"},
		"delta node switched mid-stream":      {cert: web, delta: true, first: envoySidecar.Node(), second: otherEnvoy.Node(), want: codes.PermissionDenied, reason: "node_changed"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := 0.0
			if tc.reason != "" {
				before = cp.metric(t, "fjord_xds_auth_failures_total", "reason", tc.reason)
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cp.dialTLS(t, tc.cert))
			var got error
			if tc.delta {
				got = deltaIdentity(ctx, t, ads, tc.first, tc.second)
			} else {
				got = sotwIdentity(ctx, t, ads, tc.first, tc.second)
			}
			if status.Code(got) != tc.want {
				t.Fatalf("stream ended with %v, want code %v", got, tc.want)
			}
			if tc.reason != "" {
				if after := cp.metric(t, "fjord_xds_auth_failures_total", "reason", tc.reason); after != before+1 {
					t.Errorf("fjord_xds_auth_failures_total{reason=%q} went from %v to %v, want one more", tc.reason, before, after)
				}
			}
		})
	}

	t.Run("certificate from another CA", func(t *testing.T) {
		ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cp.dialTLS(t, foreign))
		s, err := ads.StreamAggregatedResources(testContext(t))
		if err == nil {
			err = s.Send(&discoveryv3.DiscoveryRequest{Node: grpcClient.Node(), TypeUrl: resourcev3.ClusterType})
		}
		if err == nil {
			_, err = s.Recv()
		}
		// The server refuses the foreign certificate in the handshake. With
		// TLS 1.3 the client may already count its side as done, so grpc-go
		// reports the alert either as a failed connection (Unavailable) or as
		// an authentication failure (Unauthenticated); both mean no config.
		if c := status.Code(err); c != codes.Unavailable && c != codes.Unauthenticated {
			t.Errorf("stream ended with %v, want the handshake to fail (Unavailable or Unauthenticated)", err)
		}
	})

	t.Run("fetch", func(t *testing.T) {
		req := func(n node.Info) *discoveryv3.DiscoveryRequest {
			return &discoveryv3.DiscoveryRequest{Node: n.Node(), TypeUrl: resourcev3.ClusterType, ResourceNames: []string{"echo-cluster"}}
		}
		for name, tc := range map[string]struct {
			cert *tls.Certificate
			node node.Info
			want codes.Code
		}{
			"matching":         {client, grpcClient, codes.OK},
			"no certificate":   {nil, grpcClient, codes.Unauthenticated},
			"another identity": {client, otherSA, codes.PermissionDenied},
		} {
			t.Run(name, func(t *testing.T) {
				_, err := clusterservice.NewClusterDiscoveryServiceClient(cp.dialTLS(t, tc.cert)).FetchClusters(testContext(t), req(tc.node))
				if status.Code(err) != tc.want {
					t.Errorf("FetchClusters = %v, want code %v", err, tc.want)
				}
			})
		}
	})

	eventually(t, "every stream to be counted out", func() bool {
		return cp.metric(t, "fjord_xds_connected_proxies", "kind", "grpc") == 0 &&
			cp.metric(t, "fjord_xds_connected_proxies", "kind", "envoy") == 0
	})
	if !containsAll(cp.logs.String(), "not authenticated", "node is not the certificate's identity", "node changed mid-stream") {
		t.Errorf("refusals not logged:\n%s", cp.logs.String())
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
