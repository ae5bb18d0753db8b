package certs

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"
)

// Defaults of the built-in CA.
const (
	DefaultLeafTTL   = 24 * time.Hour
	DefaultSignerTTL = 365 * 24 * time.Hour
	DefaultRootTTL   = 10 * 365 * 24 * time.Hour
	DefaultSkew      = time.Minute
	// DefaultCheckInterval bounds how long a change another replica made
	// (or `fjordctl ca rotate`) waits to be seen.
	DefaultCheckInterval = time.Minute
)

// ErrRotating is returned by Rotate while a rotation is in progress.
var ErrRotating = errors.New("a root rotation is already in progress")

// Options configure the built-in CA.
type Options struct {
	// Storage keeps the CA. Required.
	Storage Storage
	// LeafTTL is the lifetime of leaves, and the longest a caller may ask
	// for. Default DefaultLeafTTL.
	LeafTTL time.Duration
	// SignerTTL and RootTTL are the intermediate's and the root's lifetimes.
	SignerTTL, RootTTL time.Duration
	// Skew is added to each rotation phase and bounds backdating.
	Skew time.Duration
	// CheckInterval is how often Run reloads the storage.
	CheckInterval time.Duration
	// Clock defaults to the wall clock.
	Clock clock.WithTicker
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// CA is the built-in certificate authority: an ECDSA P-256 root and a
// signing intermediate, created on first start and shared through Storage.
// Sign and Bundle read an immutable view without locks; maintenance (Run,
// Rotate) swaps in a new view.
type CA struct {
	opts Options
	log  *slog.Logger

	view atomic.Pointer[view]

	mu       sync.Mutex // serialises maintenance and guards revision, changed
	revision string
	changed  chan struct{}
}

// view is what signing needs, precomputed from one state.
type view struct {
	st        *state
	bundle    []*x509.Certificate
	bundlePEM []byte
}

var _ Issuer = (*CA)(nil)

// New loads the CA from storage, or creates it if none is stored. When
// another control plane creates it at the same time, Create fails with
// ErrExists and this one loads the winner's, so all agree on one CA.
func New(ctx context.Context, opts Options) (*CA, error) {
	if opts.Storage == nil {
		return nil, errors.New("CA: no storage")
	}
	if opts.LeafTTL <= 0 {
		opts.LeafTTL = DefaultLeafTTL
	}
	if opts.SignerTTL <= 0 {
		opts.SignerTTL = DefaultSignerTTL
	}
	if opts.RootTTL <= 0 {
		opts.RootTTL = DefaultRootTTL
	}
	if opts.Skew <= 0 {
		opts.Skew = DefaultSkew
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.LeafTTL*3 > opts.SignerTTL || opts.SignerTTL > opts.RootTTL {
		return nil, fmt.Errorf("CA lifetimes: want leaf (%s) <= a third of the intermediate (%s) <= root (%s)",
			opts.LeafTTL, opts.SignerTTL, opts.RootTTL)
	}
	ca := &CA{opts: opts, log: opts.Log, changed: make(chan struct{})}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	data, rev, err := opts.Storage.Load(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		err = ca.create(ctx)
	case err != nil:
		err = fmt.Errorf("loading CA: %w", err)
	default:
		err = ca.adopt(data, rev)
	}
	if err != nil {
		return nil, err
	}
	return ca, nil
}

// create makes a new root and intermediate and stores them, or adopts the
// CA another writer stored first.
func (ca *CA) create(ctx context.Context) error {
	a, err := ca.newAuthority(ca.opts.Clock.Now())
	if err != nil {
		return err
	}
	st := &state{Phase: PhaseIdle, Active: a}
	data, err := st.encode()
	if err != nil {
		return err
	}
	rev, err := ca.opts.Storage.Create(ctx, data)
	if errors.Is(err, ErrExists) {
		ca.log.Info("another control plane created the CA first; loading it")
		data, rev, err := ca.opts.Storage.Load(ctx)
		if err != nil {
			return fmt.Errorf("loading CA after losing its creation: %w", err)
		}
		return ca.adopt(data, rev)
	}
	if err != nil {
		return fmt.Errorf("storing new CA: %w", err)
	}
	ca.log.Info("created CA", "root", describe(a.Root), "signer", describe(a.Signer))
	ca.install(st, rev)
	return nil
}

// adopt installs a stored state. Called with mu held.
func (ca *CA) adopt(data map[string][]byte, rev string) error {
	st, err := decodeState(data)
	if err != nil {
		return err
	}
	ca.install(st, rev)
	return nil
}

// install publishes st. Called with mu held.
func (ca *CA) install(st *state, rev string) {
	old := ca.view.Load()
	ca.revision = rev
	b := st.bundle()
	ca.view.Store(&view{st: st, bundle: b, bundlePEM: EncodeCerts(b)})
	if old != nil && old.st.Active.Signer.Equal(st.Active.Signer) && equalCerts(old.bundle, b) {
		return
	}
	if old != nil {
		ca.log.Info("CA changed", "phase", st.Phase, "signer", describe(st.Active.Signer), "trusted_roots", len(b))
	}
	close(ca.changed)
	ca.changed = make(chan struct{})
}

// Changed returns a channel that is closed at the next change of the signer
// or of the bundle, so that serving certificates and bundles delivered
// elsewhere follow a rotation at once.
func (ca *CA) Changed() <-chan struct{} {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.changed
}

// Bundle is the set of trusted roots, the signing one first.
func (ca *CA) Bundle() []*x509.Certificate { return ca.view.Load().bundle }

// BundlePEM is Bundle as PEM.
func (ca *CA) BundlePEM() []byte { return ca.view.Load().bundlePEM }

// LeafTTL is the longest leaf lifetime.
func (ca *CA) LeafTTL() time.Duration { return ca.opts.LeafTTL }

// Sign issues a workload leaf for id to csr's public key. It copies nothing
// else from the CSR: the only name in the leaf is id's URI, whatever the CSR
// asked for (CheckCSR refuses CSRs that ask for anything else, so callers
// learn of their mistake). A ttl of 0 or above LeafTTL means LeafTTL.
func (ca *CA) Sign(csr *x509.CertificateRequest, id Identity, ttl time.Duration) ([]*x509.Certificate, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	return ca.sign(csr, ttl, workloadNames(id))
}

// SignServing issues the control plane's own serving certificate: id's URI
// plus the CSR's DNS names and IP addresses. Only the control plane calls it,
// with a CSR for a key it made itself; workloads never reach it.
func (ca *CA) SignServing(csr *x509.CertificateRequest, id Identity, ttl time.Duration) ([]*x509.Certificate, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	return ca.sign(csr, ttl, servingNames(id, csr))
}

func (ca *CA) sign(csr *x509.CertificateRequest, ttl time.Duration, names func(*x509.Certificate)) ([]*x509.Certificate, error) {
	if ttl <= 0 || ttl > ca.opts.LeafTTL {
		ttl = ca.opts.LeafTTL
	}
	signer := ca.view.Load().st.Active
	leaf, err := issueLeaf(ca.opts.Clock.Now(), ttl, csr, names, signer.Signer, signer.SignerKey.Signer())
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, signer.Signer}, nil
}

// Rotate starts a root rotation: a new root and intermediate are trusted
// from now on and start signing one overlap later. ErrRotating if one is
// already under way.
func (ca *CA) Rotate(ctx context.Context) (Status, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	for {
		if err := ca.reload(ctx); err != nil {
			return Status{}, err
		}
		if p := ca.view.Load().st.Phase; p != PhaseIdle {
			return ca.Status(), fmt.Errorf("%w (phase %s)", ErrRotating, p)
		}
		err := ca.apply(ctx, StepStartRotation)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return Status{}, err
		}
		return ca.Status(), nil
	}
}

// Run keeps the CA current until ctx ends: it reloads the storage (to see
// other replicas' steps and rotations started elsewhere) and takes each step
// when it is due. A change made in this process (Rotate, from the admin
// socket) wakes it at once, so the new phase advances at its deadline and
// not up to CheckInterval later. A failing storage is logged and retried;
// signing goes on with what was loaded.
func (ca *CA) Run(ctx context.Context) error {
	for {
		// Taken before Maintain, so that no change made meanwhile is missed.
		changed := ca.Changed()
		wait := ca.opts.CheckInterval
		if due, err := ca.Maintain(ctx); err != nil {
			ca.log.Error("CA maintenance failed; retrying", "error", err, "retry_in", wait)
		} else if d := due.Sub(ca.opts.Clock.Now()); d < wait {
			wait = max(d, 0)
		}
		t := ca.opts.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		case <-changed:
			t.Stop()
		}
	}
}

// Maintain reloads the storage and takes every step that is due, then
// returns when the next one will be.
func (ca *CA) Maintain(ctx context.Context) (time.Time, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if err := ca.reload(ctx); err != nil {
		return time.Time{}, err
	}
	for {
		step, due := Next(ca.view.Load().st.schedule(), ca.opts.Clock.Now())
		if step == StepNone {
			return due, nil
		}
		err := ca.apply(ctx, step)
		if errors.Is(err, ErrConflict) {
			// Another replica stepped first: take its state and decide again.
			if err := ca.reload(ctx); err != nil {
				return time.Time{}, err
			}
			continue
		}
		if err != nil {
			return time.Time{}, err
		}
	}
}

// reload adopts the stored state if it changed. Called with mu held.
func (ca *CA) reload(ctx context.Context) error {
	data, rev, err := ca.opts.Storage.Load(ctx)
	if err != nil {
		return fmt.Errorf("reloading CA: %w", err)
	}
	if rev == ca.revision {
		return nil
	}
	return ca.adopt(data, rev)
}

// apply takes one step and stores the result; ErrConflict if another writer
// changed the storage first. Called with mu held.
func (ca *CA) apply(ctx context.Context, step Step) error {
	now := ca.opts.Clock.Now()
	cur := ca.view.Load().st
	next := *cur
	overlap := Overlap(ca.opts.LeafTTL, ca.opts.Skew)
	switch step {
	case StepStartRotation:
		a, err := ca.newAuthority(now)
		if err != nil {
			return err
		}
		next.Phase, next.Deadline, next.Pending = PhaseNewRootTrusted, now.Add(overlap).Truncate(time.Second), &a
	case StepSwitchSigner:
		next.Phase, next.Deadline = PhaseNewRootSigning, now.Add(overlap).Truncate(time.Second)
		next.Active, next.Pending, next.Retiring = *cur.Pending, nil, cur.Active.Root
	case StepDropOldRoot:
		next.Phase, next.Deadline, next.Retiring = PhaseIdle, time.Time{}, nil
	case StepRenewSigner:
		signer, key, err := ca.newSigner(now, cur.Active.Root, cur.Active.RootKey)
		if err != nil {
			return err
		}
		next.Active.Signer, next.Active.SignerKey = signer, key
	default:
		return fmt.Errorf("CA: unknown step %q", step)
	}
	data, err := next.encode()
	if err != nil {
		return err
	}
	rev, err := ca.opts.Storage.Update(ctx, data, ca.revision)
	if err != nil {
		return fmt.Errorf("storing CA step %s: %w", step, err)
	}
	ca.log.Info("CA step", "step", step, "phase", next.Phase, "deadline", next.Deadline)
	ca.install(&next, rev)
	return nil
}

// newAuthority makes a root and its first intermediate.
func (ca *CA) newAuthority(now time.Time) (authority, error) {
	key, err := GenerateKey()
	if err != nil {
		return authority{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return authority{}, err
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Fjord"}, CommonName: "Fjord root CA " + now.UTC().Format("2006-01-02T15:04:05Z")},
		NotBefore:             now.Add(-ca.opts.Skew).Truncate(time.Second),
		NotAfter:              now.Add(ca.opts.RootTTL).Truncate(time.Second),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	der, err := x509.CreateCertificate(rand.Reader, t, t, key.Public(), key.Signer())
	if err != nil {
		return authority{}, fmt.Errorf("creating root: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return authority{}, fmt.Errorf("parsing root: %w", err)
	}
	signer, signerKey, err := ca.newSigner(now, root, *key)
	if err != nil {
		return authority{}, err
	}
	return authority{Root: root, RootKey: *key, Signer: signer, SignerKey: signerKey}, nil
}

// newSigner makes a signing intermediate under root.
func (ca *CA) newSigner(now time.Time, root *x509.Certificate, rootKey Key) (*x509.Certificate, Key, error) {
	key, err := GenerateKey()
	if err != nil {
		return nil, Key{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, Key{}, err
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Fjord"}, CommonName: "Fjord signing CA " + now.UTC().Format("2006-01-02T15:04:05Z")},
		NotBefore:             now.Add(-ca.opts.Skew).Truncate(time.Second),
		NotAfter:              now.Add(ca.opts.SignerTTL).Truncate(time.Second),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if t.NotAfter.After(root.NotAfter) {
		t.NotAfter = root.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, t, root, key.Public(), rootKey.Signer())
	if err != nil {
		return nil, Key{}, fmt.Errorf("creating intermediate: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, Key{}, fmt.Errorf("parsing intermediate: %w", err)
	}
	return c, *key, nil
}

// newSerial is a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func equalCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}
