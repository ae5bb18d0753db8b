// Package v1alpha1 holds the fjord.dev/v1alpha1 API: the ResiliencePolicy CRD
// that platform teams write. The types are the contract users and tests write
// against; the CRD YAML in manifests/crd and the deepcopy code are generated
// from them (make generate manifests), and package policy resolves them.
//
// +kubebuilder:object:generate=true
// +groupName=fjord.dev
package v1alpha1
