package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"k8s.io/utils/clock"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
)

// Defaults of Config.
const (
	DefaultRetryMin    = time.Second
	DefaultRetryMax    = time.Minute
	DefaultCallTimeout = 30 * time.Second
)

// Config configures an Agent.
type Config struct {
	// Address of the certificate API, host:port (the control plane's
	// secure port, 15012).
	Address string
	// Identity is the workload's SPIFFE ID; the token must be for it.
	Identity certs.Identity
	// Token is read for every call.
	Token api.BearerToken
	// Bundle are the roots the control plane is first verified with (from
	// `fjordctl token create`, or the fjord-root-ca ConfigMap). Each
	// response's bundle replaces it, so a root rotation is followed.
	Bundle []*x509.Certificate
	// TTL asked for; 0 leaves it to the CA.
	TTL time.Duration
	// RetryMin and RetryMax bound the backoff after a failed renewal.
	RetryMin, RetryMax time.Duration
	// CallTimeout bounds one call to the certificate API.
	CallTimeout time.Duration
	// Clock defaults to the wall clock.
	Clock clock.WithTicker
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// Credentials are one issued certificate with its key and the bundle that
// came with it. They are immutable; a renewal makes new ones.
type Credentials struct {
	// Key is the private key; it prints as REDACTED.
	Key certs.Key
	// Chain is leaf first, then intermediates.
	Chain []*x509.Certificate
	// Bundle is the roots to trust.
	Bundle []*x509.Certificate
	// ChainPEM and BundlePEM are Chain and Bundle as PEM.
	ChainPEM, BundlePEM []byte
}

// Leaf is the workload certificate.
func (c *Credentials) Leaf() *x509.Certificate { return c.Chain[0] }

// Agent keeps one workload's credentials current.
type Agent struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex // guards cur, changed
	cur     *Credentials
	changed chan struct{}
}

// New checks cfg. Call Run to obtain and renew credentials.
func New(cfg Config) (*Agent, error) {
	if cfg.Address == "" || cfg.Token == nil {
		return nil, errors.New("agent: the certificate API address and a token are required")
	}
	if err := cfg.Identity.Validate(); err != nil {
		return nil, fmt.Errorf("agent identity: %w", err)
	}
	if len(cfg.Bundle) == 0 {
		return nil, errors.New("agent: no trust bundle to verify the control plane with")
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryMin)
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.Bundle = slices.Clone(cfg.Bundle)
	return &Agent{cfg: cfg, log: cfg.Log, changed: make(chan struct{})}, nil
}

// Current returns the credentials, nil before the first issuance.
func (a *Agent) Current() *Credentials {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cur
}

// Changed returns a channel closed when the credentials next change. Take
// it before reading Current, so that no change is missed in between.
func (a *Agent) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}

// WaitReady blocks until the first credentials arrive or ctx ends.
func (a *Agent) WaitReady(ctx context.Context) (*Credentials, error) {
	for {
		ch := a.Changed()
		if c := a.Current(); c != nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		}
	}
}

// Run obtains the first credentials and renews them at 2/3 of their
// lifetime until ctx ends. A failed call is retried with exponential
// backoff; the current credentials stay in use meanwhile (and after they
// expire, renewal keeps being tried: the agent never gives up).
func (a *Agent) Run(ctx context.Context) error {
	var retry time.Duration
	for {
		wait := retry
		if c := a.Current(); c != nil && retry == 0 {
			wait = certs.RenewAt(c.Leaf().NotBefore, c.Leaf().NotAfter).Sub(a.cfg.Clock.Now())
		}
		if wait > 0 {
			t := a.cfg.Clock.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C():
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err := a.renew(ctx); err != nil {
			if ctx.Err() != nil {
				return nil // stopping, not failing
			}
			retry = Backoff(retry, a.cfg.RetryMin, a.cfg.RetryMax)
			attrs := []any{"identity", a.cfg.Identity.String(), "error", err, "retry_in", retry}
			if c := a.Current(); c != nil {
				attrs = append(attrs, "current_not_after", c.Leaf().NotAfter)
				if !a.cfg.Clock.Now().Before(c.Leaf().NotAfter) {
					a.log.Error("certificate expired and renewal failed", attrs...)
					continue
				}
			}
			a.log.Warn("certificate renewal failed", attrs...)
			continue
		}
		retry = 0
	}
}

// Backoff is the wait after a failure that followed a wait of prev: min,
// then doubling up to max.
func Backoff(prev, minWait, maxWait time.Duration) time.Duration {
	if prev <= 0 {
		return minWait
	}
	return min(2*prev, maxWait)
}

// renew makes a new key, has it certified, checks and installs the result.
func (a *Agent) renew(ctx context.Context) error {
	key, err := certs.GenerateKey()
	if err != nil {
		return err
	}
	csr, err := certs.NewCSR(*key, a.cfg.Identity)
	if err != nil {
		return err
	}
	// The roots of the latest response, else the configured ones.
	trust := a.cfg.Bundle
	if c := a.Current(); c != nil {
		trust = c.Bundle
	}
	conn, err := api.DialCertificates(a.cfg.Address, trust, a.cfg.Token)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CallTimeout)
	defer cancel()
	req := &api.SignRequest{CsrPem: string(csr)}
	if a.cfg.TTL > 0 {
		req.Ttl = durationpb.New(a.cfg.TTL)
	}
	resp, err := api.NewCertificateServiceClient(conn).Sign(ctx, req)
	if err != nil {
		return fmt.Errorf("certificate API %s: %w", a.cfg.Address, err)
	}
	creds, err := a.check(*key, resp)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.cur = creds
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
	a.log.Info("certificate issued", "identity", a.cfg.Identity.String(),
		"serial", creds.Leaf().SerialNumber.Text(16), "not_after", creds.Leaf().NotAfter,
		"renew_at", certs.RenewAt(creds.Leaf().NotBefore, creds.Leaf().NotAfter), "trusted_roots", len(creds.Bundle))
	return nil
}

// check refuses a response that would not work: a chain that is not for
// this key and identity, or that does not verify against its own bundle.
func (a *Agent) check(key certs.Key, resp *api.SignResponse) (*Credentials, error) {
	chain, err := certs.ParseCerts([]byte(resp.GetCertChainPem()))
	if err != nil {
		return nil, fmt.Errorf("issued chain: %w", err)
	}
	bundle, err := certs.ParseCerts([]byte(resp.GetTrustBundlePem()))
	if err != nil {
		return nil, fmt.Errorf("issued trust bundle: %w", err)
	}
	leaf := chain[0]
	if !key.Matches(leaf) {
		return nil, errors.New("issued certificate is not for this agent's key")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != a.cfg.Identity.String() {
		return nil, fmt.Errorf("issued certificate names %v, want %s", leaf.URIs, a.cfg.Identity)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range bundle {
		roots.AddCert(c)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: a.cfg.Clock.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return nil, fmt.Errorf("issued certificate does not verify against the issued bundle: %w", err)
	}
	return &Credentials{
		Key: key, Chain: chain, Bundle: bundle,
		ChainPEM: certs.EncodeCerts(chain), BundlePEM: certs.EncodeCerts(bundle),
	}, nil
}
