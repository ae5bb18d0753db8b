package store

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	bolt "go.etcd.io/bbolt"

	"github.com/fjordmesh/fjord/watcher/model"
)

// mesh is a config source's state in a test: objects by name, from which
// each step publishes a sorted snapshot whose unchanged objects share their
// slices with the step before, as a real source's do.
type mesh struct {
	rng       *rand.Rand
	services  map[model.Key]model.Service
	slices    map[model.Key]model.EndpointSlice
	policies  map[model.Key]model.Policy
	routes    map[model.Key]model.Route // Key.Name includes the kind
	files     map[string][]byte
	generated int
}

func newMesh(seed uint64) *mesh {
	return &mesh{
		rng:      rand.New(rand.NewPCG(seed, seed)),
		services: map[model.Key]model.Service{}, slices: map[model.Key]model.EndpointSlice{},
		policies: map[model.Key]model.Policy{}, routes: map[model.Key]model.Route{},
		files: map[string][]byte{},
	}
}

func (m *mesh) key() model.Key {
	return model.Key{Namespace: []string{"a", "a-b", "b"}[m.rng.IntN(3)], Name: fmt.Sprintf("o%d", m.rng.IntN(12))}
}

func (m *mesh) endpoints() []model.Endpoint {
	n := m.rng.IntN(4)
	if n == 0 && m.rng.IntN(2) == 0 {
		return nil
	}
	eps := make([]model.Endpoint, n)
	for i := range eps {
		eps[i] = model.Endpoint{Address: fmt.Sprintf("10.0.0.%d", i+1), Ready: m.rng.IntN(2) == 0, Zone: "z"}
	}
	return eps
}

// step applies a few random changes: an object or file is added, changed
// (with fresh slices) or removed.
func (m *mesh) step() {
	m.generated++
	for range 1 + m.rng.IntN(4) {
		k := m.key()
		switch m.rng.IntN(5) {
		case 0:
			if m.rng.IntN(3) == 0 {
				delete(m.services, k)
				continue
			}
			s := model.Service{Key: k, Ports: []model.ServicePort{{Name: "p", Port: int32(1 + m.rng.IntN(3))}}}
			if m.rng.IntN(2) == 0 {
				s.ServiceAccounts = []string{fmt.Sprintf("sa%d", m.generated)}
			}
			m.services[k] = s
		case 1:
			if m.rng.IntN(3) == 0 {
				delete(m.slices, k)
				continue
			}
			m.slices[k] = model.EndpointSlice{Key: k, Service: k.Name, Ports: []model.EndpointPort{{Name: "p", Port: 80}}, Endpoints: m.endpoints()}
		case 2:
			if m.rng.IntN(3) == 0 {
				delete(m.policies, k)
				continue
			}
			p := testPolicies()[0]
			p.Key, p.Generation = k, int64(m.generated)
			m.policies[k] = p
		case 3:
			kind := []model.RouteKind{model.KindHTTPRoute, model.KindGRPCRoute}[m.rng.IntN(2)]
			id := model.Key{Namespace: k.Namespace, Name: k.Name + "/" + string(kind)}
			if m.rng.IntN(3) == 0 {
				delete(m.routes, id)
				continue
			}
			m.routes[id] = model.Route{
				Key: k, Kind: kind, Generation: int64(m.generated),
				ParentRefs: []model.ParentRef{{Kind: "Service", Name: k.Name}},
			}
		default:
			p := fmt.Sprintf("%s/%s.yaml", k.Namespace, k.Name)
			if m.rng.IntN(3) == 0 {
				delete(m.files, p)
				continue
			}
			m.files[p] = fmt.Appendf(nil, "generation: %d\n", m.generated)
		}
	}
}

// sortedValues publishes objects in key order.
func sortedValues[T any](objs map[model.Key]T, less func(a, b *T) int) []T {
	out := slices.Collect(maps.Values(objs))
	slices.SortFunc(out, func(a, b T) int { return less(&a, &b) })
	return out
}

func (m *mesh) snapshot() *model.Snapshot {
	return &model.Snapshot{
		Services:       sortedValues(m.services, compareService),
		EndpointSlices: sortedValues(m.slices, compareEndpointSlice),
		Policies:       sortedValues(m.policies, comparePolicy),
		Routes:         sortedValues(m.routes, (*model.Route).Compare),
	}
}

// TestRandomRoundTrips saves a random sequence of configs, some deferred and
// coalesced, and checks after every flush and after reopening that Load
// returns what was saved last.
func TestRandomRoundTrips(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir)
			m := newMesh(seed)
			for step := range 60 {
				if step%20 == 10 {
					// A new Store rewrites each key whole on its first save.
					s.Close()
					s = open(t, dir)
				}
				if step%3 == 0 {
					s.Defer(time.Hour, func(err error) { t.Errorf("deferred write failed: %v", err) })
				}
				m.step()
				snap, files := m.snapshot(), maps.Clone(m.files)
				for _, err := range []error{s.SaveConfig(snap), s.SaveAccepted(snap.Policies), s.SaveFiles(files)} {
					if err != nil {
						t.Fatalf("step %d: %v", step, err)
					}
				}
				if step%3 == 1 {
					continue // coalesced with the next step's saves
				}
				checkLoad(t, s, snap, files)
			}
			s.Close()
			s = open(t, dir)
			checkLoad(t, s, m.snapshot(), m.files)
		})
	}
}

func checkLoad(t *testing.T, s *Store, snap *model.Snapshot, files map[string][]byte) {
	t.Helper()
	got, ok, err := s.LoadConfig()
	if err != nil || !ok {
		t.Fatalf("LoadConfig = ok %v, err %v", ok, err)
	}
	if d := cmp.Diff(snap, got, cmpopts.EquateEmpty()); d != "" {
		t.Fatalf("snapshot (-saved +loaded):\n%s", d)
	}
	acc, err := s.LoadAccepted()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(snap.Policies, acc, cmpopts.EquateEmpty()); d != "" {
		t.Fatalf("accepted (-saved +loaded):\n%s", d)
	}
	f, err := s.LoadFiles()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(files, f, cmpopts.EquateEmpty()); d != "" {
		t.Fatalf("files (-saved +loaded):\n%s", d)
	}
}

// keysOf lists the keys of a bucket under config, by path.
func keysOf(t *testing.T, s *Store, path ...string) []string {
	t.Helper()
	var keys []string
	if err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketConfig)
		for _, p := range path {
			if b = b.Bucket([]byte(p)); b == nil {
				return fmt.Errorf("no bucket %s", strings.Join(path, "/"))
			}
		}
		return b.ForEach(func(k, _ []byte) error {
			keys = append(keys, printable(k))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestObjectsAndFilesAreDeleted: what a save no longer has leaves the file.
func TestObjectsAndFilesAreDeleted(t *testing.T) {
	s := open(t, t.TempDir())
	svc := func(name string) model.Service { return model.Service{Key: model.Key{Namespace: "d", Name: name}} }
	full := &model.Snapshot{Services: []model.Service{svc("a"), svc("b"), svc("c")}, Routes: []model.Route{
		{Key: model.Key{Namespace: "d", Name: "r"}, Kind: model.KindGRPCRoute},
		{Key: model.Key{Namespace: "d", Name: "r"}, Kind: model.KindHTTPRoute},
	}}
	files := map[string][]byte{"a.yaml": []byte("a"), "sub/b.yaml": []byte("b"), "c.yaml": []byte("c")}
	if err := s.SaveConfig(full); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveFiles(files); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"d/r/GRPCRoute", "d/r/HTTPRoute"}, keysOf(t, s, "snapshot", "routes")); d != "" {
		t.Errorf("route keys (-want +got):\n%s", d)
	}

	less := &model.Snapshot{Services: []model.Service{svc("a"), svc("c")}, Routes: full.Routes[1:]}
	if err := s.SaveConfig(less); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveFiles(map[string][]byte{"c.yaml": []byte("c2"), "a.yaml": files["a.yaml"]}); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"d/a", "d/c"}, keysOf(t, s, "snapshot", "services")); d != "" {
		t.Errorf("service keys (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"d/r/HTTPRoute"}, keysOf(t, s, "snapshot", "routes")); d != "" {
		t.Errorf("route keys (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"a.yaml", "c.yaml"}, keysOf(t, s, "files")); d != "" {
		t.Errorf("file keys (-want +got):\n%s", d)
	}
	checkLoad(t, s, less, map[string][]byte{"a.yaml": []byte("a"), "c.yaml": []byte("c2")})
}

// txID is the id of the last committed write.
func txID(t *testing.T, s *Store) int {
	t.Helper()
	var id int
	if err := s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestUnchangedSaveWritesNothing: saving the config the file already holds,
// even as new values (new slices, new maps, copied bytes), commits no
// transaction.
func TestUnchangedSaveWritesNothing(t *testing.T) {
	s := open(t, t.TempDir())
	s.Defer(time.Hour, func(err error) { t.Errorf("deferred write failed: %v", err) })
	m := newMesh(1)
	for range 20 {
		m.step()
	}
	save := func(snap *model.Snapshot, files map[string][]byte) {
		t.Helper()
		for _, err := range []error{s.SaveConfig(snap), s.SaveAccepted(snap.Policies), s.SaveFiles(files)} {
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := s.flush(); err != nil {
			t.Fatal(err)
		}
	}
	snap := m.snapshot()
	save(snap, m.files)
	before := txID(t, s)

	save(snap, m.files)
	if id := txID(t, s); id != before {
		t.Errorf("saving the same values committed transaction %d (last was %d)", id, before)
	}

	// Equal values that share nothing with the saved ones.
	var copied model.Snapshot
	data, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &copied); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for p, b := range m.files {
		files[p] = append([]byte(nil), b...)
	}
	save(&copied, files)
	if id := txID(t, s); id != before {
		t.Errorf("saving equal values committed transaction %d (last was %d)", id, before)
	}
}

// TestFailedWriteKeepsTheLastState: the saves of one flush are one
// transaction; when one of them cannot be written, none is, and the next
// flush still writes all of them.
func TestFailedWriteKeepsTheLastState(t *testing.T) {
	s := open(t, t.TempDir())
	old := testSnapshot()
	if err := s.SaveConfig(old); err != nil {
		t.Fatal(err)
	}
	s.Defer(time.Hour, func(err error) { t.Errorf("deferred write failed: %v", err) })
	cur := &model.Snapshot{Services: old.Services}
	if err := s.SaveConfig(cur); err != nil {
		t.Fatal(err)
	}
	// bbolt refuses an empty key.
	if err := s.SaveFiles(map[string][]byte{"": []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := s.flush(); err == nil || !strings.Contains(err.Error(), "saving config/files,snapshot") {
		t.Fatalf("flush = %v, want an error naming both keys", err)
	}
	got, _, err := s.LoadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(old, got); d != "" {
		t.Fatalf("a failed flush changed the snapshot (-before +after):\n%s", d)
	}
	if err := s.SaveConfig(cur); err != nil {
		t.Fatal(err)
	}
	if got, _, err = s.LoadConfig(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(cur, got); d != "" {
		t.Errorf("the save after a failed flush (-saved +loaded):\n%s", d)
	}
}

// TestMigrationFromSingleValues: a data directory of the layout with one
// JSON value per key loads, and each key's next save replaces its value
// with per-object keys.
func TestMigrationFromSingleValues(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	snap := testSnapshot()
	files := map[string][]byte{"a.yaml": []byte("kind: Service\n"), "sub/b.yaml": {0xff, 0x00}}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for key, v := range map[string]any{"snapshot": snap, "accepted": snap.Policies, "files": files} {
			data, err := json.Marshal(v)
			if err != nil {
				return err
			}
			if err := tx.Bucket(bucketConfig).Put([]byte(key), data); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open(t, dir)
	checkLoad(t, s, snap, files)
	// Only the snapshot is saved again: the other keys stay as they were,
	// and still load.
	next := &model.Snapshot{Services: snap.Services, EndpointSlices: snap.EndpointSlices}
	if err := s.SaveConfig(next); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"demo/echo"}, keysOf(t, s, "snapshot", "services")); d != "" {
		t.Errorf("service keys (-want +got):\n%s", d)
	}
	got, _, err := s.LoadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(next, got); d != "" {
		t.Errorf("snapshot (-saved +loaded):\n%s", d)
	}
	acc, err := s.LoadAccepted()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(snap.Policies, acc); d != "" {
		t.Errorf("accepted in the old layout (-saved +loaded):\n%s", d)
	}

	if err := s.SaveAccepted(snap.Policies); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveFiles(files); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir)
	err = s.db.View(func(tx *bolt.Tx) error {
		for _, key := range []string{"snapshot", "accepted", "files"} {
			if v := tx.Bucket(bucketConfig).Get([]byte(key)); v != nil {
				t.Errorf("config/%s still holds its old value %q", key, v)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	next.Policies = snap.Policies
	acc, err = s.LoadAccepted()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(snap.Policies, acc); d != "" {
		t.Errorf("accepted (-saved +loaded):\n%s", d)
	}
	f, err := s.LoadFiles()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(files, f); d != "" {
		t.Errorf("files (-saved +loaded):\n%s", d)
	}
}

// TestUnsortedSnapshot: a snapshot that is not in key order is written whole
// and loads in key order.
func TestUnsortedSnapshot(t *testing.T) {
	s := open(t, t.TempDir())
	svc := func(name string) model.Service { return model.Service{Key: model.Key{Namespace: "d", Name: name}} }
	for _, names := range [][]string{{"b", "a"}, {"a", "c"}, {"c", "a"}} {
		snap := &model.Snapshot{}
		for _, n := range names {
			snap.Services = append(snap.Services, svc(n))
		}
		if err := s.SaveConfig(snap); err != nil {
			t.Fatal(err)
		}
		got, _, err := s.LoadConfig()
		if err != nil {
			t.Fatal(err)
		}
		sorted := slices.Clone(snap.Services)
		slices.SortFunc(sorted, func(a, b model.Service) int { return a.Key.Compare(b.Key) })
		if d := cmp.Diff(sorted, got.Services); d != "" {
			t.Errorf("save of %v (-want +got):\n%s", names, d)
		}
	}
}

// TestCorruptObject: an object that does not decode is named in the error.
func TestCorruptObject(t *testing.T) {
	s := open(t, t.TempDir())
	if err := s.SaveConfig(testSnapshot()); err != nil {
		t.Fatal(err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketConfig).Bucket(keySnapshot).Bucket(kindEndpointSlices)
		return b.Put(objectKey(model.Key{Namespace: "demo", Name: "echo-1"}), []byte("{not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.LoadConfig(); err == nil || !strings.Contains(err.Error(), "config/snapshot/endpointSlices/demo/echo-1") {
		t.Fatalf("LoadConfig of a corrupt object = %v, want an error naming it", err)
	}
}
