// Package bootstrap renders the bootstrap a proxy needs to reach the control
// plane: grpc-go's xDS bootstrap JSON for proxyless gRPC, and an Envoy
// bootstrap for sidecars. Both carry the node identity of xds/node, so what
// `fjordctl bootstrap` writes is exactly what the xDS server accepts; nobody
// should write one by hand.
package bootstrap
