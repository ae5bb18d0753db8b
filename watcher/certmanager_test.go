package watcher

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmcontroller "github.com/cert-manager/cert-manager/pkg/controller"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	// cert-manager's controllers register themselves (cmcontroller.Known)
	// and the CA issuer type when imported.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"

	"github.com/fjordmesh/fjord/certs"
)

// certManagerControllers are the cert-manager controllers that issue a
// Certificate from a CA Issuer, as its controller binary runs them.
var certManagerControllers = []string{
	"issuers",
	"certificaterequests-approver",
	"certificaterequests-issuer-ca",
	"certificates-trigger",
	"certificates-key-manager",
	"certificates-request-manager",
	"certificates-issuing",
	"certificates-readiness",
	"certificates-revision-manager",
}

var certManagerCRDs struct {
	once sync.Once
	err  error
}

// installCertManagerCRDs installs the CRDs shipped in the cert-manager
// module go.mod pins, once per test binary.
func installCertManagerCRDs(t *testing.T, cfg *rest.Config) {
	t.Helper()
	certManagerCRDs.once.Do(func() {
		const mod = "github.com/cert-manager/cert-manager"
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", mod).Output()
		dir := strings.TrimSpace(string(out))
		if err != nil || dir == "" {
			certManagerCRDs.err = fmt.Errorf("locating %s in the module cache for its CRDs: %v", mod, err)
			return
		}
		_, certManagerCRDs.err = envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{
			Paths: []string{filepath.Join(dir, "deploy", "crds")}, ErrorIfPathMissing: true,
		})
	})
	if certManagerCRDs.err != nil {
		t.Fatal(certManagerCRDs.err)
	}
}

// runCertManager runs cert-manager's own controllers in-process against the
// envtest API server until the test ends.
func runCertManager(t *testing.T) {
	t.Helper()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, shared.env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory, err := cmcontroller.NewContextFactory(ctx, cmcontroller.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   100,
		KubernetesAPIBurst: 200,
		IssuerOptions:      cmcontroller.IssuerOptions{ClusterResourceNamespace: "cert-manager"},
		CertificateOptions: cmcontroller.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Second,
			CertificateRequestMaximumBackoffDuration: 5 * time.Second,
		},
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var ctrls []cmcontroller.Interface
	for _, name := range certManagerControllers {
		ctor, ok := cmcontroller.Known()[name]
		if !ok {
			cancel()
			t.Fatalf("cert-manager controller %q is not registered", name)
		}
		c, err := ctor(factory)
		if err != nil {
			cancel()
			t.Fatalf("cert-manager controller %s: %v", name, err)
		}
		ctrls = append(ctrls, c)
	}
	// The controllers registered their informers on the shared factories;
	// start them now, as cert-manager's controller binary does.
	shared, err := factory.Build("fjord-test")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	var wg sync.WaitGroup
	for i, c := range ctrls {
		wg.Go(func() {
			if err := c.Run(1, ctx); err != nil && ctx.Err() == nil {
				t.Errorf("cert-manager controller %s: %v", certManagerControllers[i], err)
			}
		})
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		shared.KubeSharedInformerFactory.Shutdown()
		shared.SharedInformerFactory.Shutdown()
	})
}

// newIssuerCA makes a root CA as a cert-manager CA Issuer keeps it: a
// kubernetes.io/tls Secret.
func newIssuerCA(t *testing.T, ns, name string) (*corev1.Secret, *x509.Certificate) {
	t.Helper()
	root, key := newCACert(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil, nil)
	keyPEM, err := key.PEM()
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: certs.EncodeCerts([]*x509.Certificate{root}), corev1.TLSPrivateKeyKey: keyPEM},
	}, root
}

// newCACert makes a CA certificate from tmpl with a new key, signed by
// parent's key (self-signed when parent is nil); it fills in the serial
// number and the CA basic constraints.
func newCACert(t *testing.T, tmpl, parent *x509.Certificate, parentKey *certs.Key) (*x509.Certificate, *certs.Key) {
	t.Helper()
	key, err := certs.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)); err != nil {
		t.Fatal(err)
	}
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
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

// certManagerClient is an admin client that knows cert-manager's types.
func certManagerClient(t *testing.T, cfg *rest.Config) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), cmapi.AddToScheme(scheme)); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// issueIntermediate signs a CA certificate with the root kept in
// issuerCA, returning tls.crt and tls.key as cert-manager writes them for
// Fjord's Certificate.
func issueIntermediate(t *testing.T, issuerCA *corev1.Secret, root *x509.Certificate) (crt, key []byte) {
	t.Helper()
	rootKey, err := certs.ParseKey(issuerCA.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		t.Fatal(err)
	}
	c, k := newCACert(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: IntermediateName},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(DefaultIntermediateDuration),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, root, rootKey)
	key, err = k.PEM()
	if err != nil {
		t.Fatal(err)
	}
	return certs.EncodeCerts([]*x509.Certificate{c}), key
}

func TestCertManagerIssuesFjordsIntermediate(t *testing.T) {
	cfg, _ := apiServer(t)
	installCertManagerCRDs(t, cfg)
	c := certManagerClient(t, cfg)
	const ns = "cert-manager-mode"
	createNamespace(t, c, ns, nil)
	caSecret, root := newIssuerCA(t, ns, "mesh-root")
	mustCreate(t, c, caSecret)
	mustCreate(t, c, &cmapi.Issuer{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mesh-ca"},
		Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: caSecret.Name}}},
	})
	runCertManager(t)

	log, _ := newTestLog(t)
	issuer := certs.NewExternalIssuer(certs.ExternalOptions{LeafTTL: time.Hour, Log: log})
	m, err := NewCertManagerIntermediate(cfg, issuer, CertManagerOptions{Namespace: ns, IssuerRef: "Issuer/mesh-ca", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := m.Run(ctx); err != nil {
			t.Errorf("CertManagerIntermediate.Run: %v", err)
		}
	})
	wg.Go(func() { _ = issuer.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	select {
	case <-issuer.Loaded():
	case <-time.After(waitCeiling):
		var crt cmapi.Certificate
		_ = c.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: IntermediateName}, &crt)
		t.Fatalf("no intermediate issued by cert-manager within %s; certificate status: %+v", waitCeiling, crt.Status)
	}
	id := certs.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "cart"}
	first := signLeaf(t, issuer, id)
	inter := first[1]
	if !inter.IsCA || inter.CheckSignatureFrom(root) != nil {
		t.Fatalf("intermediate %s is not a CA signed by the issuer's root", inter.Subject)
	}
	if pub, ok := inter.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("intermediate key is %T, want ECDSA P-256", inter.PublicKey)
	}
	if b := issuer.Bundle(); len(b) != 1 || !b[0].Equal(root) {
		t.Fatalf("bundle has %d roots, want the issuer's root (ca.crt)", len(b))
	}
	if err := verifyLeaf(first, issuer.Bundle()); err != nil {
		t.Fatal(err)
	}

	// Leaves are signed all through the renewal, and every one verifies.
	var signed, failed atomic.Int64
	stop := make(chan struct{})
	var signers sync.WaitGroup
	signers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			chain, err := signLeafErr(issuer, id)
			if err == nil {
				err = verifyLeaf(chain, issuer.Bundle())
			}
			if err != nil {
				failed.Add(1)
				t.Errorf("signing during the renewal: %v", err)
			}
			signed.Add(1)
		}
	})
	defer func() { close(stop); signers.Wait() }()

	// Force a renewal as cmctl renew does: the Issuing condition.
	changed := issuer.Changed()
	// Like cmctl renew, only once the first issuance has finished (Ready,
	// no Issuing condition): the issuing controller clears the condition
	// when it completes, and would clear ours with it. cert-manager's
	// controllers write the status too: retry on conflict.
	waitCertificate(t, c, ns, func(crt *cmapi.Certificate) bool {
		return cmutil.CertificateHasCondition(crt, cmapi.CertificateCondition{Type: cmapi.CertificateConditionReady, Status: cmmeta.ConditionTrue}) &&
			cmutil.GetCertificateCondition(crt, cmapi.CertificateConditionIssuing) == nil
	})
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var crt cmapi.Certificate
		if err := c.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: IntermediateName}, &crt); err != nil {
			return err
		}
		cmutil.SetCertificateCondition(&crt, crt.Generation, cmapi.CertificateConditionIssuing, cmmeta.ConditionTrue, "ManuallyTriggered", "renewal forced by the test")
		return c.Status().Update(t.Context(), &crt)
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(waitCeiling)
	for {
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no renewed intermediate loaded within %s", waitCeiling)
		}
		changed = issuer.Changed()
		if !signLeaf(t, issuer, id)[1].Equal(inter) {
			break
		}
	}
	second := signLeaf(t, issuer, id)
	if second[1].PublicKey.(*ecdsa.PublicKey).Equal(inter.PublicKey) {
		t.Error("the renewed intermediate kept its key; rotationPolicy Always asks for a new one")
	}
	for name, chain := range map[string][]*x509.Certificate{"before": first, "after": second} {
		if err := verifyLeaf(chain, issuer.Bundle()); err != nil {
			t.Errorf("leaf from %s the renewal: %v", name, err)
		}
	}
	close(stop)
	signers.Wait()
	stop = make(chan struct{}) // for the deferred close
	if failed.Load() != 0 || signed.Load() == 0 {
		t.Fatalf("%d of %d leaves signed during the renewal failed", failed.Load(), signed.Load())
	}
	t.Logf("%d leaves signed and verified during the renewal", signed.Load())
}

// waitCertificate polls Fjord's Certificate until ok.
func waitCertificate(t *testing.T, c client.Client, ns string, ok func(*cmapi.Certificate) bool) {
	t.Helper()
	deadline := time.Now().Add(waitCeiling)
	for {
		var crt cmapi.Certificate
		if err := c.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: IntermediateName}, &crt); err != nil {
			t.Fatal(err)
		}
		if ok(&crt) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("certificate %s/%s not in the awaited state within %s: %+v", ns, IntermediateName, waitCeiling, crt.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func signLeafErr(issuer certs.Issuer, id certs.Identity) ([]*x509.Certificate, error) {
	key, err := certs.GenerateKey()
	if err != nil {
		return nil, err
	}
	pemCSR, err := certs.NewCSR(*key, id)
	if err != nil {
		return nil, err
	}
	csr, err := certs.ParseCSR(pemCSR)
	if err != nil {
		return nil, err
	}
	return issuer.Sign(csr, id, 0)
}

func signLeaf(t *testing.T, issuer certs.Issuer, id certs.Identity) []*x509.Certificate {
	t.Helper()
	chain, err := signLeafErr(issuer, id)
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

// verifyLeaf checks a chain as a TLS peer holding bundle would.
func verifyLeaf(chain, bundle []*x509.Certificate) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range bundle {
		roots.AddCert(c)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}})
	return err
}

func TestCertManagerIssuerRef(t *testing.T) {
	tests := map[string]struct {
		in   string
		want cmmeta.IssuerReference
		ok   bool
	}{
		"issuer":         {in: "Issuer/mesh-ca", want: cmmeta.IssuerReference{Kind: "Issuer", Name: "mesh-ca", Group: "cert-manager.io"}, ok: true},
		"cluster issuer": {in: "ClusterIssuer/corp", want: cmmeta.IssuerReference{Kind: "ClusterIssuer", Name: "corp", Group: "cert-manager.io"}, ok: true},
		"no kind":        {in: "mesh-ca"},
		"other kind":     {in: "Secret/mesh-ca"},
		"no name":        {in: "Issuer/"},
		"lowercase kind": {in: "issuer/mesh-ca"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseIssuerRef(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("ParseIssuerRef(%q) = %+v, %v", tc.in, got, err)
			}
		})
	}
}
