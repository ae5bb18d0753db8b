package certs

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// authority is a root and the intermediate it issued for signing leaves.
type authority struct {
	Root      *x509.Certificate
	RootKey   Key
	Signer    *x509.Certificate
	SignerKey Key
}

// state is the built-in CA's persisted state. It is immutable once built:
// every change makes a new one.
type state struct {
	Phase Phase
	// Deadline is when the rotation phase may advance.
	Deadline time.Time
	// Active signs leaves.
	Active authority
	// Pending is the new authority during NewRootTrusted: trusted, not yet
	// signing.
	Pending *authority
	// Retiring is the old root during NewRootSigning: trusted, no longer
	// signing (its keys are already dropped).
	Retiring *x509.Certificate
}

// Storage keys. They are valid Secret data keys, and readable by name with
// kubectl or bbolt tools; the private keys are the "-key.pem" entries.
const (
	keyPhase             = "phase"
	keyDeadline          = "deadline"
	keyRoot              = "root.pem"
	keyRootKey           = "root-key.pem"
	keySigner            = "signer.pem"
	keySignerKey         = "signer-key.pem"
	keyPendingRoot       = "pending-root.pem"
	keyPendingRootKey    = "pending-root-key.pem"
	keyPendingSigner     = "pending-signer.pem"
	keyPendingSignerKey  = "pending-signer-key.pem"
	keyRetiringRoot      = "retiring-root.pem"
	deadlineLayout       = time.RFC3339
	pemCertificateHeader = "CERTIFICATE"
)

// bundle is the set of trusted roots, the signing one first.
func (s *state) bundle() []*x509.Certificate {
	b := []*x509.Certificate{s.Active.Root}
	if s.Pending != nil {
		b = append(b, s.Pending.Root)
	}
	if s.Retiring != nil {
		b = append(b, s.Retiring)
	}
	return b
}

func (s *state) schedule() Schedule {
	return Schedule{
		Phase:    s.Phase,
		Deadline: s.Deadline,
		Root:     Validity{s.Active.Root.NotBefore, s.Active.Root.NotAfter},
		Signer:   Validity{s.Active.Signer.NotBefore, s.Active.Signer.NotAfter},
	}
}

// encode is the state as a Storage map.
func (s *state) encode() (map[string][]byte, error) {
	m := map[string][]byte{keyPhase: []byte(s.Phase)}
	if !s.Deadline.IsZero() {
		m[keyDeadline] = []byte(s.Deadline.UTC().Format(deadlineLayout))
	}
	if err := s.Active.encode(m, keyRoot, keyRootKey, keySigner, keySignerKey); err != nil {
		return nil, err
	}
	if s.Pending != nil {
		if err := s.Pending.encode(m, keyPendingRoot, keyPendingRootKey, keyPendingSigner, keyPendingSignerKey); err != nil {
			return nil, err
		}
	}
	if s.Retiring != nil {
		m[keyRetiringRoot] = certPEM(s.Retiring)
	}
	return m, nil
}

func (a *authority) encode(m map[string][]byte, root, rootKey, signer, signerKey string) error {
	rk, err := a.RootKey.PEM()
	if err != nil {
		return fmt.Errorf("%s: %w", rootKey, err)
	}
	sk, err := a.SignerKey.PEM()
	if err != nil {
		return fmt.Errorf("%s: %w", signerKey, err)
	}
	m[root], m[rootKey], m[signer], m[signerKey] = certPEM(a.Root), rk, certPEM(a.Signer), sk
	return nil
}

// decodeState parses and checks a Storage map: every certificate parses,
// every key matches its certificate, every intermediate was signed by its
// root, and the entries present are the ones the phase needs.
func decodeState(m map[string][]byte) (*state, error) {
	s := &state{Phase: Phase(m[keyPhase])}
	var err error
	if s.Active, err = decodeAuthority(m, keyRoot, keyRootKey, keySigner, keySignerKey); err != nil {
		return nil, err
	}
	if d, ok := m[keyDeadline]; ok {
		if s.Deadline, err = time.Parse(deadlineLayout, string(d)); err != nil {
			return nil, fmt.Errorf("stored CA %s: %w", keyDeadline, err)
		}
	}
	_, hasPending := m[keyPendingRoot]
	_, hasRetiring := m[keyRetiringRoot]
	switch s.Phase {
	case PhaseIdle:
		if hasPending || hasRetiring || !s.Deadline.IsZero() {
			return nil, fmt.Errorf("stored CA: phase %s with rotation entries", s.Phase)
		}
	case PhaseNewRootTrusted:
		if !hasPending || hasRetiring || s.Deadline.IsZero() {
			return nil, fmt.Errorf("stored CA: phase %s needs %s and %s only", s.Phase, keyPendingRoot, keyDeadline)
		}
		p, err := decodeAuthority(m, keyPendingRoot, keyPendingRootKey, keyPendingSigner, keyPendingSignerKey)
		if err != nil {
			return nil, err
		}
		s.Pending = &p
	case PhaseNewRootSigning:
		if hasPending || !hasRetiring || s.Deadline.IsZero() {
			return nil, fmt.Errorf("stored CA: phase %s needs %s and %s only", s.Phase, keyRetiringRoot, keyDeadline)
		}
		if s.Retiring, err = parseCert(m, keyRetiringRoot); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("stored CA %s: unknown phase %q", keyPhase, s.Phase)
	}
	return s, nil
}

func decodeAuthority(m map[string][]byte, root, rootKey, signer, signerKey string) (authority, error) {
	var a authority
	var err error
	if a.Root, err = parseCert(m, root); err != nil {
		return a, err
	}
	if a.Signer, err = parseCert(m, signer); err != nil {
		return a, err
	}
	if a.RootKey, err = parseKeyFor(m, rootKey, a.Root); err != nil {
		return a, err
	}
	if a.SignerKey, err = parseKeyFor(m, signerKey, a.Signer); err != nil {
		return a, err
	}
	if !a.Root.IsCA || !a.Signer.IsCA {
		return a, fmt.Errorf("stored CA %s, %s: not CA certificates", root, signer)
	}
	if err := a.Signer.CheckSignatureFrom(a.Root); err != nil {
		return a, fmt.Errorf("stored CA %s was not signed by %s: %w", signer, root, err)
	}
	return a, nil
}

func parseCert(m map[string][]byte, key string) (*x509.Certificate, error) {
	block, _ := pem.Decode(m[key])
	if block == nil || block.Type != pemCertificateHeader {
		return nil, fmt.Errorf("stored CA %s: want a PEM CERTIFICATE block", key)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("stored CA %s: %w", key, err)
	}
	return c, nil
}

func parseKeyFor(m map[string][]byte, key string, cert *x509.Certificate) (Key, error) {
	k, err := ParseKey(m[key])
	if err != nil {
		return Key{}, fmt.Errorf("stored CA %s: %w", key, err)
	}
	if !k.Matches(cert) {
		return Key{}, fmt.Errorf("stored CA %s does not belong to its certificate", key)
	}
	return *k, nil
}

// certPEM encodes one certificate.
func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificateHeader, Bytes: c.Raw})
}

// EncodeCerts is certificates as concatenated PEM blocks, in order.
func EncodeCerts(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		b.Write(certPEM(c))
	}
	return b.Bytes()
}

// ParseCerts reads concatenated PEM CERTIFICATE blocks (a chain or a
// bundle). Any other block, or none at all, is an error.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != pemCertificateHeader {
			return nil, fmt.Errorf("PEM block %d: type %q, want %s", len(out)+1, block.Type, pemCertificateHeader)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("trailing data after the PEM certificates")
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificates")
	}
	return out, nil
}
