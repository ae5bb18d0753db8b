package watcher

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"

	"github.com/fjordmesh/fjord/certs"
)

// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create

// Defaults of TokenReviewOptions.
const (
	DefaultTokenAudience = "fjord"
	// DefaultTokenCacheTTL bounds how long a review's answer is reused. A
	// revoked token (its pod or service account deleted) keeps working
	// for at most this long.
	DefaultTokenCacheTTL = time.Minute
	// DefaultTokenReviewQPS and DefaultTokenReviewBurst bound the reviews
	// sent to the API server. A pod-start storm of distinct tokens waits
	// on this limiter rather than loading the API server; each token is
	// reviewed once per cache period whatever the number of callers.
	DefaultTokenReviewQPS   = 20
	DefaultTokenReviewBurst = 50
)

const (
	// negativeTTL bounds how long a refusal is cached: long enough to
	// absorb a crash-looping pod retrying a bad token, short enough that a
	// token refused because of a clock skew is soon reviewed again.
	negativeTTL = 10 * time.Second
	// maxCachedTokens bounds the cache's memory.
	maxCachedTokens = 10000
	// reviewTimeout bounds one review, which callers share.
	reviewTimeout = 30 * time.Second
	saPrefix      = "system:serviceaccount:"
)

// TokenReviewOptions configure a TokenReviewAuthenticator.
type TokenReviewOptions struct {
	// Audience the tokens must be minted for (--token-audience). Empty
	// means DefaultTokenAudience. A pod's default service-account token,
	// minted for the API server, is refused: it is meant for someone else.
	Audience string
	// CacheTTL, QPS and Burst: zero means the defaults above.
	CacheTTL time.Duration
	QPS      float32
	Burst    int
	// Clock defaults to the wall clock.
	Clock clock.PassiveClock
	Log   *slog.Logger
}

// TokenReviewAuthenticator is certs.Authenticator for Kubernetes mode: a
// projected service-account token is checked by the API server with a
// TokenReview for Fjord's audience, and the service account it names is the
// caller. Answers are cached per token (by hash, never the token itself),
// identical concurrent reviews are coalesced into one, and reviews are
// rate-limited on the client side.
type TokenReviewAuthenticator struct {
	client   kubernetes.Interface
	audience string
	ttl      time.Duration
	clock    clock.PassiveClock
	log      *slog.Logger
	flight   singleflight.Group

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cachedReview

	// reviews counts TokenReviews sent.
	reviews atomic.Int64
}

type cachedReview struct {
	sa    certs.ServiceAccount
	err   error // nil or wraps certs.ErrUnauthenticated
	until time.Time
}

var _ certs.Authenticator = (*TokenReviewAuthenticator)(nil)

// NewTokenReviewAuthenticator reviews tokens with the API server of cfg.
func NewTokenReviewAuthenticator(cfg *rest.Config, o TokenReviewOptions) (*TokenReviewAuthenticator, error) {
	if o.Audience == "" {
		o.Audience = DefaultTokenAudience
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = DefaultTokenCacheTTL
	}
	if o.QPS <= 0 {
		o.QPS = DefaultTokenReviewQPS
	}
	if o.Burst <= 0 {
		o.Burst = DefaultTokenReviewBurst
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	// A client of its own, so that its limiter holds back only reviews.
	cfg = rest.CopyConfig(cfg)
	cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(o.QPS, o.Burst)
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("token review client: %w", err)
	}
	return &TokenReviewAuthenticator{
		client: c, audience: o.Audience, ttl: o.CacheTTL, clock: o.Clock, log: o.Log,
		cache: map[[sha256.Size]byte]cachedReview{},
	}, nil
}

// Authenticate implements certs.Authenticator. A refused token wraps
// certs.ErrUnauthenticated; an API server that cannot be asked is any
// other error, and is not cached.
func (a *TokenReviewAuthenticator) Authenticate(ctx context.Context, token string) (certs.ServiceAccount, error) {
	if token == "" {
		return certs.ServiceAccount{}, fmt.Errorf("%w: empty token", certs.ErrUnauthenticated)
	}
	key := sha256.Sum256([]byte(token))
	if r, ok := a.cached(key); ok {
		return r.sa, r.err
	}
	// The review runs without the first caller's cancellation, since
	// others may be waiting on it; each caller stops waiting at its own.
	ch := a.flight.DoChan(string(key[:]), func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reviewTimeout)
		defer cancel()
		return a.review(rctx, key, token)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return certs.ServiceAccount{}, res.Err
		}
		r := res.Val.(cachedReview)
		return r.sa, r.err
	case <-ctx.Done():
		return certs.ServiceAccount{}, fmt.Errorf("waiting for token review: %w", ctx.Err())
	}
}

func (a *TokenReviewAuthenticator) cached(key [sha256.Size]byte) (cachedReview, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.cache[key]
	if !ok {
		return cachedReview{}, false
	}
	if !a.clock.Now().Before(r.until) {
		delete(a.cache, key)
		return cachedReview{}, false
	}
	return r, true
}

// review asks the API server and caches a definite answer.
func (a *TokenReviewAuthenticator) review(ctx context.Context, key [sha256.Size]byte, token string) (cachedReview, error) {
	a.reviews.Add(1)
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{a.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return cachedReview{}, fmt.Errorf("token review for audience %q: %w", a.audience, err)
	}
	now := a.clock.Now()
	r := cachedReview{until: now.Add(min(a.ttl, negativeTTL))}
	r.sa, r.err = a.decide(tr.Status)
	if r.err == nil {
		r.until = now.Add(a.ttl)
		// Never past the token's own expiry. The claim is read unverified,
		// which is safe: the API server has just verified the token, and
		// the expiry can only shorten the caching.
		if exp, ok := tokenExpiry(token); ok && exp.Before(r.until) {
			r.until = exp
		}
	} else {
		a.log.Debug("token refused", "reason", r.err)
	}
	a.store(key, r, now)
	return r, nil
}

// decide turns a review's status into the service account, or a refusal.
func (a *TokenReviewAuthenticator) decide(st authnv1.TokenReviewStatus) (certs.ServiceAccount, error) {
	if !st.Authenticated {
		if st.Error != "" {
			return certs.ServiceAccount{}, fmt.Errorf("%w: %s", certs.ErrUnauthenticated, st.Error)
		}
		return certs.ServiceAccount{}, fmt.Errorf("%w: not authenticated", certs.ErrUnauthenticated)
	}
	// The API server answers for the intersection of the token's audiences
	// and ours; an authenticator without audience support answers with
	// none, which is not good enough.
	if !slices.Contains(st.Audiences, a.audience) {
		return certs.ServiceAccount{}, fmt.Errorf("%w: token is not for audience %q", certs.ErrUnauthenticated, a.audience)
	}
	return serviceAccountOf(st.User.Username)
}

// serviceAccountOf parses "system:serviceaccount:NS:SA". Any other user (a
// person, a node, a controller's own credentials) has no workload identity.
func serviceAccountOf(user string) (certs.ServiceAccount, error) {
	s, ok := strings.CutPrefix(user, saPrefix)
	if !ok {
		return certs.ServiceAccount{}, fmt.Errorf("%w: user %q is not a service account", certs.ErrUnauthenticated, user)
	}
	ns, name, ok := strings.Cut(s, ":")
	if !ok {
		return certs.ServiceAccount{}, fmt.Errorf("%w: malformed service account user %q", certs.ErrUnauthenticated, user)
	}
	sa := certs.ServiceAccount{Namespace: ns, Name: name}
	if err := sa.Validate(); err != nil {
		return certs.ServiceAccount{}, fmt.Errorf("%w: user %q: %w", certs.ErrUnauthenticated, user, err)
	}
	return sa, nil
}

func (a *TokenReviewAuthenticator) store(key [sha256.Size]byte, r cachedReview, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= maxCachedTokens {
		for k, v := range a.cache {
			if !now.Before(v.until) {
				delete(a.cache, k)
			}
		}
		if len(a.cache) >= maxCachedTokens {
			// Every entry is live: a flood of distinct tokens. Starting
			// over costs reviews, never correctness.
			clear(a.cache)
		}
	}
	a.cache[key] = r
}

// tokenExpiry reads a JWT's exp claim without verifying anything.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.Exp, 0), true
}
