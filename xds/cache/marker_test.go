package cache_test

import (
	"slices"
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
)

// What a state-of-the-world client was sent is recorded in a couple of
// entries however large its selection; when the cache has forgotten the
// selection a change landed on top of, the client gets its whole selection
// instead of the change alone.
func TestSotwForgottenSelectionSendsTheWhole(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b", "c"}, "")
	eds.ack(eds.receive())
	if n := len(eds.sub.ReturnedResources()); n > 2 {
		t.Errorf("ReturnedResources has %d entries, want at most 2", n)
	}

	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.20", "c": "10.0.0.3"}))
	first := eds.receive()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.20", "c": "10.0.0.30"}))
	cache.ForgetSentSelections(c)
	eds.ack(first)
	out := receiveChange(t, c, eds, claName, []string{"a", "b", "c"}, "change before the ACK, selection forgotten")
	eds.ack(out)
	eds.none()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.10", "b": "10.0.0.20", "c": "10.0.0.30"}))
	if diff := cmp.Diff([]string{"a"}, names(eds.receive(), claName)); diff != "" {
		t.Errorf("next change (-want +got):\n%s", diff)
	}
}

// A NACKed selection is not sent again, whether or not the cache still
// remembers it: the record names its version.
func TestSotwNACKHeldWithSelectionForgotten(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b", "c"}, "")
	eds.ack(eds.receive())
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.50", "c": "10.0.0.3"}))
	eds.receive()
	cache.ForgetSentSelections(c)
	eds.request(eds.names, "b rejected")
	eds.none()
	eds.request(eds.names, "b rejected")
	eds.none()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.1", "b": "10.0.0.51", "c": "10.0.0.3"}))
	if diff := cmp.Diff([]string{"a", "b", "c"}, names(eds.receive(), claName)); diff != "" {
		t.Errorf("first change after a NACK (-want +got):\n%s", diff)
	}
}

// A name dropped from the subscription and subscribed again is sent again,
// even when its content and so the selection's version are as before: the
// client dropped it.
func TestSotwResubscribeSendsAgain(t *testing.T) {
	for name, forget := range map[string]bool{"remembered": false, "forgotten": true} {
		t.Run(name, func(t *testing.T) {
			c := newCache(t, services(abc))
			eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
			eds.request([]string{"a", "b", "c"}, "")
			eds.ack(eds.receive())
			if forget {
				cache.ForgetSentSelections(c)
			}
			eds.request([]string{"a", "b"}, "")
			if forget {
				// What the client holds is unknown: it gets what it asks for.
				out := eds.receive()
				if diff := cmp.Diff([]string{"a", "b"}, names(out, claName)); diff != "" {
					t.Errorf("shrunk, selection forgotten (-want +got):\n%s", diff)
				}
				eds.ack(out)
			}
			eds.none()
			eds.request([]string{"a", "b", "c"}, "")
			out := eds.receive()
			if got := names(out, claName); !slices.Contains(got, "c") {
				t.Errorf("subscribed again to c, sent %v", got)
			}
			checkHolds(t, c, eds, out)
			eds.ack(out)
			eds.none()
			mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.10", "b": "10.0.0.2", "c": "10.0.0.3"}))
			if diff := cmp.Diff([]string{"a"}, names(eds.receive(), claName)); diff != "" {
				t.Errorf("next change (-want +got):\n%s", diff)
			}
		})
	}
}

// A shrink that drops both names the record is kept under loses it: the
// client is sent its whole, smaller selection, and is then back to changes
// only, including when it grows again.
func TestSotwShrinkDroppingTheRecord(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b", "c"}, "")
	eds.ack(eds.receive())
	eds.request([]string{"b"}, "")
	out := eds.receive()
	if diff := cmp.Diff([]string{"b"}, names(out, claName)); diff != "" {
		t.Errorf("shrunk to b (-want +got):\n%s", diff)
	}
	eds.ack(out)
	eds.none()
	eds.request([]string{"a", "b", "c"}, "")
	out = receiveChange(t, c, eds, claName, []string{"a", "c"}, "grown back")
}

// A request that acknowledges a response and grows the subscription, while
// a change landed after that response, gets the new name and the change.
func TestSotwGrowthDuringAChange(t *testing.T) {
	c := newCache(t, services(abc))
	eds := newSotwClient(t, c, node.GRPC, resourcev3.EndpointType, false)
	eds.request([]string{"a", "b"}, "")
	eds.ack(eds.receive())
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.10", "b": "10.0.0.2", "c": "10.0.0.3"}))
	first := eds.receive()
	mustUpdate(t, c, node.GRPC, services(map[string]string{"a": "10.0.0.10", "b": "10.0.0.20", "c": "10.0.0.3"}))
	eds.acked = first.GetVersionInfo()
	eds.request([]string{"a", "b", "c"}, "")
	out := receiveChange(t, c, eds, claName, []string{"b", "c"}, "grown by c while b changed")
	eds.ack(out)
	eds.none()
}
