package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
)

func TestBackoff(t *testing.T) {
	tests := map[string]struct {
		prev, want time.Duration
	}{
		"first failure": {0, time.Second},
		"doubles":       {2 * time.Second, 4 * time.Second},
		"capped":        {40 * time.Second, time.Minute},
		"stays capped":  {time.Minute, time.Minute},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := Backoff(tc.prev, time.Second, time.Minute); got != tc.want {
				t.Errorf("Backoff(%s) = %s, want %s", tc.prev, got, tc.want)
			}
		})
	}
}

// TestRenewal: the agent renews at 2/3 of the lifetime with a new key, and
// after a failure keeps the current certificate and retries with backoff
// until the CA answers again.
func TestRenewal(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a := e.startAgent(t)
	first, err := a.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Leaf().URIs; len(got) != 1 || got[0].String() != idA.String() {
		t.Fatalf("URIs = %v", got)
	}

	e.renewNow(t, a)
	eventually(t, "renewal", func() bool { return a.Current() != first })
	second := a.Current()
	if second.Leaf().SerialNumber.Cmp(first.Leaf().SerialNumber) == 0 {
		t.Fatal("renewal kept the certificate")
	}
	if pemA, _ := first.Key.PEM(); string(pemA) == string(must(second.Key.PEM())) {
		t.Error("renewal kept the key")
	}

	// The token stops working: the renewal fails, the current certificate
	// stays, and retries back off.
	if _, err := e.store.Tokens().DeleteTokens(ctx, saA); err != nil {
		t.Fatal(err)
	}
	e.renewNow(t, a)
	eventually(t, "a failed renewal", func() bool { return strings.Contains(e.logs.String(), "certificate renewal failed") })
	if a.Current() != second {
		t.Fatal("a failed renewal replaced the certificate")
	}
	for _, retry := range []time.Duration{time.Second, 2 * time.Second} {
		want := fmt.Sprintf("retry_in=%s", retry)
		eventually(t, "a retry after "+retry.String(), func() bool { return strings.Contains(e.logs.String(), want) })
		eventually(t, "the retry timer", e.clk.HasWaiters)
		e.clk.Step(retry)
	}
	// A new token: the next retry succeeds.
	e.token.Store(e.mint(t))
	eventually(t, "recovery", func() bool {
		if a.Current() != second {
			return true
		}
		if e.clk.HasWaiters() {
			e.clk.Step(4 * time.Second)
		}
		return false
	})
}

// TestCheckRefusesForeignCertificates: a response for another key, or one
// that does not verify against its bundle, is never installed.
func TestCheckRefusesForeignCertificates(t *testing.T) {
	e := newEnv(t)
	a, err := New(Config{Address: e.addr, Identity: idA, Bundle: e.ca.Bundle(), Token: func() (string, error) { return "", nil }, Clock: e.clk})
	if err != nil {
		t.Fatal(err)
	}
	mine, _ := certs.GenerateKey()
	other, _ := certs.GenerateKey()
	sign := func(k *certs.Key) string {
		pemCSR, _ := certs.NewCSR(*k, idA)
		csr, err := certs.ParseCSR(pemCSR)
		if err != nil {
			t.Fatal(err)
		}
		chain, err := e.ca.Sign(csr, idA, 0)
		if err != nil {
			t.Fatal(err)
		}
		return string(certs.EncodeCerts(chain))
	}
	otherCA := newEnv(t)
	bundle := string(certs.EncodeCerts(e.ca.Bundle()))
	tests := map[string]struct {
		resp *api.SignResponse
		want string
	}{
		"another key":    {&api.SignResponse{CertChainPem: sign(other), TrustBundlePem: bundle}, "not for this agent's key"},
		"foreign bundle": {&api.SignResponse{CertChainPem: sign(mine), TrustBundlePem: string(certs.EncodeCerts(otherCA.ca.Bundle()))}, "does not verify"},
		"no chain":       {&api.SignResponse{TrustBundlePem: bundle}, "issued chain"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := a.check(*mine, tc.resp); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := a.check(*mine, &api.SignResponse{CertChainPem: sign(mine), TrustBundlePem: bundle}); err != nil {
		t.Fatalf("a good response: %v", err)
	}
}

// TestFollowsRootRotation: after a root rotation the agent's bundle holds
// both roots, and after the switch it still reaches the control plane
// through the bundle it learned.
func TestFollowsRootRotation(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a := e.startAgent(t)
	if _, err := a.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := e.ca.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := a.Current()
	e.renewNow(t, a)
	eventually(t, "renewal", func() bool { return a.Current() != c })
	if n := len(a.Current().Bundle); n != 2 {
		t.Fatalf("bundle after a renewal during NewRootTrusted has %d roots, want 2", n)
	}
	newRoot := e.ca.Bundle()[1]
	// The switch comes before the agent's next renewal (a leaf lifetime
	// after the rotation started, against 2/3 of one after its renewal).
	c = a.Current()
	if !st.Deadline.Before(certs.RenewAt(c.Leaf().NotBefore, c.Leaf().NotAfter)) {
		t.Fatalf("deadline %s is not before the renewal", st.Deadline)
	}
	e.clk.SetTime(st.Deadline)
	if _, err := e.ca.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if e.ca.Status().Phase != certs.PhaseNewRootSigning {
		t.Fatalf("phase %s", e.ca.Status().Phase)
	}
	e.renewNow(t, a)
	eventually(t, "renewal from the new root", func() bool { return a.Current() != c })
	roots := x509.NewCertPool()
	roots.AddCert(newRoot)
	inter := x509.NewCertPool()
	inter.AddCert(a.Current().Chain[1])
	if _, err := a.Current().Leaf().Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: e.clk.Now()}); err != nil {
		t.Fatalf("leaf after the switch is not from the new root: %v", err)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
