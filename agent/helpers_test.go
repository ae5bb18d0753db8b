package agent

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
	"github.com/fjordmesh/fjord/store"
)

var (
	saA  = certs.ServiceAccount{Namespace: "demo", Name: "a"}
	idA  = certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: "demo", ServiceAccount: "a"}
	idCP = certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: "fjord-system", ServiceAccount: "fjord-cp"}
)

const leafTTL = time.Hour

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is a control plane's certificate API on 127.0.0.1 (CA on bbolt,
// serving certificate, token auth), all on one fake clock that starts now
// (TLS handshakes check certificates against the real time).
type env struct {
	store *store.Store
	ca    *certs.CA
	clk   *clocktesting.FakeClock
	addr  string
	logs  *syncBuffer
	log   *slog.Logger
	token atomic.Value // string: what the agent's token file holds
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{clk: clocktesting.NewFakeClock(time.Now().Truncate(time.Second)), logs: &syncBuffer{}}
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	if e.store, err = store.Open(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.store.Close() })
	if e.ca, err = certs.New(context.Background(), certs.Options{Storage: e.store.CA(), Clock: e.clk, LeafTTL: leafTTL, Log: e.log}); err != nil {
		t.Fatal(err)
	}
	serving, err := certs.NewServing(e.ca, certs.ServingOptions{Identity: idCP, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Clock: e.clk, Log: e.log})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.NewServer(api.Options{Issuer: e.ca, Authenticator: &certs.TokenAuthenticator{Store: e.store.Tokens(), Clock: e.clk}, Log: e.log})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(serving.TLSConfig())))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	e.token.Store(e.mint(t))
	return e
}

func (e *env) mint(t *testing.T) string {
	t.Helper()
	tok, _, err := certs.MintToken(context.Background(), e.store.Tokens(), saA, 24*time.Hour, e.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// startAgent runs an agent for idA against e until the test ends.
func (e *env) startAgent(t *testing.T) *Agent {
	t.Helper()
	a, err := New(Config{
		Address: e.addr, Identity: idA, Bundle: e.ca.Bundle(),
		Token: func() (string, error) { return e.token.Load().(string), nil },
		Clock: e.clk, Log: e.log, RetryMin: time.Second, RetryMax: 4 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return a
}

// eventually polls cond until it holds, failing the test after a minute.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// renewNow moves the fake clock to the current certificate's renewal time,
// once the agent waits on its timer.
func (e *env) renewNow(t *testing.T, a *Agent) {
	t.Helper()
	c := a.Current()
	eventually(t, "the agent to wait for its renewal", e.clk.HasWaiters)
	if at := certs.RenewAt(c.Leaf().NotBefore, c.Leaf().NotAfter); at.After(e.clk.Now()) {
		e.clk.SetTime(at)
	}
}
