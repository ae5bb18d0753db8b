// Package certs is Fjord's certificate authority: SPIFFE identities, the
// built-in CA (an ECDSA root and signing intermediate kept in a Storage),
// leaf issuance from CSRs, the pure renewal and root-rotation decisions, and
// the token and authenticator interfaces the certificate API checks callers
// with. Workload private keys never come here: the CA sees only CSRs.
package certs
