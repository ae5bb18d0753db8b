package server

import (
	"context"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
)

var _ serverv3.Callbacks = (*Server)(nil)

// streamKey names a stream. The state-of-the-world and delta servers number
// their streams independently, so the id alone is ambiguous.
type streamKey struct {
	delta bool
	id    int64
}

// stream is what the server knows about one open stream: the identity fixed
// by its first request.
type stream struct {
	node *corev3.Node // nil until the first request is accepted
	info node.Info
}

func (s *Server) open(k streamKey) error {
	s.mu.Lock()
	s.streams[k] = &stream{}
	s.mu.Unlock()
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
// carry a complete identity; later ones may omit the node (Envoy and grpc-go
// send it once) but must not present another one: the resources a stream is
// served depend on who it is, and that cannot change under it.
func (s *Server) request(k streamKey, n *corev3.Node, typeURL, nonce string, nack *statuspb.Status) error {
	s.mu.Lock()
	st := s.streams[k]
	if st == nil {
		st = &stream{}
		s.streams[k] = st
	}
	pinned := st.node
	s.mu.Unlock()

	switch {
	case pinned == nil:
		info, err := node.FromNode(n)
		if err != nil {
			s.log.Warn("xDS stream refused: bad node identity", "node", n.GetId(), "type", typeURL, "error", err)
			return status.Errorf(codes.InvalidArgument, "node identity: %v", err)
		}
		s.mu.Lock()
		st.node, st.info = n, info
		s.mu.Unlock()
		s.metrics.connected.WithLabelValues(string(info.Kind)).Inc()
		pinned = n
	case n != nil && n != pinned && (n.GetId() != pinned.GetId() || !proto.Equal(n.GetMetadata(), pinned.GetMetadata())):
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
// stream opens.
func (s *Server) OnStreamOpen(_ context.Context, id int64, _ string) error {
	return s.open(streamKey{id: id})
}

// OnStreamClosed is called by go-control-plane when a state-of-the-world
// stream ends.
func (s *Server) OnStreamClosed(id int64, _ *corev3.Node) {
	s.closed(streamKey{id: id})
}

// OnStreamRequest checks the identity of a state-of-the-world request and
// records NACKs.
func (s *Server) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	return s.request(streamKey{id: id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail())
}

// OnStreamResponse counts a state-of-the-world push.
func (s *Server) OnStreamResponse(_ context.Context, _ int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	s.pushed(resp.GetTypeUrl())
}

// OnDeltaStreamOpen is called by go-control-plane when a delta stream opens.
func (s *Server) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	return s.open(streamKey{delta: true, id: id})
}

// OnDeltaStreamClosed is called by go-control-plane when a delta stream ends.
func (s *Server) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	s.closed(streamKey{delta: true, id: id})
}

// OnStreamDeltaRequest checks the identity of a delta request and records
// NACKs.
func (s *Server) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	return s.request(streamKey{delta: true, id: id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetErrorDetail())
}

// OnStreamDeltaResponse counts a delta push.
func (s *Server) OnStreamDeltaResponse(_ int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	s.pushed(resp.GetTypeUrl())
}

// OnFetchRequest checks the identity of a one-shot request.
func (s *Server) OnFetchRequest(_ context.Context, req *discoveryv3.DiscoveryRequest) error {
	if _, err := node.FromNode(req.GetNode()); err != nil {
		return status.Errorf(codes.InvalidArgument, "node identity: %v", err)
	}
	return nil
}

// OnFetchResponse is part of go-control-plane's callbacks; a fetch is not a
// push and is not counted.
func (s *Server) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}
