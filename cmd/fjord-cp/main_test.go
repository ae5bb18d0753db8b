package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// lockedBuffer is written by the control plane's goroutines and read by
// the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestFlagErrors(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"no data dir": {[]string{"--config-dir", "c"}, "--data-dir is required"},
		"kubeconfig in standalone mode": {[]string{"--config-dir", "c", "--data-dir", "d", "--kubeconfig", "k"},
			"--kubeconfig is for Kubernetes mode"},
		"leader election in standalone mode": {[]string{"--config-dir", "c", "--data-dir", "d", "--leader-elect=false"},
			"--leader-elect is for Kubernetes mode"},
		"bad log level":  {[]string{"--config-dir", "c", "--data-dir", "d", "--log-level", "loud"}, "log-level"},
		"unknown flag":   {[]string{"--nope", "k"}, "flag provided but not defined: -nope"},
		"stray argument": {[]string{"--config-dir", "c", "--data-dir", "d", "extra"}, `unexpected arguments ["extra"]`},
		"debounce above max delay": {[]string{"--config-dir", "c", "--data-dir", "d", "--debounce", "2s", "--max-delay", "1s"},
			"--debounce (2s) <= --max-delay (1s)"},
		"endpoint debounce above debounce": {[]string{"--config-dir", "c", "--data-dir", "d", "--debounce", "10ms", "--endpoint-debounce", "20ms"},
			"want 0 < --endpoint-debounce (20ms) <= --debounce (10ms)"},
		"zero endpoint debounce": {[]string{"--config-dir", "c", "--data-dir", "d", "--endpoint-debounce", "0s"},
			"want 0 < --endpoint-debounce (0s) <= --debounce (100ms)"},
		"CA issuer in standalone mode": {[]string{"--config-dir", "c", "--data-dir", "d", "--ca-issuer", "cert-manager"},
			"--ca-issuer is for Kubernetes mode"},
		"token audience in standalone mode": {[]string{"--config-dir", "c", "--data-dir", "d", "--token-audience", "x"},
			"--token-audience is for Kubernetes mode"},
		"unknown CA issuer": {[]string{"--kubeconfig", "k", "--ca-issuer", "vault"}, `--ca-issuer "vault": want builtin or cert-manager`},
		"cert-manager without an issuer ref": {[]string{"--kubeconfig", "k", "--ca-issuer", "cert-manager"},
			"--ca-issuer cert-manager needs --ca-issuer-ref"},
		"bad issuer ref": {[]string{"--kubeconfig", "k", "--ca-issuer", "cert-manager", "--ca-issuer-ref", "Secret/x"},
			`--ca-issuer-ref "Secret/x": want Issuer/NAME or ClusterIssuer/NAME`},
		"bad default export-to": {[]string{"--config-dir", "c", "--data-dir", "d", "--default-export-to", ".,Team_A"},
			`invalid value ".,Team_A" for flag -default-export-to: entry "Team_A" is neither "*", "." nor a namespace name`},
		"issuer ref for the built-in CA": {[]string{"--kubeconfig", "k", "--ca-issuer-ref", "Issuer/x"},
			"--ca-issuer-ref is for --ca-issuer cert-manager"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(context.Background(), tc.args, &stderr); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr does not say %q:\n%s", tc.want, stderr.String())
			}
		})
	}
}

// Without --config-dir fjord-cp is in Kubernetes mode; with neither a
// kubeconfig nor a pod's in-cluster config it fails saying so.
func TestKubernetesModeNeedsAnAPIServer(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	tests := map[string]struct {
		args []string
		want string
	}{
		"not in a cluster":   {nil, "no --config-dir and no --kubeconfig, and not in a cluster"},
		"missing kubeconfig": {[]string{"--kubeconfig", "/nonexistent/kubeconfig"}, "kubeconfig /nonexistent/kubeconfig"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(context.Background(), tc.args, &stderr); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr does not say %q:\n%s", tc.want, stderr.String())
			}
		})
	}
}

func TestMissingConfigDirFails(t *testing.T) {
	var stderr bytes.Buffer
	missing := filepath.Join(t.TempDir(), "nope")
	code := run(context.Background(), []string{"--config-dir", missing, "--data-dir", t.TempDir(),
		"--xds-address", "127.0.0.1:0", "--secure-address", "127.0.0.1:0", "--monitoring-address", "127.0.0.1:0"}, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), missing) {
		t.Fatalf("exit code %d, stderr:\n%s\nwant 1 and the missing directory named", code, stderr.String())
	}
}

// TestRunsUntilCancelled also sets --debounce below the default
// --endpoint-debounce, which then follows it down rather than failing, and
// makes Services private to their namespace by default, which gives the
// example's namespace a view of its own.
func TestRunsUntilCancelled(t *testing.T) {
	var stderr lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--config-dir", filepath.Join("..", "..", "examples", "config"), "--data-dir", t.TempDir(),
			"--xds-address", "127.0.0.1:0", "--secure-address", "127.0.0.1:0", "--monitoring-address", "127.0.0.1:0", "--log-level", "debug",
			"--debounce", "2ms", "--default-export-to", "."}, &stderr)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stderr.String(), "config built") {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("no build logged:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit code %d after cancel, want 0:\n%s", code, stderr.String())
	}
	for _, want := range []string{`msg="xds server listening" addr=127.0.0.1:`, `msg="monitoring server listening" addr=127.0.0.1:`, "msg=stopped",
		`msg="xds cache view updated" component=xds-cache kind=grpc view=v`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, stderr.String())
		}
	}
}

// The install manifests run fjord-cp with flags it knows: with a
// kubeconfig that does not exist added, it gets past flag parsing (exit 2)
// and fails on the kubeconfig (exit 1).
func TestDeploymentArgsParse(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "manifests", "deploy", "30-deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(data, &d); err != nil {
		t.Fatal(err)
	}
	if n := len(d.Spec.Template.Spec.Containers); n != 1 {
		t.Fatalf("%d containers, want 1", n)
	}
	args := append(d.Spec.Template.Spec.Containers[0].Args, "--kubeconfig", "/nonexistent/kubeconfig")
	var stderr bytes.Buffer
	if code := run(context.Background(), args, &stderr); code != 1 || !strings.Contains(stderr.String(), "kubeconfig /nonexistent/kubeconfig") {
		t.Fatalf("fjord-cp %q: exit code %d, want 1 for the missing kubeconfig:\n%s", args, code, stderr.String())
	}
}
