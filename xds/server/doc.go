// Package server is the last stage of the pipeline: it serves the xds/cache
// content to proxies over gRPC (ADS and the per-type cluster, endpoint,
// listener and route services, state-of-the-world and delta, and the unary
// fetches). Its stream loops are its own, written for one cache: each stream
// is one goroutine applying requests and sending the cache's responses in
// the order the cache delivers them, plus one reading requests. A stream
// checks its node identity, pins it for the stream's life, applies the
// protocol's rules (stale nonces, legacy wildcards for clusters and listeners
// only, delta subscriptions and initial versions), turns stream events into
// metrics and NACK logs, and cancels every watch when it ends. State of the
// world costs little per ACK: a request naming what the last one named
// changes nothing, streams naming the same resources share one interned list
// and one set of them, and the codec hands such a request the shared list
// without decoding its names. On the secure port every stream and fetch is
// also authenticated by its client certificate, and the node bound to that
// identity.
package server
