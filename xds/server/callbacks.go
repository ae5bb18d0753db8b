package server

import (
	"context"
	"errors"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
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

// callbacks are go-control-plane's callbacks for one port. trustDomain is
// empty on the plaintext port; on the secure port every stream must
// authenticate in it.
type callbacks struct {
	s           *Server
	trustDomain string
}

var _ serverv3.Callbacks = callbacks{}

func (c callbacks) secure() bool { return c.trustDomain != "" }

// streamKey names a stream. Each port's go-control-plane server, and in it
// the state-of-the-world and delta servers, number their streams
// independently, so the id alone is ambiguous.
type streamKey struct {
	secure bool
	delta  bool
	id     int64
}

// stream is what the server knows about one open stream: the identity fixed
// by its first request, and on the secure port the peer's certificate
// identity, fixed by the connection.
type stream struct {
	node *corev3.Node // nil until the first request is accepted
	info node.Info
	peer *certs.Identity // nil on the plaintext port
}

// authenticate returns the caller's certificate identity on the secure port
// (nil on the plaintext one), or Unauthenticated.
func (c callbacks) authenticate(ctx context.Context) (*certs.Identity, error) {
	if !c.secure() {
		return nil, nil
	}
	id, err := api.PeerIdentity(ctx, c.trustDomain)
	if err != nil {
		reason := reasonBadCertificate
		if errors.Is(err, api.ErrNoPeerIdentity) {
			reason = reasonNoCertificate
		}
		c.s.metrics.authFailures.WithLabelValues(reason).Inc()
		c.s.log.Warn("xDS stream refused: not authenticated", "reason", reason, "error", err)
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

func (c callbacks) open(ctx context.Context, k streamKey) error {
	peer, err := c.authenticate(ctx)
	if err != nil {
		return err
	}
	c.s.mu.Lock()
	c.s.streams[k] = &stream{peer: peer}
	c.s.mu.Unlock()
	return nil
}

func (s *Server) closed(k streamKey) {
	s.mu.Lock()
	st := s.streams[k]
	delete(s.streams, k)
	s.mu.Unlock()
	if st != nil && st.node != nil {
		s.metrics.connected.WithLabelValues(string(st.info.Kind)).Dec()
	}
}

// request checks the node of a request. The first request of a stream must
// carry a complete identity, on the secure port the certificate's; later
// ones may omit the node (Envoy and grpc-go send it once) but must not
// present another one: the resources a stream is served depend on who it
// is, and that cannot change under it.
func (s *Server) request(k streamKey, n *corev3.Node, typeURL, nonce string, nack *statuspb.Status) error {
	s.mu.Lock()
	st := s.streams[k]
	if st == nil && !k.secure {
		st = &stream{}
		s.streams[k] = st
	}
	var (
		pinned *corev3.Node
		peer   *certs.Identity
	)
	if st != nil {
		pinned, peer = st.node, st.peer
	}
	s.mu.Unlock()
	if st == nil {
		// A secure stream exists only once authenticated.
		return status.Error(codes.Unauthenticated, "authenticated xDS: stream was not authenticated")
	}

	switch {
	case pinned == nil:
		info, err := node.FromNode(n)
		if err != nil {
			s.log.Warn("xDS stream refused: bad node identity", "node", n.GetId(), "type", typeURL, "error", err)
			return status.Errorf(codes.InvalidArgument, "node identity: %v", err)
		}
		if err := s.authorize(peer, info, n, typeURL); err != nil {
			return err
		}
		s.mu.Lock()
		st.node, st.info = n, info
		s.mu.Unlock()
		s.metrics.connected.WithLabelValues(string(info.Kind)).Inc()
		pinned = n
	case n != nil && n != pinned && (n.GetId() != pinned.GetId() || !proto.Equal(n.GetMetadata(), pinned.GetMetadata())):
		if peer != nil {
			s.metrics.authFailures.WithLabelValues(reasonNodeChanged).Inc()
		}
		s.log.Warn("xDS stream refused: node changed mid-stream", "node", pinned.GetId(), "new_node", n.GetId(), "type", typeURL)
		return status.Errorf(codes.PermissionDenied, "node %q: a stream's node identity cannot change (now %q)", pinned.GetId(), n.GetId())
	}

	if nack != nil {
		t := cache.TypeName(typeURL)
		s.metrics.nacks.WithLabelValues(t).Inc()
		s.log.Warn("xDS NACK", "node", pinned.GetId(), "type", t, "nonce", nonce, "error", nack.GetMessage())
	}
	return nil
}

func (s *Server) pushed(typeURL string) {
	s.metrics.pushes.WithLabelValues(cache.TypeName(typeURL)).Inc()
}

// OnStreamOpen is called by go-control-plane when a state-of-the-world
// stream opens; on the secure port it authenticates the caller.
func (c callbacks) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.open(ctx, streamKey{secure: c.secure(), id: id})
}

// OnStreamClosed is called by go-control-plane when a state-of-the-world
// stream ends.
func (c callbacks) OnStreamClosed(id int64, _ *corev3.Node) {
	c.s.closed(streamKey{secure: c.secure(), id: id})
}

// OnStreamRequest checks the identity of a state-of-the-world request,
// records NACKs and interns the names it subscribes to. go-control-plane
// calls it before it reads the names into the stream's subscription and
// hands the request to the cache, so both keep the shared copies. Only an
// accepted request's names enter the table.
func (c callbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	if err := c.s.request(streamKey{secure: c.secure(), id: id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail()); err != nil {
		return err
	}
	c.s.names.strings(req.ResourceNames)
	return nil
}

// OnStreamResponse counts a state-of-the-world push.
func (c callbacks) OnStreamResponse(_ context.Context, _ int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.s.pushed(resp.GetTypeUrl())
}

// OnDeltaStreamOpen is called by go-control-plane when a delta stream
// opens; on the secure port it authenticates the caller.
func (c callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.open(ctx, streamKey{secure: c.secure(), delta: true, id: id})
}

// OnDeltaStreamClosed is called by go-control-plane when a delta stream ends.
func (c callbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	c.s.closed(streamKey{secure: c.secure(), delta: true, id: id})
}

// OnStreamDeltaRequest checks the identity of a delta request, records
// NACKs and interns its names and initial versions, before go-control-plane
// applies them to the stream's subscription (as OnStreamRequest).
func (c callbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	if err := c.s.request(streamKey{secure: c.secure(), delta: true, id: id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail()); err != nil {
		return err
	}
	c.s.names.strings(req.ResourceNamesSubscribe)
	c.s.names.strings(req.ResourceNamesUnsubscribe)
	req.InitialResourceVersions = c.s.names.versions(req.InitialResourceVersions)
	return nil
}

// OnStreamDeltaResponse counts a delta push.
func (c callbacks) OnStreamDeltaResponse(_ int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.s.pushed(resp.GetTypeUrl())
}

// OnFetchRequest checks the identity of a one-shot request, on the secure
// port against the caller's certificate.
func (c callbacks) OnFetchRequest(ctx context.Context, req *discoveryv3.DiscoveryRequest) error {
	peer, err := c.authenticate(ctx)
	if err != nil {
		return err
	}
	info, err := node.FromNode(req.GetNode())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "node identity: %v", err)
	}
	return c.s.authorize(peer, info, req.GetNode(), req.GetTypeUrl())
}

// OnFetchResponse is part of go-control-plane's callbacks; a fetch is not a
// push and is not counted.
func (callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}
