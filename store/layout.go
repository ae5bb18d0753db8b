package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/fjordmesh/fjord/watcher/model"
)

// The config bucket keeps one value per object and per file, so that an
// endpoint change rewrites one EndpointSlice and one file rather than the
// whole config: encoding and writing every Service, EndpointSlice and file
// again after each change cost milliseconds of CPU and megabytes of garbage
// per change on large meshes.
//
//	config/snapshot/services/NAMESPACE\x00NAME          model.Service
//	config/snapshot/endpointSlices/NAMESPACE\x00NAME    model.EndpointSlice
//	config/snapshot/policies/NAMESPACE\x00NAME          model.Policy
//	config/snapshot/routes/NAMESPACE\x00NAME\x00KIND    model.Route
//	config/accepted/NAMESPACE\x00NAME                   model.Policy
//	config/files/RELATIVE/PATH                          the file's content
//
// Object values are JSON. The NUL separator sorts below every character of
// a name, so bbolt's byte order of the keys is the order of model.Key (and
// of Route.Less), and loading in key order gives sorted slices.

// Buckets of keySnapshot, one per kind.
var (
	kindServices       = []byte("services")
	kindEndpointSlices = []byte("endpointSlices")
	kindPolicies       = []byte("policies")
	kindRoutes         = []byte("routes")
)

// objectKey is the bbolt key of the object k names.
func objectKey(k model.Key) []byte {
	b := make([]byte, 0, len(k.Namespace)+1+len(k.Name))
	return append(append(append(b, k.Namespace...), 0), k.Name...)
}

// routeKey adds the kind: an HTTPRoute and a GRPCRoute may share a name.
func routeKey(r *model.Route) []byte {
	return append(append(objectKey(r.Key), 0), r.Kind...)
}

func serviceKey(s *model.Service) []byte             { return objectKey(s.Key) }
func endpointSliceKey(e *model.EndpointSlice) []byte { return objectKey(e.Key) }
func policyKey(p *model.Policy) []byte               { return objectKey(p.Key) }

func compareService(a, b *model.Service) int             { return a.Key.Compare(b.Key) }
func compareEndpointSlice(a, b *model.EndpointSlice) int { return a.Key.Compare(b.Key) }
func comparePolicy(a, b *model.Policy) int               { return a.Key.Compare(b.Key) }

// deepEqual compares the kinds a mesh has few of, and whose nested fields
// would make a hand-written comparison easy to get out of date.
func deepEqual[T any](a, b *T) bool { return reflect.DeepEqual(a, b) }

// printable renders a bbolt key for a message.
func printable(k []byte) string { return strings.ReplaceAll(string(k), "\x00", "/") }

// kind is how the objects of one type are stored: the bucket, each one's
// key, the order of those keys, and whether an object changed.
type kind[T any] struct {
	name    []byte
	key     func(*T) []byte
	compare func(a, b *T) int
	equal   func(a, b *T) bool
}

var (
	services       = kind[model.Service]{kindServices, serviceKey, compareService, (*model.Service).Equal}
	endpointSlices = kind[model.EndpointSlice]{kindEndpointSlices, endpointSliceKey, compareEndpointSlice, (*model.EndpointSlice).Equal}
	policies       = kind[model.Policy]{kindPolicies, policyKey, comparePolicy, deepEqual[model.Policy]}
	routes         = kind[model.Route]{kindRoutes, routeKey, (*model.Route).Compare, deepEqual[model.Route]}
	accepted       = kind[model.Policy]{keyAccepted, policyKey, comparePolicy, deepEqual[model.Policy]}
)

// replaceBucket empties the bucket name of parent, whichever layout it is
// in, for a write that does not know what it holds.
func replaceBucket(parent *bolt.Bucket, name []byte) (*bolt.Bucket, error) {
	switch {
	case parent.Get(name) != nil: // one JSON value, as before per-object keys
		if err := parent.Delete(name); err != nil {
			return nil, err
		}
	case parent.Bucket(name) != nil:
		if err := parent.DeleteBucket(name); err != nil {
			return nil, err
		}
	}
	return parent.CreateBucket(name)
}

// sync brings k's bucket of parent to cur and reports whether that changed
// anything. When known, the bucket holds old (what the last write put
// there), and only the objects that differ from old are put or deleted:
// old and cur are sorted, so one merge walk pairs them without a map.
// Otherwise, or when a slice is not
// strictly sorted, the bucket is rewritten whole.
func (k kind[T]) sync(parent *bolt.Bucket, old []T, known bool, cur []T) (bool, error) {
	if known && len(old) == len(cur) && (len(cur) == 0 || &old[0] == &cur[0]) {
		return false, nil
	}
	b := parent.Bucket(k.name)
	changed := false
	if !known || b == nil || !k.sorted(old) || !k.sorted(cur) {
		var err error
		if b, err = replaceBucket(parent, k.name); err != nil {
			return false, fmt.Errorf("%s: %w", k.name, err)
		}
		old, changed = nil, true
	}
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		c := 0
		switch {
		case i == len(old):
			c = 1
		case j == len(cur):
			c = -1
		default:
			c = k.compare(&old[i], &cur[j])
		}
		switch {
		case c < 0:
			if err := b.Delete(k.key(&old[i])); err != nil {
				return false, fmt.Errorf("%s/%s: %w", k.name, printable(k.key(&old[i])), err)
			}
			i++
			changed = true
			continue
		case c == 0:
			same := k.equal(&old[i], &cur[j])
			i++
			if same {
				j++
				continue
			}
		}
		key := k.key(&cur[j])
		data, err := json.Marshal(&cur[j])
		if err != nil {
			return false, fmt.Errorf("encoding %s/%s: %w", k.name, printable(key), err)
		}
		if err := b.Put(key, data); err != nil {
			return false, fmt.Errorf("%s/%s: %w", k.name, printable(key), err)
		}
		j++
		changed = true
	}
	return changed, nil
}

// sorted reports whether every object of s comes strictly after the one
// before it, which a merge walk needs.
func (k kind[T]) sorted(s []T) bool {
	for i := 1; i < len(s); i++ {
		if k.compare(&s[i-1], &s[i]) >= 0 {
			return false
		}
	}
	return true
}

// load returns the objects of k's bucket of parent in key order; path
// names the bucket in errors.
func (k kind[T]) load(parent *bolt.Bucket, path string) ([]T, error) {
	b := parent.Bucket(k.name)
	if b == nil {
		return nil, nil
	}
	var out []T
	err := b.ForEach(func(key, v []byte) error {
		var o T
		if err := json.Unmarshal(v, &o); err != nil {
			return fmt.Errorf("decoding %s/%s/%s: %w", path, k.name, printable(key), err)
		}
		out = append(out, o)
		return nil
	})
	return out, err
}

// syncSnapshot brings config/snapshot to cur; see kind.sync.
func syncSnapshot(cfg *bolt.Bucket, old *model.Snapshot, known bool, cur *model.Snapshot) (bool, error) {
	b := cfg.Bucket(keySnapshot)
	changed := false
	if !known || b == nil {
		var err error
		if b, err = replaceBucket(cfg, keySnapshot); err != nil {
			return false, err
		}
		old, known, changed = &model.Snapshot{}, false, true
	}
	c := [4]bool{}
	var err error
	if c[0], err = services.sync(b, old.Services, known, cur.Services); err != nil {
		return false, err
	}
	if c[1], err = endpointSlices.sync(b, old.EndpointSlices, known, cur.EndpointSlices); err != nil {
		return false, err
	}
	if c[2], err = policies.sync(b, old.Policies, known, cur.Policies); err != nil {
		return false, err
	}
	if c[3], err = routes.sync(b, old.Routes, known, cur.Routes); err != nil {
		return false, err
	}
	return changed || c[0] || c[1] || c[2] || c[3], nil
}

// loadSnapshot reads config/snapshot in either layout.
func loadSnapshot(cfg *bolt.Bucket) (*model.Snapshot, bool, error) {
	snap := &model.Snapshot{}
	if ok, err := loadLegacy(cfg, keySnapshot, snap); ok || err != nil {
		return snap, ok, err
	}
	b := cfg.Bucket(keySnapshot)
	if b == nil {
		return nil, false, nil
	}
	path := string(bucketConfig) + "/" + string(keySnapshot)
	var err error
	if snap.Services, err = services.load(b, path); err != nil {
		return nil, false, err
	}
	if snap.EndpointSlices, err = endpointSlices.load(b, path); err != nil {
		return nil, false, err
	}
	if snap.Policies, err = policies.load(b, path); err != nil {
		return nil, false, err
	}
	if snap.Routes, err = routes.load(b, path); err != nil {
		return nil, false, err
	}
	return snap, true, nil
}

// loadAccepted reads config/accepted in either layout.
func loadAccepted(cfg *bolt.Bucket) ([]model.Policy, error) {
	var p []model.Policy
	if ok, err := loadLegacy(cfg, keyAccepted, &p); ok || err != nil {
		return p, err
	}
	return accepted.load(cfg, string(bucketConfig))
}

// syncFiles brings config/files to cur. When known, the bucket holds old,
// and only the files whose content differs are put: a file that did not
// change is normally the same bytes the source handed over last time, so
// comparing the slices' arrays settles most without reading them.
func syncFiles(cfg *bolt.Bucket, old map[string][]byte, known bool, cur map[string][]byte) (bool, error) {
	b := cfg.Bucket(keyFiles)
	changed := false
	if !known || b == nil {
		var err error
		if b, err = replaceBucket(cfg, keyFiles); err != nil {
			return false, err
		}
		old, changed = nil, true
	}
	for p, data := range cur {
		if o, ok := old[p]; ok && sameBytes(o, data) {
			continue
		}
		if err := b.Put([]byte(p), data); err != nil {
			return false, fmt.Errorf("%s/%s: %w", keyFiles, p, err)
		}
		changed = true
	}
	for p := range old {
		if _, ok := cur[p]; ok {
			continue
		}
		if err := b.Delete([]byte(p)); err != nil {
			return false, fmt.Errorf("%s/%s: %w", keyFiles, p, err)
		}
		changed = true
	}
	return changed, nil
}

func sameBytes(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0] || bytes.Equal(a, b)
}

// loadFiles reads config/files in either layout.
func loadFiles(cfg *bolt.Bucket) (map[string][]byte, error) {
	var f map[string][]byte
	if ok, err := loadLegacy(cfg, keyFiles, &f); ok || err != nil {
		return f, err
	}
	b := cfg.Bucket(keyFiles)
	if b == nil {
		return nil, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		if f == nil {
			f = map[string][]byte{}
		}
		// Values are only valid inside the transaction: copy.
		f[string(k)] = append([]byte{}, v...)
		return nil
	})
	return f, err
}

// loadLegacy decodes key of cfg into v when it is one JSON value, the layout
// before per-object keys, which data directories of earlier versions hold
// until the key's next save replaces it.
func loadLegacy(cfg *bolt.Bucket, key []byte, v any) (bool, error) {
	data := cfg.Get(key)
	if len(data) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("decoding %s/%s: %w", bucketConfig, key, err)
	}
	return true, nil
}
