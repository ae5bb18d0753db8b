package api

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/store"
)

var (
	saA  = certs.ServiceAccount{Namespace: "demo", Name: "a"}
	saB  = certs.ServiceAccount{Namespace: "demo", Name: "b"}
	idA  = certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: "demo", ServiceAccount: "a"}
	idB  = certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: "demo", ServiceAccount: "b"}
	idCP = certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: "fjord-system", ServiceAccount: "fjord-cp"}
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is a control plane's secure port in miniature: a CA on bbolt, a
// serving certificate for 127.0.0.1, the certificate API over TLS on a
// loopback port, and token auth with a fake clock.
type env struct {
	store *store.Store
	ca    *certs.CA
	clk   *clocktesting.FakeClock
	addr  string
	logs  *syncBuffer
	log   *slog.Logger
	// peers records PeerIdentity of every call.
	mu    sync.Mutex
	peers []string
}

func newEnv(t *testing.T, limit rate.Limit, burst int) *env {
	t.Helper()
	e := &env{clk: clocktesting.NewFakeClock(time.Now()), logs: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.log = log
	var err error
	if e.store, err = store.Open(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.store.Close() })
	if e.ca, err = certs.New(context.Background(), certs.Options{Storage: e.store.CA(), Clock: e.clk, Log: log}); err != nil {
		t.Fatal(err)
	}
	serving, err := certs.NewServing(e.ca, certs.ServingOptions{Identity: idCP, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Clock: e.clk, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(Options{
		Issuer: e.ca, Authenticator: &certs.TokenAuthenticator{Store: e.store.Tokens(), Clock: e.clk},
		Rate: limit, Burst: burst, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(serving.TLSConfig())),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			id, err := PeerIdentity(ctx, certs.DefaultTrustDomain)
			e.mu.Lock()
			if err != nil {
				e.peers = append(e.peers, "error: "+err.Error())
			} else {
				e.peers = append(e.peers, id.String())
			}
			e.mu.Unlock()
			return h(ctx, req)
		}))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return e
}

func (e *env) token(t *testing.T, sa certs.ServiceAccount, ttl time.Duration) string {
	t.Helper()
	tok, _, err := certs.MintToken(context.Background(), e.store.Tokens(), sa, ttl, e.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// client dials with the CA's bundle and an optional token and client
// certificate.
func (e *env) client(t *testing.T, token string, clientCert *tls.Certificate) CertificateServiceClient {
	t.Helper()
	roots := x509.NewCertPool()
	for _, c := range e.ca.Bundle() {
		roots.AddCert(c)
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	if clientCert != nil {
		cfg.Certificates = []tls.Certificate{*clientCert}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(BearerToken(func() (string, error) { return token, nil })))
	}
	conn, err := grpc.NewClient(e.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return NewCertificateServiceClient(conn)
}

func csrFor(t *testing.T, uris ...certs.Identity) (certs.Key, string) {
	t.Helper()
	key, err := certs.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if len(uris) == 1 {
		pemCSR, err := certs.NewCSR(*key, uris[0])
		if err != nil {
			t.Fatal(err)
		}
		return *key, string(pemCSR)
	}
	tmpl := &x509.CertificateRequest{}
	for _, id := range uris {
		tmpl.URIs = append(tmpl.URIs, id.URL())
	}
	return *key, csrPEM(t, key, tmpl)
}

func csrPEM(t *testing.T, key *certs.Key, tmpl *x509.CertificateRequest) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key.Signer())
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestSign(t *testing.T) {
	e := newEnv(t, 0, 0)
	c := e.client(t, e.token(t, saA, time.Hour), nil)
	key, csr := csrFor(t, idA)
	resp, err := c.Sign(context.Background(), &SignRequest{CsrPem: csr, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := certs.ParseCerts([]byte(resp.CertChainPem))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := certs.ParseCerts([]byte(resp.TrustBundlePem))
	if err != nil {
		t.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range bundle {
		roots.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: e.clk.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("issued chain does not verify against the returned bundle: %v", err)
	}
	if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != idA.String() {
		t.Errorf("URI SANs = %v, want [%s]", chain[0].URIs, idA)
	}
	if pub, ok := chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		t.Error("leaf is not for the CSR's key")
	}
	// Validity is in whole seconds.
	if got := chain[0].NotAfter.Sub(e.clk.Now()); got > time.Hour || got <= time.Hour-time.Second {
		t.Errorf("lifetime %s, want the 1h asked for", got)
	}

	// The new certificate authenticates the workload on the secure port.
	cert := &tls.Certificate{PrivateKey: key.Signer(), Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	_, csr2 := csrFor(t, idA)
	if _, err := e.client(t, e.token(t, saA, time.Hour), cert).Sign(context.Background(), &SignRequest{CsrPem: csr2}); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	peers := e.peers
	e.mu.Unlock()
	if len(peers) != 2 || !strings.HasPrefix(peers[0], "error: "+ErrNoPeerIdentity.Error()) || peers[1] != idA.String() {
		t.Errorf("peer identities seen = %q, want [no certificate, %s]", peers, idA)
	}
}

func TestSignRefusals(t *testing.T) {
	e := newEnv(t, 0, 0)
	tokA := e.token(t, saA, time.Hour)
	expiring := e.token(t, saA, time.Minute)
	key, _ := certs.GenerateKey()
	extraDNS := csrPEM(t, key, &x509.CertificateRequest{URIs: []*url.URL{idA.URL()}, DNSNames: []string{"a.demo.svc"}})
	_, csrA := csrFor(t, idA)
	_, csrB := csrFor(t, idB)
	_, csrAB := csrFor(t, idA, idB)
	e.clk.Step(time.Minute) // expires `expiring`

	tests := map[string]struct {
		token, csr string
		ttl        *durationpb.Duration
		want       codes.Code
		wantMsg    string
	}{
		"no token":           {"", csrA, nil, codes.Unauthenticated, "bearer token"},
		"unknown token":      {"fjt_notatoken", csrA, nil, codes.Unauthenticated, "unknown token"},
		"expired token":      {expiring, csrA, nil, codes.Unauthenticated, "expired"},
		"token for A asks B": {tokA, csrB, nil, codes.PermissionDenied, "not the caller's identity"},
		"A and B in one CSR": {tokA, csrAB, nil, codes.InvalidArgument, "exactly one URI SAN"},
		"extra DNS SAN":      {tokA, extraDNS, nil, codes.InvalidArgument, "only a URI SAN"},
		"not a CSR":          {tokA, "hello", nil, codes.InvalidArgument, "CERTIFICATE REQUEST"},
		"negative ttl":       {tokA, csrA, durationpb.New(-time.Second), codes.InvalidArgument, "ttl"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := e.client(t, tc.token, nil).Sign(context.Background(), &SignRequest{CsrPem: tc.csr, Ttl: tc.ttl})
			if status.Code(err) != tc.want || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Sign = %v, want %s containing %q", err, tc.want, tc.wantMsg)
			}
		})
	}
	if logs := e.logs.String(); strings.Contains(logs, tokA) || strings.Contains(logs, expiring) {
		t.Error("a token appears in the logs")
	}
}

func TestRateLimitPerIdentity(t *testing.T) {
	e := newEnv(t, rate.Every(time.Hour), 2)
	ca, cb := e.client(t, e.token(t, saA, time.Hour), nil), e.client(t, e.token(t, saB, time.Hour), nil)
	_, csrA := csrFor(t, idA)
	_, csrB := csrFor(t, idB)
	for i := range 2 {
		if _, err := ca.Sign(context.Background(), &SignRequest{CsrPem: csrA}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if _, err := ca.Sign(context.Background(), &SignRequest{CsrPem: csrA}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third call in the burst = %v, want ResourceExhausted", err)
	}
	if _, err := cb.Sign(context.Background(), &SignRequest{CsrPem: csrB}); err != nil {
		t.Fatalf("another identity is limited too: %v", err)
	}
}

// TestServerVerification: a client trusting another CA does not talk to
// this control plane, and a client certificate from another CA is refused
// at the handshake.
func TestServerVerification(t *testing.T) {
	e := newEnv(t, 0, 0)
	other := newEnv(t, 0, 0)
	_, csrA := csrFor(t, idA)

	roots := x509.NewCertPool()
	roots.AddCert(other.ca.Bundle()[0])
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})),
		grpc.WithPerRPCCredentials(BearerToken(func() (string, error) { return e.token(t, saA, time.Hour), nil })))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := NewCertificateServiceClient(conn).Sign(context.Background(), &SignRequest{CsrPem: csrA}); status.Code(err) != codes.Unavailable ||
		!strings.Contains(err.Error(), "certificate") {
		t.Fatalf("client trusting another CA: %v, want an Unavailable handshake failure", err)
	}

	key, csr := csrFor(t, idA)
	resp, err := other.client(t, other.token(t, saA, time.Hour), nil).Sign(context.Background(), &SignRequest{CsrPem: csr})
	if err != nil {
		t.Fatal(err)
	}
	chain, _ := certs.ParseCerts([]byte(resp.CertChainPem))
	foreign := &tls.Certificate{PrivateKey: key.Signer()}
	for _, c := range chain {
		foreign.Certificate = append(foreign.Certificate, c.Raw)
	}
	if _, err := e.client(t, e.token(t, saA, time.Hour), foreign).Sign(context.Background(), &SignRequest{CsrPem: csrA}); err == nil {
		t.Fatal("a client certificate from another CA was accepted")
	}
}

func TestDialCertificates(t *testing.T) {
	e := newEnv(t, 0, 0)
	tok := e.token(t, saA, time.Hour)
	conn, err := DialCertificates(e.addr, e.ca.Bundle(), func() (string, error) { return tok, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, csrA := csrFor(t, idA)
	if _, err := NewCertificateServiceClient(conn).Sign(context.Background(), &SignRequest{CsrPem: csrA}); err != nil {
		t.Fatal(err)
	}
	failing := BearerToken(func() (string, error) { return "", errors.New("token file gone") })
	conn2, err := DialCertificates(e.addr, e.ca.Bundle(), failing)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if _, err := NewCertificateServiceClient(conn2).Sign(context.Background(), &SignRequest{CsrPem: csrA}); err == nil ||
		!strings.Contains(err.Error(), "token file gone") {
		t.Fatalf("Sign with an unreadable token = %v", err)
	}
	if _, err := DialCertificates("nowhere", e.ca.Bundle(), failing); err == nil {
		t.Error("bad address accepted")
	}
}
