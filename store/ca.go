package store

import (
	"context"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"

	"github.com/fjordmesh/fjord/certs"
)

// Layout of bucketCA: a nested bucket with one key per entry of the CA's
// data (PEM certificates and keys, phase, deadline), readable by name with
// bbolt tools, and the revision, a counter that every write bumps.
var (
	bucketCAData  = []byte("data")
	keyCARevision = []byte("revision")
)

// CA is the built-in CA's storage in bucket "ca" (certs.Storage). Every
// operation is one bbolt transaction, so Create and Update are atomic with
// their checks.
func (s *Store) CA() certs.Storage { return caStorage{s.db} }

type caStorage struct{ db *bolt.DB }

func (c caStorage) Load(context.Context) (map[string][]byte, string, error) {
	var (
		data map[string][]byte
		rev  string
	)
	err := c.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCA)
		rev = string(b.Get(keyCARevision))
		d := b.Bucket(bucketCAData)
		if rev == "" || d == nil {
			return certs.ErrNotFound
		}
		data = map[string][]byte{}
		return d.ForEach(func(k, v []byte) error {
			// Values are only valid inside the transaction: copy.
			data[string(k)] = append([]byte(nil), v...)
			return nil
		})
	})
	if err != nil {
		return nil, "", fmt.Errorf("reading bucket %s: %w", bucketCA, err)
	}
	return data, rev, nil
}

func (c caStorage) Create(_ context.Context, data map[string][]byte) (string, error) {
	var rev string
	err := c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCA)
		if b.Get(keyCARevision) != nil {
			return certs.ErrExists
		}
		var err error
		rev, err = write(b, data, 0)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("creating bucket %s: %w", bucketCA, err)
	}
	return rev, nil
}

func (c caStorage) Update(_ context.Context, data map[string][]byte, revision string) (string, error) {
	var rev string
	err := c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCA)
		cur := string(b.Get(keyCARevision))
		if cur == "" {
			return certs.ErrNotFound
		}
		if cur != revision {
			return fmt.Errorf("%w: revision %s, stored %s", certs.ErrConflict, revision, cur)
		}
		n, err := strconv.ParseUint(cur, 10, 64)
		if err != nil {
			return fmt.Errorf("%s: %w", keyCARevision, err)
		}
		if err := b.DeleteBucket(bucketCAData); err != nil {
			return fmt.Errorf("clearing %s: %w", bucketCAData, err)
		}
		rev, err = write(b, data, n)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("updating bucket %s: %w", bucketCA, err)
	}
	return rev, nil
}

// write stores data as revision prev+1 in b.
func write(b *bolt.Bucket, data map[string][]byte, prev uint64) (string, error) {
	d, err := b.CreateBucket(bucketCAData)
	if err != nil {
		return "", fmt.Errorf("%s: %w", bucketCAData, err)
	}
	for k, v := range data {
		if err := d.Put([]byte(k), v); err != nil {
			return "", fmt.Errorf("%s/%s: %w", bucketCAData, k, err)
		}
	}
	rev := strconv.FormatUint(prev+1, 10)
	if err := b.Put(keyCARevision, []byte(rev)); err != nil {
		return "", fmt.Errorf("%s: %w", keyCARevision, err)
	}
	return rev, nil
}
