package server

import (
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// wildcardName subscribes to every resource of a type.
const wildcardName = "*"

// subscription is what the server knows of one stream's subscription to one
// type: what the client asked for, and what the cache last told it to
// record as sent (returned). The cache reads it while a watch is open; the
// stream loop changes it only when no watch of its type is open (after
// cancelling it, or once its response is in hand), so it needs no lock.
//
// The rules are the xDS protocol's (envoyproxy.io/docs/envoy/latest/
// api-docs/xds_protocol, "How the client specifies what resources to
// return"), for a single cache: a first request naming nothing subscribes to
// everything (legacy wildcard) only where legacy is allowed, until the
// stream names a resource; "*" subscribes to everything explicitly.
type subscription struct {
	wildcard bool
	// legacy says the stream may still be a legacy wildcard: it has never
	// named a resource (or "*").
	legacy bool
	// names is the set of names subscribed to. For state of the world it
	// is read-only and may be shared with other streams that sent the same
	// list (see interner.list); delta streams own theirs.
	names    map[string]struct{}
	returned map[string]string
}

var _ cachev3.Subscription = (*subscription)(nil)

func (s *subscription) ReturnedResources() map[string]string     { return s.returned }
func (s *subscription) SubscribedResources() map[string]struct{} { return s.names }
func (s *subscription) IsWildcard() bool                         { return s.wildcard }

// emptyNames is the subscription set of a stream that names nothing; the
// cache only reads it.
var emptyNames = map[string]struct{}{}

// newSubscription starts a stream's subscription to a type from its first
// request, before that request's names are applied. legacy says the type
// allows a legacy wildcard; initial is a delta client's
// initial_resource_versions (nil for state of the world).
func newSubscription(empty, legacy bool, initial map[string]string) *subscription {
	if initial == nil {
		initial = map[string]string{}
	}
	return &subscription{wildcard: empty && legacy, legacy: legacy, names: emptyNames, returned: initial}
}

// setSotw applies a state-of-the-world request's names, list, which the
// request names in full every time. set is the set of list without "*"
// (shared, read-only) and wildcard whether list holds "*". A name no longer
// subscribed leaves the record of what was sent, so that subscribing to it
// again sends it again even at an unchanged version; the cache's records
// rely on that (see xds/cache sotwMarker).
func (s *subscription) setSotw(list []string, set map[string]struct{}, wildcard bool) {
	if s.legacy {
		if len(list) == 0 {
			// Still a legacy wildcard (or, where legacy is off, still
			// subscribed to nothing).
			return
		}
		s.legacy = false
	}
	if !wildcard {
		for name := range s.returned {
			if _, ok := set[name]; !ok {
				delete(s.returned, name)
			}
		}
	}
	s.wildcard = wildcard
	s.names = set
}

// updateDelta applies a delta request's changes to the subscription.
func (s *subscription) updateDelta(subscribe, unsubscribe []string) {
	if s.legacy {
		// Only subscribing to something ends a legacy wildcard; the
		// stream stays subscribed to everything until it unsubscribes from
		// "*" explicitly.
		if len(subscribe) == 0 {
			return
		}
		s.legacy = false
	}
	if len(s.names) == 0 && len(subscribe) > 0 {
		// Never the shared emptyNames: delta streams change theirs.
		s.names = make(map[string]struct{}, len(subscribe))
	}
	for _, name := range subscribe {
		if name == wildcardName {
			s.wildcard = true
			continue
		}
		s.names[name] = struct{}{}
	}
	for _, name := range unsubscribe {
		if name == wildcardName {
			s.wildcard = false
			continue
		}
		if _, ok := s.names[name]; ok && s.wildcard {
			// Still covered by the wildcard: the protocol wants the
			// resource sent again (or its removal), so it is recorded as
			// held at an unknown version.
			s.returned[name] = ""
		} else {
			// Unsubscribed: a later subscription sends it again.
			delete(s.returned, name)
		}
		delete(s.names, name)
	}
}
