// Package server is the last stage of the pipeline: it serves the xds/cache
// content to proxies over gRPC with go-control-plane (ADS and the per-type
// services, state-of-the-world and delta). It checks each stream's node
// identity, pins it for the stream's life, turns stream events into metrics
// and NACK logs, and interns the resource names requests carry, so that
// proxies subscribing to the same resources share one copy of their names.
// On the secure port it also authenticates every stream by its client
// certificate and binds the node to that identity.
package server
