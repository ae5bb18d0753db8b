// Package load measures the control plane from the outside, the way a mesh
// sees it: it writes a standalone config directory of generated Services,
// EndpointSlices and ResiliencePolicies, runs (or attaches to) fjord-cp, and
// drives simulated proxies over real xDS streams that ACK like Envoy or
// proxyless gRPC. Each change is written, then every proxy it concerns is
// watched until it has acknowledged content containing the change, which
// yields convergence latency, pushes, bytes and control-plane cost per change.
//
// Envoy-like proxies send their node in every request, as Envoy does by
// default, except in fleets that model what fjordctl bootstrap writes
// (the matrix's "bootstrapped" runs, FleetSpec.NodeOnce, fjord-load
// --node-once), whose Envoys are told to send it once per stream;
// gRPC-like proxies always send it once per stream, as grpc-go does.
package load
