package watcher

import (
	"context"

	"github.com/fjordmesh/fjord/watcher/model"
)

// Source produces model snapshots. Run blocks until ctx ends; it calls
// publish with a complete, sorted snapshot after its initial sync and after
// every coalesced burst of changes, never with a partial view. publish is
// called from one goroutine at a time and must not retain or mutate the
// snapshot's slices beyond reading them.
type Source interface {
	Run(ctx context.Context, publish func(*model.Snapshot)) error
}
