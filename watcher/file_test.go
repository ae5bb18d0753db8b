package watcher

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/watcher/model"
)

const echoService = `apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  ports:
  - {name: grpc, port: 50051, appProtocol: grpc}
`

func echoSlice(addrs ...string) string {
	s := `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: demo, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: grpc, port: 50051}]
endpoints:
`
	for _, a := range addrs {
		s += "- addresses: [" + a + "]\n"
	}
	return s
}

const breakerPolicy = `apiVersion: fjord.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: breaker, namespace: demo}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  outlierDetection: {interval: 1s}
`

// sourceRun runs a FileSource on dir for the duration of the test.
type sourceRun struct {
	mu     sync.Mutex
	latest *model.Snapshot
	count  int
	errs   chan error
	done   chan error
	stop   func() // ends Run before the test does
}

func startSource(t *testing.T, dir string) *sourceRun {
	t.Helper()
	return startSourceWith(t, dir, nil)
}

func startSourceWith(t *testing.T, dir string, mem FileMemory) *sourceRun {
	t.Helper()
	return runFileSource(t, &FileSource{
		Memory: mem,
		Dir:    dir, HoldOff: 5 * time.Millisecond, MaxDelay: 20 * time.Millisecond,
	})
}

// runFileSource runs src, logging to the test and recording its errors.
func runFileSource(t *testing.T, src *FileSource) *sourceRun {
	t.Helper()
	r := &sourceRun{errs: make(chan error, 100), done: make(chan error, 1)}
	src.Log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	src.OnError = func(err error) {
		select {
		case r.errs <- err:
		default: // nobody is waiting for errors in this test
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("Run: %v", err)
		}
		r.done <- nil
	}
	go func() {
		r.done <- src.Run(ctx, func(s *model.Snapshot) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.latest, r.count = s, r.count+1
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// memory is a FileMemory in memory.
type memory struct {
	mu    sync.Mutex
	files map[string][]byte
	saves int
}

func (m *memory) LoadFiles() (map[string][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.files, nil
}

func (m *memory) SaveFiles(f map[string][]byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.files, m.saves = f, m.saves+1
	return nil
}

func (r *sourceRun) snapshot() (*model.Snapshot, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.latest, r.count
}

// waitFor polls the latest snapshot until cond holds. The deadline is only
// a guard against hanging forever; nothing here depends on how fast it is.
func (r *sourceRun) waitFor(t *testing.T, what string, cond func(*model.Snapshot) bool) *model.Snapshot {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, _ := r.snapshot()
		if s != nil && cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; latest snapshot: %+v", what, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitError waits for a configuration error report containing all of want.
func (r *sourceRun) waitError(t *testing.T, want ...string) {
	t.Helper()
	for {
		select {
		case err := <-r.errs:
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(err.Error(), w)
			}
			if ok {
				return
			}
			t.Logf("other config error: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("no config error containing %q", want)
		}
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	// Write a temporary file and rename it, as editors do, so the source
	// never reads a half-written file.
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func addresses(s *model.Snapshot) []string {
	var out []string
	for _, es := range s.EndpointSlices {
		for _, e := range es.Endpoints {
			out = append(out, e.Address)
		}
	}
	return out
}

func hasPolicy(s *model.Snapshot, name string) bool {
	for _, p := range s.Policies {
		if p.Name == name {
			return true
		}
	}
	return false
}

func TestFileSourceLifecycle(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "echo.yaml"), echoService+"---\n"+echoSlice("127.0.0.1", "127.0.0.2"))
	write(t, filepath.Join(dir, "policies", "breaker.yml"), breakerPolicy)
	write(t, filepath.Join(dir, "README.md"), "not config")
	write(t, filepath.Join(dir, ".hidden.yaml"), "not: [valid")
	r := startSource(t, dir)

	s := r.waitFor(t, "initial snapshot", func(*model.Snapshot) bool { return true })
	want := []string{"127.0.0.1", "127.0.0.2"}
	if d := cmp.Diff(want, addresses(s)); d != "" {
		t.Fatalf("initial addresses (-want +got):\n%s", d)
	}
	if len(s.Services) != 1 || !hasPolicy(s, "breaker") {
		t.Fatalf("initial snapshot lacks objects: %+v", s)
	}

	t.Run("modify", func(t *testing.T) {
		write(t, filepath.Join(dir, "echo.yaml"), echoService+"---\n"+echoSlice("127.0.0.3", "127.0.0.1"))
		r.waitFor(t, "new endpoints", func(s *model.Snapshot) bool {
			return cmp.Equal(addresses(s), []string{"127.0.0.1", "127.0.0.3"})
		})
	})

	t.Run("broken file keeps its last good content", func(t *testing.T) {
		write(t, filepath.Join(dir, "policies", "breaker.yml"), breakerPolicy+"  bogus: true\n")
		r.waitError(t, filepath.Join(dir, "policies", "breaker.yml"), "ResiliencePolicy demo/breaker", `unknown field "spec.bogus"`)
		if s, _ := r.snapshot(); !hasPolicy(s, "breaker") {
			t.Fatalf("policy of the broken file vanished: %+v", s.Policies)
		}
		// Fixing it with a change is picked up.
		write(t, filepath.Join(dir, "policies", "breaker.yml"), strings.Replace(breakerPolicy, "1s", "2s", 1))
		r.waitFor(t, "fixed policy", func(s *model.Snapshot) bool {
			return hasPolicy(s, "breaker") && *s.Policies[0].Spec.OutlierDetection.Interval == "2s"
		})
	})

	t.Run("a file never good contributes nothing", func(t *testing.T) {
		write(t, filepath.Join(dir, "new.yaml"), strings.Replace(breakerPolicy, "name: breaker", "name: other", 1)+"oops: 1\n")
		r.waitError(t, "new.yaml", "ResiliencePolicy demo/other")
		// A later valid change elsewhere publishes; "other" is still absent.
		write(t, filepath.Join(dir, "echo.yaml"), echoService+"---\n"+echoSlice("127.0.0.1"))
		s := r.waitFor(t, "one endpoint", func(s *model.Snapshot) bool { return len(addresses(s)) == 1 })
		if hasPolicy(s, "other") {
			t.Fatalf("policy from a file that never parsed is published")
		}
		if err := os.Remove(filepath.Join(dir, "new.yaml")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("new subdirectory", func(t *testing.T) {
		write(t, filepath.Join(dir, "team", "a", "b", "p.yaml"), strings.Replace(breakerPolicy, "name: breaker", "name: nested", 1))
		r.waitFor(t, "policy in a new subdirectory", func(s *model.Snapshot) bool { return hasPolicy(s, "nested") })
		// The new directory is watched: a second file in it is seen too.
		write(t, filepath.Join(dir, "team", "a", "b", "q.yaml"), strings.Replace(breakerPolicy, "name: breaker", "name: nested2", 1))
		r.waitFor(t, "second policy in the subdirectory", func(s *model.Snapshot) bool { return hasPolicy(s, "nested2") })
	})

	t.Run("delete", func(t *testing.T) {
		if err := os.RemoveAll(filepath.Join(dir, "team")); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, "policies", "breaker.yml")); err != nil {
			t.Fatal(err)
		}
		r.waitFor(t, "policies gone", func(s *model.Snapshot) bool { return len(s.Policies) == 0 })
	})
}

// TestFileSourceMemory restarts the source on a directory whose files broke
// while it was down: they contribute their content from the previous run.
func TestFileSourceMemory(t *testing.T) {
	dir := t.TempDir()
	mem := &memory{}
	write(t, filepath.Join(dir, "echo.yaml"), echoService)
	write(t, filepath.Join(dir, "p", "breaker.yaml"), breakerPolicy)
	write(t, filepath.Join(dir, "gone.yaml"), strings.Replace(breakerPolicy, "name: breaker", "name: gone", 1))
	r := startSourceWith(t, dir, mem)
	r.waitFor(t, "first run", func(s *model.Snapshot) bool { return hasPolicy(s, "gone") })
	r.stop()
	if got := mem.files["p/breaker.yaml"]; string(got) != breakerPolicy {
		t.Fatalf("memory holds %q for p/breaker.yaml, want its content", got)
	}

	write(t, filepath.Join(dir, "echo.yaml"), "kind: [broken\n")
	write(t, filepath.Join(dir, "p", "breaker.yaml"), "spec: {retry: {attempts: }\n")
	write(t, filepath.Join(dir, "never.yaml"), "kind: [broken\n")
	if err := os.Remove(filepath.Join(dir, "gone.yaml")); err != nil {
		t.Fatal(err)
	}
	saves := mem.saves
	r = startSourceWith(t, dir, mem)
	s := r.waitFor(t, "second run", func(*model.Snapshot) bool { return true })
	if len(s.Services) != 1 || !hasPolicy(s, "breaker") {
		t.Fatalf("broken files lost their last good content across the restart: %+v", s)
	}
	if hasPolicy(s, "gone") {
		t.Fatal("a file deleted while the source was down came back from memory")
	}
	r.stop()
	if mem.saves != saves+1 || mem.files["gone.yaml"] != nil || mem.files["echo.yaml"] == nil {
		t.Fatalf("memory after the second run (%d saves): %v", mem.saves-saves, mem.files)
	}
}

func TestFileSourceDuplicates(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), breakerPolicy)
	write(t, filepath.Join(dir, "b.yaml"), strings.Replace(breakerPolicy, "1s", "9s", 1))
	r := startSource(t, dir)
	r.waitError(t, "ResiliencePolicy demo/breaker", filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml"))
	s := r.waitFor(t, "snapshot", func(*model.Snapshot) bool { return true })
	if len(s.Policies) != 1 || *s.Policies[0].Spec.OutlierDetection.Interval != "1s" {
		t.Fatalf("want the policy from a.yaml only, got %+v", s.Policies)
	}
}

// TestFileScanRebuildWithoutChange drives builds directly: a rescan that
// finds the same content (a touched or rewritten file) publishes nothing.
func TestFileScanRebuildWithoutChange(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "echo.yaml"), echoService)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var published int
	f := newFileScan(&FileSource{Dir: dir}, slog.New(slog.DiscardHandler), w, func(*model.Snapshot) { published++ })
	f.build(Burst{})
	write(t, filepath.Join(dir, "echo.yaml"), echoService)
	f.note(filepath.Join(dir, "echo.yaml"))
	f.build(Burst{})
	if published != 1 {
		t.Fatalf("%d publishes, want 1", published)
	}
	write(t, filepath.Join(dir, "echo.yaml"), strings.Replace(echoService, "50051", "50052", 1))
	f.note(filepath.Join(dir, "echo.yaml"))
	f.build(Burst{})
	if published != 2 {
		t.Fatalf("%d publishes after a change, want 2", published)
	}
}

func TestFileSourceMissingDir(t *testing.T) {
	err := (&FileSource{Dir: filepath.Join(t.TempDir(), "nope")}).Run(context.Background(), func(*model.Snapshot) {
		t.Error("published from a missing directory")
	})
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("Run = %v, want an error naming the directory", err)
	}
}

func TestFileSourceSymlinkedFiles(t *testing.T) {
	// The layout of a mounted ConfigMap: visible names are symlinks into a
	// hidden, timestamped directory.
	dir := t.TempDir()
	write(t, filepath.Join(dir, "..2026_01_01", "echo.yaml"), echoService)
	if err := os.Symlink("..2026_01_01", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("..data", "echo.yaml"), filepath.Join(dir, "echo.yaml")); err != nil {
		t.Fatal(err)
	}
	r := startSource(t, dir)
	s := r.waitFor(t, "snapshot", func(*model.Snapshot) bool { return true })
	if len(s.Services) != 1 {
		t.Fatalf("want the one Service once, got %+v", s.Services)
	}
}
