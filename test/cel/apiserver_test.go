package cel

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// crdDir holds the generated CRDs, the contract under test.
var crdDir = filepath.Join("..", "..", "manifests", "crd")

// startAPIServer starts etcd and kube-apiserver with the CRDs of
// manifests/crd installed and returns a client for them. The control plane
// is stopped when the test ends, also when it failed to start half way, so
// no etcd or kube-apiserver process outlives the test.
//
// The binaries come from KUBEBUILDER_ASSETS (bin/k8s, set by make). Without
// them the test fails and says how to build them: a validation test that
// silently passes without an API server would prove nothing.
func startAPIServer(t *testing.T) client.Client {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run `make envtest-assets` and run the tests through make, " +
			"or export KUBEBUILDER_ASSETS=<repository>/bin/k8s")
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		path := filepath.Join(assets, name)
		info, err := os.Stat(path)
		if err != nil {
			t.Fatalf("KUBEBUILDER_ASSETS=%s has no %s (%v): run `make envtest-assets` to build it", assets, name, err)
		}
		if info.IsDir() || info.Mode().Perm()&0o111 == 0 {
			t.Fatalf("%s is not an executable file: remove it and run `make envtest-assets`", path)
		}
	}

	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{crdDir},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
		// Ceilings, not expectations: on a busy two-core machine the API
		// server can take far longer than envtest's 20s default to start.
		ControlPlaneStartTimeout: 5 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	// Registered before Start so that a half-started control plane (etcd up,
	// kube-apiserver failing) is stopped too.
	var stopOnce sync.Once
	stop := func() {
		stopOnce.Do(func() {
			if err := env.Stop(); err != nil {
				t.Errorf("stopping kube-apiserver and etcd: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	// go test -timeout panics without running cleanups, which would leave
	// etcd and kube-apiserver running (envtest puts them in process groups
	// of their own); stop them shortly before that deadline instead.
	if deadline, ok := t.Deadline(); ok {
		if wait := time.Until(deadline) - 2*env.ControlPlaneStopTimeout; wait > 0 {
			guard := time.AfterFunc(wait, stop)
			t.Cleanup(func() { guard.Stop() })
		}
	}
	began := time.Now()
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting kube-apiserver and etcd from %s with the CRDs of %s: %v", assets, crdDir, err)
	}
	t.Logf("kube-apiserver and etcd ready with %d CRDs installed in %s", len(env.CRDs), time.Since(began).Round(time.Millisecond))

	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatalf("client for the envtest API server at %s: %v", cfg.Host, err)
	}
	return c
}
