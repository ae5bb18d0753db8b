// Package server is the last stage of the pipeline: it serves the xds/cache
// content to proxies over gRPC with go-control-plane (ADS and the per-type
// services, state-of-the-world and delta). It checks each stream's node
// identity, pins it for the stream's life, and turns stream events into
// metrics and NACK logs. On the secure port it also authenticates every
// stream by its client certificate and binds the node to that identity.
package server
