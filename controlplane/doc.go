// Package controlplane runs the pipeline: it takes snapshots from a source
// (the config directory in standalone mode), resolves policies, translates
// the mesh for each proxy kind into the xDS cache, persists what it served,
// and runs the xDS and monitoring servers. cmd/fjord-cp is flags around Run.
package controlplane
