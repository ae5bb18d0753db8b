package certs

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"
)

// ExternalOptions configure an ExternalIssuer.
type ExternalOptions struct {
	// LeafTTL is the lifetime of leaves and the longest a caller may ask
	// for. Default DefaultLeafTTL.
	LeafTTL time.Duration
	// Skew is added to every overlap. Default DefaultSkew.
	Skew time.Duration
	// Storage keeps the overlap state (retiring roots, the held-back
	// intermediate's certificates and when it signs) across restarts, and
	// shares it between replicas; nil keeps it in memory only. It never
	// holds a private key. With a Storage, Restore must run before Load.
	Storage Storage
	// Clock defaults to the wall clock.
	Clock clock.WithTicker
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// ExternalIssuer signs workload leaves in-process with a signing
// intermediate that someone else issues and renews: cert-manager, in the
// cert-manager CA mode. The watcher hands it each version of the issued
// Secret (Load); leaves never wait on, or load, the external issuer.
//
// A renewal under the same roots takes effect at once. An intermediate under
// a root the bundle does not hold yet is held back: the new roots are
// trusted at once, but the old intermediate keeps signing for one overlap
// (leaf lifetime + skew), so that every workload has the new roots before
// any peer presents a leaf under them; and roots that left ca.crt stay
// trusted until one overlap after the switch, when no leaf they signed is
// valid any more. That is the built-in CA's rotation rule, applied to
// changes Fjord does not schedule itself.
//
// With a Storage, that state survives a restart: the retiring roots stay
// until their time and later renewals are held back by the same rule. The
// intermediate that was signing during a hold-back does not survive it,
// because its key was only in memory and cert-manager's Secret now holds
// its successor: after a restart the Secret's intermediate signs at once,
// with a warning, rather than no intermediate signing until the hold-back
// ends (which would let every workload leaf expire).
type ExternalIssuer struct {
	opts ExternalOptions
	log  *slog.Logger

	view atomic.Pointer[externalView]

	mu       sync.Mutex // guards the fields below and serialises Load/advance
	active   *externalSigner
	pending  *externalSigner // held back until activate
	activate time.Time
	current  []*x509.Certificate // roots of the latest ca.crt
	retiring []retiringRoot
	// since is when each trusted root (by DER) entered the bundle.
	since   map[string]time.Time
	changed chan struct{}
	loaded  chan struct{} // closed by the first Load

	// revision is the stored state's, "" when none is stored.
	revision string
	// dirty: the last write failed; Run retries it.
	dirty bool
	// restored is the state Restore read, until the first Load resumes it.
	restored    *overlapState
	restoreDone bool
}

// externalSigner is one version of the issued Secret, checked.
type externalSigner struct {
	cert  *x509.Certificate
	key   Key
	chain []*x509.Certificate // cert, then the intermediates above it, no root
	roots []*x509.Certificate // ca.crt
}

type retiringRoot struct {
	cert  *x509.Certificate
	until time.Time
}

// externalView is what Sign and Bundle read without locks.
type externalView struct {
	signer    *externalSigner
	bundle    []*x509.Certificate
	bundlePEM []byte
}

var _ ServingIssuer = (*ExternalIssuer)(nil)

// ErrNotLoaded is returned by Sign before the first intermediate is loaded.
var ErrNotLoaded = errors.New("no signing intermediate issued yet")

// NewExternalIssuer returns an issuer with nothing loaded: it signs once
// Load has been given the first issued Secret (see Loaded).
func NewExternalIssuer(opts ExternalOptions) *ExternalIssuer {
	if opts.LeafTTL <= 0 {
		opts.LeafTTL = DefaultLeafTTL
	}
	if opts.Skew <= 0 {
		opts.Skew = DefaultSkew
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &ExternalIssuer{opts: opts, log: opts.Log, since: map[string]time.Time{},
		changed: make(chan struct{}), loaded: make(chan struct{})}
}

// Loaded is closed once an intermediate has been loaded.
func (e *ExternalIssuer) Loaded() <-chan struct{} { return e.loaded }

// LeafTTL is the longest leaf lifetime.
func (e *ExternalIssuer) LeafTTL() time.Duration { return e.opts.LeafTTL }

// Load checks and installs one version of the issued Secret: tlsCrt is the
// intermediate followed by its issuer chain, tlsKey its PKCS #8 key, caCrt
// the issuer's root(s). A version that does not check out is refused and the
// current one stays in use. Loading what is already installed changes
// nothing. With a Storage, each change is written there before Load
// returns (a failed write is logged, and retried by Run).
func (e *ExternalIssuer) Load(tlsCrt, tlsKey, caCrt []byte) error {
	s, err := parseExternal(tlsCrt, tlsKey, caCrt, e.opts.Clock.Now())
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.opts.Storage != nil && !e.restoreDone {
		return errors.New("loading the intermediate: the overlap state was not restored first")
	}
	now := e.opts.Clock.Now()
	if e.active != nil && (e.active.same(s) || e.pending != nil && e.pending.same(s)) {
		return nil
	}
	if e.active == nil && e.restored != nil {
		e.resume(s, now)
		e.publish()
		close(e.loaded)
		e.persist()
		return nil
	}
	if e.active == nil {
		// The first roots are taken as known to every peer: workloads
		// got them from the same Secret through the root CA ConfigMap.
		e.active, e.current = s, s.roots
		for _, r := range s.roots {
			e.since[string(r.Raw)] = time.Time{}
		}
		e.log.Info("signing intermediate loaded", "signer", describe(s.cert), "roots", len(s.roots))
		e.publish()
		close(e.loaded)
		e.persist()
		return nil
	}
	overlap := Overlap(e.opts.LeafTTL, e.opts.Skew)
	// The roots s brings are trusted from now; it may sign once a root it
	// chains to has been trusted for one overlap. A second renewal during
	// the overlap therefore waits for the same moment as the first. Roots
	// the signing intermediate chains to count as established too: leaves
	// under them are out already (after a restart it can sign before its
	// roots were established), so holding back another intermediate under
	// them would protect no peer.
	established := signingRoots(e.active.chain, e.trusted(), now)
	e.enter(s.roots, now)
	signsAt := time.Time{}
	for _, r := range slices.Concat(e.trusted(), s.roots) {
		since := e.since[string(r.Raw)]
		if !now.Before(since.Add(overlap)) {
			established = append(established, r)
		} else if containsCert(s.roots, r) && (signsAt.IsZero() || since.Add(overlap).Before(signsAt)) {
			signsAt = since.Add(overlap)
		}
	}
	if chainsTo(s.chain, established, now) || signsAt.IsZero() || !e.active.cert.NotAfter.After(signsAt) {
		signsAt = now
		e.active, e.pending = s, nil
		e.log.Info("signing intermediate reloaded", "signer", describe(s.cert), "roots", len(s.roots))
	} else {
		e.pending, e.activate = s, signsAt
		e.log.Info("signing intermediate under new roots: trusting them now, signing with it after the overlap",
			"signer", describe(s.cert), "signs_at", signsAt)
	}
	// Roots that left ca.crt stay until one overlap after the new
	// intermediate signs.
	e.replaceRoots(e.current, s.roots, signsAt.Add(overlap))
	e.publish()
	e.persist()
	return nil
}

// resume installs the first Secret after a restart on top of the restored
// state: the retiring roots and when each root entered the bundle are kept,
// and roots that left ca.crt meanwhile start retiring now. The Secret's
// intermediate signs at once, because no other key is left; when peers may
// not all trust its roots yet, that is logged with the moment they will.
// Called with mu held.
func (e *ExternalIssuer) resume(s *externalSigner, now time.Time) {
	r := e.restored
	e.restored = nil
	// Leaves under the roots the previous intermediate chains to are out
	// already: signing under them changes nothing for peers.
	inUse := signingRoots(r.signer, slices.Concat(r.current, rootsOf(r.retiring)), now)
	e.since = r.since
	for _, x := range r.retiring {
		if now.Before(x.until) {
			e.retiring = append(e.retiring, x)
		} else {
			delete(e.since, string(x.cert.Raw))
		}
	}
	switch {
	case r.pending != nil && equalCerts(r.pending, s.chain):
		e.log.Info("the issued intermediate is the one held back before the restart", "signer", describe(s.cert), "was_due", r.activate)
	case r.pending != nil:
		e.log.Warn("the stored held-back intermediate matches no issued one; dropping it",
			"stored", describe(r.pending[0]), "issued", describe(s.cert))
	}
	overlap := Overlap(e.opts.LeafTTL, e.opts.Skew)
	e.enter(s.roots, now)
	e.active = s
	e.replaceRoots(r.current, s.roots, now.Add(overlap))
	var trustedBy time.Time
	for _, root := range s.roots {
		if at := e.since[string(root.Raw)].Add(overlap); trustedBy.IsZero() || at.Before(trustedBy) {
			trustedBy = at
		}
	}
	if now.Before(trustedBy) && !chainsTo(s.chain, inUse, now) {
		e.log.Warn("signing at once with an intermediate under roots peers may not all trust yet: the intermediate that was "+
			"signing during the overlap went with the restart (its key is never stored); peers that have not renewed since "+
			"the roots entered the bundle may refuse its leaves until they do",
			"signer", describe(s.cert), "trusted_by_all_at", trustedBy)
	}
	e.log.Info("signing intermediate loaded after a restart", "signer", describe(s.cert), "roots", len(s.roots),
		"retiring_roots", len(e.retiring))
}

// enter records now as the moment each of roots entered the bundle,
// keeping the earlier moment of a root already in it. Called with mu held.
func (e *ExternalIssuer) enter(roots []*x509.Certificate, now time.Time) {
	for _, r := range roots {
		if _, ok := e.since[string(r.Raw)]; !ok {
			e.since[string(r.Raw)] = now
		}
	}
}

// replaceRoots makes roots the current ones: each root of old that is not
// among them retires at until, and a retiring root that is among them is
// current again. Called with mu held.
func (e *ExternalIssuer) replaceRoots(old, roots []*x509.Certificate, until time.Time) {
	for _, r := range old {
		if !containsCert(roots, r) {
			e.retiring = append(e.retiring, retiringRoot{cert: r, until: until})
		}
	}
	e.current = roots
	e.retiring = slices.DeleteFunc(e.retiring, func(r retiringRoot) bool { return containsCert(roots, r.cert) })
}

// Run takes the held-back steps when they are due (a pending intermediate
// starts signing, a retired root leaves the bundle), and retries a failed
// write of the overlap state, until ctx ends.
func (e *ExternalIssuer) Run(ctx context.Context) error {
	for {
		next := e.advance()
		var wake <-chan time.Time
		var t clock.Timer
		if !next.IsZero() {
			t = e.opts.Clock.NewTimer(max(next.Sub(e.opts.Clock.Now()), 0))
			wake = t.C()
		}
		e.mu.Lock()
		changed := e.changed
		e.mu.Unlock()
		select {
		case <-ctx.Done():
			if t != nil {
				t.Stop()
			}
			return nil
		case <-wake:
		case <-changed: // a Load may have brought an earlier deadline
			if t != nil {
				t.Stop()
			}
		}
	}
}

// advance takes the steps due now and returns when the next one is due
// (zero: none).
func (e *ExternalIssuer) advance() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.opts.Clock.Now()
	if e.dirty {
		e.persist()
	}
	changed := false
	if e.pending != nil && !now.Before(e.activate) {
		e.active, e.pending = e.pending, nil
		e.log.Info("signing with the new intermediate", "signer", describe(e.active.cert))
		changed = true
	}
	kept := e.retiring[:0]
	for _, r := range e.retiring {
		if now.Before(r.until) {
			kept = append(kept, r)
		} else {
			delete(e.since, string(r.cert.Raw))
			e.log.Info("retired root left the trust bundle", "root", describe(r.cert))
			changed = true
		}
	}
	e.retiring = kept
	if changed {
		e.publish()
		e.persist()
	}
	var next time.Time
	if e.pending != nil {
		next = e.activate
	}
	for _, r := range e.retiring {
		if next.IsZero() || r.until.Before(next) {
			next = r.until
		}
	}
	if retry := now.Add(storageRetry); e.dirty && (next.IsZero() || retry.Before(next)) {
		next = retry
	}
	return next
}

func rootsOf(rs []retiringRoot) []*x509.Certificate {
	out := make([]*x509.Certificate, len(rs))
	for i, r := range rs {
		out[i] = r.cert
	}
	return out
}

// trusted is the bundle's roots. Called with mu held.
func (e *ExternalIssuer) trusted() []*x509.Certificate {
	out := slices.Clone(e.current)
	for _, r := range e.retiring {
		out = append(out, r.cert)
	}
	return out
}

// publish installs a new view and signals a change if the signer or the
// bundle differ. Called with mu held.
func (e *ExternalIssuer) publish() {
	b := e.trusted()
	// The active signer's roots first, as the built-in CA orders them.
	slices.SortStableFunc(b, func(x, y *x509.Certificate) int {
		xa, ya := containsCert(e.active.roots, x), containsCert(e.active.roots, y)
		switch {
		case xa == ya:
			return 0
		case xa:
			return -1
		}
		return 1
	})
	old := e.view.Load()
	e.view.Store(&externalView{signer: e.active, bundle: b, bundlePEM: EncodeCerts(b)})
	if old != nil && old.signer == e.active && equalCerts(old.bundle, b) {
		return
	}
	close(e.changed)
	e.changed = make(chan struct{})
}

// Changed is closed at the next change of the signer or the bundle.
func (e *ExternalIssuer) Changed() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.changed
}

// Bundle is the set of trusted roots, the signing ones first; nil before
// the first Load.
func (e *ExternalIssuer) Bundle() []*x509.Certificate {
	if v := e.view.Load(); v != nil {
		return v.bundle
	}
	return nil
}

// BundlePEM is Bundle as PEM.
func (e *ExternalIssuer) BundlePEM() []byte {
	if v := e.view.Load(); v != nil {
		return v.bundlePEM
	}
	return nil
}

// Sign issues a workload leaf for id, exactly as the built-in CA does: only
// the CSR's public key is used.
func (e *ExternalIssuer) Sign(csr *x509.CertificateRequest, id Identity, ttl time.Duration) ([]*x509.Certificate, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	return e.sign(csr, ttl, workloadNames(id))
}

// SignServing issues the control plane's serving certificate: id's URI plus
// the CSR's DNS names and IP addresses.
func (e *ExternalIssuer) SignServing(csr *x509.CertificateRequest, id Identity, ttl time.Duration) ([]*x509.Certificate, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	return e.sign(csr, ttl, servingNames(id, csr))
}

func (e *ExternalIssuer) sign(csr *x509.CertificateRequest, ttl time.Duration, names func(*x509.Certificate)) ([]*x509.Certificate, error) {
	v := e.view.Load()
	if v == nil {
		return nil, ErrNotLoaded
	}
	if ttl <= 0 || ttl > e.opts.LeafTTL {
		ttl = e.opts.LeafTTL
	}
	s := v.signer
	leaf, err := issueLeaf(e.opts.Clock.Now(), ttl, csr, names, s.cert, s.key.Signer())
	if err != nil {
		return nil, err
	}
	return append([]*x509.Certificate{leaf}, s.chain...), nil
}

// parseExternal checks an issued intermediate: a CA certificate, valid now,
// whose key is tlsKey, chaining through the rest of tlsCrt to a root in
// caCrt.
func parseExternal(tlsCrt, tlsKey, caCrt []byte, now time.Time) (*externalSigner, error) {
	chain, err := ParseCerts(tlsCrt)
	if err != nil {
		return nil, fmt.Errorf("tls.crt: %w", err)
	}
	roots, err := ParseCerts(caCrt)
	if err != nil {
		return nil, fmt.Errorf("ca.crt: %w", err)
	}
	key, err := ParseKey(tlsKey)
	if err != nil {
		return nil, fmt.Errorf("tls.key (want PKCS #8): %w", err)
	}
	cert := chain[0]
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("tls.crt: %s is not a CA certificate with certSign usage", describe(cert))
	}
	if !key.Matches(cert) {
		return nil, fmt.Errorf("tls.key does not belong to %s", describe(cert))
	}
	// A root that issued the intermediate directly may be repeated at the
	// end of tls.crt; the chain served to peers leaves it out.
	chain = slices.DeleteFunc(chain, func(c *x509.Certificate) bool { return c != cert && containsCert(roots, c) })
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("tls.crt %s does not chain to ca.crt: %w", describe(cert), err)
	}
	return &externalSigner{cert: cert, key: *key, chain: chain, roots: roots}, nil
}

func (s *externalSigner) same(o *externalSigner) bool {
	return equalCerts(s.chain, o.chain) && equalCerts(s.roots, o.roots)
}

// chainsTo reports whether chain (an intermediate, then the intermediates
// above it) verifies against roots.
func chainsTo(chain, roots []*x509.Certificate, now time.Time) bool {
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// signingRoots is the roots among trusted that chain verifies against.
func signingRoots(chain, trusted []*x509.Certificate, now time.Time) []*x509.Certificate {
	var out []*x509.Certificate
	for _, r := range trusted {
		if chainsTo(chain, []*x509.Certificate{r}, now) {
			out = append(out, r)
		}
	}
	return out
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	return slices.ContainsFunc(list, c.Equal)
}
