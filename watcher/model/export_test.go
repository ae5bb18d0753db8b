package model

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseExportTo(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    []string
		wantErr string
	}{
		"every namespace":   {in: "*", want: []string{"*"}},
		"own namespace":     {in: ".", want: []string{"."}},
		"names and spaces":  {in: " web , ., api,web", want: []string{"web", ".", "api"}},
		"empty":             {in: "", wantErr: "no entry"},
		"blank":             {in: "  ", wantErr: "no entry"},
		"blank entries":     {in: " , ", wantErr: "entry 1 is empty"},
		"empty entry":       {in: "a,,b", wantErr: "entry 2 is empty"},
		"trailing comma":    {in: "a,", wantErr: "entry 2 is empty"},
		"upper case":        {in: "Web", wantErr: `entry "Web" is neither`},
		"dotted name":       {in: "a.b", wantErr: `entry "a.b" is neither`},
		"too long":          {in: strings.Repeat("a", 64), wantErr: "must be no more than 63"},
		"wildcard in names": {in: "a*", wantErr: `entry "a*" is neither`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseExportTo(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseExportTo(%q) = %v, %v; want an error saying %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseExportTo(%q) (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

func TestNormaliseExportTo(t *testing.T) {
	tests := map[string]struct {
		in, want []string
	}{
		"own namespace":            {in: []string{"."}, want: []string{"shop"}},
		"sorted without repeats":   {in: []string{"web", ".", "api", "shop"}, want: []string{"api", "shop", "web"}},
		"every namespace absorbs":  {in: []string{"web", "*", "."}, want: []string{"*"}},
		"names only, own excluded": {in: []string{"web"}, want: []string{"web"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, NormaliseExportTo(tc.in, "shop")); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParseExportTo: whatever the input, a list that parses has only
// ExportAll, ExportOwn or namespace names, none twice, and normalises to a
// sorted list that is ExportAll alone or has no special entry.
func FuzzParseExportTo(f *testing.F) {
	for _, s := range []string{"*", ".", "a, b", ".,*", "", ",", "A", "a.b", "ns-1,ns-2,."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		list, err := ParseExportTo(in)
		if err != nil {
			return
		}
		if len(list) == 0 {
			t.Fatalf("ParseExportTo(%q) accepted an empty list", in)
		}
		seen := map[string]bool{}
		for _, e := range list {
			if seen[e] || e == "" || strings.ContainsAny(e, ", ") {
				t.Fatalf("ParseExportTo(%q) = %q", in, list)
			}
			seen[e] = true
		}
		n := NormaliseExportTo(list, "own")
		if !slices.IsSorted(n) || (slices.Contains(n, ExportAll) && len(n) != 1) || slices.Contains(n, ExportOwn) {
			t.Fatalf("NormaliseExportTo(%q) = %q", list, n)
		}
	})
}
