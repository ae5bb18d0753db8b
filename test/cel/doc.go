// Package cel tests the ResiliencePolicy CRD in manifests/crd against a real
// kube-apiserver and etcd (controller-runtime envtest, binaries built by
// `make envtest-assets`). It proves that the OpenAPI and CEL rules reject
// impossible values at the door, with messages that name the field, and that
// the documented example policy is accepted unchanged; what the schema cannot
// express is left to policy resolution.
package cel
