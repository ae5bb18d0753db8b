package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// Workload leaves have one fixed profile, so the built-in CA encodes them
// itself instead of calling x509.CreateCertificate, which re-verifies every
// signature it makes (a guard against faulty crypto.Signers, pointless for
// an in-process ECDSA key) and so costs a third of an issuance. The encoding
// is byte-for-byte what CreateCertificate produces for the same template
// (TestLeafEncodingMatchesStdlib), and every leaf is parsed back before it
// is returned.

// Object identifiers of the leaf profile.
var (
	oidECDSAWithSHA256    = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidExtKeyUsage        = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage     = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstraint = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtAuthorityKeyID  = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtSubjectAltName  = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidServerAuth         = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidClientAuth         = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

// tbsCertificate is RFC 5280's TBSCertificate for a v3 certificate without
// unique identifiers.
type tbsCertificate struct {
	Version            int `asn1:"optional,explicit,default:0,tag:0"`
	SerialNumber       *big.Int
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Issuer             asn1.RawValue
	Validity           validityPeriod
	Subject            asn1.RawValue
	PublicKey          asn1.RawValue
	Extensions         []pkix.Extension `asn1:"optional,explicit,tag:3"`
}

type validityPeriod struct {
	NotBefore, NotAfter time.Time
}

type certificate struct {
	TBSCertificate     asn1.RawValue
	SignatureAlgorithm pkix.AlgorithmIdentifier
	SignatureValue     asn1.BitString
}

type basicConstraints struct {
	IsCA       bool `asn1:"optional"`
	MaxPathLen int  `asn1:"optional,default:-1"`
}

type authorityKeyID struct {
	ID []byte `asn1:"optional,tag:0"`
}

// emptyName is the DER of an empty Name: leaves carry no subject.
var emptyName = asn1.RawValue{FullBytes: []byte{0x30, 0x00}}

// fastSigner reports whether the leaf encoder can sign with key: ECDSA
// P-256, what the built-in CA makes. Anything else goes through
// x509.CreateCertificate.
func fastSigner(key crypto.Signer) bool {
	k, ok := key.Public().(*ecdsa.PublicKey)
	return ok && k.Curve == elliptic.P256()
}

// encodeLeaf signs a workload leaf for pub with the single URI SAN uri,
// issued by issuer with key (ECDSA P-256).
func encodeLeaf(serial *big.Int, notBefore, notAfter time.Time, pub any, uri *url.URL,
	issuer *x509.Certificate, key crypto.Signer) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("leaf public key: %w", err)
	}
	exts, err := leafExtensions(leafKeyUsage(pub), uri, issuer.SubjectKeyId)
	if err != nil {
		return nil, err
	}
	alg := pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA256}
	tbs, err := asn1.Marshal(tbsCertificate{
		Version:            2,
		SerialNumber:       serial,
		SignatureAlgorithm: alg,
		Issuer:             asn1.RawValue{FullBytes: issuer.RawSubject},
		Validity:           validityPeriod{notBefore.UTC(), notAfter.UTC()},
		Subject:            emptyName,
		PublicKey:          asn1.RawValue{FullBytes: spki},
		Extensions:         exts,
	})
	if err != nil {
		return nil, fmt.Errorf("encoding leaf: %w", err)
	}
	digest := sha256.Sum256(tbs)
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing leaf: %w", err)
	}
	der, err := asn1.Marshal(certificate{
		TBSCertificate:     asn1.RawValue{FullBytes: tbs},
		SignatureAlgorithm: alg,
		SignatureValue:     asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
	if err != nil {
		return nil, fmt.Errorf("encoding leaf: %w", err)
	}
	return der, nil
}

// leafExtensions are, in CreateCertificate's order: key usage (critical),
// server and client auth, basic constraints CA:false (critical), the
// issuer's key id, and the URI SAN (critical, since the subject is empty).
func leafExtensions(ku x509.KeyUsage, uri *url.URL, issuerKeyID []byte) ([]pkix.Extension, error) {
	kuBits := reverseBits(byte(ku))
	kuValue, err := asn1.Marshal(asn1.BitString{Bytes: []byte{kuBits}, BitLength: bitLength(kuBits)})
	if err != nil {
		return nil, err
	}
	if ku>>8 != 0 {
		return nil, fmt.Errorf("key usage %#x: beyond the leaf profile", ku)
	}
	eku, err := asn1.Marshal([]asn1.ObjectIdentifier{oidServerAuth, oidClientAuth})
	if err != nil {
		return nil, err
	}
	bc, err := asn1.Marshal(basicConstraints{IsCA: false, MaxPathLen: -1})
	if err != nil {
		return nil, err
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Tag: 6, Class: asn1.ClassContextSpecific, Bytes: []byte(uri.String())}})
	if err != nil {
		return nil, err
	}
	exts := []pkix.Extension{
		{Id: oidExtKeyUsage, Critical: true, Value: kuValue},
		{Id: oidExtExtKeyUsage, Value: eku},
		{Id: oidExtBasicConstraint, Critical: true, Value: bc},
	}
	if len(issuerKeyID) > 0 {
		aki, err := asn1.Marshal(authorityKeyID{ID: issuerKeyID})
		if err != nil {
			return nil, err
		}
		exts = append(exts, pkix.Extension{Id: oidExtAuthorityKeyID, Value: aki})
	}
	return append(exts, pkix.Extension{Id: oidExtSubjectAltName, Critical: true, Value: san}), nil
}

// reverseBits turns KeyUsage's bit order (bit 0 = digitalSignature) into
// DER's (most significant bit first).
func reverseBits(b byte) byte {
	var r byte
	for i := range 8 {
		r |= (b >> i & 1) << (7 - i)
	}
	return r
}

// bitLength is the BIT STRING length without trailing zero bits.
func bitLength(b byte) int {
	for i := 0; i < 8; i++ {
		if b&(1<<i) != 0 {
			return 8 - i
		}
	}
	return 0
}

// workloadNames gives a workload leaf its only name, id's URI: nothing else
// is copied from the CSR.
func workloadNames(id Identity) func(*x509.Certificate) {
	return func(t *x509.Certificate) { t.URIs = []*url.URL{id.URL()} }
}

// servingNames gives a serving certificate id's URI plus the CSR's DNS
// names and IP addresses.
func servingNames(id Identity, csr *x509.CertificateRequest) func(*x509.Certificate) {
	return func(t *x509.Certificate) {
		t.URIs = []*url.URL{id.URL()}
		t.DNSNames = csr.DNSNames
		t.IPAddresses = csr.IPAddresses
	}
}

// issueLeaf signs a leaf certificate for csr's public key, valid for ttl from
// now but never past the signer's own expiry; names sets its subject
// alternative names. A workload leaf (one URI, nothing else) from an ECDSA
// signer takes the direct encoding; anything else goes through
// x509.CreateCertificate. Both issuers sign through here, so their leaves
// are the same.
func issueLeaf(now time.Time, ttl time.Duration, csr *x509.CertificateRequest, names func(*x509.Certificate),
	signer *x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	nb, na := validity(now, ttl, signer.NotAfter)
	t := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              leafKeyUsage(csr.PublicKey),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	names(t)
	var der []byte
	if len(t.URIs) == 1 && len(t.DNSNames) == 0 && len(t.IPAddresses) == 0 && fastSigner(key) {
		der, err = encodeLeaf(serial, nb, na, csr.PublicKey, t.URIs[0], signer, key)
	} else {
		der, err = x509.CreateCertificate(rand.Reader, t, signer, csr.PublicKey, key)
	}
	if err != nil {
		return nil, fmt.Errorf("signing leaf: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing signed leaf: %w", err)
	}
	return leaf, nil
}
