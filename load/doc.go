// Package load measures the control plane from the outside, the way a mesh
// sees it: it writes a standalone config directory of generated Services,
// EndpointSlices and ResiliencePolicies, runs (or attaches to) fjord-cp, and
// drives simulated proxies over real xDS streams that ACK like Envoy or
// proxyless gRPC. Each change is written, then every proxy it concerns is
// watched until it has acknowledged content containing the change, which
// yields convergence latency, pushes, bytes and control-plane cost per change.
package load
