package certs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"strings"
	"sync/atomic"
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
	if _, err := e.Sign(csrWith(t, &x509.CertificateRequest{}), cart, 0); !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("Sign before Load: %v, want ErrNotLoaded", err)
	}
	root := newExtRoot(t, "issuer", t0)
	if err := e.Load(root.issue(t, t0, 90*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !changedNow(e.Loaded()) {
		t.Fatal("Loaded not closed after Load")
	}
	first := issue(t, e, cart, 0)
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
	second := issue(t, e, cart, 0)
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
	oldRoot, newRoot := newExtRoot(t, "old", t0), newExtRoot(t, "new", t0)
	if err := e.Load(oldRoot.issue(t, t0, 90*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	var leaves [][]*x509.Certificate
	// checkAll: every leaf still valid verifies against the current bundle
	// (what a peer holds), which is the point of the overlap.
	checkAll := func(step string) {
		t.Helper()
		leaves = append(leaves, issue(t, e, cart, 0))
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
	if l := issue(t, e, cart, 0); verify(l, []*x509.Certificate{oldRoot.cert}, clk.Now()) != nil {
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
	if l := issue(t, e, cart, 0); verify(l, []*x509.Certificate{oldRoot.cert}, clk.Now()) != nil {
		t.Fatal("a second intermediate under the new root signed before the overlap ended")
	}
	if next := e.advance(); !next.Equal(t0.Add(overlap)) {
		t.Fatalf("after a second renewal the next step is at %s, want %s", next, t0.Add(overlap))
	}
	checkAll("renewed again half way")
	clk.Step(overlap / 2)
	e.advance()
	l := issue(t, e, cart, 0)
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

// restoredExternal is an ExternalIssuer on st that has restored what st
// holds, as the control plane starts one.
func restoredExternal(t *testing.T, clk *clocktesting.FakeClock, st Storage, leafTTL time.Duration) *ExternalIssuer {
	t.Helper()
	e := NewExternalIssuer(ExternalOptions{Clock: clk, LeafTTL: leafTTL, Storage: st, Log: quietLog()})
	if err := e.Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	return e
}

// cart is the workload the issuers sign leaves for.
var cart = Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "cart"}

// startRollover is the start of a move to a new root: an ExternalIssuer on
// st, restored, signing with an intermediate of oldRoot since t0, and the
// newRoot cert-manager will issue under next.
func startRollover(t *testing.T, st Storage, leafTTL time.Duration) (clk *clocktesting.FakeClock, oldRoot, newRoot extRoot, e *ExternalIssuer) {
	t.Helper()
	clk = clocktesting.NewFakeClock(t0)
	oldRoot, newRoot = newExtRoot(t, "old", t0), newExtRoot(t, "new", t0)
	e = restoredExternal(t, clk, st, leafTTL)
	mustLoad(t, e, oldRoot, t0)
	return clk, oldRoot, newRoot, e
}

func load(t *testing.T, e *ExternalIssuer, crt, key, ca []byte) {
	t.Helper()
	if err := e.Load(crt, key, ca); err != nil {
		t.Fatal(err)
	}
}

// mustLoad loads a new intermediate that root issues at now.
func mustLoad(t *testing.T, e *ExternalIssuer, root extRoot, now time.Time) {
	t.Helper()
	crt, key, ca := root.issue(t, now, 90*24*time.Hour)
	load(t, e, crt, key, ca)
}

func bundleHas(e *ExternalIssuer, c *x509.Certificate) bool { return containsCert(e.Bundle(), c) }

func TestExternalIssuerRestartKeepsRetiringRoots(t *testing.T) {
	const leafTTL = time.Hour
	overlap := Overlap(leafTTL, DefaultSkew)
	st := &memStorage{}
	clk, oldRoot, newRoot, e := startRollover(t, st, leafTTL)
	newCrt, newKey, newCA := newRoot.issue(t, t0, 90*24*time.Hour)
	load(t, e, newCrt, newKey, newCA)
	// The last leaf of the old intermediate, just before the switch.
	clk.Step(overlap - time.Minute)
	lastOld := issue(t, e, cart, 0)
	clk.Step(time.Minute)
	e.advance()
	if verify(issue(t, e, cart, 0), []*x509.Certificate{newRoot.cert}, clk.Now()) != nil {
		t.Fatal("not signing under the new root after the overlap")
	}

	// Restart half way through the old root's retirement: cert-manager's
	// Secret still holds the new intermediate.
	clk.Step(overlap / 2)
	r := restoredExternal(t, clk, st, leafTTL)
	load(t, r, newCrt, newKey, newCA)
	if !bundleHas(r, oldRoot.cert) || !bundleHas(r, newRoot.cert) || len(r.Bundle()) != 2 {
		t.Fatalf("bundle after the restart has %d roots, want the new root and the retiring old one", len(r.Bundle()))
	}
	if !r.Bundle()[0].Equal(newRoot.cert) {
		t.Fatal("after the restart the signing root must come first")
	}
	if err := verify(lastOld, r.Bundle(), clk.Now()); err != nil {
		t.Fatalf("a leaf of the old intermediate, still valid, is not trusted after the restart: %v", err)
	}
	// The retirement ends when it would have without the restart: one
	// overlap after the switch.
	if next := r.advance(); !next.Equal(t0.Add(2 * overlap)) {
		t.Fatalf("old root retires at %s, want %s", next, t0.Add(2*overlap))
	}
	clk.Step(overlap / 2)
	r.advance()
	if bundleHas(r, oldRoot.cert) || len(r.Bundle()) != 1 {
		t.Fatal("the old root is still trusted after its time")
	}
	// A third start after that retirement finds it gone from the storage.
	q := restoredExternal(t, clk, st, leafTTL)
	load(t, q, newCrt, newKey, newCA)
	if len(q.Bundle()) != 1 {
		t.Fatalf("a root retired before the restart came back: %d roots", len(q.Bundle()))
	}
}

func TestExternalIssuerRestartDuringHoldBack(t *testing.T) {
	const leafTTL = time.Hour
	overlap := Overlap(leafTTL, DefaultSkew)
	st := &memStorage{}
	clk, oldRoot, newRoot, e := startRollover(t, st, leafTTL)
	newCrt, newKey, newCA := newRoot.issue(t, t0, 90*24*time.Hour)
	load(t, e, newCrt, newKey, newCA)
	clk.Step(overlap / 2)
	lastOld := issue(t, e, cart, 0)
	stored, err := decodeOverlap(st.data)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := ParseCerts(newCrt); !equalCerts(stored.pending, want) || !stored.activate.Equal(t0.Add(overlap)) {
		t.Fatalf("stored held-back intermediate %v signing at %s, want the new one at %s", stored.pending, stored.activate, t0.Add(overlap))
	}

	// Restart while the new intermediate is held back. The old one's key
	// went with the process, so the new one signs: leaves never stop.
	r := restoredExternal(t, clk, st, leafTTL)
	load(t, r, newCrt, newKey, newCA)
	if l := issue(t, r, cart, 0); verify(l, []*x509.Certificate{newRoot.cert}, clk.Now()) != nil {
		t.Fatal("after the restart the issued intermediate must sign")
	}
	if err := verify(lastOld, r.Bundle(), clk.Now()); err != nil {
		t.Fatalf("a leaf of the old intermediate is not trusted after the restart: %v", err)
	}
	// The old root stays until one overlap after the time the new
	// intermediate was due, as promised before the restart.
	if next := r.advance(); !next.Equal(t0.Add(2 * overlap)) {
		t.Fatalf("old root retires at %s, want %s", next, t0.Add(2*overlap))
	}

	// A renewal under the same new root signs at once: leaves under that
	// root are out already, holding it back would protect no peer.
	renewed, renewedKey, renewedCA := newRoot.issue(t, clk.Now(), 90*24*time.Hour)
	load(t, r, renewed, renewedKey, renewedCA)
	if l := issue(t, r, cart, 0); !l[1].Equal(mustParse(t, renewed)) {
		t.Fatal("a renewal under the root already signing was held back")
	}
	// Restarting again, the old root still stays until its time.
	q := restoredExternal(t, clk, st, leafTTL)
	load(t, q, renewed, renewedKey, renewedCA)
	if next := q.advance(); !bundleHas(q, oldRoot.cert) || !next.Equal(t0.Add(2*overlap)) {
		t.Fatalf("after the second restart the old root retires at %s, want %s", next, t0.Add(2*overlap))
	}
}

// A root that entered ca.crt before a restart keeps its date: an
// intermediate that moves under it after the restart is held back until
// one overlap after that date, not signing at once as under a root every
// peer knew from the start.
func TestExternalIssuerRestartKeepsWhenRootsEntered(t *testing.T) {
	const leafTTL = time.Hour
	overlap := Overlap(leafTTL, DefaultSkew)
	st := &memStorage{}
	clk, oldRoot, newRoot, e := startRollover(t, st, leafTTL)
	both := EncodeCerts([]*x509.Certificate{oldRoot.cert, newRoot.cert})
	// The issuer's ca.crt gains the new root (a CA bundle rollover); the
	// intermediate is still under the old one.
	clk.Step(time.Minute)
	crt, key, _ := oldRoot.issue(t, clk.Now(), 90*24*time.Hour)
	load(t, e, crt, key, both)
	entered := clk.Now()

	clk.Step(overlap / 2)
	r := restoredExternal(t, clk, st, leafTTL)
	load(t, r, crt, key, both)
	// Now the intermediate moves under the new root.
	newCrt, newKey, _ := newRoot.issue(t, clk.Now(), 90*24*time.Hour)
	load(t, r, newCrt, newKey, both)
	if l := issue(t, r, cart, 0); !l[1].Equal(mustParse(t, crt)) {
		t.Fatal("an intermediate under a root that entered the bundle half an overlap ago signed at once after a restart")
	}
	if next := r.advance(); !next.Equal(entered.Add(overlap)) {
		t.Fatalf("it signs at %s, want one overlap after its root entered the bundle, %s", next, entered.Add(overlap))
	}
	clk.Step(overlap / 2)
	r.advance()
	if l := issue(t, r, cart, 0); !l[1].Equal(mustParse(t, newCrt)) {
		t.Fatal("not signing with it once due")
	}
}

func mustParse(t *testing.T, crt []byte) *x509.Certificate {
	t.Helper()
	return mustChain(t, crt)[0]
}

func TestExternalIssuerStoresNoPrivateKey(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	const leafTTL = time.Hour
	oldRoot, newRoot := newExtRoot(t, "old", t0), newExtRoot(t, "new", t0)
	st := &memStorage{}
	e := restoredExternal(t, clk, st, leafTTL)
	oldCrt, oldKey, oldCA := oldRoot.issue(t, t0, 90*24*time.Hour)
	load(t, e, oldCrt, oldKey, oldCA)
	newCrt, newKey, newCA := newRoot.issue(t, t0, 90*24*time.Hour)
	load(t, e, newCrt, newKey, newCA)
	// Every kind of entry is there: roots, a retiring root, the signing
	// and the held-back intermediates.
	for _, want := range [][]byte{oldCrt, newCrt, newCA, oldCA} {
		found := false
		for _, v := range st.data {
			found = found || bytes.Contains(v, bytes.ReplaceAll(bytes.TrimSpace(want), []byte("\n"), []byte(`\n`)))
		}
		if !found {
			t.Fatalf("stored state lacks a certificate:\n%s", want)
		}
	}
	for k, v := range st.data {
		for _, leak := range [][]byte{[]byte("PRIVATE KEY"), oldKey, newKey} {
			if bytes.Contains(v, leak) || strings.Contains(k, "key") {
				t.Fatalf("stored entry %s holds a private key", k)
			}
		}
	}
}

func TestExternalIssuerDiscardsCorruptState(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	root := newExtRoot(t, "issuer", t0)
	good := func() map[string][]byte {
		st := &memStorage{}
		e := restoredExternal(t, clk, st, time.Hour)
		mustLoad(t, e, root, t0)
		mustLoad(t, e, newExtRoot(t, "next", t0), t0)
		return st.data
	}
	edit := func(f func(d map[string]any)) map[string][]byte {
		var d map[string]any
		if err := json.Unmarshal(good()[keyOverlap], &d); err != nil {
			t.Fatal(err)
		}
		f(d)
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		return map[string][]byte{keyOverlap: b}
	}
	tests := map[string]struct {
		data    map[string][]byte
		wantErr string
	}{
		"not JSON":           {map[string][]byte{keyOverlap: []byte("{roots")}, "overlap.json"},
		"no entry":           {map[string][]byte{"tls.crt": []byte("x")}, "no overlap.json"},
		"no roots":           {edit(func(d map[string]any) { delete(d, "roots") }), "no roots"},
		"garbled root":       {edit(func(d map[string]any) { d["roots"].([]any)[0].(map[string]any)["cert"] = "x" }), "roots[0].cert"},
		"retiring, no until": {edit(func(d map[string]any) { delete(d["retiring"].([]any)[0].(map[string]any), "until") }), "retiring[0].until"},
		"pending, no time":   {edit(func(d map[string]any) { delete(d, "signsAt") }), "pending and signsAt"},
		"garbled signer":     {edit(func(d map[string]any) { d["signer"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n" }), "signer"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := decodeOverlap(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("decode: %v, want an error naming %q", err, tc.wantErr)
			}
			// A start on it discards it: the issuer starts afresh, and its
			// first write replaces the corrupt state.
			st := &memStorage{data: tc.data, rev: 7}
			e := restoredExternal(t, clk, st, time.Hour)
			mustLoad(t, e, root, t0)
			if len(e.Bundle()) != 1 || !e.Bundle()[0].Equal(root.cert) {
				t.Fatalf("bundle %d roots, want the issued root only", len(e.Bundle()))
			}
			if _, err := decodeOverlap(st.data); err != nil || st.rev != 8 {
				t.Fatalf("the corrupt state was not replaced by a revision-checked update: rev %d, %v", st.rev, err)
			}
		})
	}
}

func TestExternalIssuerReplicasMergeTheirState(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	const leafTTL = time.Hour
	overlap := Overlap(leafTTL, DefaultSkew)
	oldRoot, newRoot := newExtRoot(t, "old", t0), newExtRoot(t, "new", t0)
	st := &memStorage{}
	a, b := restoredExternal(t, clk, st, leafTTL), restoredExternal(t, clk, st, leafTTL)
	oldCrt, oldKey, oldCA := oldRoot.issue(t, t0, 90*24*time.Hour)
	load(t, a, oldCrt, oldKey, oldCA)
	load(t, b, oldCrt, oldKey, oldCA) // Create loses: ErrExists, merge, update
	newCrt, newKey, newCA := newRoot.issue(t, t0, 90*24*time.Hour)
	load(t, a, newCrt, newKey, newCA) // stale revision: conflict, merge, update
	// b sees the new Secret a minute later, so its schedule is a minute
	// later; its write must not be lost to a's, nor a's to b's.
	clk.Step(time.Minute)
	load(t, b, newCrt, newKey, newCA)
	stored, err := decodeOverlap(st.data)
	if err != nil {
		t.Fatal(err)
	}
	if want := t0.Add(time.Minute + overlap); !stored.activate.Equal(want) {
		t.Fatalf("stored activation %s, want the later replica's %s", stored.activate, want)
	}
	if len(stored.retiring) != 1 || !stored.retiring[0].until.Equal(t0.Add(time.Minute+2*overlap)) {
		t.Fatalf("stored retiring roots %v, want the old root until the later end", stored.retiring)
	}
	// a takes b's later schedule at its next write (here: restarting on
	// it), so no replica lets the old root go before the other.
	r := restoredExternal(t, clk, st, leafTTL)
	load(t, r, newCrt, newKey, newCA)
	if next := r.advance(); !next.Equal(t0.Add(time.Minute + 2*overlap)) {
		t.Fatalf("after a restart the old root retires at %s, want %s", next, t0.Add(time.Minute+2*overlap))
	}
	// a's own next write merges b's schedule into a: when a switches to
	// the new intermediate, its write conflicts with b's, and a keeps the
	// old root until b's later end.
	clk.Step(overlap)
	a.advance()
	if next := a.advance(); !next.Equal(t0.Add(time.Minute + 2*overlap)) {
		t.Fatalf("a retires the old root at %s, want b's later end %s", next, t0.Add(time.Minute+2*overlap))
	}
}

func TestExternalIssuerLoadNeedsRestore(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	e := NewExternalIssuer(ExternalOptions{Clock: clk, Storage: &memStorage{}, Log: quietLog()})
	if err := e.Load(newExtRoot(t, "issuer", t0).issue(t, t0, 24*time.Hour)); err == nil {
		t.Fatal("Load before Restore would overwrite the stored state")
	}
}

func TestExternalIssuerRestartDropsAStoredIntermediateNoLongerIssued(t *testing.T) {
	const leafTTL = time.Hour
	overlap := Overlap(leafTTL, DefaultSkew)
	st := &memStorage{}
	clk, oldRoot, newRoot, e := startRollover(t, st, leafTTL)
	thirdRoot := newExtRoot(t, "third", t0)
	mustLoad(t, e, newRoot, t0) // held back until t0+overlap
	clk.Step(overlap / 4)

	// While the control plane was down, cert-manager issued again under a
	// third root: the stored held-back intermediate matches nothing now.
	var logs bytes.Buffer
	r := NewExternalIssuer(ExternalOptions{Clock: clk, LeafTTL: leafTTL, Storage: st,
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err := r.Restore(t.Context()); err != nil {
		t.Fatal(err)
	}
	crt, key, ca := thirdRoot.issue(t, clk.Now(), 90*24*time.Hour)
	load(t, r, crt, key, ca)
	if l := issue(t, r, cart, 0); verify(l, []*x509.Certificate{thirdRoot.cert}, clk.Now()) != nil {
		t.Fatal("the issued intermediate does not sign after the restart")
	}
	for _, want := range []string{"matches no issued one; dropping it", "signing at once with an intermediate under roots peers may not all trust yet"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no log %q in:\n%s", want, logs.String())
		}
	}
	stored, err := decodeOverlap(st.data)
	if err != nil {
		t.Fatal(err)
	}
	if stored.pending != nil || !equalCerts(stored.signer, mustChain(t, crt)) {
		t.Fatal("the stored state still holds the dropped intermediate, or not the signing one")
	}
	// Every root a valid leaf may chain to stays: the old one until one
	// overlap after the held-back intermediate was due, the new one (it
	// left ca.crt at the restart) until one overlap from now.
	wantUntil := map[string]time.Time{
		string(oldRoot.cert.Raw): t0.Add(2 * overlap),
		string(newRoot.cert.Raw): clk.Now().Add(overlap),
	}
	if len(stored.retiring) != 2 {
		t.Fatalf("stored %d retiring roots, want the old and the new one", len(stored.retiring))
	}
	for _, x := range stored.retiring {
		if want := wantUntil[string(x.cert.Raw)]; !x.until.Equal(want) {
			t.Errorf("retiring root %s until %s, want %s", describe(x.cert), x.until, want)
		}
	}
	if !stored.since[string(thirdRoot.cert.Raw)].Equal(clk.Now()) {
		t.Errorf("the third root entered the bundle at %s, want the restart %s", stored.since[string(thirdRoot.cert.Raw)], clk.Now())
	}
}

func mustChain(t *testing.T, crt []byte) []*x509.Certificate {
	t.Helper()
	c, err := ParseCerts(crt)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// flakyStorage fails every write while down.
type flakyStorage struct {
	memStorage
	down atomic.Bool
}

var errDown = errors.New("storage down")

func (f *flakyStorage) Create(ctx context.Context, data map[string][]byte) (string, error) {
	if f.down.Load() {
		return "", errDown
	}
	return f.memStorage.Create(ctx, data)
}

func (f *flakyStorage) Update(ctx context.Context, data map[string][]byte, rev string) (string, error) {
	if f.down.Load() {
		return "", errDown
	}
	return f.memStorage.Update(ctx, data, rev)
}

func TestExternalIssuerRetriesAFailedWrite(t *testing.T) {
	const leafTTL = time.Hour
	overlap := Overlap(leafTTL, DefaultSkew)
	st := &flakyStorage{}
	clk, oldRoot, newRoot, e := startRollover(t, st, leafTTL)
	st.down.Store(true)
	mustLoad(t, e, newRoot, t0)
	// Signing and the schedule go on without the storage...
	if l := issue(t, e, cart, 0); verify(l, []*x509.Certificate{oldRoot.cert}, clk.Now()) != nil {
		t.Fatal("a failed write changed the signer")
	}
	if stored, err := decodeOverlap(st.data); err != nil || stored.pending != nil {
		t.Fatalf("the failed write stored something: %v", err)
	}
	// ...and Run comes back for the write before the next step.
	if next := e.advance(); !next.Equal(t0.Add(storageRetry)) {
		t.Fatalf("next wake at %s, want the retry at %s", next, t0.Add(storageRetry))
	}
	st.down.Store(false)
	clk.Step(storageRetry)
	if next := e.advance(); !next.Equal(t0.Add(overlap)) {
		t.Fatalf("after the retry the next wake is %s, want the switch at %s", next, t0.Add(overlap))
	}
	stored, err := decodeOverlap(st.data)
	if err != nil {
		t.Fatal(err)
	}
	if stored.pending == nil || !stored.activate.Equal(t0.Add(overlap)) || len(stored.retiring) != 1 {
		t.Fatal("the retried write does not hold the held-back intermediate and the retiring root")
	}
}
