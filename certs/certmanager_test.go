package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// extRoot is an external issuer's root, as a cert-manager CA Issuer holds
// it.
type extRoot struct {
	cert *x509.Certificate
	key  *Key
}

func newExtRoot(t *testing.T, name string, now time.Time) extRoot {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: mustSerial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key.Signer())
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return extRoot{cert: c, key: key}
}

// issue is what cert-manager writes into the Secret for an isCA
// Certificate: tls.crt, tls.key (PKCS #8) and ca.crt.
func (r extRoot) issue(t *testing.T, now time.Time, ttl time.Duration) (crt, key, ca []byte) {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: mustSerial(t), Subject: pkix.Name{CommonName: "fjord-intermediate"},
		NotBefore: now, NotAfter: now.Add(ttl),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, k.Public(), r.key.Signer())
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := k.PEM()
	if err != nil {
		t.Fatal(err)
	}
	return EncodeCerts([]*x509.Certificate{c}), keyPEM, EncodeCerts([]*x509.Certificate{r.cert})
}

func mustSerial(t *testing.T) *big.Int {
	t.Helper()
	s, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func changedNow(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestExternalIssuerRenewalUnderTheSameRoot(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	e := NewExternalIssuer(ExternalOptions{Clock: clk, LeafTTL: time.Hour, Log: quietLog()})
	id := Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "cart"}
	if _, err := e.Sign(csrWith(t, &x509.CertificateRequest{}), id, 0); !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("Sign before Load: %v, want ErrNotLoaded", err)
	}
	root := newExtRoot(t, "issuer", t0)
	if err := e.Load(root.issue(t, t0, 90*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !changedNow(e.Loaded()) {
		t.Fatal("Loaded not closed after Load")
	}
	first := issue(t, e, id, 0)
	if err := verify(first, e.Bundle(), clk.Now()); err != nil {
		t.Fatalf("leaf does not verify against the bundle: %v", err)
	}
	if got := first[0].NotAfter.Sub(clk.Now()); got != time.Hour {
		t.Errorf("leaf lifetime %s, want the LeafTTL 1h", got)
	}

	// The same Secret again (a resync): no change.
	changed := e.Changed()
	crt, key, ca := root.issue(t, t0, 90*24*time.Hour)
	if err := e.Load(crt, key, ca); err != nil {
		t.Fatal(err)
	}
	if err := e.Load(crt, key, ca); err != nil {
		t.Fatal(err)
	}
	if !changedNow(changed) {
		t.Fatal("a renewed intermediate did not signal a change")
	}
	changed = e.Changed()
	if err := e.Load(crt, key, ca); err != nil {
		t.Fatal(err)
	}
	if changedNow(changed) {
		t.Fatal("loading the installed intermediate again signalled a change")
	}
	// Renewed under the same root: signs at once, the bundle is the same,
	// and leaves from before still verify.
	second := issue(t, e, id, 0)
	if second[1].Equal(first[1]) {
		t.Fatal("still signing with the old intermediate after a renewal under the same root")
	}
	for _, c := range [][]*x509.Certificate{first, second} {
		if err := verify(c, e.Bundle(), clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if len(e.Bundle()) != 1 || !e.Bundle()[0].Equal(root.cert) {
		t.Fatalf("bundle has %d roots, want the issuer's root only", len(e.Bundle()))
	}
}

func TestExternalIssuerNewRootOverlaps(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	const leafTTL = time.Hour
	e := NewExternalIssuer(ExternalOptions{Clock: clk, LeafTTL: leafTTL, Log: quietLog()})
	id := Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "cart"}
	oldRoot, newRoot := newExtRoot(t, "old", t0), newExtRoot(t, "new", t0)
	if err := e.Load(oldRoot.issue(t, t0, 90*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	var leaves [][]*x509.Certificate
	// checkAll: every leaf still valid verifies against the current bundle
	// (what a peer holds), which is the point of the overlap.
	checkAll := func(step string) {
		t.Helper()
		leaves = append(leaves, issue(t, e, id, 0))
		for i, l := range leaves {
			if clk.Now().After(l[0].NotAfter) {
				continue
			}
			if err := verify(l, e.Bundle(), clk.Now()); err != nil {
				t.Fatalf("%s: leaf %d does not verify against the bundle: %v", step, i, err)
			}
		}
	}
	checkAll("before")

	// cert-manager now issues under another root.
	if err := e.Load(newRoot.issue(t, clk.Now(), 90*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if len(e.Bundle()) != 2 {
		t.Fatalf("bundle after the new root: %d roots, want old and new", len(e.Bundle()))
	}
	if l := issue(t, e, id, 0); verify(l, []*x509.Certificate{oldRoot.cert}, clk.Now()) != nil {
		t.Fatal("signing under the new root before the bundle had one overlap to spread")
	}
	checkAll("new root trusted")

	overlap := Overlap(leafTTL, DefaultSkew)
	clk.Step(overlap / 2)
	if next := e.advance(); !next.Equal(t0.Add(overlap)) {
		t.Fatalf("next step at %s, want %s", next, t0.Add(overlap))
	}
	checkAll("half way")
	// cert-manager renews again under the new root during the overlap:
	// that intermediate waits for the same moment, not for a new overlap
	// and not less.
	renewed, renewedKey, newCA := newRoot.issue(t, clk.Now(), 90*24*time.Hour)
	if err := e.Load(renewed, renewedKey, newCA); err != nil {
		t.Fatal(err)
	}
	if l := issue(t, e, id, 0); verify(l, []*x509.Certificate{oldRoot.cert}, clk.Now()) != nil {
		t.Fatal("a second intermediate under the new root signed before the overlap ended")
	}
	if next := e.advance(); !next.Equal(t0.Add(overlap)) {
		t.Fatalf("after a second renewal the next step is at %s, want %s", next, t0.Add(overlap))
	}
	checkAll("renewed again half way")
	clk.Step(overlap / 2)
	e.advance()
	l := issue(t, e, id, 0)
	if verify(l, []*x509.Certificate{newRoot.cert}, clk.Now()) != nil {
		t.Fatal("not signing under the new root after the overlap")
	}
	if want, _ := ParseCerts(renewed); !l[1].Equal(want[0]) {
		t.Fatal("after the overlap the latest intermediate must sign")
	}
	if len(e.Bundle()) != 2 || !e.Bundle()[0].Equal(newRoot.cert) {
		t.Fatal("after the switch the bundle must hold the new root first, and still the old one")
	}
	checkAll("new root signing")
	clk.Step(overlap)
	if next := e.advance(); !next.IsZero() {
		t.Fatalf("a step is still due at %s after the overlap", next)
	}
	if len(e.Bundle()) != 1 || !e.Bundle()[0].Equal(newRoot.cert) {
		t.Fatalf("the old root was not retired one overlap after the switch: %d roots", len(e.Bundle()))
	}
	checkAll("old root retired")
}

func TestExternalIssuerRefusesBadSecrets(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	root, other := newExtRoot(t, "issuer", t0), newExtRoot(t, "other", t0)
	goodCrt, goodKey, goodCA := root.issue(t, t0, 24*time.Hour)
	_, otherKey, otherCA := other.issue(t, t0, 24*time.Hour)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct{ crt, key, ca []byte }{
		"key of another certificate": {goodCrt, otherKey, goodCA},
		"another issuer's ca.crt":    {goodCrt, goodKey, otherCA},
		"not a CA":                   {EncodeCerts([]*x509.Certificate{issue(t, mustExternal(t, clk, goodCrt, goodKey, goodCA), Identity{TrustDomain: "cluster.local", Namespace: "a", ServiceAccount: "b"}, 0)[0]}), goodKey, goodCA},
		"SEC 1 key":                  {goodCrt, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), goodCA},
		"no ca.crt":                  {goodCrt, goodKey, nil},
	}
	expCrt, expKey, expCA := root.issue(t, t0.Add(-48*time.Hour), 24*time.Hour)
	tests["expired"] = struct{ crt, key, ca []byte }{expCrt, expKey, expCA}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e := mustExternal(t, clk, goodCrt, goodKey, goodCA)
			before := e.Bundle()
			if err := e.Load(tc.crt, tc.key, tc.ca); err == nil {
				t.Fatal("Load accepted it")
			}
			if !equalCerts(before, e.Bundle()) {
				t.Fatal("a refused Secret changed the bundle")
			}
		})
	}
}

func mustExternal(t *testing.T, clk *clocktesting.FakeClock, crt, key, ca []byte) *ExternalIssuer {
	t.Helper()
	e := NewExternalIssuer(ExternalOptions{Clock: clk, LeafTTL: time.Hour, Log: quietLog()})
	if err := e.Load(crt, key, ca); err != nil {
		t.Fatal(err)
	}
	return e
}
