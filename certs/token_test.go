package certs

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

type memTokens struct {
	mu sync.Mutex
	m  map[string]TokenRecord
}

func (s *memTokens) PutToken(_ context.Context, hash string, rec TokenRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]TokenRecord{}
	}
	s.m[hash] = rec
	return nil
}

func (s *memTokens) GetToken(_ context.Context, hash string) (TokenRecord, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.m[hash]
	return rec, ok, nil
}

func (s *memTokens) DeleteTokens(_ context.Context, sa ServiceAccount) (int, error) {
	return s.drop(func(r TokenRecord) bool { return r.ServiceAccount == sa }), nil
}

func (s *memTokens) PruneTokens(_ context.Context, now time.Time) (int, error) {
	return s.drop(func(r TokenRecord) bool { return !now.Before(r.Expires) }), nil
}

func (s *memTokens) drop(f func(TokenRecord) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, r := range s.m {
		if f(r) {
			delete(s.m, k)
			n++
		}
	}
	return n
}

func TestTokens(t *testing.T) {
	ctx := context.Background()
	clk := clocktesting.NewFakeClock(t0)
	store := &memTokens{}
	auth := &TokenAuthenticator{Store: store, Clock: clk}
	sa := ServiceAccount{"demo", "a"}

	token, rec, err := MintToken(ctx, store, sa, time.Hour, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(token, "fjt_") || len(token) < 40 || !rec.Expires.Equal(t0.Add(time.Hour)) {
		t.Fatalf("token %q, record %+v", token, rec)
	}
	for hash := range store.m {
		if strings.Contains(hash, token[4:]) || hash != HashToken(token) {
			t.Fatalf("stored key %q is not the token's hash", hash)
		}
	}
	if got, err := auth.Authenticate(ctx, token); err != nil || got != sa {
		t.Fatalf("Authenticate = %v, %v", got, err)
	}
	other, _, _ := MintToken(ctx, store, sa, time.Hour, clk.Now())
	if other == token {
		t.Fatal("two tokens are equal")
	}

	tests := map[string]string{
		"unknown":      "fjt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"no prefix":    token[4:],
		"empty":        "",
		"one byte off": token[:len(token)-1] + "x",
	}
	for name, tok := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := auth.Authenticate(ctx, tok); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("Authenticate = %v, want ErrUnauthenticated", err)
			}
		})
	}

	clk.Step(time.Hour)
	_, err = auth.Authenticate(ctx, token)
	if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "expired") || strings.Contains(err.Error(), token) {
		t.Fatalf("expired token: %v", err)
	}
	// Minting sweeps the two expired records.
	if _, _, err := MintToken(ctx, store, sa, time.Hour, clk.Now()); err != nil || len(store.m) != 1 {
		t.Errorf("after minting: %d records, %v; want 1", len(store.m), err)
	}

	for name, tc := range map[string]struct {
		sa  ServiceAccount
		ttl time.Duration
	}{
		"bad identity": {ServiceAccount{"Demo", "a"}, time.Hour},
		"zero ttl":     {sa, 0},
		"huge ttl":     {sa, 2 * MaxTokenTTL},
	} {
		if _, _, err := MintToken(ctx, store, tc.sa, tc.ttl, clk.Now()); err == nil {
			t.Errorf("%s: minted", name)
		}
	}
}
