package translate

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/watcher/model"
)

// TestSPIFFEIDMatchesCertificates pins the SAN the clusters expect to the
// one the certificate authority writes into leaves.
func TestSPIFFEIDMatchesCertificates(t *testing.T) {
	id, err := certs.NewIdentity("example.org", certs.ServiceAccount{Namespace: "demo", Name: "echo-v2"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := spiffeID("example.org", "demo", "echo-v2"), id.String(); got != want {
		t.Errorf("spiffeID = %q, certificates carry %q", got, want)
	}
}

func TestPeerIdentities(t *testing.T) {
	for name, tc := range map[string]struct {
		declared  []string
		endpoints []policy.Endpoint
		want      []string
	}{
		"none known": {endpoints: []policy.Endpoint{{Address: "10.0.0.1"}}},
		"declared only": {
			declared: []string{"b", "a"},
			want:     []string{"spiffe://td/ns/ns1/sa/a", "spiffe://td/ns/ns1/sa/b"},
		},
		"pods and declared, deduplicated": {
			declared:  []string{"a"},
			endpoints: []policy.Endpoint{{ServiceAccount: "c"}, {ServiceAccount: "a"}, {}, {ServiceAccount: "c"}},
			want:      []string{"spiffe://td/ns/ns1/sa/a", "spiffe://td/ns/ns1/sa/c"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			sp := servicePort{svc: model.Key{Namespace: "ns1", Name: "s"}, port: &policy.Port{Endpoints: tc.endpoints}, accounts: tc.declared}
			if diff := cmp.Diff(tc.want, peerIdentities(sp, "td")); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestSANMatchersWithoutIdentity: a destination with no known identity
// accepts the trust domain only, never any certificate at all.
func TestSANMatchersWithoutIdentity(t *testing.T) {
	ms := sanMatchers(nil, "td")
	if len(ms) != 1 || ms[0].GetPrefix() != "spiffe://td/" {
		t.Errorf("sanMatchers(nil) = %v, want one prefix matcher spiffe://td/", ms)
	}
	if got := (Options{}).trustDomain(); got != certs.DefaultTrustDomain {
		t.Errorf("default trust domain %q, the CA's is %q", got, certs.DefaultTrustDomain)
	}
}
