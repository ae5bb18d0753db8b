package api

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/fjordmesh/fjord/certs"
)

// ErrNoPeerIdentity is returned by PeerIdentity when the caller presented
// no verified certificate.
var ErrNoPeerIdentity = errors.New("no verified client certificate")

// PeerIdentity is the SPIFFE identity of the calling workload on the secure
// port: the only URI SAN of the client certificate that TLS verified against
// the CA bundle (never an unverified one), in trustDomain. Authenticated xDS
// compares it with the node's namespace and service account.
func PeerIdentity(ctx context.Context, trustDomain string) (certs.Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return certs.Identity{}, ErrNoPeerIdentity
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return certs.Identity{}, ErrNoPeerIdentity
	}
	leaf := info.State.VerifiedChains[0][0]
	if len(leaf.URIs) != 1 {
		return certs.Identity{}, fmt.Errorf("client certificate has %d URI SANs, want one SPIFFE ID", len(leaf.URIs))
	}
	id, err := certs.FromURL(leaf.URIs[0])
	if err != nil {
		return certs.Identity{}, fmt.Errorf("client certificate: %w", err)
	}
	if id.TrustDomain != trustDomain {
		return certs.Identity{}, fmt.Errorf("client certificate %s: trust domain is not %s", id, trustDomain)
	}
	return id, nil
}
