package controlplane

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/go-logr/logr"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
	"github.com/fjordmesh/fjord/watcher"
)

// startAPIServer starts kube-apiserver and etcd from KUBEBUILDER_ASSETS with
// Fjord's and cert-manager's CRDs, stopped when the test ends. Without the
// binaries the test fails saying how to build them.
func startAPIServer(t *testing.T) (*rest.Config, client.Client) {
	t.Helper()
	ctrllog.SetLogger(logr.Discard())
	klog.SetLogger(logr.Discard())
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run `make -f make/envtest.mk envtest-assets` and " +
			"export KUBEBUILDER_ASSETS=<repository>/bin/k8s (make test does both)")
	}
	const mod = "github.com/cert-manager/cert-manager"
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", mod).Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Fatalf("locating %s in the module cache for its CRDs: %v", mod, err)
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "manifests", "crd"), filepath.Join(dir, "deploy", "crds")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
		// Ceilings for a busy machine, not expectations.
		ControlPlaneStartTimeout: 5 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting kube-apiserver and etcd from %s: %v", assets, errors.Join(err, env.Stop()))
	}
	// go test -timeout ends the binary without cleanups: stop etcd and
	// kube-apiserver shortly before, so that a hung test leaves nothing
	// running.
	var guard *time.Timer
	if d, ok := t.Deadline(); ok {
		guard = time.AfterFunc(time.Until(d)-10*time.Second, func() {
			fmt.Fprintln(os.Stderr, "test deadline near: stopping kube-apiserver and etcd")
			_ = env.Stop()
		})
	}
	t.Cleanup(func() {
		if guard != nil && !guard.Stop() {
			return // the guard stopped them
		}
		if err := env.Stop(); err != nil {
			t.Errorf("stopping kube-apiserver and etcd: %v", err)
		}
	})
	scheme := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), cmapi.AddToScheme(scheme)); err != nil {
		t.Fatal(err)
	}
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, admin
}

// freeAddr is a loopback address with a port free a moment ago: RunKube
// does not hand its ControlPlane out, so the test picks the secure port.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// runKube runs RunKube until the test ends and checks it stopped cleanly.
func runKube(t *testing.T, cfg Config, ko KubeOptions) {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Log = slog.New(slog.NewTextHandler(logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunKube(ctx, cfg, ko) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunKube: %v", err)
		}
		if t.Failed() {
			t.Logf("control plane log:\n%s", logs.String())
		}
	})
}

// selfSigned makes a CA certificate signed by parent (itself when nil).
func selfSigned(t *testing.T, name string, parent *x509.Certificate, parentKey *certs.Key) (*x509.Certificate, *certs.Key) {
	t.Helper()
	key, err := certs.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey.Signer())
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

// rootCAConfigMap is ca.crt of fjord-root-ca in ns, "" while there is none.
func rootCAConfigMap(admin client.Client, ns string) (string, error) {
	var cm corev1.ConfigMap
	err := admin.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: watcher.RootCAConfigMap}, &cm)
	if err != nil {
		return "", err
	}
	return cm.Data[watcher.RootCAKey], nil
}

// servingChain dials the secure port trusting only roots and returns the
// verified chain of the serving certificate.
func servingChain(addr string, roots []*x509.Certificate) ([]*x509.Certificate, error) {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	d := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	chains := conn.ConnectionState().VerifiedChains
	if len(chains) == 0 {
		return nil, errors.New("no verified chain")
	}
	return chains[0], nil
}

// TestRunKubeIdentity runs RunKube against a real API server with identity
// on: first in cert-manager mode, with the issued Secret written as
// cert-manager writes it (cert-manager's own controllers issuing it are
// tested in watcher/), then with the built-in CA in its Secret. Each time
// the serving certificate chains to that mode's root and fjord-root-ca in a
// meshed namespace holds that root.
func TestRunKubeIdentity(t *testing.T) {
	rc, admin := startAPIServer(t)
	ctx := context.Background()
	const meshed = "demo"
	for _, ns := range []string{"fjord-system", meshed} {
		if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	base := func() Config {
		return Config{MonitoringAddress: "127.0.0.1:0", MeshNamespace: "fjord-system",
			Identity: IdentityConfig{SecureAddress: freeAddr(t)}}
	}

	var cmRoot *x509.Certificate
	t.Run("CertManager", func(t *testing.T) {
		cfg := base()
		cfg.DataDir = t.TempDir() // for the admin socket
		runKube(t, cfg, KubeOptions{REST: rc, CAIssuer: CAIssuerCertManager, CAIssuerRef: "Issuer/mesh-ca"})

		// Fjord asks for its intermediate...
		var crt cmapi.Certificate
		eventually(t, "Certificate fjord-intermediate", func() (bool, string) {
			err := admin.Get(ctx, client.ObjectKey{Namespace: "fjord-system", Name: watcher.IntermediateName}, &crt)
			return err == nil, fmt.Sprint(err)
		})
		if !crt.Spec.IsCA || crt.Spec.IssuerRef.Kind != cmapi.IssuerKind || crt.Spec.IssuerRef.Name != "mesh-ca" {
			t.Fatalf("Certificate spec = %+v, want isCA issued by Issuer/mesh-ca", crt.Spec)
		}
		// ...and cert-manager issues it.
		root, rootKey := selfSigned(t, "mesh-ca", nil, nil)
		inter, interKey := selfSigned(t, "fjord-intermediate", root, rootKey)
		keyPEM, err := interKey.PEM()
		if err != nil {
			t.Fatal(err)
		}
		if err := admin.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: "fjord-system", Name: watcher.IntermediateName},
			Type:       corev1.SecretTypeTLS,
			Data: map[string][]byte{
				corev1.TLSCertKey: certs.EncodeCerts([]*x509.Certificate{inter}), corev1.TLSPrivateKeyKey: keyPEM,
				"ca.crt": certs.EncodeCerts([]*x509.Certificate{root}),
			},
		}); err != nil {
			t.Fatal(err)
		}

		eventually(t, "the secure port to serve a certificate under the cert-manager root", func() (bool, string) {
			chain, err := servingChain(cfg.Identity.SecureAddress, []*x509.Certificate{root})
			if err != nil {
				return false, err.Error()
			}
			if len(chain) != 3 || !chain[1].Equal(inter) {
				return false, fmt.Sprintf("chain of %d, want leaf, the intermediate, the root", len(chain))
			}
			if got := chain[0].URIs; len(got) != 1 || got[0].String() != "spiffe://cluster.local/ns/fjord-system/sa/fjord-cp" {
				return false, fmt.Sprintf("serving certificate URIs %v", got)
			}
			return true, ""
		})
		want := string(certs.EncodeCerts([]*x509.Certificate{root}))
		eventually(t, "fjord-root-ca in "+meshed+" to hold the cert-manager root", func() (bool, string) {
			got, err := rootCAConfigMap(admin, meshed)
			return got == want, fmt.Sprintf("ca.crt %q, err %v", got, err)
		})
		// The overlap state is in its own Secret: certificates and times,
		// never a key.
		var state corev1.Secret
		eventually(t, "Secret "+watcher.IntermediateStateName, func() (bool, string) {
			err := admin.Get(ctx, client.ObjectKey{Namespace: "fjord-system", Name: watcher.IntermediateStateName}, &state)
			return err == nil, fmt.Sprint(err)
		})
		if len(state.Data) == 0 {
			t.Fatalf("Secret %s is empty", watcher.IntermediateStateName)
		}
		for k, v := range state.Data {
			if strings.Contains(string(v), "PRIVATE KEY") {
				t.Fatalf("Secret %s entry %s holds a private key", watcher.IntermediateStateName, k)
			}
		}
		// The intermediate's rotations are cert-manager's, not the admin
		// socket's.
		conn, err := api.DialAdmin(filepath.Join(cfg.DataDir, api.AdminSocket))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		adminAPI := api.NewAdminServiceClient(conn)
		if _, err := adminAPI.Rotate(ctx, &api.RotateRequest{}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("ca rotate in cert-manager mode = %v, want FailedPrecondition", err)
		}
		if _, err := adminAPI.Status(ctx, &api.StatusRequest{}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("ca status in cert-manager mode = %v, want FailedPrecondition", err)
		}
		cmRoot = root
	})
	if t.Failed() {
		return
	}

	t.Run("Builtin", func(t *testing.T) {
		cfg := base()
		runKube(t, cfg, KubeOptions{REST: rc, LeaderElect: true})
		var sec corev1.Secret
		eventually(t, "Secret fjord-ca", func() (bool, string) {
			err := admin.Get(ctx, client.ObjectKey{Namespace: "fjord-system", Name: watcher.CASecretName}, &sec)
			return err == nil, fmt.Sprint(err)
		})
		roots, err := certs.ParseCerts(sec.Data["root.pem"])
		if err != nil || len(roots) != 1 {
			t.Fatalf("root.pem of Secret fjord-ca: %d certificates, %v", len(roots), err)
		}
		if roots[0].Equal(cmRoot) {
			t.Fatal("the built-in CA took the cert-manager root")
		}
		eventually(t, "the secure port to serve a certificate under the built-in root", func() (bool, string) {
			_, err := servingChain(cfg.Identity.SecureAddress, roots)
			return err == nil, fmt.Sprint(err)
		})
		// The publisher replaces the previous mode's root.
		eventually(t, "fjord-root-ca in "+meshed+" to hold the built-in root", func() (bool, string) {
			got, err := rootCAConfigMap(admin, meshed)
			if err != nil {
				return false, err.Error()
			}
			parsed, err := certs.ParseCerts([]byte(got))
			return err == nil && len(parsed) == 1 && parsed[0].Equal(roots[0]) && bytes.Contains([]byte(got), []byte("BEGIN CERTIFICATE")),
				fmt.Sprintf("ca.crt %q", got)
		})
	})
}
