package cache

import (
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func selectionSnapshot(n int) *typeSnapshot {
	sorted := make([]*entry, n)
	for i := range sorted {
		name := fmt.Sprintf("r%03d", i)
		sorted[i] = &entry{name: name, version: fmt.Sprintf("v%d", i)}
	}
	return newTypeSnapshot(sorted, "1")
}

func nameSet(names ...string) map[string]struct{} {
	m := map[string]struct{}{}
	for _, n := range names {
		m[n] = struct{}{}
	}
	return m
}

func selectedNames(sel *selection) []string {
	var out []string
	for _, e := range sel.entries {
		out = append(out, e.name)
	}
	return out
}

// Both ways of picking (walking the sorted set for large picks, sorting
// small ones) give the resources named, in name order, and the set version
// of exactly those.
func TestSotwSelect(t *testing.T) {
	ts := selectionSnapshot(40)
	tests := map[string]struct {
		names []string
		want  []string
	}{
		"small pick":        {names: []string{"r030", "r001", "missing"}, want: []string{"r001", "r030"}},
		"large pick":        {names: []string{"r039", "r020", "r000", "r021", "r022", "r023", "r024", "r025", "r026", "r027", "missing"}, want: []string{"r000", "r020", "r021", "r022", "r023", "r024", "r025", "r026", "r027", "r039"}},
		"nothing exists":    {names: []string{"missing"}, want: nil},
		"empty":             {names: nil, want: nil},
		"every name":        {names: selectedNames(ts.all), want: selectedNames(ts.all)},
		"every name, extra": {names: append(selectedNames(ts.all), "zzz"), want: selectedNames(ts.all)},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			sel := sotwSelect(ts, false, nameSet(tc.names...))
			if diff := cmp.Diff(tc.want, selectedNames(sel)); diff != "" {
				t.Errorf("selected (-want +got):\n%s", diff)
			}
			var want []*entry
			for _, n := range tc.want {
				want = append(want, ts.get(n))
			}
			if wantVersion, _, _ := setVersion(want); sel.version != wantVersion {
				t.Errorf("version = %q, want %q", sel.version, wantVersion)
			}
			if len(sel.payloads()) != len(sel.entries) {
				t.Fatalf("%d payloads for %d entries", len(sel.payloads()), len(sel.entries))
			}
			for i, e := range sel.entries {
				if sel.payloads()[i] != e.any {
					t.Errorf("payload %d is not %s's", i, e.name)
				}
			}
		})
	}
}

// The memo answers an equal set with the selection already built, whatever
// map holds the names, and never answers a different set with it, even one
// whose fingerprint it shares.
func TestChooseMemoises(t *testing.T) {
	ts := selectionSnapshot(40)
	first, names := ts.choose(false, nameSet("r001", "r002", "r003"), nil, nil)
	again, againNames := ts.choose(false, nameSet("r003", "r001", "r002"), nil, nil)
	if first != again || names != againNames {
		t.Errorf("equal set of names built a second selection")
	}
	other, _ := ts.choose(false, nameSet("r001", "r002"), nil, nil)
	if diff := cmp.Diff([]string{"r001", "r002"}, selectedNames(other)); diff != "" {
		t.Errorf("smaller set (-want +got):\n%s", diff)
	}

	// The next snapshot finds the selection for names a watch matched
	// before by the same memo entry, and memoises under it.
	next := selectionSnapshot(41)
	moved, movedNames := next.choose(false, nameSet("r001", "r002", "r003"), nil, names)
	if movedNames != names {
		t.Errorf("next snapshot memoised a new entry for known names")
	}
	if diff := cmp.Diff([]string{"r001", "r002", "r003"}, selectedNames(moved)); diff != "" {
		t.Errorf("next snapshot (-want +got):\n%s", diff)
	}
	if again, _ := next.choose(false, nameSet("r002", "r003", "r001"), nil, nil); again != moved {
		t.Errorf("equal names without the memo entry built a second selection")
	}

	// A selection planted under the fingerprint of another set must not be
	// returned for it.
	wanted := nameSet("r010", "r011")
	key := fingerprint(wanted)
	ts.selections[key] = append(ts.selections[key], &selection{names: &memoNames{key: key, m: nameSet("r030", "r031")}, version: "planted"})
	got, _ := ts.choose(false, wanted, nil, nil)
	if got.version == "planted" || !slices.Equal(selectedNames(got), []string{"r010", "r011"}) {
		t.Errorf("colliding fingerprint answered with %v (version %q)", selectedNames(got), got.version)
	}

	// A request's list of names finds the selection made for it, and only
	// an equal list does.
	list := []string{"r005", "r006", "r007"}
	byNames, _ := ts.choose(false, nameSet(list...), list, nil)
	if again, _ := ts.choose(false, nameSet(list...), slices.Clone(list), nil); again != byNames {
		t.Errorf("an equal list built a second selection")
	}
	reordered := []string{"r007", "r006", "r005"}
	if again, _ := ts.choose(false, nameSet(reordered...), reordered, nil); again != byNames {
		t.Errorf("the same names in another order built a second selection")
	}
	// A list that shares the index key of another is not answered with
	// the other's selection.
	sibling := []string{"r005", "r009", "r007"}
	lk := listKey{n: 3, first: "r005", last: "r007"}
	if len(ts.byList[lk]) != 1 {
		t.Fatalf("list index %v, want the one selection", ts.byList[lk])
	}
	if got, _ := ts.choose(false, nameSet(sibling...), sibling, nil); got == byNames || !slices.Equal(selectedNames(got), []string{"r005", "r007", "r009"}) {
		t.Errorf("list sharing a key answered with %v", selectedNames(got))
	}

	if all, _ := ts.choose(true, nil, nil, nil); all != ts.all {
		t.Errorf("wildcard selection is not the whole set")
	}
	if emptySnapshot.choose(false, nameSet("a"), []string{"a"}, nil); emptySnapshot.selections != nil || emptySnapshot.byList != nil {
		t.Errorf("the shared empty snapshot was written")
	}
}

// The table of sent selections finds what it holds, keeps what is looked
// up, and drops the rest once it has filled twice.
func TestRecentSelectionsBound(t *testing.T) {
	sel := func(version string) *selection {
		return &selection{entries: make([]*entry, maxRecent/2+1), version: version}
	}
	var r recentSelections
	a, b, c := sel("a"), sel("b"), sel("c")
	r.add(endpointType, a)
	r.add(endpointType, b) // a moves to the previous generation
	if r.get(routeType, "a") != nil {
		t.Errorf("found a under another type")
	}
	if got := r.get(endpointType, "a"); got == nil {
		t.Fatalf("a forgotten after one more selection")
	}
	// Looking a up made it current, so b is the previous generation now
	// and c drops it.
	r.add(endpointType, c)
	if r.get(endpointType, "b") != nil {
		t.Errorf("b still held after the table filled twice")
	}
	if r.get(endpointType, "a") == nil || r.get(endpointType, "c") == nil {
		t.Errorf("a or c forgotten")
	}
	r.add(endpointType, &selection{version: "empty"})
	if r.get(endpointType, "empty") != nil {
		t.Errorf("an empty selection was remembered")
	}
}
