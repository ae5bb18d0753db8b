package cache

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRandomPatchesEqualRebuild applies random sequences of patches that
// add, remove and replace entries, and checks after each that the snapshot
// holds what one built from the resulting set holds: the same entries and
// payloads in order, the same chunks of the version, the same version
// (which mapVersion of the pairs agrees with), and an index that finds
// every name and no other.
func TestRandomPatchesEqualRebuild(t *testing.T) {
	tests := map[string]struct {
		size int
		// uncut draws only versions no chunk ends after, so chunks end by
		// length alone (maxVersionChunk) and every edit moves the cuts
		// after it up to the end of the set.
		uncut bool
	}{
		"empty":          {size: 0},
		"one":            {size: 1},
		"one chunk":      {size: 40},
		"several chunks": {size: 700},
		"many chunks":    {size: 3000},
		"long chunks":    {size: 1200, uncut: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.size), 7))
			version := func() string {
				for {
					v := fmt.Sprintf("%016x", rng.Uint64())
					if !tc.uncut || !endsChunk(v) {
						return v
					}
				}
			}
			newName := func() string { return fmt.Sprintf("r%08d", rng.IntN(100_000_000)) }
			held := map[string]string{}
			for len(held) < tc.size {
				held[newName()] = version()
			}
			ts := newTypeSnapshot(sortedEntries(held), "0")
			for step := range 300 {
				names := slices.Sorted(maps.Keys(held))
				var in []marshalled
				var remove []string
				var want Stats
				upserted := map[string]bool{}
				for range rng.IntN(4) {
					if n := newName(); held[n] == "" && !upserted[n] {
						upserted[n] = true
						in = append(in, marshalled{name: n, version: version()})
						want.Changed++
					}
				}
				if len(names) > 0 && rng.IntN(8) == 0 {
					// Names that go to the same place, one after another.
					at := names[rng.IntN(len(names))]
					for _, n := range []string{at + "b", at + "a"} {
						if held[n] == "" && !upserted[n] {
							upserted[n] = true
							in = append(in, marshalled{name: n, version: version()})
							want.Changed++
						}
					}
				}
				for range rng.IntN(4) {
					if len(names) == 0 {
						break
					}
					n := names[rng.IntN(len(names))]
					if upserted[n] {
						continue
					}
					upserted[n] = true
					if rng.IntN(2) == 0 {
						in = append(in, marshalled{name: n, version: version()})
						want.Changed++
					} else {
						// Unchanged: not an edit.
						in = append(in, marshalled{name: n, version: held[n]})
					}
				}
				removed := map[string]bool{}
				if len(names) > 0 && rng.IntN(8) == 0 {
					// A whole chunk, often the last.
					c := len(ts.all.ends) - 1 - rng.IntN(2)*rng.IntN(len(ts.all.ends))
					from := 0
					if c > 0 {
						from = ts.all.ends[c-1]
					}
					for _, e := range ts.sorted[from:ts.all.ends[c]] {
						if !upserted[e.name] {
							remove = append(remove, e.name)
							removed[e.name] = true
							want.Removed++
						}
					}
				}
				for range rng.IntN(4) {
					n := newName() // mostly absent: removing it changes nothing
					if len(names) > 0 && rng.IntN(4) > 0 {
						n = names[rng.IntN(len(names))]
					}
					if upserted[n] {
						continue
					}
					remove = append(remove, n, n) // twice: removed once
					if held[n] != "" && !removed[n] {
						removed[n] = true
						want.Removed++
					}
				}
				var got Stats
				next, changed := patch(endpointType, ts, in, remove, &got, func() string { return fmt.Sprint(step + 1) })
				if got != want || len(changed) != want.Changed+want.Removed {
					t.Fatalf("step %d: stats %+v, %d changed; want %+v", step, got, len(changed), want)
				}
				for _, m := range in {
					held[m.name] = m.version
				}
				for n := range removed {
					delete(held, n)
				}
				checkSnapshot(t, step, next, held)
				ts = next
			}
		})
	}
}

func sortedEntries(held map[string]string) []*entry {
	var out []*entry
	for _, n := range slices.Sorted(maps.Keys(held)) {
		out = append(out, newEntry(endpointType, marshalled{name: n, version: held[n]}))
	}
	return out
}

// checkSnapshot checks ts against a snapshot built from held.
func checkSnapshot(t *testing.T, step int, ts *typeSnapshot, held map[string]string) {
	t.Helper()
	want := newTypeSnapshot(sortedEntries(held), "want")
	pairs := func(es []*entry) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.name+"="+e.version)
		}
		return out
	}
	if diff := cmp.Diff(pairs(want.sorted), pairs(ts.sorted)); diff != "" {
		t.Fatalf("step %d: entries (-rebuilt +patched):\n%s", step, diff)
	}
	for i, e := range ts.sorted {
		if ts.all.payloads()[i] != e.any {
			t.Fatalf("step %d: payload %d is not entry %s's", step, i, e.name)
		}
		if ts.get(e.name) != e {
			t.Fatalf("step %d: get(%s) is not the entry in sorted", step, e.name)
		}
	}
	if len(ts.all.payloads()) != len(ts.sorted) {
		t.Fatalf("step %d: %d payloads for %d entries", step, len(ts.all.payloads()), len(ts.sorted))
	}
	for n, e := range ts.overlay {
		if e == nil && held[n] != "" || e != nil && held[n] != e.version {
			t.Fatalf("step %d: overlay holds %s = %v, not what is held", step, n, e)
		}
	}
	for n := range ts.base {
		if _, ok := held[n]; !ok && ts.get(n) != nil {
			t.Fatalf("step %d: get(%s) finds a removed name", step, n)
		}
	}
	if len(ts.overlay) > overlayLimit(len(ts.sorted)) {
		t.Fatalf("step %d: overlay of %d names for %d entries", step, len(ts.overlay), len(ts.sorted))
	}
	if diff := cmp.Diff(want.all.ends, ts.all.ends); diff != "" {
		t.Fatalf("step %d: chunk ends (-rebuilt +patched):\n%s", step, diff)
	}
	if !slices.Equal(want.all.chunks, ts.all.chunks) {
		t.Fatalf("step %d: chunk digests differ from a rebuild's", step)
	}
	if ts.version != want.version || ts.all.version != want.version {
		t.Fatalf("step %d: version %s, rebuilt %s", step, ts.version, want.version)
	}
	if v := mapVersion(held); v != want.version {
		t.Fatalf("step %d: mapVersion %s, setVersion %s", step, v, want.version)
	}
}
