// Package agent is the pod-local identity agent behind `fjordctl agent`. It
// makes the workload's private key in memory, obtains and renews its
// certificate through the control plane's certificate API at 2/3 of its
// lifetime, and hands key, chain and bundle to the local data plane: to
// Envoy over SDS on a Unix socket, to proxyless gRPC as files with a
// bootstrap whose file_watcher certificate provider reads them. The key never
// leaves the pod.
package agent
