package cache_test

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
)

// deltaModel is a delta client that applies what it receives, as Envoy
// does: updates replace, removals delete. Its holdings are checked against
// what the cache serves, so no test can pass with a lost update.
type deltaModel struct {
	*deltaClient
	holds map[string]string // name -> endpoint IP
}

func newDeltaModel(t *testing.T, c *cache.Cache) *deltaModel {
	return &deltaModel{deltaClient: newDeltaClient(t, c, node.GRPC, resourcev3.EndpointType, false), holds: map[string]string{}}
}

// take applies the pending response, which must be there, and returns
// the names it updated.
func (m *deltaModel) take() []string {
	m.t.Helper()
	out := m.receive()
	for _, r := range out.GetResources() {
		m.holds[r.GetName()] = claIP(r.GetResource().GetValue())
	}
	for _, name := range out.GetRemovedResources() {
		delete(m.holds, name)
	}
	return deltaNames(out)
}

// settle applies every response until the client is up to date, ACKing
// each.
func (m *deltaModel) settle() {
	m.t.Helper()
	for range 10 {
		if len(m.ch) == 0 {
			return
		}
		m.take()
		m.ack()
	}
	m.t.Fatalf("no end of responses")
}

// check asserts the client holds exactly the served endpoints of the names
// it subscribes to.
func (m *deltaModel) check(served map[string]string, what string) {
	m.t.Helper()
	want := map[string]string{}
	for name := range m.sub.SubscribedResources() {
		if ip, ok := served[name]; ok {
			want[name] = ip
		}
	}
	if diff := cmp.Diff(want, m.holds); diff != "" {
		m.t.Errorf("%s: client holds (-served +held):\n%s", what, diff)
	}
}

// churn changes an endpoint no test client subscribes to, once per
// generation, more times than the cache keeps generations of.
func churn(t *testing.T, c *cache.Cache, served map[string]string) {
	t.Helper()
	for i := range 70 {
		next := maps.Clone(served)
		next["z"] = fmt.Sprintf("10.0.9.%d", i)
		mustUpdate(t, c, node.GRPC, services(next))
	}
}

var abcz = map[string]string{"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3", "z": "10.0.9.255"}

func with(m map[string]string, name, ip string) map[string]string {
	out := maps.Clone(m)
	if ip == "" {
		delete(out, name)
	} else {
		out[name] = ip
	}
	return out
}

// A delta client is recorded by the snapshot it was sent from plus what
// differs, not by every name it holds.
func TestDeltaRecordIsShort(t *testing.T) {
	c := newCache(t, services(abcz))
	eds := newDeltaModel(t, c)
	eds.request([]string{"a", "b", "c"}, nil, nil, "")
	eds.take()
	if n := len(eds.sub.ReturnedResources()); n != 1 {
		t.Errorf("record after the first response has %d entries, want 1: %v", n, eds.sub.ReturnedResources())
	}
	eds.ack()
	served := with(abcz, "b", "10.0.0.20")
	mustUpdate(t, c, node.GRPC, services(served))
	if diff := cmp.Diff([]string{"b"}, eds.take()); diff != "" {
		t.Errorf("after b moved (-want +got):\n%s", diff)
	}
	if n := len(eds.sub.ReturnedResources()); n != 1 {
		t.Errorf("record after a change has %d entries, want 1: %v", n, eds.sub.ReturnedResources())
	}
	eds.ack()
	eds.none()
	eds.check(served, "after b moved")
}

// When the snapshot a client's record names has left the history, the
// record still says what the client holds: changes and removals reach it,
// and nothing else.
func TestDeltaForgottenGeneration(t *testing.T) {
	c := newCache(t, services(abcz))
	eds := newDeltaModel(t, c)
	eds.request([]string{"a", "b", "c"}, nil, nil, "")
	eds.settle()
	churn(t, c, abcz)
	eds.none()

	served := with(abcz, "b", "10.0.0.20")
	mustUpdate(t, c, node.GRPC, services(served))
	if diff := cmp.Diff([]string{"b"}, eds.take()); diff != "" {
		t.Errorf("change after the history dropped the record's snapshot (-want +got):\n%s", diff)
	}
	eds.ack()
	eds.settle()
	eds.check(served, "after the change")

	churn(t, c, served)
	served = with(served, "c", "")
	mustUpdate(t, c, node.GRPC, services(served))
	eds.settle()
	eds.check(served, "after c was removed, the record's snapshot gone from the history")

	served = with(served, "a", "10.0.0.10")
	mustUpdate(t, c, node.GRPC, services(served))
	if diff := cmp.Diff([]string{"a"}, eds.take()); diff != "" {
		t.Errorf("next change (-want +got):\n%s", diff)
	}
	eds.ack()
	eds.none()
	eds.check(served, "after a moved")
}

// A name unsubscribed and subscribed again is sent again, unchanged as it
// is: the client dropped it.
func TestDeltaResubscribeSendsAgain(t *testing.T) {
	for name, forget := range map[string]bool{"remembered": false, "forgotten": true} {
		t.Run(name, func(t *testing.T) {
			c := newCache(t, services(abcz))
			eds := newDeltaModel(t, c)
			eds.request([]string{"a", "b", "c"}, nil, nil, "")
			eds.settle()

			eds.request(nil, []string{"c"}, nil, "")
			delete(eds.holds, "c")
			eds.settle()
			if forget {
				churn(t, c, abcz)
				eds.settle()
			}
			eds.request([]string{"c"}, nil, nil, "")
			if got := eds.take(); !slices.Contains(got, "c") {
				t.Errorf("subscribed again to c, sent %v", got)
			}
			eds.ack()
			eds.settle()
			eds.check(abcz, "after subscribing again")

			// A change while unsubscribed reaches the client when it
			// subscribes again.
			eds.request(nil, []string{"b"}, nil, "")
			delete(eds.holds, "b")
			eds.settle()
			served := with(abcz, "b", "10.0.0.22")
			mustUpdate(t, c, node.GRPC, services(served))
			eds.none()
			eds.request([]string{"b"}, nil, nil, "")
			eds.settle()
			eds.check(served, "after b moved while unsubscribed")
			served = with(served, "a", "10.0.0.10")
			mustUpdate(t, c, node.GRPC, services(served))
			eds.settle()
			eds.check(served, "after a moved")
		})
	}
}

// A NACKed response is not sent again, and the next change gets through,
// whether or not the history still holds the snapshot of the record.
func TestDeltaNACKWithShortRecord(t *testing.T) {
	for name, forget := range map[string]bool{"remembered": false, "forgotten": true} {
		t.Run(name, func(t *testing.T) {
			c := newCache(t, services(abcz))
			eds := newDeltaModel(t, c)
			eds.request([]string{"a", "b", "c"}, nil, nil, "")
			eds.settle()
			served := with(abcz, "b", "10.0.0.50")
			mustUpdate(t, c, node.GRPC, services(served))
			eds.receive() // rejected: the model does not apply it
			if forget {
				churn(t, c, served)
				eds.none()
			}
			eds.request(nil, nil, nil, "b rejected")
			eds.none()
			eds.request(nil, nil, nil, "b rejected")
			eds.none()
			served = with(served, "b", "10.0.0.51")
			mustUpdate(t, c, node.GRPC, services(served))
			eds.take()
			eds.ack()
			eds.settle()
			eds.check(served, "after b was fixed")
		})
	}
}

// A reconnecting client's initial_resource_versions are what it holds:
// it is sent what differs, and then recorded in the short form.
func TestDeltaReconnectThenShortRecord(t *testing.T) {
	c := newCache(t, services(abcz))
	first := newDeltaModel(t, c)
	first.request([]string{"a", "b", "c"}, nil, nil, "")
	versions := map[string]string{}
	for _, r := range first.receive().GetResources() {
		versions[r.GetName()] = r.GetVersion()
	}

	served := with(abcz, "b", "10.0.0.20")
	mustUpdate(t, c, node.GRPC, services(served))
	again := newDeltaModel(t, c)
	again.holds = map[string]string{"a": "10.0.0.1", "b": "10.0.0.2"}
	again.request([]string{"a", "b", "c"}, nil, map[string]string{"a": versions["a"], "b": versions["b"]}, "")
	if diff := cmp.Diff([]string{"b", "c"}, again.take()); diff != "" {
		t.Errorf("reconnect (-want +got):\n%s", diff)
	}
	again.ack()
	again.none()
	again.check(served, "after reconnecting")
	if n := len(again.sub.ReturnedResources()); n != 1 {
		t.Errorf("record after reconnecting has %d entries, want 1: %v", n, again.sub.ReturnedResources())
	}
	served = with(served, "a", "10.0.0.10")
	mustUpdate(t, c, node.GRPC, services(served))
	if diff := cmp.Diff([]string{"a"}, again.take()); diff != "" {
		t.Errorf("change after reconnecting (-want +got):\n%s", diff)
	}
	again.ack()
	again.request(nil, []string{"a"}, nil, "")
	delete(again.holds, "a")
	again.settle()
	again.request([]string{"a"}, nil, nil, "")
	again.settle()
	again.check(served, "after subscribing to a again")
}

// A request that acknowledges a response and grows the subscription, while
// a change landed after that response, gets the change and the new name.
func TestDeltaGrowthDuringAChange(t *testing.T) {
	c := newCache(t, services(abcz))
	eds := newDeltaModel(t, c)
	eds.request([]string{"a", "b"}, nil, nil, "")
	eds.settle()
	served := with(abcz, "a", "10.0.0.10")
	mustUpdate(t, c, node.GRPC, services(served))
	eds.take()
	served = with(served, "b", "10.0.0.20")
	mustUpdate(t, c, node.GRPC, services(served))
	eds.request([]string{"c"}, nil, nil, "")
	if diff := cmp.Diff([]string{"b", "c"}, eds.take()); diff != "" {
		t.Errorf("grown by c while b changed (-want +got):\n%s", diff)
	}
	eds.ack()
	eds.none()
	eds.check(served, "after growing")
}

// A subscription by name that turns wildcard gets everything else, and is
// then told of removals of what it holds through the wildcard.
func TestDeltaByNameThenWildcard(t *testing.T) {
	c := newCache(t, services(abcz))
	eds := newDeltaModel(t, c)
	eds.request([]string{"a"}, nil, nil, "")
	eds.settle()
	eds.request([]string{"*"}, nil, nil, "")
	if diff := cmp.Diff([]string{"b", "c", "z"}, eds.take()); diff != "" {
		t.Errorf("turned wildcard (-want +got):\n%s", diff)
	}
	eds.ack()
	eds.none()
	served := with(abcz, "c", "")
	mustUpdate(t, c, node.GRPC, services(served))
	out := eds.receive()
	if diff := cmp.Diff([]string{"c"}, out.GetRemovedResources()); diff != "" {
		t.Errorf("removal through the wildcard (-want +got):\n%s", diff)
	}
}

// A wildcard client's record is short too, and when its snapshot has left
// the history the record still says what the client holds, so a removal
// reaches it.
func TestDeltaWildcardRecord(t *testing.T) {
	for name, forget := range map[string]bool{"remembered": false, "forgotten": true} {
		t.Run(name, func(t *testing.T) {
			c := newCache(t, services(abcz))
			cds := newDeltaClient(t, c, node.GRPC, resourcev3.ClusterType, true)
			cds.request(nil, nil, nil, "")
			holds := map[string]bool{}
			take := func() {
				out := cds.receive()
				for _, r := range out.GetResources() {
					holds[r.GetName()] = true
				}
				for _, n := range out.GetRemovedResources() {
					delete(holds, n)
				}
				cds.ack()
			}
			take()
			if n := len(cds.sub.ReturnedResources()); n != 1 {
				t.Errorf("wildcard record has %d entries, want 1", n)
			}
			cds.none()
			served := with(abcz, "b", "")
			mustUpdate(t, c, node.GRPC, services(served))
			// The removal is pending; the client has no watch while more
			// snapshots of clusters come and go.
			out := cds.receive()
			for _, n := range out.GetRemovedResources() {
				delete(holds, n)
			}
			if forget {
				for i := range 70 {
					mustUpdate(t, c, node.GRPC, services(with(served, fmt.Sprintf("y%d", i), "10.0.8.1")))
				}
			}
			served = with(served, "c", "")
			mustUpdate(t, c, node.GRPC, services(served))
			cds.ack()
			for len(cds.ch) > 0 {
				take()
			}
			want := map[string]bool{}
			for n := range served {
				want[n] = true
			}
			if diff := cmp.Diff(want, holds); diff != "" {
				t.Errorf("wildcard client holds (-served +held):\n%s", diff)
			}
		})
	}
}
