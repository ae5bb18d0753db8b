package certs

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"time"
)

// Issuer signs workload leaves. The built-in CA implements it, and so will
// the cert-manager mode, where cert-manager issues the signing intermediate
// and leaves are still signed in-process. It is all the certificate API
// needs.
type Issuer interface {
	// Sign issues a leaf for id to csr's public key, valid for ttl (0 or
	// more than the issuer's maximum means the maximum), and returns the
	// chain: leaf first, then intermediates, without the root.
	Sign(csr *x509.CertificateRequest, id Identity, ttl time.Duration) ([]*x509.Certificate, error)
	// Bundle is the set of roots a peer must trust right now; it changes
	// during rotations.
	Bundle() []*x509.Certificate
	// BundlePEM is Bundle as PEM, encoded once per change of the bundle
	// rather than once per leaf.
	BundlePEM() []byte
}

// ServingIssuer is an Issuer that also issues the control plane's own
// serving certificate (DNS and IP names no workload may have) and says when
// its signer or bundle changed, so that the serving certificate and the
// bundle the control plane checks clients against follow rotations.
type ServingIssuer interface {
	Issuer
	SignServing(csr *x509.CertificateRequest, id Identity, ttl time.Duration) ([]*x509.Certificate, error)
	Changed() <-chan struct{}
}

var _ ServingIssuer = (*CA)(nil)

// leafKeyUsage: RSA key exchange needs key encipherment; ECDSA only signs.
func leafKeyUsage(pub any) x509.KeyUsage {
	switch pub.(type) {
	case *rsa.PublicKey:
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	case *ecdsa.PublicKey:
		return x509.KeyUsageDigitalSignature
	}
	return x509.KeyUsageDigitalSignature
}
