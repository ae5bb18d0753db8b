package server

import (
	"slices"
	"strconv"
	"unsafe"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/fjordmesh/fjord/xds/cache"
)

// responseBuffer is the capacity of a stream's response channel. The cache
// delivers without ever blocking only if a response always fits (see
// xds/cache watch): a stream has at most one open watch per type, each
// answers at most once, and the loop takes every queued response before it
// replaces a watch, so the channel never holds more than one response per
// served type, plus one from a watch replaced just after it answered. The
// rest is margin.
const responseBuffer = 16

type sotwServerStream = grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]

// sotwType is a state-of-the-world stream's state for one type.
type sotwType struct {
	sub *subscription
	// list is the shared list of names the subscription was last set
	// from: a request naming the same is an ACK that changes nothing.
	list *nameList
	// req is the request of the open watch (nil before the first one);
	// a response answering another request is from a cancelled watch.
	req    *discoveryv3.DiscoveryRequest
	cancel func()
	// nonce is that of the last response sent; a request that does not
	// carry it is stale.
	nonce  string
	pushes prometheus.Counter
}

// sotwStream is the loop of one state-of-the-world stream, ADS (typeURL
// "") or one type's.
type sotwStream struct {
	*peerStream
	st      sotwServerStream
	typeURL string
	ch      chan cachev3.Response
	types   map[string]*sotwType
	nonce   int64
}

// streamSotw serves a state-of-the-world stream until the client ends it,
// the server closes, or a request is refused (see serve).
func (p *port) streamSotw(st sotwServerStream, typeURL string) error {
	ps, err := p.open(st.Context())
	if err != nil {
		return err
	}
	defer ps.close()
	s := &sotwStream{
		peerStream: ps, st: st, typeURL: typeURL,
		ch:    make(chan cachev3.Response, responseBuffer),
		types: map[string]*sotwType{},
	}
	defer s.cancelAll()

	return serve(p.s.ctx, st, s.ch, s.send, s.request)
}

func (s *sotwStream) cancelAll() {
	for _, t := range s.types {
		if t.cancel != nil {
			t.cancel()
		}
	}
}

// request applies one request: it checks the node, ignores a stale one,
// updates the subscription and opens the type's next watch.
func (s *sotwStream) request(req *discoveryv3.DiscoveryRequest) error {
	typeURL, err := requestType(s.typeURL, req.GetTypeUrl())
	if err != nil {
		return err
	}
	req.TypeUrl = typeURL
	n, err := s.check(req.GetNode(), typeURL, req.GetResponseNonce(), req.GetErrorDetail())
	if err != nil {
		return err
	}
	// The cache reads the node from every request; the decoded copy of a
	// repeated one can go.
	req.Node = n

	t := s.types[typeURL]
	if t == nil {
		t = &sotwType{pushes: s.s.metrics.pushes.WithLabelValues(cache.TypeName(typeURL))}
		s.types[typeURL] = t
		s.debug("xDS new subscription", typeURL)
	} else {
		if t.nonce != "" && req.GetResponseNonce() != t.nonce {
			// Not an answer to the last response: the client will answer
			// that one (xds_protocol, "Resource updates").
			s.debug("xDS stale request ignored", typeURL)
			return nil
		}
		// The cache must not answer the watch while its subscription
		// changes.
		t.cancel()
		t.cancel, t.req = nil, nil
		// A response of this type already queued answers the request
		// just replaced, and is dropped; the other types' go out first,
		// in order.
		if err := drain(s.ch, s.send); err != nil {
			return err
		}
	}

	names := req.GetResourceNames()
	switch {
	case t.sub == nil:
		t.list = s.s.names.list(names)
		t.sub = newSubscription(len(names) == 0, legacyWildcard(typeURL), nil)
		t.sub.setSotw(names, t.list.set, t.list.wildcard)
	case sameList(names, t.list.names):
		// An ACK naming what the last request named: nothing to rebuild.
	default:
		t.list = s.s.names.list(names)
		t.sub.setSotw(names, t.list.set, t.list.wildcard)
	}
	// The cache may keep the request until the next one: it keeps the
	// shared names, and the decoded ones can go.
	req.ResourceNames = t.list.names

	t.req = req
	cancel, err := s.s.cache.CreateWatch(req, t.sub, s.ch)
	if err != nil {
		return err
	}
	t.cancel = cancel
	return nil
}

// sameList reports whether a request's names are list's; the codec may
// have given the request list itself.
func sameList(names, list []string) bool {
	if len(names) != len(list) {
		return false
	}
	return len(names) == 0 || unsafe.SliceData(names) == unsafe.SliceData(list) || slices.Equal(names, list)
}

// send sends a response from the cache, unless its watch was cancelled
// since: the request that replaced it has a watch of its own.
func (s *sotwStream) send(r cachev3.Response) error {
	t := s.types[r.GetRequest().GetTypeUrl()]
	if t == nil || r.GetRequest() != t.req {
		return nil
	}
	out, err := r.GetDiscoveryResponse()
	if err != nil {
		return err
	}
	s.nonce++
	out.Nonce = strconv.FormatInt(s.nonce, 10)
	t.nonce = out.Nonce
	t.sub.returned = r.GetReturnedResources()
	t.pushes.Inc()
	return s.st.Send(out)
}
