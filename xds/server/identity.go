package server

import (
	"context"
	"errors"
	"log/slog"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
)

// Reasons of fjord_xds_auth_failures_total.
const (
	reasonNoCertificate  = "no_certificate"  // no verified client certificate
	reasonBadCertificate = "bad_certificate" // verified, but no SPIFFE ID of the trust domain
	reasonMismatch       = "identity_mismatch"
	reasonNodeChanged    = "node_changed"
)

var authReasons = []string{reasonNoCertificate, reasonBadCertificate, reasonMismatch, reasonNodeChanged}

// authenticate returns the caller's certificate identity on the secure port
// (nil on the plaintext one), or Unauthenticated.
func (p *port) authenticate(ctx context.Context) (*certs.Identity, error) {
	if p.trustDomain == "" {
		return nil, nil
	}
	id, err := api.PeerIdentity(ctx, p.trustDomain)
	if err != nil {
		reason := reasonBadCertificate
		if errors.Is(err, api.ErrNoPeerIdentity) {
			reason = reasonNoCertificate
		}
		p.s.metrics.authFailures.WithLabelValues(reason).Inc()
		p.s.log.Warn("xDS stream refused: not authenticated", "reason", reason, "error", err)
		return nil, status.Errorf(codes.Unauthenticated, "authenticated xDS: %v", err)
	}
	return &id, nil
}

// authorize checks that the node is the certificate's workload: its
// namespace and service account are the SPIFFE ID's.
func (s *Server) authorize(peer *certs.Identity, info node.Info, n *corev3.Node, typeURL string) error {
	if peer == nil || (info.Namespace == peer.Namespace && info.ServiceAccount == peer.ServiceAccount) {
		return nil
	}
	s.metrics.authFailures.WithLabelValues(reasonMismatch).Inc()
	s.log.Warn("xDS stream refused: node is not the certificate's identity",
		"node", n.GetId(), "namespace", info.Namespace, "service_account", info.ServiceAccount,
		"identity", peer.String(), "type", typeURL)
	return status.Errorf(codes.PermissionDenied, "node %q (namespace %q, service account %q) is not %s",
		n.GetId(), info.Namespace, info.ServiceAccount, peer)
}

// peerStream is what both stream loops know of who is on the other end:
// the identity fixed by the first request and, on the secure port, the
// certificate identity fixed by the connection.
type peerStream struct {
	s    *Server
	node *corev3.Node // nil until the first request is accepted
	info node.Info
	peer *certs.Identity // nil on the plaintext port
}

// open authenticates a new stream on p.
func (p *port) open(ctx context.Context) (*peerStream, error) {
	peer, err := p.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	return &peerStream{s: p.s, peer: peer}, nil
}

// close counts the stream out, if its identity was accepted.
func (ps *peerStream) close() {
	if ps.node != nil {
		ps.s.metrics.connected.WithLabelValues(string(ps.info.Kind)).Dec()
	}
}

// check checks the node of a request and returns the stream's pinned node,
// which the request must carry to the cache. The first request of a stream
// must carry a complete identity, on the secure port the certificate's;
// later ones may omit the node (Envoy and grpc-go send it once) but must
// not present another one: the resources a stream is served depend on who
// it is, and that cannot change under it. A NACK is counted and logged.
//
// A request carrying, byte for byte, the node the stream pinned gets the
// pinned node itself from the codec (sharedNodes), so an Envoy that sends
// its node in every request costs a pointer comparison; any other node is
// compared in full.
func (ps *peerStream) check(n *corev3.Node, typeURL, nonce string, nack *statuspb.Status) (*corev3.Node, error) {
	s := ps.s
	switch pinned := ps.node; {
	case pinned == nil:
		info, err := node.FromNode(n)
		if err != nil {
			s.log.Warn("xDS stream refused: bad node identity", "node", n.GetId(), "type", typeURL, "error", err)
			return nil, status.Errorf(codes.InvalidArgument, "node identity: %v", err)
		}
		if err := s.authorize(ps.peer, info, n, typeURL); err != nil {
			return nil, err
		}
		ps.node, ps.info = n, info
		s.metrics.connected.WithLabelValues(string(info.Kind)).Inc()
	case n != nil && n != pinned && (n.GetId() != pinned.GetId() || !proto.Equal(n.GetMetadata(), pinned.GetMetadata())):
		if ps.peer != nil {
			s.metrics.authFailures.WithLabelValues(reasonNodeChanged).Inc()
		}
		s.log.Warn("xDS stream refused: node changed mid-stream", "node", pinned.GetId(), "new_node", n.GetId(), "type", typeURL)
		return nil, status.Errorf(codes.PermissionDenied, "node %q: a stream's node identity cannot change (now %q)", pinned.GetId(), n.GetId())
	}
	if nack != nil {
		t := cache.TypeName(typeURL)
		s.metrics.nacks.WithLabelValues(t).Inc()
		s.log.Warn("xDS NACK", "node", ps.node.GetId(), "type", t, "nonce", nonce, "error", nack.GetMessage())
	}
	return ps.node, nil
}

// debug logs per-request chatter (stale nonces, new subscriptions).
// The level is checked first: the arguments would cost allocations on
// every ACK even when debug logging is off.
func (ps *peerStream) debug(msg, typeURL string) {
	if ps.s.log.Enabled(context.Background(), slog.LevelDebug) {
		ps.s.log.Debug(msg, "node", ps.node.GetId(), "type", typeURL)
	}
}
