package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/fjordmesh/fjord/watcher/model"
)

// FileName is the database file inside the data directory.
const FileName = "fjord.db"

// lockTimeout is how long Open waits for the file lock. bbolt holds an
// exclusive lock for as long as the database is open, so a second control
// plane on the same data directory fails here instead of hanging.
const lockTimeout = time.Second

// ErrLocked is returned by Open when another process holds the database.
var ErrLocked = errors.New("data dir locked by another fjord-cp")

// Buckets. "ca" and "tokens" are reserved for the certificate authority.
var (
	bucketConfig = []byte("config")
	bucketCA     = []byte("ca")
	bucketTokens = []byte("tokens")
)

// Nested buckets of bucketConfig (layout.go). Each was one JSON value
// before the config was stored per object; Load still reads that form, and
// the key's next save replaces it.
var (
	// keySnapshot holds one bucket per kind, one value per object.
	keySnapshot = []byte("snapshot")
	// keyAccepted holds one value per accepted policy.
	keyAccepted = []byte("accepted")
	// keyFiles holds one value per file, keyed by its relative path.
	keyFiles = []byte("files")
)

// Store is an open data directory. Its methods are safe for concurrent use.
type Store struct {
	db *bolt.DB

	// With Defer, saves of the config bucket wait in pending (latest value
	// per key) and are written together after delay, in one transaction.
	mu      sync.Mutex
	delay   time.Duration
	onError func(error)
	pending saves
	timer   *time.Timer
	closed  bool

	// wmu serialises writes, so that they reach the file in the order of
	// the saves and each compares against what the one before it wrote.
	wmu sync.Mutex
	// saved is what the config bucket holds, as the values last written: a
	// write puts only the objects and files that differ from it. A key
	// this Store has not written yet is rewritten whole on its first save.
	saved saves
}

// Open opens (creating if needed) DATA/fjord.db in the data directory dir.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s is still locked after %s", ErrLocked, path, lockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketConfig, bucketCA, bucketTokens} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("bucket %s: %w", b, err)
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialising %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Defer makes SaveConfig, SaveAccepted and SaveFiles return at once and
// write delay later, keeping only the latest value of each and writing them
// in one transaction, so a burst of changes costs one write. It exists for
// the control plane's build path: a save follows every build, and even
// comparing it with the last one and syncing the few objects that changed
// would compete for the CPU with the push that build has just started. A
// failed write is handed to onError. Reads and Close write what is pending
// first; a crash loses at most delay's worth of saves, which the config
// source has anyway.
func (s *Store) Defer(delay time.Duration, onError func(error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay, s.onError = delay, onError
}

// saves are values to write, or the values last written; a key whose has
// flag is false is not part of them.
type saves struct {
	snap        *model.Snapshot
	accepted    []model.Policy
	files       map[string][]byte
	hasSnap     bool
	hasAccepted bool
	hasFiles    bool
}

// keys names the keys of v, sorted, for errors.
func (v *saves) keys() string {
	var k []string
	if v.hasAccepted {
		k = append(k, string(keyAccepted))
	}
	if v.hasFiles {
		k = append(k, string(keyFiles))
	}
	if v.hasSnap {
		k = append(k, string(keySnapshot))
	}
	return strings.Join(k, ",")
}

// merge sets in v every key that o has.
func (v *saves) merge(o saves) {
	if o.hasSnap {
		v.snap, v.hasSnap = o.snap, true
	}
	if o.hasAccepted {
		v.accepted, v.hasAccepted = o.accepted, true
	}
	if o.hasFiles {
		v.files, v.hasFiles = o.files, true
	}
}

// flush writes every deferred save now.
func (s *Store) flush() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	pending := s.pending
	s.pending = saves{}
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.mu.Unlock()
	if !pending.hasSnap && !pending.hasAccepted && !pending.hasFiles {
		return nil
	}
	return s.write(pending)
}

// errUnchanged rolls back a write that found nothing to change, so that it
// writes no page at all.
var errUnchanged = errors.New("nothing changed")

// write brings the config bucket to values in one transaction, putting and
// deleting only what differs from s.saved, so that a crash leaves either
// the state before or the state after, never a mix. An error names every
// key. The caller holds s.wmu.
func (s *Store) write(values saves) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		cfg := tx.Bucket(bucketConfig)
		changed := false
		if values.hasSnap {
			c, err := syncSnapshot(cfg, s.saved.snap, s.saved.hasSnap, values.snap)
			if err != nil {
				return err
			}
			changed = changed || c
		}
		if values.hasAccepted {
			c, err := accepted.sync(cfg, s.saved.accepted, s.saved.hasAccepted, values.accepted)
			if err != nil {
				return err
			}
			changed = changed || c
		}
		if values.hasFiles {
			c, err := syncFiles(cfg, s.saved.files, s.saved.hasFiles, values.files)
			if err != nil {
				return err
			}
			changed = changed || c
		}
		if !changed {
			return errUnchanged
		}
		return nil
	})
	if err != nil && !errors.Is(err, errUnchanged) {
		return fmt.Errorf("saving %s/%s: %w", bucketConfig, values.keys(), err)
	}
	s.saved.merge(values)
	return nil
}

// Close writes what is pending, then releases the database and its lock.
func (s *Store) Close() error {
	ferr := s.flush()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return errors.Join(ferr, s.db.Close())
}

// SaveConfig records the snapshot that was last built and served. The store
// keeps snap as its record of what it wrote, so snap must not be changed
// afterwards (a published model.Snapshot never is).
func (s *Store) SaveConfig(snap *model.Snapshot) error {
	if snap == nil {
		snap = &model.Snapshot{}
	}
	return s.put(saves{snap: snap, hasSnap: true})
}

// LoadConfig returns the saved snapshot; ok is false when none was saved.
// Its slices are in key order, the order of a sorted model.Snapshot.
func (s *Store) LoadConfig() (snap *model.Snapshot, ok bool, err error) {
	err = s.read(func(cfg *bolt.Bucket) error {
		snap, ok, err = loadSnapshot(cfg)
		return err
	})
	if err != nil {
		return nil, false, err
	}
	return snap, ok, nil
}

// SaveAccepted records the policies the last build used (policy.Mesh's
// Accepted), so that a policy whose spec turns invalid keeps being served as
// last accepted across restarts. Like SaveConfig, it keeps p.
func (s *Store) SaveAccepted(p []model.Policy) error {
	return s.put(saves{accepted: p, hasAccepted: true})
}

// LoadAccepted returns the saved accepted policies in key order, nil if
// none.
func (s *Store) LoadAccepted() (p []model.Policy, err error) {
	err = s.read(func(cfg *bolt.Bucket) error {
		p, err = loadAccepted(cfg)
		return err
	})
	return p, err
}

// SaveFiles records the last good content of every file of the config
// directory, by relative path (see watcher.FileMemory). The store keeps
// files, its keys and its contents as its record of what it wrote: they must
// not be changed afterwards; a later save hands a new map, which may share
// the contents that did not change.
func (s *Store) SaveFiles(files map[string][]byte) error {
	return s.put(saves{files: files, hasFiles: true})
}

// LoadFiles returns what SaveFiles saved, nil if nothing.
func (s *Store) LoadFiles() (f map[string][]byte, err error) {
	err = s.read(func(cfg *bolt.Bucket) error {
		f, err = loadFiles(cfg)
		return err
	})
	return f, err
}

func (s *Store) put(v saves) error {
	s.mu.Lock()
	if s.delay > 0 && !s.closed {
		s.pending.merge(v)
		if s.timer == nil {
			s.timer = time.AfterFunc(s.delay, s.flushLater)
		}
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.write(v)
}

// flushLater is the deferred write.
func (s *Store) flushLater() {
	s.mu.Lock()
	onError, closed := s.onError, s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	if err := s.flush(); err != nil && onError != nil {
		onError(err)
	}
}

// read writes what is pending, then runs fn on the config bucket in a read
// transaction. Values are only valid inside it: fn decodes or copies them.
func (s *Store) read(fn func(cfg *bolt.Bucket) error) error {
	if err := s.flush(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error { return fn(tx.Bucket(bucketConfig)) })
}
