package load

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Kube is a real kube-apiserver and etcd (controller-runtime envtest) that
// the harness writes the mesh into, for fjord-cp in Kubernetes mode.
type Kube struct {
	env   *envtest.Environment
	admin client.Client
	// Kubeconfig is a file fjord-cp reads (--kubeconfig): a system:masters
	// user, so RBAC never stands between the measurement and the pipeline.
	Kubeconfig string
}

// StartKube starts kube-apiserver and etcd from assets (the directory
// `make envtest-assets` fills, bin/k8s) with the CRDs of crdDir, and writes
// a kubeconfig into dir.
func StartKube(assets, crdDir, dir string) (_ *Kube, err error) {
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, name)); err != nil {
			return nil, fmt.Errorf("envtest assets %s: %w (run make envtest-assets)", assets, err)
		}
	}
	k := &Kube{env: &envtest.Environment{
		CRDDirectoryPaths:        []string{crdDir},
		ErrorIfCRDPathMissing:    true,
		BinaryAssetsDirectory:    assets,
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}}
	// envtest's default Service range is a /24: room for 254 Services.
	k.env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/12")
	cfg, err := k.env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w", assets, errors.Join(err, k.env.Stop()))
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, k.env.Stop())
		}
	}()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	// Writes are many and the API server is local: client-go's default
	// rate limit (5 QPS) would make generating the mesh take minutes.
	cfg.QPS, cfg.Burst = 1000, 2000
	if k.admin, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	user, err := k.env.AddUser(envtest.User{Name: "fjord-load", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, fmt.Errorf("envtest user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	k.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(k.Kubeconfig, kc, 0o600); err != nil {
		return nil, err
	}
	return k, nil
}

// Stop stops the API server and etcd.
func (k *Kube) Stop() error { return k.env.Stop() }

// ensureNamespaces creates the namespaces that do not exist yet.
func (k *Kube) ensureNamespaces(ctx context.Context, names []string) error {
	for _, n := range names {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}
		if err := k.admin.Create(ctx, ns); err != nil && !isAlreadyExists(err) {
			return fmt.Errorf("namespace %s: %w", n, err)
		}
	}
	return nil
}

func isAlreadyExists(err error) bool {
	var st interface{ Status() metav1.Status }
	return errors.As(err, &st) && st.Status().Reason == metav1.StatusReasonAlreadyExists
}

// apply writes every object of a file's YAML with server-side apply, as
// `kubectl apply --server-side` would; it returns once the API server has
// accepted the last one, which is when the change counts as accepted.
func (k *Kube) apply(ctx context.Context, f file) error {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader([]byte(f.content)), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("%s: %w", f.path, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		// The API server sets creationTimestamp itself.
		unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
		if err := k.admin.Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
			client.FieldOwner("fjord-load"), client.ForceOwnership); err != nil {
			return fmt.Errorf("applying %s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
	}
}

// applyAll applies files with a few writers in parallel (the initial mesh is
// thousands of objects).
func (k *Kube) applyAll(ctx context.Context, files []file) error {
	work := make(chan file)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range work {
				if err := k.apply(ctx, f); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for _, f := range files {
		select {
		case work <- f:
		case err := <-errs:
			close(work)
			wg.Wait()
			return err
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}
