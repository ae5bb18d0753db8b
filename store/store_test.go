package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
	"k8s.io/utils/ptr"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

func testSnapshot() *model.Snapshot {
	return &model.Snapshot{
		Services: []model.Service{{
			Key:   model.Key{Namespace: "demo", Name: "echo"},
			Ports: []model.ServicePort{{Name: "grpc", Port: 50051, AppProtocol: "grpc"}},
		}},
		EndpointSlices: []model.EndpointSlice{{
			Key: model.Key{Namespace: "demo", Name: "echo-1"}, Service: "echo",
			Ports:     []model.EndpointPort{{Name: "grpc", Port: 50051}},
			Endpoints: []model.Endpoint{{Address: "127.0.0.1", Ready: true, Zone: "a"}},
		}},
		Policies: testPolicies(),
	}
}

func testPolicies() []model.Policy {
	return []model.Policy{{
		Key:               model.Key{Namespace: "demo", Name: "breaker"},
		Generation:        4,
		CreationTimestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Spec: fjordv1a1.ResiliencePolicySpec{
			TargetRefs: []fjordv1a1.TargetRef{{Kind: "Service", Name: "echo", SectionName: ptr.To("grpc")}},
			Retry:      &fjordv1a1.Retry{Attempts: ptr.To[int32](2), RetryOn: []fjordv1a1.RetryOn{"unavailable"}},
		},
	}}
}

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRoundTripAcrossReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data") // Open creates it
	s := open(t, dir)
	if _, ok, err := s.LoadConfig(); ok || err != nil {
		t.Fatalf("LoadConfig on a new store = ok %v, err %v; want nothing", ok, err)
	}
	if p, err := s.LoadAccepted(); p != nil || err != nil {
		t.Fatalf("LoadAccepted on a new store = %v, %v; want nothing", p, err)
	}
	if err := s.SaveConfig(testSnapshot()); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveAccepted(testPolicies()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "fjord.db")); err != nil {
		t.Fatalf("database file: %v", err)
	}

	s = open(t, dir)
	snap, ok, err := s.LoadConfig()
	if err != nil || !ok {
		t.Fatalf("LoadConfig = ok %v, err %v", ok, err)
	}
	if d := cmp.Diff(testSnapshot(), snap); d != "" {
		t.Errorf("snapshot (-saved +loaded):\n%s", d)
	}
	acc, err := s.LoadAccepted()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(testPolicies(), acc); d != "" {
		t.Errorf("accepted (-saved +loaded):\n%s", d)
	}
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	if f, err := s.LoadFiles(); f != nil || err != nil {
		t.Fatalf("LoadFiles on a new store = %v, %v", f, err)
	}
	want := map[string][]byte{"a.yaml": []byte("kind: Service\n"), "sub/b.yaml": {0xff, 0x00}}
	if err := s.SaveFiles(want); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir)
	got, err := s.LoadFiles()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-saved +loaded):\n%s", d)
	}
}

func TestSaveReplaces(t *testing.T) {
	s := open(t, t.TempDir())
	if err := s.SaveConfig(testSnapshot()); err != nil {
		t.Fatal(err)
	}
	empty := &model.Snapshot{}
	if err := s.SaveConfig(empty); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.LoadConfig()
	if err != nil || !ok {
		t.Fatalf("LoadConfig = ok %v, err %v", ok, err)
	}
	if d := cmp.Diff(empty, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	dir := t.TempDir()
	open(t, dir)
	s2, err := Open(dir)
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a locked data dir succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "data dir locked by another fjord-cp") {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
}

func TestCorruptValue(t *testing.T) {
	s := open(t, t.TempDir())
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketConfig).Put(keySnapshot, []byte("{not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.LoadConfig(); err == nil || !strings.Contains(err.Error(), "config/snapshot") {
		t.Fatalf("LoadConfig of a corrupt value = %v, want an error naming the key", err)
	}
}

func TestReservedBuckets(t *testing.T) {
	s := open(t, t.TempDir())
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, b := range []string{"config", "ca", "tokens"} {
			if tx.Bucket([]byte(b)) == nil {
				t.Errorf("bucket %q missing", b)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// written reports whether a key of the config bucket is on disk, in either
// layout, bypassing the flush that Load* do first.
func written(t *testing.T, s *Store, key []byte) bool {
	t.Helper()
	var ok bool
	if err := s.db.View(func(tx *bolt.Tx) error {
		cfg := tx.Bucket(bucketConfig)
		ok = cfg.Get(key) != nil || cfg.Bucket(key) != nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestDeferredSavesCoalesce: deferred saves write nothing until they are
// read, and then only the latest value of each key.
func TestDeferredSavesCoalesce(t *testing.T) {
	s := open(t, t.TempDir())
	s.Defer(time.Hour, func(err error) { t.Errorf("deferred write failed: %v", err) })
	if err := s.SaveConfig(testSnapshot()); err != nil {
		t.Fatal(err)
	}
	empty := &model.Snapshot{}
	if err := s.SaveConfig(empty); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveAccepted(testPolicies()); err != nil {
		t.Fatal(err)
	}
	if written(t, s, keySnapshot) {
		t.Fatal("a deferred save was written at once")
	}
	got, ok, err := s.LoadConfig()
	if err != nil || !ok {
		t.Fatalf("LoadConfig = ok %v, err %v", ok, err)
	}
	if d := cmp.Diff(empty, got); d != "" {
		t.Errorf("LoadConfig is not the latest save (-want +got):\n%s", d)
	}
	if !written(t, s, keyAccepted) {
		t.Error("reading did not write the other pending keys")
	}
}

// TestDeferredSavesSurviveClose: Close writes what is pending.
func TestDeferredSavesSurviveClose(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	s.Defer(time.Hour, func(err error) { t.Errorf("deferred write failed: %v", err) })
	want := map[string][]byte{"a.yaml": []byte("kind: Service\n")}
	if err := s.SaveFiles(want); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	got, err := s.LoadFiles()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-saved +loaded):\n%s", d)
	}
}

// TestDeferredSavesAreWrittenLater: without a read or a Close, the timer
// writes them; a value that cannot be written reaches onError.
func TestDeferredSavesAreWrittenLater(t *testing.T) {
	s := open(t, t.TempDir())
	failed := make(chan error, 1)
	s.Defer(time.Millisecond, func(err error) { failed <- err })
	if err := s.SaveAccepted(testPolicies()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !written(t, s, keyAccepted) {
		if time.Now().After(deadline) {
			t.Fatal("the deferred save was never written")
		}
		time.Sleep(time.Millisecond)
	}
	// bbolt refuses an empty key.
	if err := s.SaveFiles(map[string][]byte{"": []byte("x")}); err != nil {
		t.Fatalf("a deferred save failed at once: %v", err)
	}
	select {
	case err := <-failed:
		if !strings.Contains(err.Error(), "saving config/files") {
			t.Errorf("onError got %v, want the key named", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a failed deferred write never reached onError")
	}
}
