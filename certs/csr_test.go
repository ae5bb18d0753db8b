package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestCSRChecks(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	wrongTD := idA
	wrongTD.TrustDomain = "example.org"

	tests := map[string]struct {
		key     crypto.Signer
		tmpl    x509.CertificateRequest
		wantErr string // "" = accepted
	}{
		"exact URI":        {p256, x509.CertificateRequest{URIs: []*url.URL{idA.URL()}}, ""},
		"P-384":            {p384, x509.CertificateRequest{URIs: []*url.URL{idA.URL()}}, ""},
		"RSA 2048":         {rsa2048, x509.CertificateRequest{URIs: []*url.URL{idA.URL()}}, ""},
		"subject ignored":  {p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}, URIs: []*url.URL{idA.URL()}}, ""},
		"another identity": {p256, x509.CertificateRequest{URIs: []*url.URL{idB.URL()}}, "is not the caller's identity"},
		"other trust domain": {p256, x509.CertificateRequest{URIs: []*url.URL{wrongTD.URL()}},
			"is not the caller's identity"},
		"two URIs":     {p256, x509.CertificateRequest{URIs: []*url.URL{idA.URL(), idA.URL()}}, "exactly one URI SAN"},
		"no URI":       {p256, x509.CertificateRequest{}, "exactly one URI SAN"},
		"extra DNS":    {p256, x509.CertificateRequest{URIs: []*url.URL{idA.URL()}, DNSNames: []string{"a.demo.svc"}}, "only a URI SAN"},
		"extra IP":     {p256, x509.CertificateRequest{URIs: []*url.URL{idA.URL()}, IPAddresses: loopback}, "only a URI SAN"},
		"extra e-mail": {p256, x509.CertificateRequest{URIs: []*url.URL{idA.URL()}, EmailAddresses: []string{"a@b.c"}}, "only a URI SAN"},
		"not SPIFFE":   {p256, x509.CertificateRequest{URIs: []*url.URL{{Scheme: "https", Host: "cluster.local", Path: "/ns/demo/sa/a"}}}, "URI SAN"},
		"P-224":        {p224, x509.CertificateRequest{URIs: []*url.URL{idA.URL()}}, "curve P-224"},
		"RSA 1024":     {rsa1024, x509.CertificateRequest{URIs: []*url.URL{idA.URL()}}, "RSA key of 1024 bits"},
		"Ed25519":      {ed, x509.CertificateRequest{URIs: []*url.URL{idA.URL()}}, "ed25519"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			der, err := x509.CreateCertificateRequest(rand.Reader, &tc.tmpl, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := ParseCSR(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
			if err == nil {
				err = CheckCSR(csr, idA)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrBadCSR) {
				t.Fatalf("err = %v, want an ErrBadCSR containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseCSRRefusesMalformed(t *testing.T) {
	key, _ := GenerateKey()
	good, err := NewCSR(*key, idA)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(good)
	tampered := append([]byte(nil), block.Bytes...)
	tampered[len(tampered)-3] ^= 0xff // inside the signature
	tests := map[string]struct {
		in   []byte
		want string
	}{
		"empty":         {nil, "want one PEM block"},
		"not PEM":       {[]byte("hello"), "want one PEM block"},
		"wrong type":    {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes}), "want one PEM block"},
		"trailing data": {append(append([]byte(nil), good...), []byte("junk")...), "data after"},
		"two blocks":    {append(append([]byte(nil), good...), good...), "data after"},
		"bad signature": {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}), "bad CSR"},
		"garbage DER":   {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}}), "bad CSR"},
		"too big":       {make([]byte, MaxCSRSize+1), "at most"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseCSR(tc.in)
			if err == nil || !errors.Is(err, ErrBadCSR) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseCSR = %v, want an ErrBadCSR containing %q", err, tc.want)
			}
		})
	}
	if _, err := ParseCSR(append(good, '\n', '\n')); err != nil {
		t.Errorf("trailing newlines refused: %v", err)
	}
}

// FuzzParseCSR: no input panics the CSR path, and whatever passes both
// checks asks for exactly the caller's identity.
func FuzzParseCSR(f *testing.F) {
	key, _ := GenerateKey()
	good, _ := NewCSR(*key, idA)
	f.Add(good)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := ParseCSR(data)
		if err != nil {
			if !errors.Is(err, ErrBadCSR) {
				t.Fatalf("error %v does not wrap ErrBadCSR", err)
			}
			return
		}
		if CheckCSR(csr, idA) == nil && (len(csr.URIs) != 1 || csr.URIs[0].String() != idA.String()) {
			t.Fatalf("accepted URIs %v for %s", csr.URIs, idA)
		}
	})
}
