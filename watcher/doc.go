// Package watcher is the front of the pipeline: it turns the outside world
// into model snapshots. In Kubernetes mode it is the only code that talks to
// the API server (informer caches, and the status writer); in standalone mode
// it reads the same Kubernetes YAML from a directory, re-reading only the
// files that changed. Either way it coalesces bursts of events, with a short
// hold-off for changes to endpoints only, and publishes immutable, sorted
// snapshots.
package watcher
