package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fjordmesh/fjord/certs"
)

// Tokens is the standalone token store in bucket "tokens"
// (certs.TokenStore): key the token's SHA-256 hash, value its record as JSON.
// The tokens themselves are never stored.
func (s *Store) Tokens() certs.TokenStore { return tokenStore{s.db} }

type tokenStore struct{ db *bolt.DB }

func (t tokenStore) PutToken(_ context.Context, hash string, rec certs.TokenRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encoding token record for %s: %w", rec.ServiceAccount, err)
	}
	err = t.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).Put([]byte(hash), data)
	})
	if err != nil {
		return fmt.Errorf("saving token for %s in bucket %s: %w", rec.ServiceAccount, bucketTokens, err)
	}
	return nil
}

func (t tokenStore) GetToken(_ context.Context, hash string) (certs.TokenRecord, bool, error) {
	var data []byte
	err := t.db.View(func(tx *bolt.Tx) error {
		data = append([]byte(nil), tx.Bucket(bucketTokens).Get([]byte(hash))...)
		return nil
	})
	if err != nil {
		return certs.TokenRecord{}, false, fmt.Errorf("reading bucket %s: %w", bucketTokens, err)
	}
	if len(data) == 0 {
		return certs.TokenRecord{}, false, nil
	}
	var rec certs.TokenRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return certs.TokenRecord{}, false, fmt.Errorf("decoding a record in bucket %s: %w", bucketTokens, err)
	}
	return rec, true, nil
}

func (t tokenStore) DeleteTokens(_ context.Context, sa certs.ServiceAccount) (int, error) {
	return t.deleteWhere(func(rec certs.TokenRecord) bool { return rec.ServiceAccount == sa })
}

func (t tokenStore) PruneTokens(_ context.Context, now time.Time) (int, error) {
	return t.deleteWhere(func(rec certs.TokenRecord) bool { return !now.Before(rec.Expires) })
}

// deleteWhere removes the records drop selects, in one transaction.
func (t tokenStore) deleteWhere(drop func(certs.TokenRecord) bool) (int, error) {
	n := 0
	err := t.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		var doomed [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var rec certs.TokenRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decoding a record in bucket %s: %w", bucketTokens, err)
			}
			if drop(rec) {
				doomed = append(doomed, append([]byte(nil), k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range doomed {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(doomed)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("deleting from bucket %s: %w", bucketTokens, err)
	}
	return n, nil
}
