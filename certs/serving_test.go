package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// TestServingFollowsCA: the serving certificate is renewed at 2/3 of its
// lifetime and re-issued from the new signer as soon as a rotation switches,
// and the client CA pool follows the bundle.
func TestServingFollowsCA(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	clk := clocktesting.NewFakeClock(t0)
	ca := newTestCA(t, &memStorage{}, clk, time.Hour)
	cp := Identity{"cluster.local", "fjord-system", "fjord-cp"}
	s, err := NewServing(ca, ServingOptions{Identity: cp, DNSNames: []string{"fjord-cp.fjord-system.svc"}, IPs: loopback, Clock: clk, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	first := s.Certificate()
	if err := verify(chainOf(first), ca.Bundle(), clk.Now()); err != nil {
		t.Fatal(err)
	}
	if len(first.Leaf.URIs) != 1 || first.Leaf.URIs[0].String() != cp.String() || first.Leaf.DNSNames[0] != "fjord-cp.fjord-system.svc" {
		t.Errorf("serving names: %v %v %v", first.Leaf.URIs, first.Leaf.DNSNames, first.Leaf.IPAddresses)
	}
	cfg, err := s.TLSConfig().GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil || cfg.ClientAuth != tls.VerifyClientCertIfGiven || !cfg.ClientCAs.Equal(poolOf(ca.Bundle())) {
		t.Fatalf("config: %+v, %v", cfg, err)
	}

	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// Renewal at 2/3 of the lifetime.
	waitFor("Run's timer", clk.HasWaiters)
	clk.SetTime(RenewAt(first.Leaf.NotBefore, first.Leaf.NotAfter))
	waitFor("renewal", func() bool { return s.Certificate() != first })
	second := s.Certificate()

	// A rotation's new root joins the client CA pool at once.
	if _, err := ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("the pool to follow the bundle", func() bool {
		cfg, _ := s.TLSConfig().GetConfigForClient(&tls.ClientHelloInfo{})
		return len(ca.Bundle()) == 2 && cfg.ClientCAs.Equal(poolOf(ca.Bundle()))
	})
	waitFor("Run's timer", clk.HasWaiters)
	third := s.Certificate()
	if third == second {
		t.Fatal("serving certificate not re-issued when the bundle changed")
	}
	clk.Step(Overlap(time.Hour, DefaultSkew))
	if _, err := ca.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	newRoot := ca.Bundle()[0]
	waitFor("re-issue from the new signer", func() bool {
		c := s.Certificate()
		return c != third && verify(chainOf(c), []*x509.Certificate{newRoot}, clk.Now()) == nil
	})
}

func chainOf(c *tls.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, der := range c.Certificate {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		out = append(out, x)
	}
	return out
}

func poolOf(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}
