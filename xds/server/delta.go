package server

import (
	"strconv"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/fjordmesh/fjord/xds/cache"
)

type deltaServerStream = grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]

// deltaType is a delta stream's state for one type.
type deltaType struct {
	sub *subscription
	// req is the request of the open watch; a response answering another
	// request is from a cancelled watch.
	req    *discoveryv3.DeltaDiscoveryRequest
	cancel func()
	pushes prometheus.Counter
}

// deltaStream is the loop of one delta stream, ADS (typeURL "") or one
// type's.
type deltaStream struct {
	*peerStream
	st      deltaServerStream
	typeURL string
	ch      chan cachev3.DeltaResponse
	types   map[string]*deltaType
	nonce   int64
}

// streamDelta serves a delta stream, as streamSotw does a
// state-of-the-world one.
func (p *port) streamDelta(st deltaServerStream, typeURL string) error {
	ps, err := p.open(st.Context())
	if err != nil {
		return err
	}
	defer ps.close()
	s := &deltaStream{
		peerStream: ps, st: st, typeURL: typeURL,
		ch:    make(chan cachev3.DeltaResponse, responseBuffer),
		types: map[string]*deltaType{},
	}
	defer s.cancelAll()

	return serve(p.s.ctx, st, s.ch, s.send, s.request)
}

func (s *deltaStream) cancelAll() {
	for _, t := range s.types {
		if t.cancel != nil {
			t.cancel()
		}
	}
}

// request applies one request. Unlike state of the world, every request
// counts, whatever its nonce: each carries changes to the subscription.
func (s *deltaStream) request(req *discoveryv3.DeltaDiscoveryRequest) error {
	typeURL, err := requestType(s.typeURL, req.GetTypeUrl())
	if err != nil {
		return err
	}
	req.TypeUrl = typeURL
	n, err := s.check(req.GetNode(), typeURL, req.GetResponseNonce(), req.GetErrorDetail())
	if err != nil {
		return err
	}
	req.Node = n
	names := s.s.names
	names.strings(req.ResourceNamesSubscribe)
	names.strings(req.ResourceNamesUnsubscribe)

	// What the cache has already answered is sent first, so the record
	// the request is applied to includes it.
	if err := drain(s.ch, s.send); err != nil {
		return err
	}
	t := s.types[typeURL]
	if t == nil {
		t = &deltaType{pushes: s.s.metrics.pushes.WithLabelValues(cache.TypeName(typeURL))}
		s.types[typeURL] = t
		s.debug("xDS new delta subscription", typeURL)
		// The client's initial versions become the first record of what
		// it holds.
		t.sub = newSubscription(len(req.GetResourceNamesSubscribe()) == 0, legacyWildcard(typeURL),
			names.versions(req.GetInitialResourceVersions()))
	} else {
		// The cache must not answer the watch while its subscription
		// changes.
		t.cancel()
	}
	// The map now belongs to the subscription.
	req.InitialResourceVersions = nil
	t.sub.updateDelta(req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe())

	t.req = req
	cancel, err := s.s.cache.CreateDeltaWatch(req, t.sub, s.ch)
	if err != nil {
		return err
	}
	t.cancel = cancel
	return nil
}

// send sends a response from the cache, unless its watch was cancelled
// since (it answered between the drain and the cancel of the request that
// replaced it; that request's watch answers from the same record).
func (s *deltaStream) send(r cachev3.DeltaResponse) error {
	t := s.types[r.GetDeltaRequest().GetTypeUrl()]
	if t == nil || r.GetDeltaRequest() != t.req {
		return nil
	}
	out, err := r.GetDeltaDiscoveryResponse()
	if err != nil {
		return err
	}
	s.nonce++
	out.Nonce = strconv.FormatInt(s.nonce, 10)
	t.sub.returned = r.GetReturnedResources()
	t.pushes.Inc()
	return s.st.Send(out)
}
