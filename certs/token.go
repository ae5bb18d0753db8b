package certs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/utils/clock"
)

// ErrUnauthenticated is returned by an Authenticator for a token that is
// unknown, expired, malformed or meant for someone else: the caller's
// problem. Any other error is a fault of the authenticator (an unreachable
// API server) and is reported as unavailable.
var ErrUnauthenticated = errors.New("invalid or expired token")

// Authenticator turns a bearer token into the service account it speaks for.
// Standalone mode uses TokenAuthenticator; Kubernetes mode will use a
// TokenReview-backed one (in watcher/, the only package that talks to the
// API server), with caching and rate limiting of its own.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (ServiceAccount, error)
}

// tokenPrefix marks Fjord tokens, so that one pasted into the wrong place
// (or found by a secret scanner) is recognisable.
const tokenPrefix = "fjt_"

// MaxTokenTTL bounds a standalone token's lifetime.
const MaxTokenTTL = 366 * 24 * time.Hour

// TokenRecord is what is stored for a token: never the token itself.
type TokenRecord struct {
	ServiceAccount ServiceAccount `json:"serviceAccount"`
	Created        time.Time      `json:"created"`
	Expires        time.Time      `json:"expires"`
}

// TokenStore keeps token records by the SHA-256 hash of the token (hex), so
// that reading the store yields no usable token.
type TokenStore interface {
	PutToken(ctx context.Context, hash string, rec TokenRecord) error
	// GetToken returns the record; ok is false when there is none.
	GetToken(ctx context.Context, hash string) (rec TokenRecord, ok bool, err error)
	// DeleteTokens removes every token of sa and returns how many.
	DeleteTokens(ctx context.Context, sa ServiceAccount) (int, error)
	// PruneTokens removes tokens expired before now and returns how many.
	PruneTokens(ctx context.Context, now time.Time) (int, error)
}

// HashToken is the key a token is stored under.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// MintToken makes a random token for sa valid for ttl and stores its hash,
// after removing expired records. The token itself is returned once and
// kept nowhere.
func MintToken(ctx context.Context, s TokenStore, sa ServiceAccount, ttl time.Duration, now time.Time) (string, TokenRecord, error) {
	if err := sa.Validate(); err != nil {
		return "", TokenRecord{}, err
	}
	if ttl <= 0 || ttl > MaxTokenTTL {
		return "", TokenRecord{}, fmt.Errorf("token TTL %s: want more than 0 and at most %s", ttl, MaxTokenTTL)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", TokenRecord{}, fmt.Errorf("token: %w", err)
	}
	// Minting is rare, so it is where expired records are swept.
	if _, err := s.PruneTokens(ctx, now); err != nil {
		return "", TokenRecord{}, fmt.Errorf("pruning expired tokens: %w", err)
	}
	token := tokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	rec := TokenRecord{ServiceAccount: sa, Created: now.UTC().Truncate(time.Second), Expires: now.Add(ttl).UTC().Truncate(time.Second)}
	if err := s.PutToken(ctx, HashToken(token), rec); err != nil {
		return "", TokenRecord{}, fmt.Errorf("storing token for %s: %w", sa, err)
	}
	return token, rec, nil
}

// TokenAuthenticator checks tokens minted by MintToken.
type TokenAuthenticator struct {
	Store TokenStore
	// Clock defaults to the wall clock.
	Clock clock.PassiveClock
}

// Authenticate looks the token's hash up and checks its expiry.
func (a *TokenAuthenticator) Authenticate(ctx context.Context, token string) (ServiceAccount, error) {
	if !strings.HasPrefix(token, tokenPrefix) {
		return ServiceAccount{}, fmt.Errorf("%w: not a Fjord token", ErrUnauthenticated)
	}
	rec, ok, err := a.Store.GetToken(ctx, HashToken(token))
	if err != nil {
		return ServiceAccount{}, fmt.Errorf("looking up token: %w", err)
	}
	if !ok {
		return ServiceAccount{}, fmt.Errorf("%w: unknown token", ErrUnauthenticated)
	}
	var now time.Time
	if a.Clock != nil {
		now = a.Clock.Now()
	} else {
		now = time.Now()
	}
	if !now.Before(rec.Expires) {
		return ServiceAccount{}, fmt.Errorf("%w: token for %s expired at %s", ErrUnauthenticated, rec.ServiceAccount, rec.Expires.Format(time.RFC3339))
	}
	return rec.ServiceAccount, nil
}
