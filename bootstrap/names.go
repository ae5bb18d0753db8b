package bootstrap

// Names shared by the identity agent, which serves the credentials, and the
// xDS resources that refer to them. They live here, in a package without
// gRPC, so xds/translate can name them without importing the agent.
const (
	// SecretCertificate is the SDS secret holding the workload's certificate
	// chain and key (the name Istio's agent uses, so existing Envoy configs
	// read naturally).
	SecretCertificate = "default"
	// SecretRootCA is the SDS secret holding the trust bundle, for
	// validating peers.
	SecretRootCA = "ROOTCA"
	// CertProviderInstance is the name of the file_watcher certificate
	// provider in the gRPC bootstrap; xDS resources for proxyless gRPC refer
	// to it in their certificate_provider_instance fields.
	CertProviderInstance = "default"
)
