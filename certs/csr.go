package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
)

// MaxCSRSize bounds a PEM CSR: a P-256 CSR is about 500 bytes, an RSA 4096
// one under 2 KiB.
const MaxCSRSize = 8 << 10

// CSR refusals: the caller's mistake, not a system fault. Every refusal
// wraps ErrBadCSR; one that asks for another identity also wraps
// ErrWrongIdentity, which the certificate API reports as permission denied.
var (
	ErrBadCSR        = errors.New("bad CSR")
	ErrWrongIdentity = errors.New("CSR asks for another identity")
)

// RSA key sizes accepted in CSRs. Below 2048 is weak; above 4096 only makes
// every handshake with the workload slower, and verifying the CSR's own
// signature with a huge key is a cheap way to burn the CA's CPU.
const (
	minRSABits = 2048
	maxRSABits = 4096
)

// ParseCSR decodes a PEM "CERTIFICATE REQUEST" and checks its signature,
// which proves the caller holds the private key.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadCSR, len(data), MaxCSRSize)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: want one PEM block of type CERTIFICATE REQUEST", ErrBadCSR)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("%w: data after the CERTIFICATE REQUEST block", ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrBadCSR, err)
	}
	return csr, nil
}

// CheckCSR refuses a CSR that asks for anything but exactly want: one URI
// SAN equal to want's SPIFFE ID and no DNS name, IP address or e-mail
// address. The subject is ignored (leaves have none). Sign would not copy
// any other name anyway; refusing tells the caller its request was wrong
// instead of quietly issuing something else.
func CheckCSR(csr *x509.CertificateRequest, want Identity) error {
	if len(csr.DNSNames) > 0 || len(csr.IPAddresses) > 0 || len(csr.EmailAddresses) > 0 {
		return fmt.Errorf("%w: only a URI SAN is allowed, got DNS %q, IP %v, e-mail %q",
			ErrBadCSR, csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
	}
	if len(csr.URIs) != 1 {
		return fmt.Errorf("%w: want exactly one URI SAN (%s), got %d", ErrBadCSR, want, len(csr.URIs))
	}
	got, err := FromURL(csr.URIs[0])
	if err != nil {
		return fmt.Errorf("%w: URI SAN: %w", ErrBadCSR, err)
	}
	if got != want {
		return fmt.Errorf("%w: %w: URI SAN %s is not the caller's identity %s", ErrBadCSR, ErrWrongIdentity, got, want)
	}
	return nil
}

// checkKey accepts ECDSA P-256 and P-384 and RSA from 2048 to 4096 bits.
func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("%w: ECDSA curve %s: want P-256 or P-384", ErrBadCSR, k.Curve.Params().Name)
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("%w: RSA key of %d bits: want %d to %d", ErrBadCSR, n, minRSABits, maxRSABits)
		}
		return nil
	}
	return fmt.Errorf("%w: %T key: want ECDSA P-256/P-384 or RSA 2048-4096", ErrBadCSR, pub)
}

// NewCSR makes a CSR for key asking for exactly id, as CheckCSR wants it.
func NewCSR(key Key, id Identity) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key.Signer())
	if err != nil {
		return nil, fmt.Errorf("creating CSR for %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
