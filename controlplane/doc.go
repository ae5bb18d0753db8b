// Package controlplane runs the pipeline: it takes snapshots from a source
// (the config directory in standalone mode), resolves policies, translates
// the mesh for each proxy kind and each view (the namespaces that may see
// the same Services) into the xDS cache, persists what it served, and runs
// the xDS and monitoring servers. A snapshot that changes only endpoints
// takes a fast path that rebuilds just what depends on them. cmd/fjord-cp
// is flags around Run.
package controlplane
