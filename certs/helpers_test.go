package certs

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"io"
	"log/slog"
	"maps"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// t0 is the fake clocks' start.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// memStorage is a Storage in memory with the same create-if-absent and
// revision semantics as the real ones.
type memStorage struct {
	mu   sync.Mutex
	data map[string][]byte
	rev  int
	// failLoad makes Load fail, to test that signing survives it.
	failLoad error
}

func (m *memStorage) Load(context.Context) (map[string][]byte, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failLoad != nil {
		return nil, "", m.failLoad
	}
	if m.data == nil {
		return nil, "", ErrNotFound
	}
	return maps.Clone(m.data), strconv.Itoa(m.rev), nil
}

func (m *memStorage) Create(_ context.Context, data map[string][]byte) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data != nil {
		return "", ErrExists
	}
	m.data, m.rev = maps.Clone(data), 1
	return "1", nil
}

func (m *memStorage) Update(_ context.Context, data map[string][]byte, rev string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data == nil {
		return "", ErrNotFound
	}
	if rev != strconv.Itoa(m.rev) {
		return "", ErrConflict
	}
	m.data = maps.Clone(data)
	m.rev++
	return strconv.Itoa(m.rev), nil
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newTestCA is a CA on s with a fake clock at t0.
func newTestCA(t testing.TB, s Storage, clk *clocktesting.FakeClock, leafTTL time.Duration) *CA {
	t.Helper()
	ca, err := New(context.Background(), Options{Storage: s, Clock: clk, LeafTTL: leafTTL, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue makes a key, a CSR for id and a leaf from ca.
func issue(t testing.TB, ca Issuer, id Identity, ttl time.Duration) []*x509.Certificate {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pemCSR, err := NewCSR(*key, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ParseCSR(pemCSR)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckCSR(csr, id); err != nil {
		t.Fatal(err)
	}
	chain, err := ca.Sign(csr, id, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

// verify checks chain against bundle at now, as a TLS peer would.
func verify(chain, bundle []*x509.Certificate, now time.Time) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range bundle {
		roots.AddCert(c)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	})
	return err
}

var loopback = []net.IP{net.ParseIP("127.0.0.1")}

// csrWith makes a fresh P-256 key and a parsed CSR from tmpl.
func csrWith(t testing.TB, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key.Signer())
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}
