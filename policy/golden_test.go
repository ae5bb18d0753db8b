package policy

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata and remove stale ones")

// TestResolveGolden resolves every testdata/<case>.in.yaml and compares the
// Mesh, marshalled as YAML, with testdata/<case>.out.yaml.
func TestResolveGolden(t *testing.T) {
	ins, err := filepath.Glob("testdata/*.in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) == 0 {
		t.Fatal("no testdata/*.in.yaml")
	}
	want := map[string]bool{}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		out := filepath.Join("testdata", name+".out.yaml")
		want[out] = true
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			snap, last, err := decodeObjects(data)
			if err != nil {
				t.Fatalf("%s: %v", in, err)
			}
			before := mustJSON(t, snap)
			got, err := yaml.Marshal(Resolve(snap, Options{LastAccepted: last}))
			if err != nil {
				t.Fatal(err)
			}
			if after := mustJSON(t, snap); after != before {
				t.Errorf("Resolve modified its input snapshot")
			}
			// The output must not depend on the order of the input.
			rev, err := yaml.Marshal(Resolve(reversed(snap), Options{LastAccepted: rev(last)}))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(string(got), string(rev)); d != "" {
				t.Errorf("output depends on input order (-sorted +reversed):\n%s", d)
			}
			if *update {
				if err := os.WriteFile(out, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			exp, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("%v (run go test ./policy -update to create it)", err)
			}
			if d := cmp.Diff(string(exp), string(got)); d != "" {
				t.Errorf("%s differs (-want +got); run go test ./policy -update and review the diff:\n%s", out, d)
			}
		})
	}
	outs, err := filepath.Glob("testdata/*.out.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range outs {
		if want[out] {
			continue
		}
		if *update {
			if err := os.Remove(out); err != nil {
				t.Fatal(err)
			}
			continue
		}
		t.Errorf("%s has no matching .in.yaml; run go test ./policy -update to remove it", out)
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// reversed returns a copy of s with every slice in reverse order, to check
// that resolution sorts for itself instead of trusting its input's order.
func reversed(s *model.Snapshot) *model.Snapshot {
	out := &model.Snapshot{
		Services:       rev(s.Services),
		EndpointSlices: rev(s.EndpointSlices),
		Policies:       rev(s.Policies),
		Routes:         rev(s.Routes),
	}
	for i := range out.Services {
		out.Services[i].Ports = rev(out.Services[i].Ports)
	}
	for i := range out.EndpointSlices {
		out.EndpointSlices[i].Ports = rev(out.EndpointSlices[i].Ports)
		out.EndpointSlices[i].Endpoints = rev(out.EndpointSlices[i].Endpoints)
	}
	return out
}

func rev[T any](in []T) []T {
	out := slices.Clone(in)
	slices.Reverse(out)
	return out
}
