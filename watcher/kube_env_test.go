package watcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// The envtest suite shares one kube-apiserver and etcd per test binary:
// starting them costs seconds to minutes on a busy machine. The first test
// that needs them starts them; TestMain stops them after the last test.
// Tests keep out of each other's way by using their own namespaces and
// Lease names.

// reaperEnv, when set, makes the test binary a reaper (see startReaper)
// instead of running tests.
const reaperEnv = "FJORD_WATCHER_ENVTEST_REAPER"

// meshNS is the control plane's namespace in these tests, as installed.
const meshNS = "fjord-system"

var shared struct {
	once   sync.Once
	env    *envtest.Environment
	cfg    *rest.Config
	admin  client.Client
	err    error
	reaper *exec.Cmd
	done   io.WriteCloser
}

func TestMain(m *testing.M) {
	if pgids := os.Getenv(reaperEnv); pgids != "" {
		os.Exit(reap(pgids))
	}
	// controller-runtime and client-go log through these globals in a few
	// places the source's own logger does not reach.
	ctrllog.SetLogger(logr.Discard())
	klog.SetLogger(logr.Discard())
	code := m.Run()
	if err := stopAPIServer(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// apiServer returns the shared API server's admin config and client,
// starting it on first use. Without the binaries the test fails, saying how
// to build them: a watcher test that passes without an API server would
// prove nothing.
func apiServer(t testing.TB) (*rest.Config, client.Client) {
	t.Helper()
	shared.once.Do(func() { shared.err = startAPIServer() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.cfg, shared.admin
}

func startAPIServer() error {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return errors.New("KUBEBUILDER_ASSETS is not set: run `make -f make/envtest.mk envtest-assets` and " +
			"export KUBEBUILDER_ASSETS=<repository>/bin/k8s (make test does both)")
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		path := filepath.Join(assets, name)
		info, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("KUBEBUILDER_ASSETS=%s has no %s (%w): run `make -f make/envtest.mk envtest-assets` to build it", assets, name, err)
		}
		if info.IsDir() || info.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file: remove it and run `make -f make/envtest.mk envtest-assets`", path)
		}
	}
	crds := filepath.Join("..", "manifests", "crd")
	routes, err := gatewayRouteCRDs()
	if err != nil {
		return err
	}
	shared.env = &envtest.Environment{
		CRDDirectoryPaths:     append([]string{crds}, routes...),
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
		// Ceilings, not expectations: on a busy two-core machine the API
		// server can take far longer than envtest's 20s default to start.
		ControlPlaneStartTimeout: 5 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	cfg, err := shared.env.Start()
	if err != nil {
		// A half-started control plane (etcd up, kube-apiserver failing)
		// is stopped too.
		return errors.Join(fmt.Errorf("starting kube-apiserver and etcd from %s with the CRDs of %s: %w", assets, crds, err),
			shared.env.Stop())
	}
	shared.cfg = cfg
	if err := startReaper(); err != nil {
		return errors.Join(err, shared.env.Stop())
	}
	scheme := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), fjordv1a1.AddToScheme(scheme), gatewayv1.Install(scheme)); err != nil {
		return err
	}
	if shared.admin, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return fmt.Errorf("client for the envtest API server at %s: %w", cfg.Host, err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: meshNS}}
	if err := shared.admin.Create(context.Background(), ns); err != nil {
		return fmt.Errorf("creating namespace %s: %w", meshNS, err)
	}
	return nil
}

// gatewayRouteCRDs are the HTTPRoute and GRPCRoute CRDs of the Gateway API
// version go.mod pins (the one the converters are written against), from
// the module cache.
func gatewayRouteCRDs() ([]string, error) {
	const mod = "sigs.k8s.io/gateway-api"
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", mod).Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		return nil, fmt.Errorf("locating %s in the module cache for its CRDs (go list -m %s): %v", mod, mod, err)
	}
	var files []string
	for _, kind := range []string{"httproutes", "grpcroutes"} {
		f := filepath.Join(dir, "config", "crd", "standard", "gateway.networking.k8s.io_"+kind+".yaml")
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("Gateway API CRD: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}

func stopAPIServer() error {
	if shared.env == nil || shared.cfg == nil {
		return nil // never started, or already stopped after a failed start
	}
	err := shared.env.Stop()
	if shared.done != nil {
		fmt.Fprint(shared.done, "done")
		shared.done.Close()
		if werr := shared.reaper.Wait(); werr != nil {
			err = errors.Join(err, fmt.Errorf("envtest reaper: %w", werr))
		}
	}
	if err != nil {
		return fmt.Errorf("stopping kube-apiserver and etcd: %w", err)
	}
	return nil
}

// startReaper makes sure etcd and kube-apiserver die with this process even
// when it cannot stop them: a test that panics or hits -timeout ends the
// binary without running TestMain's cleanup. The reaper is this binary run
// again; it waits on a pipe from us, and if the pipe closes without "done"
// (we died), it kills the process groups envtest started (envtest runs
// each binary in its own group).
func startReaper() error {
	children, err := childPIDs()
	if err != nil {
		return err
	}
	if len(children) == 0 {
		return errors.New("envtest reaper: found no etcd or kube-apiserver process to guard")
	}
	var ids []string
	for _, pid := range children {
		ids = append(ids, strconv.Itoa(pid))
	}
	// After the processes, their state: etcd's data and the API server's
	// certificates.
	dirs := []string{shared.env.ControlPlane.Etcd.DataDir, shared.env.ControlPlane.APIServer.CertDir}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("envtest reaper: %w", err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), reaperEnv+"="+strings.Join(ids, ",")+";"+strings.Join(dirs, ","))
	in, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("envtest reaper: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("envtest reaper: %w", err)
	}
	shared.reaper, shared.done = cmd, in
	return nil
}

// childPIDs lists this process's children from /proc.
func childPIDs() ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("envtest reaper: listing processes: %w", err)
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// "pid (comm) state ppid ...": comm may hold spaces and parens.
		rest := stat[bytes.LastIndexByte(stat, ')')+1:]
		fields := strings.Fields(string(rest))
		if len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			out = append(out, pid)
		}
	}
	return out, nil
}

// reap is the reaper's main: see startReaper. what is "PGID,...;DIR,...".
func reap(what string) int {
	msg, _ := io.ReadAll(os.Stdin)
	if string(msg) == "done" {
		return 0
	}
	pgids, dirs, _ := strings.Cut(what, ";")
	for _, s := range strings.Split(pgids, ",") {
		if pid, err := strconv.Atoi(s); err == nil {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	for _, d := range strings.Split(dirs, ",") {
		if strings.HasPrefix(d, os.TempDir()) {
			// Killed processes release their files at once; a retry
			// covers a straggling write.
			for range 3 {
				if os.RemoveAll(d) == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	return 0
}

// createNamespace creates a namespace for one test and deletes it when the
// test ends. (Without a namespace controller the namespace stays
// Terminating, which keeps it out of the way of other tests.)
func createNamespace(t *testing.T, c client.Client, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	mustCreate(t, c, ns)
	t.Cleanup(func() {
		if err := c.Delete(context.Background(), ns); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", name, err)
		}
	})
}

func mustCreate(t *testing.T, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(t.Context(), obj); err != nil {
		t.Fatalf("creating %T %s/%s: %v", obj, obj.GetNamespace(), obj.GetName(), err)
	}
}

// testLog sends the code's logs to the test's log, and keeps them so a test
// can wait for one.
type testLog struct {
	t       *testing.T
	mu      sync.Mutex
	lines   []string
	changed chan struct{}
}

func newTestLog(t *testing.T) (*slog.Logger, *testLog) {
	l := &testLog{t: t, changed: make(chan struct{})}
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug})), l
}

func (l *testLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	l.t.Log(line)
	l.mu.Lock()
	l.lines = append(l.lines, line)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	return len(p), nil
}

// waitForN waits for n log lines that each contain every one of parts.
func (l *testLog) waitForN(t *testing.T, n int, parts ...string) {
	t.Helper()
	deadline := time.After(waitCeiling)
	for {
		l.mu.Lock()
		lines, changed := l.lines, l.changed
		l.mu.Unlock()
		found := 0
		for _, line := range lines {
			if containsAll(line, parts) {
				found++
			}
		}
		if found >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%d log lines with %q within %s, want %d", found, parts, waitCeiling, n)
		}
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// waitCeiling bounds every wait for the API server or the source. It is a
// ceiling for a wedged test, not an expectation: everything awaited
// normally happens within a second or two.
const waitCeiling = 2 * time.Minute

// published records what a source publishes.
type published struct {
	mu      sync.Mutex
	snaps   []*model.Snapshot
	changed chan struct{}
}

func (p *published) publish(s *model.Snapshot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.snaps = append(p.snaps, s)
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *published) all() []*model.Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snaps
}

// waitFor waits until the latest snapshot, reduced to namespaces, equals
// want (compared as the model, see diffModel), and returns it.
func (p *published) waitFor(t *testing.T, want *model.Snapshot, namespaces ...string) *model.Snapshot {
	t.Helper()
	deadline := time.After(waitCeiling)
	for {
		p.mu.Lock()
		var last *model.Snapshot
		if len(p.snaps) > 0 {
			last = p.snaps[len(p.snaps)-1]
		}
		changed := p.changed
		p.mu.Unlock()
		diff := "nothing published"
		if last != nil {
			if diff = diffModel(want, only(last, namespaces...)); diff == "" {
				return last
			}
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the published model did not become the expected one within %s (-want +got):\n%s", waitCeiling, diff)
		}
	}
}

// runSource runs a KubeSource for the test, and stops it when the test ends.
// Each snapshot is recorded, then handed to then, as the control plane
// would hand it to resolution.
func runSource(t *testing.T, cfg *rest.Config, o KubeOptions, then ...func(*model.Snapshot)) (*KubeSource, *published) {
	t.Helper()
	if o.Log == nil {
		o.Log, _ = newTestLog(t)
	}
	src, err := NewKubeSource(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	p := &published{changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(s *model.Snapshot) {
			p.publish(s)
			for _, f := range then {
				f(s)
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("KubeSource.Run: %v", err)
		}
	})
	return src, p
}

// startCaches starts a KubeSource's caches without its Run, for the tests
// and benchmarks that drive its builds themselves, and stops them when tb
// ends. It returns the source and a client that reads its caches.
func startCaches(tb testing.TB, cfg *rest.Config) (*KubeSource, client.Client) {
	tb.Helper()
	src, err := NewKubeSource(cfg, KubeOptions{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.cluster.Start(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("caches: %v", err)
		}
	})
	for _, obj := range required() {
		if _, err := src.cluster.GetCache().GetInformer(ctx, obj); err != nil {
			tb.Fatal(err)
		}
	}
	if !src.cluster.GetCache().WaitForCacheSync(ctx) {
		tb.Fatal("the caches did not sync")
	}
	return src, src.cluster.GetClient()
}

// awaitCache waits until the cache read by cached holds obj as last
// written (same UID and resourceVersion) or, with gone, no longer holds it.
func awaitCache(tb testing.TB, cached client.Client, obj client.Object, gone bool) {
	tb.Helper()
	deadline := time.Now().Add(waitCeiling)
	got := obj.DeepCopyObject().(client.Object)
	for {
		err := cached.Get(context.Background(), client.ObjectKeyFromObject(obj), got)
		switch {
		case gone && apierrors.IsNotFound(err):
			return
		case !gone && err == nil && got.GetUID() == obj.GetUID() && got.GetResourceVersion() == obj.GetResourceVersion():
			return
		case err != nil && !apierrors.IsNotFound(err):
			tb.Fatalf("reading %T %s from the cache: %v", obj, obj.GetName(), err)
		case time.Now().After(deadline):
			tb.Fatalf("the cache did not see the last write to %T %s within %s", obj, obj.GetName(), waitCeiling)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
