package watcher

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update

// Names of the trust-root ConfigMap that agents read to verify the control
// plane (see docs/security.md).
const (
	RootCAConfigMap = "fjord-root-ca"
	RootCAKey       = "ca.crt"
)

// Bundle is the trust bundle the publisher follows: the built-in CA and the
// cert-manager issuer both provide it.
type Bundle interface {
	// BundlePEM is the current set of trusted roots as PEM.
	BundlePEM() []byte
	// Changed is closed at the next change of the bundle.
	Changed() <-chan struct{}
}

// RootCAOptions configure a RootCAPublisher.
type RootCAOptions struct {
	// NamespaceSelector selects the meshed namespaces, as
	// KubeOptions.NamespaceSelector does. Empty means
	// DefaultNamespaceSelector.
	NamespaceSelector string
	Log               *slog.Logger
}

// RootCAPublisher keeps ConfigMap fjord-root-ca, key ca.crt = the trust
// bundle, in every meshed namespace: created when a namespace appears or
// becomes selected, rewritten when the bundle changes or someone edits it,
// recreated when it is deleted. It holds only certificates; keys have no
// path here. Run it on the leader only, so that replicas whose bundles
// differ for a moment during a rotation do not take turns writing.
type RootCAPublisher struct {
	client   kubernetes.Interface
	bundle   Bundle
	selector labels.Selector
	log      *slog.Logger
}

// NewRootCAPublisher publishes bundle with the API server of cfg.
func NewRootCAPublisher(cfg *rest.Config, bundle Bundle, o RootCAOptions) (*RootCAPublisher, error) {
	sel, err := namespaceSelector(o.NamespaceSelector)
	if err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("root CA publisher client: %w", err)
	}
	return &RootCAPublisher{client: c, bundle: bundle, selector: sel, log: o.Log}, nil
}

// Run publishes until ctx ends, and then returns nil; it fails only if
// listing namespaces from its own cache does.
func (p *RootCAPublisher) Run(ctx context.Context) error {
	nsFactory := informers.NewSharedInformerFactory(p.client, 0)
	cmFactory := informers.NewSharedInformerFactoryWithOptions(p.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", RootCAConfigMap).String()
		}))
	nsInformer := nsFactory.Core().V1().Namespaces()
	cmInformer := cmFactory.Core().V1().ConfigMaps()

	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "fjord-root-ca"})
	defer queue.ShutDown()
	enqueue := func(obj any) {
		if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			queue.Add(o.Name)
		case *corev1.ConfigMap:
			queue.Add(o.Namespace)
		}
	}
	handler := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}
	if _, err := nsInformer.Informer().AddEventHandler(handler); err != nil {
		return fmt.Errorf("root CA publisher: %w", err)
	}
	if _, err := cmInformer.Informer().AddEventHandler(handler); err != nil {
		return fmt.Errorf("root CA publisher: %w", err)
	}
	nsFactory.Start(ctx.Done())
	cmFactory.Start(ctx.Done())
	defer nsFactory.Shutdown()
	defer cmFactory.Shutdown()
	synced := nsFactory.WaitForCacheSync(ctx.Done())
	maps.Copy(synced, cmFactory.WaitForCacheSync(ctx.Done()))
	if ctx.Err() != nil {
		return nil // stopped (or leadership lost) before the caches synced
	}
	for typ, ok := range synced {
		if !ok {
			return fmt.Errorf("root CA publisher: %v cache did not sync", typ)
		}
	}
	p.log.Info("root CA publisher: publishing", "configmap", RootCAConfigMap, "namespaceSelector", p.selector.String())

	done := make(chan struct{})
	go func() {
		defer close(done)
		for p.next(ctx, queue, nsInformer.Lister(), cmInformer.Lister()) {
		}
	}()
	for {
		changed := p.bundle.Changed()
		select {
		case <-ctx.Done():
			queue.ShutDown()
			<-done
			return nil
		case <-changed:
			p.log.Info("root CA publisher: trust bundle changed; republishing")
			namespaces, err := nsInformer.Lister().List(labels.Everything())
			if err != nil {
				return fmt.Errorf("root CA publisher: listing namespaces: %w", err)
			}
			for _, ns := range namespaces {
				queue.Add(ns.Name)
			}
		}
	}
}

// next handles one namespace from the queue; false when the queue is shut
// down.
func (p *RootCAPublisher) next(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string],
	namespaces corelisters.NamespaceLister, configMaps corelisters.ConfigMapLister) bool {
	name, shutdown := queue.Get()
	if shutdown {
		return false
	}
	defer queue.Done(name)
	ns, err := namespaces.Get(name)
	if apierrors.IsNotFound(err) {
		queue.Forget(name)
		return true
	}
	if err == nil {
		err = p.sync(ctx, ns, configMaps.ConfigMaps(name))
	}
	if err != nil {
		p.log.Error("root CA publisher: publishing failed; retrying", "namespace", name, "err", err)
		queue.AddRateLimited(name)
		return true
	}
	queue.Forget(name)
	return true
}

// sync makes ns's ConfigMap hold the current bundle, if ns is meshed.
// Namespaces that stop being meshed keep their ConfigMap: a workload still
// running there still needs it to reach the control plane.
func (p *RootCAPublisher) sync(ctx context.Context, ns *corev1.Namespace, cms corelisters.ConfigMapNamespaceLister) error {
	if !p.selector.Matches(labels.Set(ns.Labels)) || ns.Status.Phase == corev1.NamespaceTerminating || ns.DeletionTimestamp != nil {
		return nil
	}
	bundle := p.bundle.BundlePEM()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cm, err := cms.Get(RootCAConfigMap)
	switch {
	case apierrors.IsNotFound(err):
		_, err = p.client.CoreV1().ConfigMaps(ns.Name).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{
				Name: RootCAConfigMap, Namespace: ns.Name,
				Labels: map[string]string{"app.kubernetes.io/part-of": "fjord"},
			},
			Data: map[string]string{RootCAKey: string(bundle)},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // the cache will show it, and the update event brings us back
		}
		if err != nil {
			return fmt.Errorf("creating configmap %s/%s: %w", ns.Name, RootCAConfigMap, err)
		}
		p.log.Info("root CA publisher: created", "namespace", ns.Name)
		return nil
	case err != nil:
		return fmt.Errorf("reading configmap %s/%s from the cache: %w", ns.Name, RootCAConfigMap, err)
	}
	if bytes.Equal([]byte(cm.Data[RootCAKey]), bundle) {
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[RootCAKey] = string(bundle)
	if _, err := p.client.CoreV1().ConfigMaps(ns.Name).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsConflict(err) {
			return nil // a newer version is on its way through the cache
		}
		return fmt.Errorf("updating configmap %s/%s: %w", ns.Name, RootCAConfigMap, err)
	}
	p.log.Info("root CA publisher: updated", "namespace", ns.Name)
	return nil
}
