package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
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

// Keys in bucketConfig.
var (
	keySnapshot = []byte("snapshot")
	keyAccepted = []byte("accepted")
	keyFiles    = []byte("files")
)

// Store is an open data directory. Its methods are safe for concurrent use.
type Store struct {
	db *bolt.DB

	// With Defer, saves of the config bucket wait in pending (latest value
	// per key) and are written together after delay, in one transaction.
	mu      sync.Mutex
	delay   time.Duration
	onError func(error)
	pending map[string]any
	timer   *time.Timer
	closed  bool
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
// the control plane's build path: every saved value is the whole config,
// and encoding and syncing it on every endpoint change would compete for
// the CPU with the push that change has just started. A failed write is
// handed to onError. Reads and Close write what is pending first; a crash
// loses at most delay's worth of saves, which the config source has anyway.
// Values handed to a deferred save must not be changed afterwards.
func (s *Store) Defer(delay time.Duration, onError func(error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay, s.onError = delay, onError
}

// flush writes every deferred save now.
func (s *Store) flush() error {
	s.mu.Lock()
	pending := s.pending
	s.pending = nil
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.mu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	return s.write(pending)
}

// write encodes values and writes them to the config bucket in one
// transaction; an error names every key.
func (s *Store) write(values map[string]any) error {
	data := make(map[string][]byte, len(values))
	for key, v := range values {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encoding %s/%s: %w", bucketConfig, key, err)
		}
		data[key] = b
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for key, b := range data {
			if err := tx.Bucket(bucketConfig).Put([]byte(key), b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("saving %s/%s: %w", bucketConfig, strings.Join(slices.Sorted(maps.Keys(data)), ","), err)
	}
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

// SaveConfig records the snapshot that was last built and served.
func (s *Store) SaveConfig(snap *model.Snapshot) error {
	return s.put(keySnapshot, snap)
}

// LoadConfig returns the saved snapshot; ok is false when none was saved.
func (s *Store) LoadConfig() (snap *model.Snapshot, ok bool, err error) {
	snap = &model.Snapshot{}
	ok, err = s.get(keySnapshot, snap)
	if !ok || err != nil {
		return nil, false, err
	}
	return snap, true, nil
}

// SaveAccepted records the policies the last build used (policy.Mesh's
// Accepted), so that a policy whose spec turns invalid keeps being served as
// last accepted across restarts.
func (s *Store) SaveAccepted(p []model.Policy) error {
	return s.put(keyAccepted, p)
}

// LoadAccepted returns the saved accepted policies, nil if none.
func (s *Store) LoadAccepted() ([]model.Policy, error) {
	var p []model.Policy
	if _, err := s.get(keyAccepted, &p); err != nil {
		return nil, err
	}
	return p, nil
}

// SaveFiles records the last good content of every file of the config
// directory, by relative path (see watcher.FileMemory).
func (s *Store) SaveFiles(files map[string][]byte) error {
	return s.put(keyFiles, files)
}

// LoadFiles returns what SaveFiles saved, nil if nothing.
func (s *Store) LoadFiles() (map[string][]byte, error) {
	var f map[string][]byte
	if _, err := s.get(keyFiles, &f); err != nil {
		return nil, err
	}
	return f, nil
}

func (s *Store) put(key []byte, v any) error {
	s.mu.Lock()
	if s.delay > 0 && !s.closed {
		if s.pending == nil {
			s.pending = map[string]any{}
		}
		s.pending[string(key)] = v
		if s.timer == nil {
			s.timer = time.AfterFunc(s.delay, s.flushLater)
		}
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	return s.write(map[string]any{string(key): v})
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

func (s *Store) get(key []byte, into any) (bool, error) {
	if err := s.flush(); err != nil {
		return false, err
	}
	var data []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		// Values are only valid inside the transaction: copy.
		data = append([]byte(nil), tx.Bucket(bucketConfig).Get(key)...)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("reading %s/%s: %w", bucketConfig, key, err)
	}
	if len(data) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(data, into); err != nil {
		return false, fmt.Errorf("decoding %s/%s: %w", bucketConfig, key, err)
	}
	return true, nil
}
