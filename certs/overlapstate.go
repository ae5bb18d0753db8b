package certs

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// keyOverlap is the one Storage entry of an ExternalIssuer: its overlap
// state as JSON, certificates as PEM. It holds no private key: the
// intermediate's key is only ever read from the issued Secret.
const keyOverlap = "overlap.json"

// storageTimeout bounds one write of the overlap state, which Load and the
// held-back steps make while holding the issuer's lock.
const storageTimeout = 10 * time.Second

// storageRetry is how soon Run tries again to store a state whose write
// failed.
const storageRetry = 30 * time.Second

// overlapState is what an ExternalIssuer keeps across restarts: the trust it
// extended and the schedule it promised, so that a restart neither drops a
// retiring root early nor forgets when a held-back intermediate was due.
type overlapState struct {
	// current is ca.crt of the latest Secret loaded.
	current []*x509.Certificate
	// since is when each root of current and retiring entered the bundle
	// (zero: with the first intermediate, known to every peer).
	since    map[string]time.Time
	retiring []retiringRoot
	// signer is the signing intermediate's chain (certificates only).
	signer []*x509.Certificate
	// pending is the held-back intermediate's chain, signing from
	// activate; nil when none is held back.
	pending  []*x509.Certificate
	activate time.Time
}

// overlapDoc is overlapState as stored.
type overlapDoc struct {
	Roots    []overlapRoot `json:"roots"`
	Retiring []overlapRoot `json:"retiring,omitempty"`
	Signer   string        `json:"signer"`
	Pending  string        `json:"pending,omitempty"`
	SignsAt  *time.Time    `json:"signsAt,omitempty"`
}

type overlapRoot struct {
	Cert string `json:"cert"`
	// Since is absent for roots every peer knew from the start.
	Since *time.Time `json:"since,omitempty"`
	// Until is when a retiring root leaves the bundle.
	Until *time.Time `json:"until,omitempty"`
}

// encode is s as a Storage map.
func (s *overlapState) encode() (map[string][]byte, error) {
	root := func(c *x509.Certificate) overlapRoot {
		r := overlapRoot{Cert: string(certPEM(c))}
		if t := s.since[string(c.Raw)]; !t.IsZero() {
			r.Since = &t
		}
		return r
	}
	d := overlapDoc{Signer: string(EncodeCerts(s.signer))}
	for _, c := range s.current {
		d.Roots = append(d.Roots, root(c))
	}
	for _, r := range s.retiring {
		o := root(r.cert)
		o.Until = &r.until
		d.Retiring = append(d.Retiring, o)
	}
	if s.pending != nil {
		d.Pending, d.SignsAt = string(EncodeCerts(s.pending)), &s.activate
	}
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", keyOverlap, err)
	}
	return map[string][]byte{keyOverlap: b}, nil
}

// decodeOverlap parses and checks a stored state: every certificate
// parses, roots are CA certificates, a retiring root has its end and a
// held-back intermediate its start.
func decodeOverlap(m map[string][]byte) (*overlapState, error) {
	b, ok := m[keyOverlap]
	if !ok {
		return nil, fmt.Errorf("stored overlap state: no %s", keyOverlap)
	}
	var d overlapDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("stored overlap state %s: %w", keyOverlap, err)
	}
	s := &overlapState{since: map[string]time.Time{}}
	root := func(field string, r overlapRoot) (*x509.Certificate, error) {
		c, err := ParseCerts([]byte(r.Cert))
		if err != nil {
			return nil, fmt.Errorf("stored overlap state %s %s.cert: %w", keyOverlap, field, err)
		}
		if len(c) != 1 || !c[0].IsCA {
			return nil, fmt.Errorf("stored overlap state %s %s.cert: want one CA certificate", keyOverlap, field)
		}
		if r.Since != nil {
			s.since[string(c[0].Raw)] = *r.Since
		} else {
			s.since[string(c[0].Raw)] = time.Time{}
		}
		return c[0], nil
	}
	if len(d.Roots) == 0 {
		return nil, fmt.Errorf("stored overlap state %s: no roots", keyOverlap)
	}
	for i, r := range d.Roots {
		c, err := root(fmt.Sprintf("roots[%d]", i), r)
		if err != nil {
			return nil, err
		}
		s.current = append(s.current, c)
	}
	for i, r := range d.Retiring {
		field := fmt.Sprintf("retiring[%d]", i)
		c, err := root(field, r)
		if err != nil {
			return nil, err
		}
		if r.Until == nil {
			return nil, fmt.Errorf("stored overlap state %s %s.until: missing", keyOverlap, field)
		}
		s.retiring = append(s.retiring, retiringRoot{cert: c, until: *r.Until})
	}
	var err error
	if s.signer, err = ParseCerts([]byte(d.Signer)); err != nil {
		return nil, fmt.Errorf("stored overlap state %s signer: %w", keyOverlap, err)
	}
	switch {
	case d.Pending == "" && d.SignsAt == nil:
	case d.Pending == "" || d.SignsAt == nil:
		return nil, fmt.Errorf("stored overlap state %s: pending and signsAt go together", keyOverlap)
	default:
		if s.pending, err = ParseCerts([]byte(d.Pending)); err != nil {
			return nil, fmt.Errorf("stored overlap state %s pending: %w", keyOverlap, err)
		}
		s.activate = *d.SignsAt
	}
	return s, nil
}

// Restore reads the overlap state a previous run stored (ExternalOptions
// Storage), so that the first Load after a restart keeps the retiring roots
// and the schedule. It must run before the first Load. A stored state that
// does not parse is logged and discarded (the next write replaces it): it
// only ever extends trust, and refusing to start would leave the mesh
// without any CA. A storage that cannot be read is an error.
func (e *ExternalIssuer) Restore(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.opts.Storage == nil {
		return errors.New("restoring overlap state: no storage")
	}
	data, rev, err := e.opts.Storage.Load(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		e.log.Info("no stored overlap state: the first intermediate's roots are taken as known to every peer")
	case err != nil:
		return fmt.Errorf("restoring overlap state: %w", err)
	default:
		e.revision = rev
		st, err := decodeOverlap(data)
		if err != nil {
			e.log.Error("discarding the stored overlap state; retiring roots and held-back intermediates from before this start are forgotten",
				"revision", rev, "err", err)
			break
		}
		e.restored = st
		e.log.Info("overlap state restored", "roots", len(st.current), "retiring_roots", len(st.retiring),
			"held_back", st.pending != nil, "signs_at", st.activate)
	}
	e.restoreDone = true
	return nil
}

// snapshot is the state to store. Called with mu held.
func (e *ExternalIssuer) snapshot() *overlapState {
	s := &overlapState{current: e.current, since: e.since, retiring: e.retiring, signer: e.active.chain}
	if e.pending != nil {
		s.pending, s.activate = e.pending.chain, e.activate
	}
	return s
}

// persist stores the state, if there is a storage. A failed write is
// logged and retried by Run; signing goes on meanwhile. Called with mu held.
func (e *ExternalIssuer) persist() {
	if e.opts.Storage == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storageTimeout)
	defer cancel()
	if err := e.store(ctx); err != nil {
		e.dirty = true
		e.log.Error("storing the overlap state failed; retrying", "err", err, "retry_in", storageRetry)
		return
	}
	e.dirty = false
}

// store writes the state with the storage's create-if-absent or
// revision-checked update. When another replica wrote in between, its state
// is merged into this one (see absorb) and the write is tried again, so
// neither replica's retiring roots or schedule are lost. Called with mu
// held.
func (e *ExternalIssuer) store(ctx context.Context) error {
	const attempts = 5
	for range attempts {
		data, err := e.snapshot().encode()
		if err != nil {
			return err
		}
		var rev string
		if e.revision == "" {
			rev, err = e.opts.Storage.Create(ctx, data)
		} else {
			rev, err = e.opts.Storage.Update(ctx, data, e.revision)
		}
		if errors.Is(err, ErrExists) || errors.Is(err, ErrConflict) {
			if err := e.reread(ctx); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		e.revision = rev
		return nil
	}
	return fmt.Errorf("the stored overlap state changed %d times while writing it", attempts)
}

// reread loads what another writer stored and absorbs it. Called with mu
// held.
func (e *ExternalIssuer) reread(ctx context.Context) error {
	data, rev, err := e.opts.Storage.Load(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		e.revision = "" // deleted meanwhile: create it again
		return nil
	case err != nil:
		return fmt.Errorf("reloading the overlap state: %w", err)
	}
	e.revision = rev
	st, err := decodeOverlap(data)
	if err != nil {
		e.log.Error("the stored overlap state does not parse; replacing it", "revision", rev, "err", err)
		return nil
	}
	if e.absorb(st) {
		e.publish()
	}
	return nil
}

// absorb merges another replica's state into this one, always towards more
// trust and later signing: a retiring root it still trusts stays until the
// later of both ends, a root entered the bundle at the later of both times,
// and the same held-back intermediate starts at the later of both moments.
// Roots it calls current that this one has not loaded are left to this
// replica's own next Load. It reports whether anything changed. Called with
// mu held.
func (e *ExternalIssuer) absorb(o *overlapState) bool {
	changed := false
	now := e.opts.Clock.Now()
	for _, r := range o.retiring {
		if containsCert(e.current, r.cert) || !now.Before(r.until) {
			continue
		}
		i := slices.IndexFunc(e.retiring, func(x retiringRoot) bool { return x.cert.Equal(r.cert) })
		switch {
		case i < 0:
			e.retiring = append(e.retiring, r)
			e.since[string(r.cert.Raw)] = o.since[string(r.cert.Raw)]
			changed = true
		case r.until.After(e.retiring[i].until):
			e.retiring[i].until = r.until
			changed = true
		}
	}
	for _, c := range e.current {
		if t, ok := o.since[string(c.Raw)]; ok && t.After(e.since[string(c.Raw)]) {
			e.since[string(c.Raw)] = t
			changed = true
		}
	}
	if e.pending != nil && equalCerts(e.pending.chain, o.pending) && o.activate.After(e.activate) {
		e.activate = o.activate
		changed = true
	}
	return changed
}
