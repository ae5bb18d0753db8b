package certs

import (
	"context"
	"errors"
)

// Errors of a Storage.
var (
	// ErrNotFound: nothing is stored yet.
	ErrNotFound = errors.New("no CA stored")
	// ErrExists: Create lost to another writer; load theirs.
	ErrExists = errors.New("a CA is already stored")
	// ErrConflict: Update's revision is stale; load and decide again.
	ErrConflict = errors.New("the stored CA changed since it was loaded")
)

// Storage keeps the built-in CA's state as one opaque map of named blobs,
// which is exactly a Kubernetes Secret's data (and a bbolt bucket in
// standalone mode). Create and the revision-checked Update are how several
// control planes agree on one CA: whoever creates first wins, the others get
// ErrExists and load the winner's; rotation steps use Update so that only one
// replica's step lands.
type Storage interface {
	// Load returns the stored data and its revision, or ErrNotFound.
	Load(ctx context.Context) (data map[string][]byte, revision string, err error)
	// Create stores data only if nothing is stored yet, else ErrExists.
	Create(ctx context.Context, data map[string][]byte) (revision string, err error)
	// Update replaces the data only if the stored revision is still
	// revision, else ErrConflict.
	Update(ctx context.Context, data map[string][]byte, revision string) (newRevision string, err error)
}
