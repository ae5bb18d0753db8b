package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// Close releases the database and its lock.
func (s *Store) Close() error {
	return s.db.Close()
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
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s/%s: %w", bucketConfig, key, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketConfig).Put(key, data)
	})
	if err != nil {
		return fmt.Errorf("saving %s/%s: %w", bucketConfig, key, err)
	}
	return nil
}

func (s *Store) get(key []byte, into any) (bool, error) {
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
