package watcher

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/fjordmesh/fjord/certs"
)

func TestSecretStorageTwoControlPlanesAgreeOnOneCA(t *testing.T) {
	cfg, admin := apiServer(t)
	const ns = "secret-ca-race"
	createNamespace(t, admin, ns, nil)

	const replicas = 2
	var (
		wg   sync.WaitGroup
		cas  [replicas]*certs.CA
		errs [replicas]error
		logs [replicas]*testLog
	)
	start := make(chan struct{})
	for i := range replicas {
		st, err := NewSecretStorage(cfg, ns)
		if err != nil {
			t.Fatal(err)
		}
		lg, l := newTestLog(t)
		logs[i] = l
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			cas[i], errs[i] = certs.New(context.Background(), certs.Options{Storage: st, Log: lg})
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("control plane %d: %v", i, err)
		}
	}
	root := func(ca *certs.CA) []byte { return ca.Bundle()[0].Raw }
	if !bytes.Equal(root(cas[0]), root(cas[1])) {
		t.Fatal("the two control planes started with different roots")
	}

	// A restart loads the stored CA instead of making one.
	st, err := NewSecretStorage(cfg, ns)
	if err != nil {
		t.Fatal(err)
	}
	lg, restartLog := newTestLog(t)
	again, err := certs.New(t.Context(), certs.Options{Storage: st, Log: lg})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(root(again), root(cas[0])) {
		t.Fatal("a restarted control plane has another root than the stored one")
	}

	// The keys are in the Secret, and nowhere else: not in a ConfigMap of
	// the namespace, not in a log line.
	var sec corev1.Secret
	if err := admin.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: CASecretName}, &sec); err != nil {
		t.Fatal(err)
	}
	var keys [][]byte
	for name, v := range sec.Data {
		if strings.Contains(name, "key") {
			keys = append(keys, v)
		}
	}
	if len(keys) == 0 {
		t.Fatalf("secret %s holds no keys: %v", CASecretName, sec.Data)
	}
	var cms corev1.ConfigMapList
	if err := admin.List(t.Context(), &cms, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, cm := range cms.Items {
		for k, v := range cm.Data {
			if strings.Contains(v, "PRIVATE KEY") {
				t.Errorf("ConfigMap %s key %s holds a private key", cm.Name, k)
			}
		}
	}
	for _, l := range append(logs[:], restartLog) {
		l.mu.Lock()
		for _, line := range l.lines {
			for _, k := range keys {
				if strings.Contains(line, "PRIVATE KEY") || strings.Contains(line, string(k)) {
					t.Errorf("a private key is logged: %s", line)
				}
			}
		}
		l.mu.Unlock()
	}
}

func TestSecretStorageSemantics(t *testing.T) {
	cfg, admin := apiServer(t)
	const ns = "secret-ca-storage"
	createNamespace(t, admin, ns, nil)
	st, err := NewSecretStorage(cfg, ns)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, _, err := st.Load(ctx); !errors.Is(err, certs.ErrNotFound) {
		t.Fatalf("Load of nothing: %v, want ErrNotFound", err)
	}
	rev1, err := st.Create(ctx, map[string][]byte{"a": []byte("1")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Create(ctx, map[string][]byte{"a": []byte("other")}); !errors.Is(err, certs.ErrExists) {
		t.Fatalf("second Create: %v, want ErrExists", err)
	}
	rev2, err := st.Update(ctx, map[string][]byte{"a": []byte("2")}, rev1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Update(ctx, map[string][]byte{"a": []byte("stale")}, rev1); !errors.Is(err, certs.ErrConflict) {
		t.Fatalf("Update at a stale revision: %v, want ErrConflict", err)
	}
	data, rev, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rev != rev2 || string(data["a"]) != "2" || len(data) != 1 {
		t.Fatalf("Load = %q at %s, want a=2 at %s", data, rev, rev2)
	}
	// Deleted behind our back: a conflict, never a silent re-create.
	sec := &corev1.Secret{}
	sec.Namespace, sec.Name = ns, CASecretName
	if err := admin.Delete(ctx, sec); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Update(ctx, map[string][]byte{"a": []byte("3")}, rev2); !errors.Is(err, certs.ErrConflict) {
		t.Fatalf("Update of a deleted secret: %v, want ErrConflict", err)
	}
}
