package main

import (
	"bytes"
	"context"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/controlplane"
	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/watcher"
	"github.com/fjordmesh/fjord/watcher/model"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/explain")

// meshFromFile resolves a file of Kubernetes YAML as the control plane
// would.
func meshFromFile(t *testing.T, path string) *policy.Mesh {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := watcher.Decode(path, data, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	snap := &model.Snapshot{Services: objs.Services, EndpointSlices: objs.EndpointSlices, Policies: objs.Policies, Routes: objs.Routes}
	snap.Sort()
	return policy.Resolve(snap, policy.Options{MeshNamespace: policy.DefaultMeshNamespace})
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "explain", name+".out.txt")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s (-want +got):\n%s", path, d)
	}
}

func TestExplainService(t *testing.T) {
	mesh := meshFromFile(t, filepath.Join("testdata", "explain", "mesh.yaml"))
	tests := map[string]struct {
		service, port string
		wantErr       string
	}{
		"echo":            {service: "demo/echo"},
		"echo-port-grpc":  {service: "demo/echo", port: "grpc"},
		"echo-port-8081":  {service: "demo/echo", port: "8081"},
		"billing":         {service: "shop/billing"},
		"unknown service": {service: "demo/nope", wantErr: "service demo/nope: not in the mesh"},
		"unknown port":    {service: "demo/echo", port: "9999", wantErr: `service demo/echo has no port "9999"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			key, err := parseServiceKey(tc.service)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			err = explainService(&out, mesh, key, tc.port, policy.DefaultMeshNamespace)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name, out.String())
		})
	}
}

func TestExplainArguments(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"no source":   {[]string{"explain", "service", "demo/echo"}, "monitoring-address kubeconfig"},
		"two sources": {[]string{"explain", "service", "demo/echo", "--monitoring-address", "a:1", "--kubeconfig", "k"}, "none of the others can be"},
		"bad key":     {[]string{"explain", "service", "echo", "--monitoring-address", "a:1"}, `service "echo": want NAMESPACE/NAME`},
		"no service":  {[]string{"explain", "service", "--monitoring-address", "a:1"}, "accepts 1 arg"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := run(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// Against a real standalone control plane, explain reads its model over
// the monitoring address and prints what it prints from the same file
// resolved locally.
func TestExplainStandaloneControlPlane(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join("testdata", "explain", "mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.New(controlplane.Config{ConfigDir: dir, DataDir: t.TempDir(),
		XDSAddress: "127.0.0.1:0", MonitoringAddress: "127.0.0.1:0", HoldOff: time.Millisecond, MaxDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane: %v", err)
		}
	})
	addr := cp.MonitoringAddr().String()
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("control plane at %s not ready within a minute", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, err := run(t, "explain", "service", "demo/echo", "--monitoring-address", addr)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	golden(t, "echo", out)
}
