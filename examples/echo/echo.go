package echo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TrailerKey is the trailer in which a backend names itself on every call,
// failed or not, so that a client can attribute errors to endpoints too.
const TrailerKey = "echo-server"

// Server is one running backend. Its behaviour can be switched while it
// serves; every switch applies to the calls that start afterwards.
type Server struct {
	name string
	lis  net.Listener
	gs   *grpc.Server
	done chan struct{}

	failEvery atomic.Int64 // 0: never fail; n: every n-th call fails
	delay     atomic.Int64 // nanoseconds each call waits before answering

	calls       atomic.Int64
	failures    atomic.Int64
	inFlight    atomic.Int64
	maxInFlight atomic.Int64

	mu   sync.Mutex
	gate chan struct{} // non-nil while held: calls wait until it is closed

	stopOnce sync.Once
}

// Start listens on addr (host:port; port 0 picks one) and serves until Stop.
func Start(name, addr string) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("echo backend %s: listen on %s: %w", name, addr, err)
	}
	return Serve(name, lis), nil
}

// Serve serves on an already bound listener and takes ownership of it.
func Serve(name string, lis net.Listener) *Server {
	s := &Server{name: name, lis: lis, gs: grpc.NewServer(), done: make(chan struct{})}
	testpb.RegisterTestServiceServer(s.gs, &service{s: s})
	go func() {
		defer close(s.done)
		// Serve returns nil after Stop; any other error ends the backend,
		// which the client side sees as a dead endpoint.
		_ = s.gs.Serve(lis)
	}()
	return s
}

// Name is the name the backend answers with.
func (s *Server) Name() string { return s.name }

// Addr is the address the backend listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// FailEvery makes every n-th call fail with UNAVAILABLE: 0 never, 1 every
// call, 2 every second call (the 2nd, 4th, ...). The count is deterministic
// so that a test can reason about retries exactly.
func (s *Server) FailEvery(n int) {
	if n < 0 {
		n = 0
	}
	s.failEvery.Store(int64(n))
}

// Delay makes each call wait d before answering (or until the caller gives
// up, whichever is first).
func (s *Server) Delay(d time.Duration) { s.delay.Store(int64(d)) }

// Hold makes the calls that start from now on wait until Release (or until
// their caller gives up). Unlike Delay it involves no clock, so a test can
// keep calls in flight for exactly as long as it needs.
func (s *Server) Hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate == nil {
		s.gate = make(chan struct{})
	}
}

// Release lets every held call go on, and new calls no longer wait.
func (s *Server) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate != nil {
		close(s.gate)
		s.gate = nil
	}
}

// Calls is the number of calls that reached the backend.
func (s *Server) Calls() int64 { return s.calls.Load() }

// Failures is the number of calls the backend failed on purpose.
func (s *Server) Failures() int64 { return s.failures.Load() }

// InFlight is the number of calls being served right now.
func (s *Server) InFlight() int64 { return s.inFlight.Load() }

// MaxInFlight is the most calls served at once since Start or the last
// ResetMaxInFlight.
func (s *Server) MaxInFlight() int64 { return s.maxInFlight.Load() }

// ResetMaxInFlight restarts the high-water mark from the current gauge.
func (s *Server) ResetMaxInFlight() { s.maxInFlight.Store(s.inFlight.Load()) }

// Stop closes the listener, ends every call at once and waits for the
// serving goroutine. It is safe to call more than once.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		s.gs.Stop()
		<-s.done
	})
}

type service struct {
	testpb.UnimplementedTestServiceServer
	s *Server
}

func (v *service) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	if err := v.s.handle(ctx); err != nil {
		return nil, err
	}
	return &testpb.Empty{}, nil
}

func (v *service) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if err := v.s.handle(ctx); err != nil {
		return nil, err
	}
	return &testpb.SimpleResponse{ServerId: v.s.name, Hostname: v.s.Addr()}, nil
}

// handle applies the configured behaviour to one call and returns the
// status the call must end with.
func (s *Server) handle(ctx context.Context) error {
	n := s.calls.Add(1)
	cur := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		m := s.maxInFlight.Load()
		if cur <= m || s.maxInFlight.CompareAndSwap(m, cur) {
			break
		}
	}
	// The trailer goes out with every status, errors included.
	_ = grpc.SetTrailer(ctx, metadata.Pairs(TrailerKey, s.name))

	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	if d := time.Duration(s.delay.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	if k := s.failEvery.Load(); k > 0 && n%k == 0 {
		s.failures.Add(1)
		return status.Errorf(codes.Unavailable, "%s (%s): failing on purpose", s.name, s.Addr())
	}
	return nil
}

// Call makes one UnaryCall on cc and returns the name of the backend that
// answered it; on failure the name is the backend that failed the call, or
// "" when the call never reached one (a client-side circuit breaker, no
// endpoint, a deadline).
func Call(ctx context.Context, cc grpc.ClientConnInterface) (string, error) {
	var tr metadata.MD
	resp, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&tr))
	if err != nil {
		if v := tr.Get(TrailerKey); len(v) > 0 {
			return v[0], err
		}
		return "", err
	}
	if resp.GetServerId() == "" {
		return "", errors.New("echo answer names no server")
	}
	return resp.GetServerId(), nil
}
