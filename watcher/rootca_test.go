package watcher

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// fakeBundle is a trust bundle the test changes at will.
type fakeBundle struct {
	mu      sync.Mutex
	pem     []byte
	changed chan struct{}
}

func newFakeBundle(pem string) *fakeBundle {
	return &fakeBundle{pem: []byte(pem), changed: make(chan struct{})}
}

func (b *fakeBundle) BundlePEM() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pem
}

func (b *fakeBundle) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changed
}

func (b *fakeBundle) set(pem string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pem = []byte(pem)
	close(b.changed)
	b.changed = make(chan struct{})
}

// waitRootCA waits until ns's fjord-root-ca holds want ("" = absent).
func waitRootCA(t *testing.T, c client.Client, ns, want string) {
	t.Helper()
	deadline := time.Now().Add(waitCeiling)
	for {
		var cm corev1.ConfigMap
		err := c.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: RootCAConfigMap}, &cm)
		got := ""
		switch {
		case err == nil:
			got = cm.Data[RootCAKey]
			if got == "" {
				got = "(empty)"
			}
		case !apierrors.IsNotFound(err):
			t.Fatal(err)
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("configmap %s/%s holds %q after %s, want %q", ns, RootCAConfigMap, got, waitCeiling, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRootCAPublisher(t *testing.T) {
	cfg, admin := apiServer(t)
	const label = "rootca-test"
	meshed := map[string]string{label: "mesh"}
	createNamespace(t, admin, "rootca-a", meshed)
	createNamespace(t, admin, "rootca-b", nil)

	bundle := newFakeBundle("ROOT-1\n")
	log, _ := newTestLog(t)
	p, err := NewRootCAPublisher(cfg, bundle, RootCAOptions{NamespaceSelector: label + "=mesh", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RootCAPublisher.Run: %v", err)
		}
	})

	waitRootCA(t, admin, "rootca-a", "ROOT-1\n")

	// A bundle change reaches every meshed namespace.
	bundle.set("ROOT-1\nROOT-2\n")
	waitRootCA(t, admin, "rootca-a", "ROOT-1\nROOT-2\n")

	// Deleted: recreated. Edited: put back.
	cm := &corev1.ConfigMap{}
	cm.Namespace, cm.Name = "rootca-a", RootCAConfigMap
	if err := admin.Delete(t.Context(), cm); err != nil {
		t.Fatal(err)
	}
	waitRootCA(t, admin, "rootca-a", "ROOT-1\nROOT-2\n")
	if err := admin.Get(t.Context(), client.ObjectKeyFromObject(cm), cm); err != nil {
		t.Fatal(err)
	}
	cm.Data[RootCAKey] = "FORGED\n"
	if err := admin.Update(t.Context(), cm); err != nil {
		t.Fatal(err)
	}
	waitRootCA(t, admin, "rootca-a", "ROOT-1\nROOT-2\n")

	// A namespace that becomes meshed gets it, as does a new meshed one.
	createNamespace(t, admin, "rootca-c", meshed)
	waitRootCA(t, admin, "rootca-c", "ROOT-1\nROOT-2\n")
	// By now b, unselected, has been through the queue at least twice
	// (at start and at the bundle change).
	waitRootCA(t, admin, "rootca-b", "")
	var b corev1.Namespace
	if err := admin.Get(t.Context(), client.ObjectKey{Name: "rootca-b"}, &b); err != nil {
		t.Fatal(err)
	}
	b.Labels = meshed
	if err := admin.Update(t.Context(), &b); err != nil {
		t.Fatal(err)
	}
	waitRootCA(t, admin, "rootca-b", "ROOT-1\nROOT-2\n")
}
