package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/fjordmesh/fjord/examples/echo"
)

// newClient is a proxyless gRPC client of the echo Service: its own xDS
// client (bootstrap written by fjordctl, as a user would) talking to cp. It
// is closed when the test ends.
func newClient(t *testing.T, cp *controlPlane, name string) *grpc.ClientConn {
	t.Helper()
	cmd := exec.Command(bin("fjordctl"), "bootstrap", "--kind", "grpc",
		"--namespace", namespace, "--name", name, "--service-account", name,
		"--xds-address", cp.xdsAddr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	bootstrap, err := cmd.Output()
	if err != nil {
		t.Fatalf("fjordctl bootstrap: %v\n%s", err, stderr.String())
	}
	resolver, err := xds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatalf("xDS resolver from the fjordctl bootstrap: %v\n%s", err, bootstrap)
	}
	cc, err := grpc.NewClient(target, grpc.WithResolvers(resolver),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dialing %s: %v", target, err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// call is one RPC as the client saw it.
type call struct {
	start, end time.Time
	backend    string // who answered or failed it; "" if no backend did
	code       codes.Code
}

// load sends calls one after another, a pause apart, until the test ends,
// and keeps every result. Tests look at the most recent calls to decide
// whether the client's behaviour has changed.
type load struct {
	mu    sync.Mutex
	calls []call
}

// startLoad begins sending calls on cc. Each call has a 10s deadline so a
// stuck call cannot stall the test; the loop stops at test cleanup.
func startLoad(t *testing.T, cc *grpc.ClientConn, pause time.Duration) *load {
	t.Helper()
	l := &load{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			l.add(doCall(ctx, cc, 10*time.Second))
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return l
}

func doCall(ctx context.Context, cc *grpc.ClientConn, timeout time.Duration) call {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := call{start: time.Now()}
	backend, err := echo.Call(ctx, cc)
	c.end, c.backend, c.code = time.Now(), backend, status.Code(err)
	return c
}

func (l *load) add(c call) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, c)
}

// n is the number of calls made so far.
func (l *load) n() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.calls)
}

// last returns the n most recent calls, or nil if there are fewer.
func (l *load) last(n int) []call {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.calls) < n {
		return nil
	}
	return append([]call(nil), l.calls[len(l.calls)-n:]...)
}

// since returns the calls that started at or after t.
func (l *load) since(t time.Time) []call {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []call
	for _, c := range l.calls {
		if !c.start.Before(t) {
			out = append(out, c)
		}
	}
	return out
}

// waitFor waits until the n most recent calls satisfy cond, and returns
// them.
func (l *load) waitFor(t *testing.T, timeout time.Duration, what string, n int, cond func(tally) bool) []call {
	t.Helper()
	var got []call
	eventually(t, timeout, what, func() (bool, string) {
		got = l.last(n)
		if got == nil {
			return false, fmt.Sprintf("fewer than %d calls made", n)
		}
		s := count(got)
		return cond(s), "last " + s.String()
	})
	return got
}

// tally sums up calls: successes per backend, failures per status code.
type tally struct {
	from   time.Time // when the first call started
	total  int
	ok     map[string]int     // backend -> successful calls
	failed map[codes.Code]int // code -> failed calls
	hit    map[string]int     // backend -> calls it answered or failed
}

func count(calls []call) tally {
	s := tally{ok: map[string]int{}, failed: map[codes.Code]int{}, hit: map[string]int{}}
	if len(calls) > 0 {
		s.from = calls[0].start
	}
	for _, c := range calls {
		s.total++
		if c.backend != "" {
			s.hit[c.backend]++
		}
		if c.code == codes.OK {
			s.ok[c.backend]++
		} else {
			s.failed[c.code]++
		}
	}
	return s
}

func (s tally) errors() int {
	n := 0
	for _, v := range s.failed {
		n += v
	}
	return n
}

// backends lists, sorted, the backends that answered or failed a call.
func (s tally) backends() []string {
	var out []string
	for b := range s.hit {
		out = append(out, b)
	}
	sort.Strings(out)
	return out
}

func (s tally) String() string {
	return fmt.Sprintf("%d calls: ok %v, failed %v, reached %v", s.total, s.ok, s.failed, s.hit)
}

// sameSet reports whether got holds exactly want's elements.
func sameSet(got []string, want ...string) bool {
	w := append([]string(nil), want...)
	sort.Strings(w)
	return strings.Join(got, ",") == strings.Join(w, ",")
}
