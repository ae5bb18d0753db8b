package echo

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func start(t *testing.T, name string) (*Server, *grpc.ClientConn) {
	t.Helper()
	s, err := Start(name, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	cc, err := grpc.NewClient("passthrough:///"+s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return s, cc
}

func TestCallNamesBackend(t *testing.T) {
	s, cc := start(t, "echo-a")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := Call(ctx, cc)
	if err != nil || got != "echo-a" {
		t.Fatalf("Call = %q, %v; want echo-a, nil", got, err)
	}
	if s.Calls() != 1 || s.Failures() != 0 {
		t.Fatalf("calls=%d failures=%d, want 1, 0", s.Calls(), s.Failures())
	}
}

func TestFailEvery(t *testing.T) {
	tests := map[string]struct {
		every int
		want  []bool // per call: failed?
	}{
		"never":        {every: 0, want: []bool{false, false, false, false}},
		"every call":   {every: 1, want: []bool{true, true, true, true}},
		"every second": {every: 2, want: []bool{false, true, false, true}},
		"every third":  {every: 3, want: []bool{false, false, true, false}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s, cc := start(t, "echo-f")
			s.FailEvery(tc.every)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i, wantFail := range tc.want {
				got, err := Call(ctx, cc)
				if got != "echo-f" {
					t.Fatalf("call %d answered by %q, want echo-f (err %v)", i+1, got, err)
				}
				if failed := err != nil; failed != wantFail {
					t.Fatalf("call %d: err = %v, want failure %v", i+1, err, wantFail)
				}
				if err != nil && status.Code(err) != codes.Unavailable {
					t.Fatalf("call %d: code %v, want Unavailable", i+1, status.Code(err))
				}
			}
		})
	}
}

func TestDelayAndInFlight(t *testing.T) {
	s, cc := start(t, "echo-d")
	s.Delay(time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 5
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := Call(ctx, cc)
			errs <- err
		})
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.InFlight() < n {
		if time.Now().After(deadline) {
			t.Fatalf("in flight = %d after 30s, want %d", s.InFlight(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s.MaxInFlight() != n {
		t.Fatalf("max in flight = %d, want %d", s.MaxInFlight(), n)
	}
	// A delayed call ends when its caller gives up, not after the delay.
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		if status.Code(err) != codes.Canceled {
			t.Fatalf("delayed call ended with %v, want Canceled", err)
		}
	}
	for s.InFlight() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("in flight = %d after cancel, want 0", s.InFlight())
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.ResetMaxInFlight()
	if s.MaxInFlight() != 0 {
		t.Fatalf("max in flight after reset = %d, want 0", s.MaxInFlight())
	}
}

func TestStopIsIdempotent(t *testing.T) {
	s, err := Start("echo-s", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Stop()
	s.Stop()
}

func TestHoldRelease(t *testing.T) {
	s, cc := start(t, "echo-h")
	s.Hold()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 3
	results := make(chan error, n)
	for range n {
		go func() {
			_, err := Call(ctx, cc)
			results <- err
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.InFlight() < n {
		if time.Now().After(deadline) {
			t.Fatalf("in flight = %d after 30s, want %d held calls", s.InFlight(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-results:
		t.Fatalf("a held call ended before Release: %v", err)
	default:
	}
	s.Release()
	for range n {
		if err := <-results; err != nil {
			t.Fatalf("released call: %v", err)
		}
	}
	// Released: new calls do not wait.
	if _, err := Call(ctx, cc); err != nil {
		t.Fatalf("call after Release: %v", err)
	}
}

func TestEmptyCallFollowsBehaviour(t *testing.T) {
	s, cc := start(t, "echo-e")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := testpb.NewTestServiceClient(cc)
	var tr metadata.MD
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}, grpc.Trailer(&tr)); err != nil {
		t.Fatalf("EmptyCall: %v", err)
	}
	if got := tr.Get(TrailerKey); len(got) != 1 || got[0] != "echo-e" {
		t.Fatalf("EmptyCall trailer %s = %v, want [echo-e]", TrailerKey, got)
	}
	s.FailEvery(1)
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("EmptyCall on a failing backend: %v, want Unavailable", err)
	}
	if s.Calls() != 2 || s.Failures() != 1 {
		t.Fatalf("calls=%d failures=%d, want 2, 1", s.Calls(), s.Failures())
	}
}
