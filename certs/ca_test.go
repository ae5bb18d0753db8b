package certs

import (
	"context"
	"crypto/x509"
	"errors"
	"maps"
	"net/url"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

var (
	idA = Identity{"cluster.local", "demo", "a"}
	idB = Identity{"cluster.local", "demo", "b"}
)

func TestCreateThenReload(t *testing.T) {
	s := &memStorage{}
	clk := clocktesting.NewFakeClock(t0)
	ca := newTestCA(t, s, clk, 0)
	st := ca.Status()
	if st.Phase != PhaseIdle || len(st.Roots) != 1 {
		t.Fatalf("new CA status = %+v", st)
	}
	root := ca.Bundle()[0]
	if !root.IsCA || root.NotAfter.Sub(root.NotBefore) < 10*365*24*time.Hour {
		t.Errorf("root: CA %v, valid %s..%s", root.IsCA, root.NotBefore, root.NotAfter)
	}
	for _, k := range []string{keyRoot, keyRootKey, keySigner, keySignerKey, keyPhase} {
		if len(s.data[k]) == 0 {
			t.Errorf("stored CA has no %s", k)
		}
	}

	again := newTestCA(t, s, clk, 0)
	if !again.Bundle()[0].Equal(root) || again.Status().Signer != st.Signer {
		t.Error("a restart made a new CA instead of loading the stored one")
	}
	if s.rev != 1 {
		t.Errorf("a restart wrote the storage (revision %d)", s.rev)
	}
	chain := issue(t, again, idA, 0)
	if err := verify(chain, ca.Bundle(), clk.Now()); err != nil {
		t.Errorf("leaf from the reloaded CA does not verify against the first one's bundle: %v", err)
	}
}

// TestCreateRace: two control planes starting together on one storage
// agree on one CA (the one whose Create landed).
func TestCreateRace(t *testing.T) {
	s := &memStorage{}
	clk := clocktesting.NewFakeClock(t0)
	cas := make(chan *CA, 2)
	for range 2 {
		go func() {
			ca, err := New(context.Background(), Options{Storage: s, Clock: clk, Log: quietLog()})
			if err != nil {
				t.Error(err)
			}
			cas <- ca
		}()
	}
	a, b := <-cas, <-cas
	if a == nil || b == nil {
		t.FailNow()
	}
	if !a.Bundle()[0].Equal(b.Bundle()[0]) || a.Status().Signer != b.Status().Signer {
		t.Fatal("two control planes on one storage ended up with different CAs")
	}
}

func TestLoadRefusesBrokenState(t *testing.T) {
	good := &memStorage{}
	newTestCA(t, good, clocktesting.NewFakeClock(t0), 0)
	other := &memStorage{}
	newTestCA(t, other, clocktesting.NewFakeClock(t0), 0)

	tests := map[string]func(m map[string][]byte){
		"missing root":      func(m map[string][]byte) { delete(m, keyRoot) },
		"key of another CA": func(m map[string][]byte) { m[keySignerKey] = other.data[keySignerKey] },
		"signer of another": func(m map[string][]byte) {
			m[keySigner], m[keySignerKey] = other.data[keySigner], other.data[keySignerKey]
		},
		"garbage key":   func(m map[string][]byte) { m[keyRootKey] = []byte("nope") },
		"unknown phase": func(m map[string][]byte) { m[keyPhase] = []byte("Spinning") },
		"trusted, no root": func(m map[string][]byte) {
			m[keyPhase] = []byte(PhaseNewRootTrusted)
			m[keyDeadline] = []byte("2026-01-01T00:00:00Z")
		},
		"idle with retiring": func(m map[string][]byte) { m[keyRetiringRoot] = other.data[keyRoot] },
		"bad deadline":       func(m map[string][]byte) { m[keyDeadline] = []byte("soon") },
	}
	for name, breakIt := range tests {
		t.Run(name, func(t *testing.T) {
			s := &memStorage{data: maps.Clone(good.data), rev: 1}
			breakIt(s.data)
			ca, err := New(context.Background(), Options{Storage: s, Log: quietLog()})
			if err == nil {
				t.Fatalf("New loaded a broken CA: %+v", ca.Status())
			}
			if strings.Contains(err.Error(), "PRIVATE KEY-----") {
				t.Errorf("error shows key material: %v", err)
			}
		})
	}
}

func TestSignLeaf(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	ca := newTestCA(t, &memStorage{}, clk, 0)
	tests := map[string]struct {
		ttl, want time.Duration
	}{
		"default":          {0, DefaultLeafTTL},
		"shorter":          {time.Hour, time.Hour},
		"longer is capped": {48 * time.Hour, DefaultLeafTTL},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			chain := issue(t, ca, idA, tc.ttl)
			leaf := chain[0]
			if err := verify(chain, ca.Bundle(), clk.Now()); err != nil {
				t.Fatal(err)
			}
			if got := leaf.NotAfter.Sub(clk.Now()); got != tc.want {
				t.Errorf("lifetime from issuance = %s, want %s", got, tc.want)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != idA.String() {
				t.Errorf("URIs = %v", leaf.URIs)
			}
			if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || leaf.Subject.String() != "" {
				t.Errorf("leaf has other names: subject %q DNS %v IP %v", leaf.Subject, leaf.DNSNames, leaf.IPAddresses)
			}
			if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("leaf IsCA %v, key usage %v", leaf.IsCA, leaf.KeyUsage)
			}
			if len(chain) != 2 || !chain[1].Equal(ca.view.Load().st.Active.Signer) {
				t.Errorf("chain is not leaf + signing intermediate")
			}
		})
	}
}

// TestSignIgnoresCSRNames: even a CSR nobody checked cannot get a name into a
// leaf; only the authenticated identity goes in.
func TestSignIgnoresCSRNames(t *testing.T) {
	ca := newTestCA(t, &memStorage{}, clocktesting.NewFakeClock(t0), 0)
	csr := csrWith(t, &x509.CertificateRequest{DNSNames: []string{"evil.example"}, URIs: []*url.URL{idB.URL()}})
	chain, err := ca.Sign(csr, idA, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if len(leaf.DNSNames) != 0 || len(leaf.URIs) != 1 || leaf.URIs[0].String() != idA.String() {
		t.Errorf("leaf names DNS %v URI %v, want only %s", leaf.DNSNames, leaf.URIs, idA)
	}
}

func TestSignServing(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	ca := newTestCA(t, &memStorage{}, clk, 0)
	cp := Identity{"cluster.local", "fjord-system", "fjord-cp"}
	csr := csrWith(t, &x509.CertificateRequest{DNSNames: []string{"fjord-cp.fjord-system.svc"}, IPAddresses: loopback})
	chain, err := ca.SignServing(csr, cp, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Bundle()[0])
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	for _, host := range []string{"fjord-cp.fjord-system.svc", "127.0.0.1"} {
		if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter, CurrentTime: clk.Now()}); err != nil {
			t.Errorf("serving certificate for %s: %v", host, err)
		}
	}
}

// TestRotation walks a root rotation with a fake clock: the bundle gains the
// new root before it signs, and loses the old one only when no leaf it
// signed can still be valid.
func TestRotation(t *testing.T) {
	ctx := context.Background()
	const ttl = time.Hour
	clk := clocktesting.NewFakeClock(t0)
	s := &memStorage{}
	ca := newTestCA(t, s, clk, ttl)
	changed := ca.Changed()
	oldRoot := ca.Bundle()[0]
	oldLeaf := issue(t, ca, idA, 0)

	st, err := ca.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	overlap := Overlap(ttl, DefaultSkew)
	if st.Phase != PhaseNewRootTrusted || !st.Deadline.Equal(t0.Add(overlap)) || len(ca.Bundle()) != 2 {
		t.Fatalf("after Rotate: %+v", st)
	}
	select {
	case <-changed:
	default:
		t.Error("Changed not signalled when the bundle gained a root")
	}
	newRoot := ca.Bundle()[1]
	if _, err := ca.Rotate(ctx); !errors.Is(err, ErrRotating) {
		t.Errorf("second Rotate = %v, want ErrRotating", err)
	}
	// Still signed by the old root.
	if err := verify(issue(t, ca, idA, 0), []*x509.Certificate{oldRoot}, clk.Now()); err != nil {
		t.Errorf("NewRootTrusted: leaf not from the old root: %v", err)
	}

	// Before the deadline nothing moves.
	clk.Step(overlap - time.Second)
	if due, err := ca.Maintain(ctx); err != nil || !due.Equal(t0.Add(overlap)) {
		t.Fatalf("Maintain = %s, %v", due, err)
	}
	if ca.Status().Phase != PhaseNewRootTrusted {
		t.Fatal("phase advanced before its deadline")
	}
	clk.Step(time.Second)
	switchedAt := clk.Now()
	if _, err := ca.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	st = ca.Status()
	if st.Phase != PhaseNewRootSigning || len(ca.Bundle()) != 2 {
		t.Fatalf("after the deadline: %+v", st)
	}
	newLeaf := issue(t, ca, idA, 0)
	if err := verify(newLeaf, []*x509.Certificate{newRoot}, clk.Now()); err != nil {
		t.Errorf("NewRootSigning: leaf not from the new root: %v", err)
	}
	if !ca.Bundle()[0].Equal(newRoot) || !ca.Bundle()[1].Equal(oldRoot) {
		t.Error("NewRootSigning bundle is not {new, old}")
	}
	if _, ok := s.data[keyRootKey]; !ok || string(s.data[keyRoot]) != string(certPEM(newRoot)) {
		t.Error("storage does not hold the new root as the signing one")
	}

	clk.SetTime(switchedAt.Add(overlap))
	if _, err := ca.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if st := ca.Status(); st.Phase != PhaseIdle || len(ca.Bundle()) != 1 || !ca.Bundle()[0].Equal(newRoot) {
		t.Fatalf("after the second deadline: %+v", st)
	}
	// The old leaf has expired by the time its root is dropped.
	if oldLeaf[0].NotAfter.After(clk.Now()) {
		t.Errorf("old root dropped at %s while a leaf it signed is valid until %s", clk.Now(), oldLeaf[0].NotAfter)
	}
	// A restart resumes from storage.
	if again := newTestCA(t, s, clk, ttl); !again.Bundle()[0].Equal(newRoot) || again.Status().Phase != PhaseIdle {
		t.Error("restart after rotation did not load the new root")
	}
}

// TestRotationNeverBreaksAHandshake simulates workloads that renew at 2/3 of
// their leaf's lifetime and take the bundle from each renewal, as the agent
// does. At every instant of a full rotation every workload's chain verifies
// against every other workload's bundle.
func TestRotationNeverBreaksAHandshake(t *testing.T) {
	ctx := context.Background()
	const ttl = time.Hour
	clk := clocktesting.NewFakeClock(t0)
	ca := newTestCA(t, &memStorage{}, clk, ttl)
	type workload struct {
		chain, bundle []*x509.Certificate
	}
	ws := make([]*workload, 6)
	// Stagger the workloads across a leaf lifetime.
	for i := range ws {
		ws[i] = &workload{chain: issue(t, ca, idA, 0), bundle: ca.Bundle()}
		clk.Step(ttl / time.Duration(len(ws)))
	}
	if _, err := ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	step := ttl / 40
	end := clk.Now().Add(3*Overlap(ttl, DefaultSkew) + ttl)
	sawIdle := false
	for clk.Now().Before(end) {
		clk.Step(step)
		if _, err := ca.Maintain(ctx); err != nil {
			t.Fatal(err)
		}
		for _, w := range ws {
			if NeedsRenewal(w.chain[0].NotBefore, w.chain[0].NotAfter, clk.Now()) {
				w.chain, w.bundle = issue(t, ca, idA, 0), ca.Bundle()
			}
		}
		for i, a := range ws {
			for j, b := range ws {
				if err := verify(a.chain, b.bundle, clk.Now()); err != nil {
					t.Fatalf("at %s (phase %s): workload %d's certificate fails against workload %d's bundle: %v",
						clk.Now().Sub(t0), ca.Status().Phase, i, j, err)
				}
			}
		}
		sawIdle = sawIdle || ca.Status().Phase == PhaseIdle
	}
	if !sawIdle {
		t.Fatal("the rotation did not finish")
	}
}

func TestSignerRenewal(t *testing.T) {
	ctx := context.Background()
	clk := clocktesting.NewFakeClock(t0)
	s := &memStorage{}
	ca := newTestCA(t, s, clk, 0)
	first := ca.Status().Signer
	due, err := ca.Maintain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clk.SetTime(due)
	if _, err := ca.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	second := ca.Status().Signer
	if second.Serial == first.Serial {
		t.Fatal("intermediate not renewed at 2/3 of its lifetime")
	}
	if ca.Status().Roots[0] != info("signing", ca.Bundle()[0]) || len(ca.Bundle()) != 1 {
		t.Error("renewing the intermediate changed the bundle")
	}
	if err := verify(issue(t, ca, idA, 0), ca.Bundle(), clk.Now()); err != nil {
		t.Error(err)
	}
}

// TestMaintainConflict: two replicas both find a step due; one lands it, the
// other adopts it instead of stepping twice.
func TestMaintainConflict(t *testing.T) {
	ctx := context.Background()
	clk := clocktesting.NewFakeClock(t0)
	s := &memStorage{}
	a := newTestCA(t, s, clk, time.Hour)
	b := newTestCA(t, s, clk, time.Hour)
	if _, err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	clk.Step(Overlap(time.Hour, DefaultSkew))
	if _, err := a.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	rev := s.rev
	// b still holds the Idle state; its Maintain must adopt a's, not rotate.
	if _, err := b.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if s.rev != rev || b.Status().Signer != a.Status().Signer || b.Status().Phase != PhaseNewRootSigning {
		t.Errorf("replica b: phase %s, storage revision %d -> %d", b.Status().Phase, rev, s.rev)
	}
}

func TestSigningSurvivesStorageFailure(t *testing.T) {
	s := &memStorage{}
	clk := clocktesting.NewFakeClock(t0)
	ca := newTestCA(t, s, clk, 0)
	s.failLoad = errors.New("API server unreachable")
	if _, err := ca.Maintain(context.Background()); err == nil {
		t.Fatal("Maintain hid a storage failure")
	}
	if err := verify(issue(t, ca, idA, 0), ca.Bundle(), clk.Now()); err != nil {
		t.Fatal(err)
	}
}

func TestStatusDuringRotation(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	ca := newTestCA(t, &memStorage{}, clk, time.Hour)
	if _, err := ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := ca.Status()
	if st.Phase != PhaseNewRootTrusted || len(st.Roots) != 2 || st.Roots[1].Role != "pending" ||
		st.NextStep != StepSwitchSigner || !st.NextStepAt.Equal(st.Deadline) {
		t.Errorf("status = %+v", st)
	}
}

func TestRunStopsAndSteps(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	clk := clocktesting.NewFakeClock(t0)
	ca, err := New(ctx, Options{Storage: &memStorage{}, Clock: clk, LeafTTL: time.Hour, CheckInterval: time.Hour, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- ca.Run(ctx) }()
	if _, err := ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	changed := ca.Changed()
	// Run wakes at least every CheckInterval; step until it has switched.
	deadline := time.Now().Add(time.Minute)
	for ca.Status().Phase == PhaseNewRootTrusted {
		if time.Now().After(deadline) {
			t.Fatal("Run did not take the due step")
		}
		if clk.HasWaiters() {
			clk.Step(time.Hour)
		}
		select {
		case <-changed:
		case <-time.After(10 * time.Millisecond):
		}
	}
	if p := ca.Status().Phase; p != PhaseNewRootSigning {
		t.Errorf("phase = %s", p)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRunFollowsRotate: a rotation started in this process (the admin
// socket's Rotate) advances at its deadline, not at Run's next periodic
// check, which here is a day away.
func TestRunFollowsRotate(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	clk := clocktesting.NewFakeClock(t0)
	ca, err := New(ctx, Options{Storage: &memStorage{}, Clock: clk, LeafTTL: time.Hour, CheckInterval: 24 * time.Hour, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- ca.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	// Rotate only once Run is asleep until its next periodic check.
	for wait := time.Now().Add(10 * time.Second); !clk.HasWaiters(); time.Sleep(time.Millisecond) {
		if time.Now().After(wait) {
			t.Fatal("Run never waited")
		}
	}
	st, err := ca.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clk.SetTime(st.Deadline)
	deadline := time.Now().Add(10 * time.Second)
	for ca.Status().Phase == PhaseNewRootTrusted {
		if time.Now().After(deadline) {
			t.Fatalf("phase still %s a moment past its deadline %s", PhaseNewRootTrusted, st.Deadline)
		}
		changed := ca.Changed()
		clk.Step(time.Millisecond)
		select {
		case <-changed:
		case <-time.After(10 * time.Millisecond):
		}
	}
	if p := ca.Status().Phase; p != PhaseNewRootSigning {
		t.Errorf("phase = %s, want %s", p, PhaseNewRootSigning)
	}
}
