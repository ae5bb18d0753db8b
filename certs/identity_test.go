package certs

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    Identity
		wantErr string
	}{
		"plain":            {in: "spiffe://cluster.local/ns/demo/sa/web", want: Identity{"cluster.local", "demo", "web"}},
		"dotted sa":        {in: "spiffe://example.org/ns/a-b/sa/x.y-z", want: Identity{"example.org", "a-b", "x.y-z"}},
		"underscore td":    {in: "spiffe://my_td/ns/a/sa/b", want: Identity{"my_td", "a", "b"}},
		"no scheme":        {in: "cluster.local/ns/demo/sa/web", wantErr: "want spiffe://"},
		"wrong scheme":     {in: "https://cluster.local/ns/demo/sa/web", wantErr: "want spiffe://"},
		"upper scheme":     {in: "SPIFFE://cluster.local/ns/demo/sa/web", wantErr: "want spiffe://"},
		"no path":          {in: "spiffe://cluster.local", wantErr: "no path"},
		"trailing slash":   {in: "spiffe://cluster.local/ns/demo/sa/web/", wantErr: "path must be"},
		"extra segment":    {in: "spiffe://cluster.local/ns/demo/sa/web/x", wantErr: "path must be"},
		"swapped":          {in: "spiffe://cluster.local/sa/web/ns/demo", wantErr: "path must be"},
		"empty ns":         {in: "spiffe://cluster.local/ns//sa/web", wantErr: "namespace"},
		"empty sa":         {in: "spiffe://cluster.local/ns/demo/sa/", wantErr: "service account"},
		"upper ns":         {in: "spiffe://cluster.local/ns/Demo/sa/web", wantErr: "namespace"},
		"dot in ns":        {in: "spiffe://cluster.local/ns/a.b/sa/web", wantErr: "namespace"},
		"long ns":          {in: "spiffe://cluster.local/ns/" + strings.Repeat("a", 64) + "/sa/web", wantErr: "namespace"},
		"encoded":          {in: "spiffe://cluster.local/ns/demo/sa/w%65b", wantErr: "service account"},
		"query":            {in: "spiffe://cluster.local/ns/demo/sa/web?x=1", wantErr: "service account"},
		"port":             {in: "spiffe://cluster.local:443/ns/demo/sa/web", wantErr: "trust domain"},
		"userinfo":         {in: "spiffe://u@cluster.local/ns/demo/sa/web", wantErr: "trust domain"},
		"upper td":         {in: "spiffe://Cluster.local/ns/demo/sa/web", wantErr: "trust domain"},
		"empty td":         {in: "spiffe:///ns/demo/sa/web", wantErr: "trust domain"},
		"empty td label":   {in: "spiffe://a..b/ns/demo/sa/web", wantErr: "empty label"},
		"leading dash ns":  {in: "spiffe://td/ns/-a/sa/web", wantErr: "namespace"},
		"trailing dash sa": {in: "spiffe://td/ns/a/sa/web-", wantErr: "service account"},
		"empty sa label":   {in: "spiffe://td/ns/a/sa/x..y", wantErr: "service account"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalidIdentity) {
					t.Fatalf("Parse(%q) = %v, %v; want an ErrInvalidIdentity containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
			if got.String() != tc.in {
				t.Errorf("String() = %q, want %q", got.String(), tc.in)
			}
			if got.URL().String() != tc.in {
				t.Errorf("URL() = %q, want %q", got.URL(), tc.in)
			}
			u, err := url.Parse(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if fromURL, err := FromURL(u); err != nil || fromURL != got {
				t.Errorf("FromURL = %v, %v", fromURL, err)
			}
		})
	}
}

func TestFromURLRefusesNonCanonical(t *testing.T) {
	tests := map[string]*url.URL{
		"nil":          nil,
		"raw path":     mustURL(t, "spiffe://td/ns/a/sa/%62"),
		"fragment":     {Scheme: "spiffe", Host: "td", Path: "/ns/a/sa/b", Fragment: "x"},
		"force query":  {Scheme: "spiffe", Host: "td", Path: "/ns/a/sa/b", ForceQuery: true},
		"opaque":       {Scheme: "spiffe", Opaque: "//td/ns/a/sa/b"},
		"escaped path": {Scheme: "spiffe", Host: "td", Path: "/ns/a/sa/b c"},
	}
	for name, u := range tests {
		t.Run(name, func(t *testing.T) {
			if id, err := FromURL(u); err == nil {
				t.Fatalf("FromURL(%v) = %v, want an error", u, id)
			}
		})
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestParseServiceAccount(t *testing.T) {
	tests := map[string]struct {
		in   string
		want ServiceAccount
		ok   bool
	}{
		"ok":        {"demo/web", ServiceAccount{"demo", "web"}, true},
		"no slash":  {"demo", ServiceAccount{}, false},
		"two slash": {"demo/web/x", ServiceAccount{}, false},
		"empty ns":  {"/web", ServiceAccount{}, false},
		"upper":     {"demo/Web", ServiceAccount{}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseServiceAccount(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("ParseServiceAccount(%q) = %v, %v", tc.in, got, err)
			}
			if tc.ok && got.String() != tc.in {
				t.Errorf("String() = %q", got.String())
			}
		})
	}
	if _, err := NewIdentity("bad td", ServiceAccount{"a", "b"}); err == nil {
		t.Error("NewIdentity accepted a bad trust domain")
	}
}

// FuzzParse: whatever Parse accepts round-trips exactly, through String and
// through the URL a certificate carries.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/demo/sa/web", "spiffe://td/ns/a/sa/b.c",
		"spiffe://td/ns/a/sa/b/", "spiffe://td:1/ns/a/sa/b", "spiffe://td/ns/a/sa/%41",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidIdentity) {
				t.Fatalf("Parse(%q) error %v does not wrap ErrInvalidIdentity", s, err)
			}
			return
		}
		if id.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, id.String())
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("Parse(%q) = %v which does not validate: %v", s, id, err)
		}
		u, err := url.Parse(id.URL().String())
		if err != nil {
			t.Fatalf("URL of %v does not parse: %v", id, err)
		}
		back, err := FromURL(u)
		if err != nil || back != id {
			t.Fatalf("FromURL(URL(%v)) = %v, %v", id, back, err)
		}
	})
}
