package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/xds"

	"github.com/fjordmesh/fjord/examples/echo"
)

// The Service of examples/config the client calls, and its endpoints.
const (
	target      = "xds:///echo.demo.svc.cluster.local:50051"
	backendPort = 50051
	failing     = 3 // echo-3 on 127.0.0.3 fails every call
)

// policy is the classic circuit breaker: eject an endpoint when at least 60%
// of at least 3 requests in an interval failed, for 30s (longer each time it
// is ejected again), never more than half of the endpoints.
const policy = `apiVersion: fjord.dev/v1alpha1
kind: ResiliencePolicy
metadata:
  name: echo-breaker
  namespace: demo
spec:
  targetRefs:
  - {group: "", kind: Service, name: echo, sectionName: grpc}
  outlierDetection:
    interval: 1s
    baseEjectionTime: 30s
    maxEjectionPercent: 50
    enforcingPercent: 100
    failurePercentage: {threshold: 60, minimumHosts: 3, requestVolume: 3}
`

// run is the whole demo. Everything it starts is stopped before it
// returns, on every path: the control plane by PID, the backends, the
// client and the temporary directory.
func run(ctx context.Context, o options, out io.Writer) (err error) {
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()

	tmp, err := os.MkdirTemp("", "fjord-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	configDir, dataDir := filepath.Join(tmp, "config"), filepath.Join(tmp, "data")
	if err := copyDir(o.config, configDir); err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return err
	}

	var backends []*echo.Server
	defer func() {
		for _, b := range backends {
			b.Stop()
		}
	}()
	for i := 1; i <= 3; i++ {
		b, err := echo.Start(fmt.Sprintf("echo-%d", i), fmt.Sprintf("127.0.0.%d:%d", i, backendPort))
		if err != nil {
			return fmt.Errorf("%w (is another demo running?)", err)
		}
		if i == failing {
			b.FailEvery(1)
		}
		backends = append(backends, b)
	}

	cp, err := startControlPlane(ctx, o.bin, configDir, dataDir, filepath.Join(tmp, "fjord-cp.log"))
	if err != nil {
		return err
	}
	defer func() {
		if stopErr := cp.stop(); stopErr != nil && err == nil {
			err = stopErr
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(out, "\nlast lines of the control plane's log:\n%s", cp.tail(20))
		}
	}()
	if err := cp.waitReady(ctx); err != nil {
		return err
	}

	bootstrap, err := cp.bootstrap(ctx)
	if err != nil {
		return err
	}
	resolver, err := xds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		return fmt.Errorf("xDS resolver from the fjordctl bootstrap: %w", err)
	}
	cc, err := grpc.NewClient(target, grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dialing %s: %w", target, err)
	}
	defer cc.Close()

	fmt.Fprintf(out, "fjord-cp (pid %d) serves %s: xDS on %s, /readyz on %s\n", cp.pid(), configDir, cp.xdsAddr, cp.monAddr)
	for _, b := range backends {
		note := ""
		if b.Name() == fmt.Sprintf("echo-%d", failing) {
			note = "  <- fails every call (UNAVAILABLE)"
		}
		fmt.Fprintf(out, "backend %s on %s%s\n", b.Name(), b.Addr(), note)
	}
	fmt.Fprintf(out, "client: proxyless gRPC, %d calls/s to %s (bootstrap by fjordctl)\n\n", o.rate, target)

	return drive(ctx, o, out, cc, configDir)
}

// drive sends calls at the configured rate and prints one line per second;
// at policyAfter it writes the policy. It returns when ctx ends.
func drive(ctx context.Context, o options, out io.Writer, cc *grpc.ClientConn, configDir string) error {
	var (
		mu       sync.Mutex
		sec      = newSecond()
		lastCall = map[string]time.Time{} // when each backend last got a call
		wg       sync.WaitGroup
	)
	wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(max(o.rate, 1)))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
			backend, err := echo.Call(callCtx, cc)
			cancel()
			if ctx.Err() != nil {
				return
			}
			mu.Lock()
			sec.add(backend, err)
			lastCall[backend] = time.Now()
			mu.Unlock()
		}
	})
	defer wg.Wait()

	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	policyAt := time.After(o.policyAfter)
	var (
		applied   time.Time
		out0      = map[string]time.Time{} // backends getting no calls: their last call before
		ejections = map[string]int{}
	)
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				fmt.Fprintf(out, "\ndone after %v\n", time.Since(start).Round(time.Second))
				return nil
			}
			fmt.Fprintln(out, "\ninterrupted, shutting down")
			return ctx.Err()

		case <-policyAt:
			path := filepath.Join(configDir, "echo-breaker.yaml")
			if err := writeAtomic(path, policy); err != nil {
				return err
			}
			applied = time.Now()
			fmt.Fprintf(out, "\n>>> wrote %s:\n%s\n", path, indent(policy))

		case now := <-tick.C:
			mu.Lock()
			s := sec
			sec = newSecond()
			last := maps.Clone(lastCall)
			mu.Unlock()
			fmt.Fprintf(out, "[%3.0fs] %s\n", now.Sub(start).Seconds(), s)
			for _, b := range []string{"echo-1", "echo-2", "echo-3"} {
				since, isOut := out0[b]
				switch {
				case s.byBackend[b] > 0 && isOut:
					delete(out0, b)
					fmt.Fprintf(out, ">>> %s is back after %v without calls: its ejection is over, the client tries it again\n",
						b, last[b].Sub(since).Round(time.Second))
				case s.byBackend[b] == 0 && !isOut && !last[b].IsZero() && s.total > 0:
					out0[b] = last[b]
					if applied.IsZero() {
						fmt.Fprintf(out, ">>> %s gets no calls\n", b)
						break
					}
					ejections[b]++
					if ejections[b] == 1 {
						fmt.Fprintf(out, ">>> %s ejected %v after the policy was written: no calls reach it, errors stop (for baseEjectionTime, 30s)\n",
							b, max(last[b].Sub(applied), 0).Round(100*time.Millisecond))
					} else {
						fmt.Fprintf(out, ">>> %s ejected again: it still fails; this time for %d x baseEjectionTime\n", b, ejections[b])
					}
				}
			}
		}
	}
}

// second is what the client saw in one second.
type second struct {
	total, failed int
	byBackend     map[string]int // calls each backend answered or failed
}

func newSecond() *second { return &second{byBackend: map[string]int{}} }

func (s *second) add(backend string, err error) {
	s.total++
	if err != nil {
		s.failed++
	}
	if backend == "" {
		backend = "none"
	}
	s.byBackend[backend]++
}

func (s *second) String() string {
	if s.total == 0 {
		return "no calls completed"
	}
	names := []string{"echo-1", "echo-2", "echo-3"}
	if s.byBackend["none"] > 0 {
		names = append(names, "none") // failed before reaching a backend
	}
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "%s %3.0f%%  ", n, 100*float64(s.byBackend[n])/float64(s.total))
	}
	fmt.Fprintf(&b, "| errors %5.1f%%  (%d calls)", 100*float64(s.failed)/float64(s.total), s.total)
	return b.String()
}

// writeAtomic writes the file beside the config directory and renames it
// in, so the control plane never reads half of it.
func writeAtomic(path, content string) error {
	f, err := os.CreateTemp(filepath.Dir(filepath.Dir(path)), "policy-")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n    ")
}

// copyDir copies the regular files under src into dst, keeping the tree.
func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("copying the example config: %w", err)
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("copying the example config: %w", err)
		}
		return os.WriteFile(to, data, 0o644)
	})
}
