package certs

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"
)

// servingRetry is the first wait after a failed renewal of the serving
// certificate; it doubles up to servingRetryMax.
const (
	servingRetry    = time.Second
	servingRetryMax = time.Minute
)

// ServingOptions describe the control plane's own serving certificate.
type ServingOptions struct {
	// Identity is the control plane's SPIFFE ID (its namespace and service
	// account), so that clients can check it like any workload.
	Identity Identity
	// DNSNames and IPs are what clients dial: fjord-cp.<ns>.svc in a
	// cluster, 127.0.0.1 standalone.
	DNSNames []string
	IPs      []net.IP
	// TTL of the certificate; 0 means the issuer's maximum.
	TTL time.Duration
	// Clock defaults to the wall clock.
	Clock clock.WithTicker
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// Serving keeps the secure port's TLS material current: a serving
// certificate renewed at 2/3 of its lifetime and re-issued at once when the
// CA's signer changes, and the CA bundle that client certificates (on
// authenticated xDS) are checked against, which follows rotations.
type Serving struct {
	issuer ServingIssuer
	opts   ServingOptions
	log    *slog.Logger
	cert   atomic.Pointer[tls.Certificate]
	// changed is the issuer's change signal, taken before each renewal so
	// that a change during one wakes Run again.
	changed <-chan struct{}
	// config is the per-handshake config: the base with the current client
	// CA pool.
	config atomic.Pointer[tls.Config]
}

// NewServing issues the first serving certificate.
func NewServing(issuer ServingIssuer, opts ServingOptions) (*Serving, error) {
	if err := opts.Identity.Validate(); err != nil {
		return nil, fmt.Errorf("serving identity: %w", err)
	}
	if len(opts.DNSNames)+len(opts.IPs) == 0 {
		return nil, errors.New("serving certificate: no DNS name or IP address")
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Serving{issuer: issuer, opts: opts, log: opts.Log, changed: issuer.Changed()}
	if err := s.renew(); err != nil {
		return nil, err
	}
	return s, nil
}

// TLSConfig is the secure port's server config. Client certificates are
// optional at the TLS layer, because the certificate API's callers have
// none yet (they authenticate with a token); authenticated xDS demands one
// per stream and reads it with the peer's verified chains.
func (s *Serving) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return s.config.Load(), nil },
	}
}

// Certificate is the current serving certificate.
func (s *Serving) Certificate() *tls.Certificate { return s.cert.Load() }

// Run renews the certificate until ctx ends.
func (s *Serving) Run(ctx context.Context) error {
	var retry time.Duration
	for {
		wait := retry
		if retry == 0 {
			leaf := s.cert.Load().Leaf
			wait = RenewAt(leaf.NotBefore, leaf.NotAfter).Sub(s.opts.Clock.Now())
		}
		t := s.opts.Clock.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-s.changed:
			t.Stop()
		case <-t.C():
		}
		s.changed = s.issuer.Changed()
		if err := s.renew(); err != nil {
			retry = min(max(2*retry, servingRetry), servingRetryMax)
			s.log.Error("renewing the serving certificate failed; the current one stays in use", "error", err, "retry_in", retry)
			continue
		}
		retry = 0
	}
}

func (s *Serving) renew() error {
	key, err := GenerateKey()
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		DNSNames: s.opts.DNSNames, IPAddresses: s.opts.IPs,
	}, key.Signer())
	if err != nil {
		return fmt.Errorf("serving certificate request: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return fmt.Errorf("serving certificate request: %w", err)
	}
	chain, err := s.issuer.SignServing(csr, s.opts.Identity, s.opts.TTL)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: key.Signer(), Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	pool := x509.NewCertPool()
	for _, c := range s.issuer.Bundle() {
		pool.AddCert(c)
	}
	s.cert.Store(cert)
	s.config.Store(&tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		NextProtos:   []string{"h2"},
	})
	s.log.Info("serving certificate issued", "identity", s.opts.Identity.String(),
		"dns", s.opts.DNSNames, "ips", s.opts.IPs, "not_after", chain[0].NotAfter)
	return nil
}
