package watcher

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/fjordmesh/fjord/certs"
)

// tokenFixture is a namespace with service accounts, and a way to mint
// their tokens with the TokenRequest API as the kubelet would for a
// projected volume.
type tokenFixture struct {
	t  *testing.T
	ns string
	cs kubernetes.Interface
}

func newTokenFixture(t *testing.T, cfg *rest.Config, ns string, accounts ...string) *tokenFixture {
	t.Helper()
	_, admin := apiServer(t)
	createNamespace(t, admin, ns, nil)
	for _, name := range accounts {
		mustCreate(t, admin, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &tokenFixture{t: t, ns: ns, cs: cs}
}

// token mints a token for service account sa with the audiences (none:
// the API server's own), bound to bound if it is not nil.
func (f *tokenFixture) token(sa string, bound *authnv1.BoundObjectReference, audiences ...string) string {
	f.t.Helper()
	ttl := int64(600) // the API server's minimum
	tr, err := f.cs.CoreV1().ServiceAccounts(f.ns).CreateToken(f.t.Context(), sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &ttl, BoundObjectRef: bound},
	}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatalf("TokenRequest for %s/%s: %v", f.ns, sa, err)
	}
	return tr.Status.Token
}

func newAuthenticator(t *testing.T, cfg *rest.Config, o TokenReviewOptions) *TokenReviewAuthenticator {
	t.Helper()
	if o.Log == nil {
		o.Log, _ = newTestLog(t)
	}
	a, err := NewTokenReviewAuthenticator(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestTokenReview(t *testing.T) {
	cfg, admin := apiServer(t)
	const ns = "token-review"
	f := newTokenFixture(t, cfg, ns, "alpha", "beta", "gamma")
	bindTo := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "binding"}}
	mustCreate(t, admin, bindTo)
	alpha := f.token("alpha", nil, "fjord")
	bound := f.token("alpha", &authnv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: bindTo.Name, UID: bindTo.UID}, "fjord")
	ofDeletedAccount := f.token("gamma", nil, "fjord")
	if err := admin.Delete(t.Context(), bindTo); err != nil {
		t.Fatal(err)
	}
	if err := admin.Delete(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "gamma"}}); err != nil {
		t.Fatal(err)
	}

	tests := map[string]struct {
		token string
		want  certs.ServiceAccount
		err   error
	}{
		"right audience": {token: alpha, want: certs.ServiceAccount{Namespace: ns, Name: "alpha"}},
		// Asked with beta's token, the answer is beta, whoever the caller
		// claims to be: the identity comes from the token alone.
		"another identity":                     {token: f.token("beta", nil, "fjord"), want: certs.ServiceAccount{Namespace: ns, Name: "beta"}},
		"one of several audiences":             {token: f.token("alpha", nil, "vault", "fjord"), want: certs.ServiceAccount{Namespace: ns, Name: "alpha"}},
		"wrong audience":                       {token: f.token("alpha", nil, "vault"), err: certs.ErrUnauthenticated},
		"the API server's audience":            {token: f.token("alpha", nil), err: certs.ErrUnauthenticated},
		"expired":                              {token: f.expired(alpha, -time.Hour), err: certs.ErrUnauthenticated},
		"bound object deleted":                 {token: bound, err: certs.ErrUnauthenticated},
		"service account deleted":              {token: ofDeletedAccount, err: certs.ErrUnauthenticated},
		"garbage":                              {token: "not-a-token", err: certs.ErrUnauthenticated},
		"empty":                                {token: "", err: certs.ErrUnauthenticated},
		"alpha's token re-signed, not expired": {token: f.expired(alpha, time.Hour), want: certs.ServiceAccount{Namespace: ns, Name: "alpha"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a := newAuthenticator(t, cfg, TokenReviewOptions{})
			got, err := a.Authenticate(t.Context(), tc.token)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Authenticate = %v, %v; want %v", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Authenticate = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// expired re-signs token with the API server's service-account signing key
// (envtest's, in its certificate directory), its validity moved so that it
// ends at now+exp. With exp > 0 the same re-signing yields an accepted
// token, which shows that an expired one is refused for its expiry and not
// for a bad signature. (The TokenRequest API will not mint a token shorter
// than ten minutes.)
func (f *tokenFixture) expired(token string, exp time.Duration) string {
	f.t.Helper()
	parts := strings.Split(token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		f.t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		f.t.Fatal(err)
	}
	end := time.Now().Add(exp)
	claims["exp"] = end.Unix()
	claims["iat"] = end.Add(-2 * time.Hour).Unix()
	claims["nbf"] = end.Add(-2 * time.Hour).Unix()
	payload, err = json.Marshal(claims)
	if err != nil {
		f.t.Fatal(err)
	}
	pemKey, err := os.ReadFile(filepath.Join(shared.env.ControlPlane.APIServer.CertDir, "sa-signer.key"))
	if err != nil {
		f.t.Fatal(err)
	}
	k, err := certs.ParseKey(pemKey)
	if err != nil {
		f.t.Fatal(err)
	}
	key, ok := k.Signer().(*ecdsa.PrivateKey)
	if !ok {
		f.t.Fatalf("envtest's service-account key is a %T, want ECDSA", k.Signer())
	}
	signed := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		f.t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestTokenReviewCachesAndCoalesces(t *testing.T) {
	cfg, _ := apiServer(t)
	f := newTokenFixture(t, cfg, "token-review-cache", "alpha")
	clk := testingclock.NewFakePassiveClock(time.Now())
	a := newAuthenticator(t, cfg, TokenReviewOptions{Clock: clk})
	token := f.token("alpha", nil, "fjord")
	want := certs.ServiceAccount{Namespace: "token-review-cache", Name: "alpha"}

	// A storm of callers with one token: one review.
	const callers = 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	start := make(chan struct{})
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got, err := a.Authenticate(context.Background(), token)
			if err == nil && got != want {
				err = errors.New("got " + got.String())
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := a.reviews.Load(); n != 1 {
		t.Fatalf("%d callers with one token sent %d reviews, want 1", callers, n)
	}

	// Cached until the TTL, then reviewed again.
	clk.SetTime(clk.Now().Add(DefaultTokenCacheTTL - time.Second))
	if _, err := a.Authenticate(t.Context(), token); err != nil {
		t.Fatal(err)
	}
	if n := a.reviews.Load(); n != 1 {
		t.Fatalf("within the cache period: %d reviews, want 1", n)
	}
	clk.SetTime(clk.Now().Add(2 * time.Second))
	if _, err := a.Authenticate(t.Context(), token); err != nil {
		t.Fatal(err)
	}
	if n := a.reviews.Load(); n != 2 {
		t.Fatalf("after the cache period: %d reviews, want 2", n)
	}

	// Never cached past the token's own expiry (600 s), whatever the TTL.
	long := newAuthenticator(t, cfg, TokenReviewOptions{Clock: clk, CacheTTL: time.Hour})
	if _, err := long.Authenticate(t.Context(), token); err != nil {
		t.Fatal(err)
	}
	exp, ok := tokenExpiry(token)
	if !ok {
		t.Fatal("no exp claim in a TokenRequest token")
	}
	clk.SetTime(exp)
	if _, err := long.Authenticate(t.Context(), token); err != nil {
		t.Fatal(err)
	}
	if n := long.reviews.Load(); n != 2 {
		t.Fatalf("at the token's expiry: %d reviews, want 2 (the cached answer ends with the token)", n)
	}
}

func TestTokenReviewRateLimited(t *testing.T) {
	cfg, _ := apiServer(t)
	f := newTokenFixture(t, cfg, "token-review-limit", "alpha", "beta")
	// One review, then one per 1000 s: the second distinct token is held
	// back by the limiter, and says so as an unavailable authenticator
	// rather than as a bad token.
	a := newAuthenticator(t, cfg, TokenReviewOptions{QPS: 0.001, Burst: 1})
	first := f.token("alpha", nil, "fjord")
	if _, err := a.Authenticate(t.Context(), first); err != nil {
		t.Fatal(err)
	}
	_, err := a.Authenticate(t.Context(), f.token("beta", nil, "fjord"))
	if err == nil || errors.Is(err, certs.ErrUnauthenticated) {
		t.Fatalf("a review over the rate limit: %v, want an error that is not ErrUnauthenticated", err)
	}
	// The cached answer needs no review.
	if got, err := a.Authenticate(t.Context(), first); err != nil || got.Name != "alpha" {
		t.Fatalf("cached token: %v, %v", got, err)
	}
}

// TestTokenReviewDecide covers the answers a real API server gives only
// with other authenticators configured: users that are not service
// accounts, and reviews without audiences.
func TestTokenReviewDecide(t *testing.T) {
	a := &TokenReviewAuthenticator{audience: "fjord"}
	ok := func(user string, audiences ...string) authnv1.TokenReviewStatus {
		return authnv1.TokenReviewStatus{Authenticated: true, Audiences: audiences, User: authnv1.UserInfo{Username: user}}
	}
	tests := map[string]struct {
		status authnv1.TokenReviewStatus
		want   certs.ServiceAccount
		err    error
	}{
		"service account":        {status: ok("system:serviceaccount:shop:cart", "fjord"), want: certs.ServiceAccount{Namespace: "shop", Name: "cart"}},
		"not authenticated":      {status: authnv1.TokenReviewStatus{}, err: certs.ErrUnauthenticated},
		"no audiences":           {status: ok("system:serviceaccount:shop:cart"), err: certs.ErrUnauthenticated},
		"other audience":         {status: ok("system:serviceaccount:shop:cart", "vault"), err: certs.ErrUnauthenticated},
		"a person":               {status: ok("alice@example.com", "fjord"), err: certs.ErrUnauthenticated},
		"a node":                 {status: ok("system:node:worker-1", "fjord"), err: certs.ErrUnauthenticated},
		"missing account":        {status: ok("system:serviceaccount:shop", "fjord"), err: certs.ErrUnauthenticated},
		"extra colon":            {status: ok("system:serviceaccount:shop:cart:x", "fjord"), err: certs.ErrUnauthenticated},
		"invalid namespace name": {status: ok("system:serviceaccount:Shop:cart", "fjord"), err: certs.ErrUnauthenticated},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := a.decide(tc.status)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("decide = %v, %v; want %v", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("decide = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
