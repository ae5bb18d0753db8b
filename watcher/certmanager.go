package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// +kubebuilder:rbac:groups=cert-manager.io,namespace=fjord-system,resources=certificates,verbs=get;create;update
// +kubebuilder:rbac:groups="",namespace=fjord-system,resources=secrets,verbs=list;watch

// IntermediateName is the cert-manager Certificate, and the Secret it is
// issued into, that hold Fjord's signing intermediate in cert-manager mode.
const IntermediateName = "fjord-intermediate"

// IntermediateStateName is the Secret that keeps certs.ExternalIssuer's
// overlap state (retiring roots, the held-back intermediate's certificates
// and when it signs) across restarts, shared by the replicas. It holds
// certificates and times only, never a key; it is a Secret so that it is
// kept by the same create-if-absent and resourceVersion-checked storage as
// the built-in CA's.
const IntermediateStateName = "fjord-intermediate-state"

// NewIntermediateStateStorage keeps the overlap state in Secret
// fjord-intermediate-state of namespace (the control plane's own).
func NewIntermediateStateStorage(cfg *rest.Config, namespace string) (*SecretStorage, error) {
	return newSecretStorage(cfg, namespace, IntermediateStateName)
}

// DefaultIntermediateDuration is the intermediate's lifetime asked of
// cert-manager, which renews it at 2/3 of it by default.
const DefaultIntermediateDuration = 90 * 24 * time.Hour

// SignerLoader is what receives each issued intermediate:
// certs.ExternalIssuer.
type SignerLoader interface {
	Load(tlsCrt, tlsKey, caCrt []byte) error
}

// CertManagerOptions configure a CertManagerIntermediate.
type CertManagerOptions struct {
	// Namespace is the control plane's, where the Certificate and its
	// Secret live.
	Namespace string
	// IssuerRef is the --ca-issuer-ref value, Issuer/NAME or
	// ClusterIssuer/NAME.
	IssuerRef string
	// Duration of the intermediate; zero means
	// DefaultIntermediateDuration. It must be well above the leaf
	// lifetime: leaves never outlive their intermediate.
	Duration time.Duration
	Log      *slog.Logger
}

// CertManagerIntermediate keeps Fjord's signing intermediate as a
// cert-manager Certificate (isCA, ECDSA P-256, PKCS #8, a new key at every
// renewal) and hands every version of the issued Secret to a SignerLoader.
// Workload leaves are signed in-process with it: cert-manager sees one
// CertificateRequest per renewal of the intermediate, never one per
// workload.
type CertManagerIntermediate struct {
	client    client.Client
	secrets   kubernetes.Interface
	loader    SignerLoader
	namespace string
	issuerRef cmmeta.IssuerReference
	duration  time.Duration
	log       *slog.Logger
	// ensureEvery is how often Run puts a deleted or edited Certificate
	// back.
	ensureEvery time.Duration
}

// ParseIssuerRef parses Issuer/NAME or ClusterIssuer/NAME.
func ParseIssuerRef(s string) (cmmeta.IssuerReference, error) {
	kind, name, ok := strings.Cut(s, "/")
	if !ok || name == "" || (kind != cmapi.IssuerKind && kind != cmapi.ClusterIssuerKind) {
		return cmmeta.IssuerReference{}, fmt.Errorf("--ca-issuer-ref %q: want Issuer/NAME or ClusterIssuer/NAME", s)
	}
	return cmmeta.IssuerReference{Kind: kind, Name: name, Group: "cert-manager.io"}, nil
}

// NewCertManagerIntermediate manages the intermediate with the API server
// of cfg and loads it into loader.
func NewCertManagerIntermediate(cfg *rest.Config, loader SignerLoader, o CertManagerOptions) (*CertManagerIntermediate, error) {
	if o.Namespace == "" {
		return nil, errors.New("cert-manager intermediate: no namespace")
	}
	ref, err := ParseIssuerRef(o.IssuerRef)
	if err != nil {
		return nil, err
	}
	if o.Duration <= 0 {
		o.Duration = DefaultIntermediateDuration
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	scheme := runtime.NewScheme()
	if err := cmapi.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("cert-manager intermediate: client: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cert-manager intermediate: client: %w", err)
	}
	return &CertManagerIntermediate{client: c, secrets: cs, loader: loader, namespace: o.Namespace,
		issuerRef: ref, duration: o.Duration, log: o.Log, ensureEvery: time.Minute}, nil
}

// Certificate is the Certificate Fjord asks cert-manager for.
func (m *CertManagerIntermediate) Certificate() *cmapi.Certificate {
	return &cmapi.Certificate{
		ObjectMeta: metav1.ObjectMeta{
			Name: IntermediateName, Namespace: m.namespace,
			Labels: map[string]string{"app.kubernetes.io/part-of": "fjord", "app.kubernetes.io/component": "ca"},
		},
		Spec: cmapi.CertificateSpec{
			IsCA:       true,
			CommonName: "fjord-intermediate." + m.namespace,
			SecretName: IntermediateName,
			Duration:   &metav1.Duration{Duration: m.duration},
			PrivateKey: &cmapi.CertificatePrivateKey{
				Algorithm:      cmapi.ECDSAKeyAlgorithm,
				Size:           256,
				Encoding:       cmapi.PKCS8,
				RotationPolicy: cmapi.RotationPolicyAlways,
			},
			Usages:    []cmapi.KeyUsage{cmapi.UsageCertSign, cmapi.UsageCRLSign, cmapi.UsageDigitalSignature},
			IssuerRef: m.issuerRef,
		},
	}
}

// Ensure creates the Certificate, or puts its spec back to Fjord's.
func (m *CertManagerIntermediate) Ensure(ctx context.Context) error {
	want := m.Certificate()
	var cur cmapi.Certificate
	err := m.client.Get(ctx, client.ObjectKeyFromObject(want), &cur)
	switch {
	case apierrors.IsNotFound(err):
		if err := m.client.Create(ctx, want); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating certificate %s/%s: %w", m.namespace, IntermediateName, err)
		}
		m.log.Info("cert-manager intermediate: certificate created", "namespace", m.namespace, "issuer", m.issuerRef.Kind+"/"+m.issuerRef.Name)
		return nil
	case err != nil:
		return fmt.Errorf("reading certificate %s/%s (are cert-manager's CRDs installed?): %w", m.namespace, IntermediateName, err)
	}
	if apiequality.Semantic.DeepEqual(cur.Spec, want.Spec) {
		return nil
	}
	cur.Spec = want.Spec
	if err := m.client.Update(ctx, &cur); err != nil {
		return fmt.Errorf("updating certificate %s/%s: %w", m.namespace, IntermediateName, err)
	}
	m.log.Info("cert-manager intermediate: certificate spec updated", "namespace", m.namespace)
	return nil
}

// Run ensures the Certificate, then loads every version of its Secret until
// ctx ends. A version the loader refuses is logged and the previous one
// stays in use; cert-manager's next write brings another. Every minute it
// ensures the Certificate again, so that a deleted or edited one comes back
// (the Secret, and signing, are unaffected meanwhile).
func (m *CertManagerIntermediate) Run(ctx context.Context) error {
	if err := m.Ensure(ctx); err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactoryWithOptions(m.secrets, 10*time.Minute,
		informers.WithNamespace(m.namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", IntermediateName).String()
		}))
	inf := factory.Core().V1().Secrets().Informer()
	load := func(obj any) {
		sec, ok := obj.(*corev1.Secret)
		if !ok {
			return
		}
		crt, key, ca := sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey], sec.Data["ca.crt"]
		if len(crt) == 0 || len(key) == 0 {
			return // cert-manager writes the key before the certificate
		}
		if err := m.loader.Load(crt, key, ca); err != nil {
			m.log.Error("cert-manager intermediate: refused the issued secret; still signing with the previous one",
				"secret", m.namespace+"/"+IntermediateName, "resourceVersion", sec.ResourceVersion, "err", err)
			return
		}
		m.log.Debug("cert-manager intermediate: loaded", "resourceVersion", sec.ResourceVersion)
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    load,
		UpdateFunc: func(_, obj any) { load(obj) },
	}); err != nil {
		return fmt.Errorf("cert-manager intermediate: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	t := time.NewTicker(m.ensureEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := m.Ensure(ctx); err != nil && ctx.Err() == nil {
				m.log.Error("cert-manager intermediate: ensuring the certificate failed; retrying", "err", err)
			}
		}
	}
}
