// Package api is the certificate API: the generated gRPC code of
// certificate.proto, the CertificateService server that turns an
// authenticated CSR into a leaf from a certs.Issuer, the AdminService behind
// `fjordctl token` and `fjordctl ca`, and the Unix-socket listener that only
// admits callers with an allowed user id (the admin socket here, the
// identity agent's SDS socket in agent/).
package api
