package cache

import (
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
)

// An Update evaluates only the watches this admits, which is what keeps an
// endpoint change from costing work per connected proxy.
func TestInterested(t *testing.T) {
	tests := map[string]struct {
		sub     stream.Subscription
		changed map[string]struct{}
		want    bool
	}{
		"wildcard":           {sub: stream.NewSotwSubscription(nil, true), changed: nameSet("x"), want: true},
		"explicit wildcard":  {sub: stream.NewSotwSubscription([]string{"*"}, false), changed: nameSet("x"), want: true},
		"subscribed":         {sub: stream.NewSotwSubscription([]string{"a", "b"}, false), changed: nameSet("b"), want: true},
		"many changed":       {sub: stream.NewSotwSubscription([]string{"b"}, false), changed: nameSet("a", "b", "c"), want: true},
		"unrelated":          {sub: stream.NewSotwSubscription([]string{"a", "b"}, false), changed: nameSet("c"), want: false},
		"empty subscription": {sub: stream.NewSotwSubscription(nil, false), changed: nameSet("a"), want: false},
		"delta subscribed":   {sub: stream.NewDeltaSubscription([]string{"a"}, nil, nil, false), changed: nameSet("a"), want: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := watchSet{}
			w := &watch{sub: tc.sub}
			s.add(w)
			if got := s[w.group].interested(tc.changed); got != tc.want {
				t.Errorf("interested = %v, want %v", got, tc.want)
			}
		})
	}
}

// sharedNames is a state-of-the-world subscription to a set of names that
// other subscriptions may share, as xds/server's are.
type sharedNames struct {
	stream.Subscription
	names map[string]struct{}
}

func (s sharedNames) SubscribedResources() map[string]struct{} { return s.names }

// TestWatchSetGroups checks that watches whose subscriptions share one set
// of names (or are wildcard) form one group, that equal sets that are not
// the same map do not, and that removing watches in any order, or twice,
// keeps every other watch registered once.
func TestWatchSetGroups(t *testing.T) {
	shared, other := nameSet("a", "b"), nameSet("a", "b")
	sotw := func(names map[string]struct{}) *watch {
		return &watch{sub: sharedNames{Subscription: stream.NewSotwSubscription([]string{"a"}, false), names: names}}
	}
	ws := []*watch{
		sotw(shared), sotw(shared), sotw(shared), sotw(other),
		{sub: stream.NewSotwSubscription(nil, true)}, {sub: stream.NewSotwSubscription([]string{"*"}, false)},
	}
	s := watchSet{}
	for _, w := range ws {
		s.add(w)
	}
	if len(s) != 3 {
		t.Fatalf("%d groups, want 3 (the shared set, the other, wildcard)", len(s))
	}
	if g := s[ws[0].group]; len(g.watches) != 3 || s[ws[4].group] != s[ws[5].group] {
		t.Errorf("shared set's group holds %d watches, want 3; wildcard watches in one group: %v", len(g.watches), s[ws[4].group] == s[ws[5].group])
	}
	registered := func() map[*watch]int {
		seen := map[*watch]int{}
		s.each(func(w *watch) { seen[w]++ })
		return seen
	}
	for _, i := range []int{1, 1, 0, 4, 3} {
		s.remove(ws[i])
	}
	want := map[*watch]int{ws[2]: 1, ws[5]: 1}
	if got := registered(); len(got) != len(want) || got[ws[2]] != 1 || got[ws[5]] != 1 {
		t.Errorf("registered after removals = %v, want %v", got, want)
	}
	if len(s) != 2 {
		t.Errorf("%d groups left, want 2: an emptied group is dropped", len(s))
	}
	s.each(func(w *watch) { s.remove(w) })
	if len(s) != 0 {
		t.Errorf("%d groups left after removing every watch while iterating, want none", len(s))
	}
}
