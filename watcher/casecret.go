package watcher

import (
	"context"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/fjordmesh/fjord/certs"
)

// +kubebuilder:rbac:groups="",namespace=fjord-system,resources=secrets,verbs=get;create;update

// CASecretName is the Secret that holds the built-in CA's state in the
// control plane's namespace.
const CASecretName = "fjord-ca"

// caSecretType marks the Secret as Fjord's, so that tools which treat
// kubernetes.io/tls Secrets specially leave it alone.
const caSecretType corev1.SecretType = "fjord.dev/ca"

// SecretStorage is certs.Storage on one Secret: the CA's named blobs are
// the Secret's data and the revision is its resourceVersion. Create relies
// on the API server's create-if-absent and Update on its resourceVersion
// precondition, so replicas agree on one CA without a lock of their own.
// It reads the Secret straight from the API server, never from an informer
// cache: a cache would need list and watch on Secrets and could be stale
// exactly when two replicas race.
type SecretStorage struct {
	client    kubernetes.Interface
	namespace string
	name      string
}

var _ certs.Storage = (*SecretStorage)(nil)

// NewSecretStorage keeps the CA in Secret fjord-ca of namespace (the control
// plane's own).
func NewSecretStorage(cfg *rest.Config, namespace string) (*SecretStorage, error) {
	return newSecretStorage(cfg, namespace, CASecretName)
}

func newSecretStorage(cfg *rest.Config, namespace, name string) (*SecretStorage, error) {
	if namespace == "" {
		return nil, fmt.Errorf("CA secret %s: no namespace", name)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("CA secret %s/%s: client: %w", namespace, name, err)
	}
	return &SecretStorage{client: c, namespace: namespace, name: name}, nil
}

// Load implements certs.Storage.
func (s *SecretStorage) Load(ctx context.Context) (map[string][]byte, string, error) {
	sec, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", certs.ErrNotFound
	}
	if err != nil {
		return nil, "", fmt.Errorf("reading secret %s/%s: %w", s.namespace, s.name, err)
	}
	return maps.Clone(sec.Data), sec.ResourceVersion, nil
}

// Create implements certs.Storage: an AlreadyExists from the API server
// means another replica won.
func (s *SecretStorage) Create(ctx context.Context, data map[string][]byte) (string, error) {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: s.name, Namespace: s.namespace,
			Labels: map[string]string{"app.kubernetes.io/part-of": "fjord", "app.kubernetes.io/component": "ca"},
		},
		Type: caSecretType,
		Data: maps.Clone(data),
	}
	created, err := s.client.CoreV1().Secrets(s.namespace).Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return "", certs.ErrExists
	}
	if err != nil {
		return "", fmt.Errorf("creating secret %s/%s: %w", s.namespace, s.name, err)
	}
	return created.ResourceVersion, nil
}

// Update implements certs.Storage. The Secret is sent with revision as its
// resourceVersion, so the API server refuses it with Conflict if anyone
// wrote in between. A Secret deleted since it was loaded is a conflict too:
// the caller reloads and finds nothing, rather than silently recreating.
func (s *SecretStorage) Update(ctx context.Context, data map[string][]byte, revision string) (string, error) {
	if revision == "" {
		return "", fmt.Errorf("updating secret %s/%s: no revision: %w", s.namespace, s.name, certs.ErrConflict)
	}
	cur, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, s.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return "", fmt.Errorf("secret %s/%s was deleted: %w", s.namespace, s.name, certs.ErrConflict)
	case err != nil:
		return "", fmt.Errorf("reading secret %s/%s: %w", s.namespace, s.name, err)
	}
	// Labels and annotations others added are kept; only the data and the
	// precondition are ours.
	cur.ResourceVersion = revision
	cur.Data = maps.Clone(data)
	updated, err := s.client.CoreV1().Secrets(s.namespace).Update(ctx, cur, metav1.UpdateOptions{})
	switch {
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		return "", fmt.Errorf("updating secret %s/%s at resourceVersion %s: %w", s.namespace, s.name, revision, certs.ErrConflict)
	case err != nil:
		return "", fmt.Errorf("updating secret %s/%s: %w", s.namespace, s.name, err)
	}
	return updated.ResourceVersion, nil
}
