package cache

import (
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
)

// An Update evaluates only the watches this admits, which is what keeps an
// endpoint change from costing work per connected proxy.
func TestInterested(t *testing.T) {
	set := func(names ...string) map[string]struct{} {
		m := map[string]struct{}{}
		for _, n := range names {
			m[n] = struct{}{}
		}
		return m
	}
	tests := map[string]struct {
		sub     stream.Subscription
		changed map[string]struct{}
		want    bool
	}{
		"wildcard":           {sub: stream.NewSotwSubscription(nil, true), changed: set("x"), want: true},
		"explicit wildcard":  {sub: stream.NewSotwSubscription([]string{"*"}, false), changed: set("x"), want: true},
		"subscribed":         {sub: stream.NewSotwSubscription([]string{"a", "b"}, false), changed: set("b"), want: true},
		"many changed":       {sub: stream.NewSotwSubscription([]string{"b"}, false), changed: set("a", "b", "c"), want: true},
		"unrelated":          {sub: stream.NewSotwSubscription([]string{"a", "b"}, false), changed: set("c"), want: false},
		"empty subscription": {sub: stream.NewSotwSubscription(nil, false), changed: set("a"), want: false},
		"delta subscribed":   {sub: stream.NewDeltaSubscription([]string{"a"}, nil, nil, false), changed: set("a"), want: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w := &watch{sub: tc.sub}
			if got := w.interested(tc.changed); got != tc.want {
				t.Errorf("interested = %v, want %v", got, tc.want)
			}
		})
	}
}
