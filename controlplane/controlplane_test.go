package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fjordmesh/fjord/store"
	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

var echo = model.Key{Namespace: "demo", Name: "echo"}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// running is one control plane started by a test; it is stopped, and Run's
// result checked, when the test ends or when stop is called.
type running struct {
	cp   *ControlPlane
	logs *syncBuffer
	stop func() error
}

func start(t *testing.T, cfg Config) *running {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.XDSAddress, cfg.MonitoringAddress = "127.0.0.1:0", "127.0.0.1:0"
	if cfg.HoldOff == 0 {
		cfg.HoldOff, cfg.MaxDelay = 5*time.Millisecond, 20*time.Millisecond
	}
	cp, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	var once sync.Once
	var runErr error
	r := &running{cp: cp, logs: logs}
	r.stop = func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("control plane log:\n%s", logs.String())
		}
	})
	return r
}

func (r *running) url(path string) string {
	return "http://" + r.cp.MonitoringAddr().String() + path
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// eventually polls cond until it holds; the deadline only guards against
// hanging, no assertion depends on speed.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *running) waitReady(t *testing.T) {
	t.Helper()
	eventually(t, "/readyz 200", func() (bool, string) {
		code, body := get(t, r.url("/readyz"))
		return code == http.StatusOK, body
	})
}

// fetch opens a fresh ADS stream as a proxyless gRPC client and returns the
// first response for the resources asked: what a newly connecting proxy
// would get.
func (r *running) fetch(t *testing.T, typeURL string, names ...string) *discoveryv3.DiscoveryResponse {
	t.Helper()
	conn, err := grpc.NewClient(r.cp.XDSAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := node.Info{Namespace: "demo", Workload: "client", ServiceAccount: "client", Kind: node.GRPC}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: id.Node(), TypeUrl: typeURL, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("ADS %s %v: %v", typeURL, names, err)
	}
	return resp
}

// endpoints returns the addresses served for the echo cluster.
func (r *running) endpoints(t *testing.T) []string {
	t.Helper()
	resp := r.fetch(t, resourcev3.EndpointType, translate.ClusterName(echo, 50051))
	var out []string
	for _, a := range resp.GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				out = append(out, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
		}
	}
	slices.Sort(out)
	return out
}

// hasListener reports whether the echo listener a gRPC client dials is
// served.
func (r *running) hasListener(t *testing.T) bool {
	t.Helper()
	name := translate.ListenerName(node.GRPC, echo, 50051)
	for _, a := range r.fetch(t, resourcev3.ListenerType, name).GetResources() {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		if l.GetName() == name {
			return true
		}
	}
	return false
}

// metric returns the value of a sample line in /metrics, -1 if absent.
func (r *running) metric(t *testing.T, sample string) float64 {
	t.Helper()
	_, body := get(t, r.url("/metrics"))
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// copyExamples copies examples/config into a temporary directory, so the
// tests run on exactly what `make run` serves.
func copyExamples(t *testing.T) string {
	t.Helper()
	dst := t.TempDir()
	src := filepath.Join("..", "examples", "config")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func sliceYAML(addrs ...string) string {
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

const echoServiceYAML = `apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  ports: [{name: grpc, port: 50051, appProtocol: grpc}]
`

func TestStandaloneServesAndSurvivesBrokenFiles(t *testing.T) {
	dir := copyExamples(t)
	r := start(t, Config{ConfigDir: dir, DataDir: t.TempDir()})
	r.waitReady(t)

	if !r.hasListener(t) {
		t.Fatal("the echo listener is not served")
	}
	if got, want := r.endpoints(t), []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}; !slices.Equal(got, want) {
		t.Fatalf("endpoints = %v, want %v", got, want)
	}
	for path, want := range map[string]string{
		"/debug/config": `"name": "echo"`,
		"/debug/mesh":   `"request": "10s"`,
		"/debug/status": `"name": "mesh-default"`,
		"/healthz":      "ok",
		"/debug/pprof/": "goroutine",
	} {
		if code, body := get(t, r.url(path)); code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("GET %s = %d, want 200 with %q:\n%s", path, code, want, body)
		}
	}

	t.Run("endpoint added", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "demo", "echo.yaml"), echoServiceYAML+"---\n"+sliceYAML("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"))
		eventually(t, "four endpoints", func() (bool, string) {
			got := r.endpoints(t)
			return len(got) == 4, fmt.Sprint(got)
		})
	})

	t.Run("broken files keep the last good config", func(t *testing.T) {
		errs := r.metric(t, "fjord_config_errors_total")
		writeFile(t, filepath.Join(dir, "demo", "echo.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: [broken\n")
		writeFile(t, filepath.Join(dir, "broken.yaml"), "kind: [this is not yaml\n")
		eventually(t, "two config errors", func() (bool, string) {
			v := r.metric(t, "fjord_config_errors_total")
			return v >= errs+2, fmt.Sprint(v)
		})
		logs := r.logs.String()
		for _, want := range []string{filepath.Join(dir, "broken.yaml"), filepath.Join(dir, "demo", "echo.yaml"), "level=ERROR"} {
			if !strings.Contains(logs, want) {
				t.Errorf("log does not mention %q", want)
			}
		}
		if !r.hasListener(t) || len(r.endpoints(t)) != 4 {
			t.Fatalf("broken files disturbed what is served: listener %v, endpoints %v", r.hasListener(t), r.endpoints(t))
		}
	})

	t.Run("invalid policy is logged with its status", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "bad-policy.yaml"), `apiVersion: fjord.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: bad, namespace: demo}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  timeout: {request: soon}
`)
		eventually(t, "the invalid policy in the log", func() (bool, string) {
			for _, line := range strings.Split(r.logs.String(), "\n") {
				if strings.Contains(line, "level=WARN") && strings.Contains(line, "policy=demo/bad") && strings.Contains(line, "reason=Invalid") {
					return true, ""
				}
			}
			return false, "not logged"
		})
		// The log line comes from resolution, just before the build
		// completes and /debug/status changes.
		eventually(t, "the invalid policy in /debug/status", func() (bool, string) {
			_, status := get(t, r.url("/debug/status"))
			return strings.Contains(status, `"reason": "Invalid"`), status
		})
	})

	for _, m := range []string{`fjord_builds_total{result="success"}`, "fjord_build_seconds_count", `fjord_xds_connected_proxies{kind="grpc"}`} {
		if v := r.metric(t, m); v < 0 {
			t.Errorf("metric %s missing", m)
		}
	}
}

// chanSource publishes what the test sends it, and nothing before.
type chanSource chan *model.Snapshot

func (c chanSource) Run(ctx context.Context, publish func(*model.Snapshot)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-c:
			publish(s)
		}
	}
}

func TestReadyOnlyAfterFirstBuild(t *testing.T) {
	src := make(chanSource)
	r := start(t, Config{Source: src, DataDir: t.TempDir()})
	if code, _ := get(t, r.url("/healthz")); code != http.StatusOK {
		t.Errorf("/healthz = %d before the first build, want 200", code)
	}
	for _, path := range []string{"/readyz", "/debug/config", "/debug/mesh", "/debug/status"} {
		if code, _ := get(t, r.url(path)); code != http.StatusServiceUnavailable {
			t.Errorf("%s = %d before the first build, want 503", path, code)
		}
	}
	src <- &model.Snapshot{Services: []model.Service{{Key: echo, Ports: []model.ServicePort{{Name: "grpc", Port: 50051}}}}}
	r.waitReady(t)
	if !r.hasListener(t) {
		t.Fatal("ready, but the listener is not served")
	}
}

// TestRestart checks that the config a run served comes back at once on the
// next run: from bbolt before the source publishes anything, and from each
// file's last good content when the directory is now broken.
func TestRestart(t *testing.T) {
	dir, data := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(dir, "echo.yaml"), echoServiceYAML+"---\n"+sliceYAML("127.0.0.1", "127.0.0.2"))
	first := start(t, Config{ConfigDir: dir, DataDir: data})
	first.waitReady(t)
	if err := first.stop(); err != nil {
		t.Fatalf("first run: %v", err)
	}

	t.Run("persisted config before the source publishes", func(t *testing.T) {
		r := start(t, Config{Source: make(chanSource), DataDir: data})
		// Ready as soon as New returned: no waiting, nothing published.
		if code, body := get(t, r.url("/readyz")); code != http.StatusOK {
			t.Fatalf("/readyz = %d (%s), want 200 from the persisted config", code, body)
		}
		if !r.hasListener(t) || !slices.Equal(r.endpoints(t), []string{"127.0.0.1", "127.0.0.2"}) {
			t.Fatal("the persisted config is not served")
		}
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("broken directory", func(t *testing.T) {
		writeFile(t, filepath.Join(dir, "echo.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: [broken\n")
		r := start(t, Config{ConfigDir: dir, DataDir: data})
		r.waitReady(t)
		// Wait until the source's first snapshot is built (the second build,
		// after the persisted config's), then check that the broken file's
		// last good content is what is served.
		eventually(t, "the source's first build", func() (bool, string) {
			v := r.metric(t, `fjord_builds_total{result="success"}`)
			return v >= 2 && r.metric(t, "fjord_config_errors_total") >= 1, fmt.Sprint(v, " builds")
		})
		if !r.hasListener(t) || !slices.Equal(r.endpoints(t), []string{"127.0.0.1", "127.0.0.2"}) {
			t.Fatal("a restart on a broken directory lost the last good config")
		}
	})
}

func TestDataDirLockedByAnotherRun(t *testing.T) {
	data := t.TempDir()
	start(t, Config{Source: make(chanSource), DataDir: data})
	_, err := New(Config{Source: make(chanSource), DataDir: data, XDSAddress: "127.0.0.1:0", MonitoringAddress: "127.0.0.1:0",
		Log: slog.New(slog.DiscardHandler)})
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second New on the same data dir: %v, want ErrLocked", err)
	}
}

func TestSourceFailureStopsRun(t *testing.T) {
	data := t.TempDir()
	missing := filepath.Join(t.TempDir(), "nope")
	cp, err := New(Config{ConfigDir: missing, DataDir: data, XDSAddress: "127.0.0.1:0", MonitoringAddress: "127.0.0.1:0",
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	err = cp.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Run = %v, want an error naming %s", err, missing)
	}
	// Everything was released: the data dir opens again.
	s, err := store.Open(data)
	if err != nil {
		t.Fatalf("data dir still locked after Run returned: %v", err)
	}
	s.Close()
}

func TestBadAddresses(t *testing.T) {
	data := t.TempDir()
	_, err := New(Config{Source: make(chanSource), DataDir: data, XDSAddress: "127.0.0.1:bad", MonitoringAddress: "127.0.0.1:0",
		Log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "xds address") {
		t.Fatalf("New = %v, want an xds address error", err)
	}
	s, err := store.Open(data)
	if err != nil {
		t.Fatalf("data dir still locked after New failed: %v", err)
	}
	s.Close()
}
