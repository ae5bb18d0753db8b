package store

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/certs"
)

func TestCAStorage(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	ca := s.CA()
	if _, _, err := ca.Load(ctx); !errors.Is(err, certs.ErrNotFound) {
		t.Fatalf("Load on a new store = %v, want ErrNotFound", err)
	}
	if _, err := ca.Update(ctx, map[string][]byte{"a": []byte("1")}, "1"); !errors.Is(err, certs.ErrNotFound) {
		t.Fatalf("Update before Create = %v, want ErrNotFound", err)
	}
	first := map[string][]byte{"root.pem": []byte("r1"), "phase": []byte("Idle")}
	rev, err := ca.Create(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Create(ctx, map[string][]byte{"x": nil}); !errors.Is(err, certs.ErrExists) {
		t.Fatalf("second Create = %v, want ErrExists", err)
	}
	second := map[string][]byte{"root.pem": []byte("r2")}
	rev2, err := ca.Update(ctx, second, rev)
	if err != nil || rev2 == rev {
		t.Fatalf("Update = %q, %v", rev2, err)
	}
	if _, err := ca.Update(ctx, first, rev); !errors.Is(err, certs.ErrConflict) {
		t.Fatalf("Update with a stale revision = %v, want ErrConflict", err)
	}

	s.Close()
	s = open(t, dir)
	got, gotRev, err := s.CA().Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(second, got); d != "" || gotRev != rev2 {
		t.Errorf("after reopen: revision %s (want %s), data (-want +got):\n%s", gotRev, rev2, d)
	}
}

// TestCACreateRace: two CAs starting together on one bbolt file (through
// the Storage interface, as two replicas on one Secret would) end up with
// one CA, and a restart loads it.
func TestCACreateRace(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for round := range 20 {
		// A fresh data dir per round, so every round is a real race to create.
		s := open(t, t.TempDir())
		var (
			wg  sync.WaitGroup
			cas [2]*certs.CA
		)
		start := make(chan struct{})
		for i := range cas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				ca, err := certs.New(ctx, certs.Options{Storage: s.CA(), Log: log})
				if err != nil {
					t.Error(err)
					return
				}
				cas[i] = ca
			}()
		}
		close(start)
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		if !cas[0].Bundle()[0].Equal(cas[1].Bundle()[0]) || cas[0].Status().Signer != cas[1].Status().Signer {
			t.Fatalf("round %d: two CAs", round)
		}
		again, err := certs.New(ctx, certs.Options{Storage: s.CA(), Log: log})
		if err != nil {
			t.Fatal(err)
		}
		if !again.Bundle()[0].Equal(cas[0].Bundle()[0]) {
			t.Fatalf("round %d: a restart made another CA", round)
		}
	}
}

func TestTokenStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	a, b := certs.ServiceAccount{Namespace: "demo", Name: "a"}, certs.ServiceAccount{Namespace: "demo", Name: "b"}
	tokA, recA, err := certs.MintToken(ctx, s.Tokens(), a, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	tokB, _, err := certs.MintToken(ctx, s.Tokens(), b, 2*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir)
	rec, ok, err := s.Tokens().GetToken(ctx, certs.HashToken(tokA))
	if err != nil || !ok {
		t.Fatalf("GetToken after reopen = %v, %v", ok, err)
	}
	if d := cmp.Diff(recA, rec); d != "" {
		t.Errorf("(-minted +stored):\n%s", d)
	}
	if _, ok, _ := s.Tokens().GetToken(ctx, certs.HashToken("fjt_nope")); ok {
		t.Error("unknown token found")
	}
	if n, err := s.Tokens().PruneTokens(ctx, now.Add(time.Hour)); n != 1 || err != nil {
		t.Errorf("PruneTokens = %d, %v; want 1", n, err)
	}
	auth := &certs.TokenAuthenticator{Store: s.Tokens()}
	if _, err := auth.Authenticate(ctx, tokA); !errors.Is(err, certs.ErrUnauthenticated) {
		t.Errorf("pruned token: %v", err)
	}
	if n, err := s.Tokens().DeleteTokens(ctx, b); n != 1 || err != nil {
		t.Errorf("DeleteTokens = %d, %v; want 1", n, err)
	}
	if _, ok, _ := s.Tokens().GetToken(ctx, certs.HashToken(tokB)); ok {
		t.Error("revoked token still stored")
	}
}
