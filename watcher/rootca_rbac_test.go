package watcher

import (
	"context"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/fjordmesh/fjord/certs"
)

// TestRootCAAndIdentityGeneratedRBAC runs the identity components as a user
// bound to exactly the roles in manifests/rbac (copies under other names,
// so as not to collide with TestGeneratedRBAC): the CA Secret in the
// control plane's namespace, token reviews, the root CA ConfigMaps and the
// cert-manager Certificate and Secret.
func TestRootCAAndIdentityGeneratedRBAC(t *testing.T) {
	cfg, admin := apiServer(t)
	installCertManagerCRDs(t, cfg)
	const user, ns = "fjord-cp-identity-rbac", "identity-rbac"
	clusterRole, role := generatedRBAC(t)
	clusterRole.Name, role.Name = "fjord-test-identity", "fjord-test-identity"
	u := addUser(t, user)
	bindClusterRole(t, admin, user, clusterRole)
	bindRole(t, admin, user, role)
	ucfg := u.Config()
	f := newTokenFixture(t, cfg, ns, "workload")

	// The built-in CA in Secret fjord-ca of the control plane's namespace,
	// created, then updated by a rotation.
	st, err := NewSecretStorage(ucfg, meshNS)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := newTestLog(t)
	ca, err := certs.New(t.Context(), certs.Options{Storage: st, Log: log})
	if err != nil {
		t.Fatalf("built-in CA as the control plane's user: %v", err)
	}
	if _, err := ca.Rotate(t.Context()); err != nil {
		t.Fatalf("rotating the CA as the control plane's user: %v", err)
	}

	// Token reviews.
	a := newAuthenticator(t, ucfg, TokenReviewOptions{})
	if sa, err := a.Authenticate(t.Context(), f.token("workload", nil, "fjord")); err != nil || sa.Name != "workload" {
		t.Fatalf("token review as the control plane's user: %v, %v", sa, err)
	}

	// The root CA ConfigMap in a meshed namespace.
	p, err := NewRootCAPublisher(ucfg, ca, RootCAOptions{NamespaceSelector: corev1.LabelMetadataName + "=" + ns, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		if err := p.Run(ctx); err != nil {
			t.Errorf("RootCAPublisher.Run: %v", err)
		}
	})
	waitRootCA(t, admin, ns, string(ca.BundlePEM()))

	// cert-manager mode: the Certificate, and the issued Secret as
	// cert-manager writes it (kubernetes.io/tls with ca.crt), loaded.
	ext := certs.NewExternalIssuer(certs.ExternalOptions{LeafTTL: time.Hour, Log: log})
	m, err := NewCertManagerIntermediate(ucfg, ext, CertManagerOptions{Namespace: meshNS, IssuerRef: "ClusterIssuer/corp", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	m.ensureEvery = 100 * time.Millisecond
	wg.Go(func() {
		if err := m.Run(ctx); err != nil {
			t.Errorf("CertManagerIntermediate.Run: %v", err)
		}
	})
	issuerCA, root := newIssuerCA(t, meshNS, "unused")
	crt, key := issueIntermediate(t, issuerCA, root)
	mustCreate(t, admin, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: IntermediateName},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: crt, corev1.TLSPrivateKeyKey: key, "ca.crt": certs.EncodeCerts([]*x509.Certificate{root})},
	})
	select {
	case <-ext.Loaded():
	case <-time.After(waitCeiling):
		t.Fatalf("the intermediate Secret was not loaded within %s", waitCeiling)
	}

	// A deleted Certificate comes back, with Fjord's spec.
	cm := certManagerClient(t, cfg)
	want := m.Certificate()
	var old cmapi.Certificate
	if err := cm.Get(t.Context(), client.ObjectKeyFromObject(want), &old); err != nil {
		t.Fatal(err)
	}
	if err := cm.Delete(t.Context(), &old); err != nil {
		t.Fatalf("deleting certificate %s: %v", old.Name, err)
	}
	deadline := time.Now().Add(waitCeiling)
	for {
		var got cmapi.Certificate
		err := cm.Get(t.Context(), client.ObjectKeyFromObject(want), &got)
		if err == nil && got.UID != old.UID {
			if diff := cmp.Diff(want.Spec, got.Spec); diff != "" {
				t.Fatalf("re-created certificate spec (-want +got):\n%s", diff)
			}
			break
		}
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("certificate %s not re-created within %s", want.Name, waitCeiling)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
