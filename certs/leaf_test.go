package certs

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"math/big"
	"net/url"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// TestLeafEncodingMatchesStdlib: the leaf encoder's TBSCertificate is
// byte-for-byte what x509.CreateCertificate makes from the same template,
// for every key kind a CSR may carry and for dates on both sides of 2050
// (UTCTime and GeneralizedTime).
func TestLeafEncodingMatchesStdlib(t *testing.T) {
	ca := newTestCA(t, &memStorage{}, clocktesting.NewFakeClock(t0), 0)
	signer := ca.view.Load().st.Active
	ecKey, _ := GenerateKey()
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	tests := map[string]struct {
		pub    crypto.PublicKey
		nb, na time.Time
		uri    *url.URL
	}{
		"ECDSA":      {ecKey.Public(), t0, t0.Add(24 * time.Hour), idA.URL()},
		"RSA":        {rsaKey.Public(), t0, t0.Add(24 * time.Hour), idA.URL()},
		"after 2050": {ecKey.Public(), time.Date(2049, 12, 31, 23, 0, 0, 0, time.UTC), time.Date(2050, 1, 1, 1, 0, 0, 0, time.UTC), idA.URL()},
		"long service account": {ecKey.Public(), t0, t0.Add(time.Hour),
			Identity{"cluster.local", "demo", string(bytes.Repeat([]byte("a"), 200))}.URL()},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			serial := big.NewInt(0).SetBytes(bytes.Repeat([]byte{0xab}, 16))
			der, err := encodeLeaf(serial, tc.nb, tc.na, tc.pub, tc.uri, signer.Signer, signer.SignerKey.Signer())
			if err != nil {
				t.Fatal(err)
			}
			got, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := got.CheckSignatureFrom(signer.Signer); err != nil {
				t.Fatalf("signature: %v", err)
			}
			stdDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
				SerialNumber: serial, NotBefore: tc.nb, NotAfter: tc.na,
				KeyUsage:              leafKeyUsage(tc.pub),
				ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				BasicConstraintsValid: true,
				URIs:                  []*url.URL{tc.uri},
			}, signer.Signer, tc.pub, signer.SignerKey.Signer())
			if err != nil {
				t.Fatal(err)
			}
			want, err := x509.ParseCertificate(stdDER)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.RawTBSCertificate, want.RawTBSCertificate) {
				t.Fatalf("TBSCertificate differs from x509.CreateCertificate's:\n got %x\nwant %x", got.RawTBSCertificate, want.RawTBSCertificate)
			}
			if got.SignatureAlgorithm != want.SignatureAlgorithm {
				t.Errorf("signature algorithm %v, want %v", got.SignatureAlgorithm, want.SignatureAlgorithm)
			}
		})
	}
}

func TestReverseBitsAndLength(t *testing.T) {
	for ku, want := range map[x509.KeyUsage]struct {
		b byte
		n int
	}{
		x509.KeyUsageDigitalSignature:                                {0x80, 1},
		x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment: {0xa0, 3},
		x509.KeyUsageCertSign | x509.KeyUsageCRLSign:                 {0x06, 7},
	} {
		if b := reverseBits(byte(ku)); b != want.b || bitLength(b) != want.n {
			t.Errorf("key usage %#x: bits %#x length %d, want %#x %d", ku, b, bitLength(b), want.b, want.n)
		}
	}
}
