package translate

import (
	"fmt"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/policy"
	"github.com/fjordmesh/fjord/watcher/model"
	"github.com/fjordmesh/fjord/xds/node"
)

// envoyInboundOf returns the virtual inbound listener and the inbound
// passthrough cluster Translate gives Envoy, failing if either is missing.
func envoyInboundOf(t *testing.T, m *policy.Mesh, opts Options) (*listenerv3.Listener, *clusterv3.Cluster) {
	t.Helper()
	r := Translate(m, node.Envoy, opts)
	var l *listenerv3.Listener
	var c *clusterv3.Cluster
	for _, x := range r.Listeners {
		if x.GetName() == VirtualInboundListenerName {
			l = x
		}
	}
	for _, x := range r.Clusters {
		if x.GetName() == InboundPassthroughClusterName {
			c = x
		}
	}
	if l == nil || c == nil {
		t.Fatalf("Translate(envoy, %+v): listener %q found: %v, cluster %q found: %v",
			opts, VirtualInboundListenerName, l != nil, InboundPassthroughClusterName, c != nil)
	}
	return l, c
}

// downstreamTLS unpacks the DownstreamTlsContext of a filter chain.
func downstreamTLS(t *testing.T, fc *listenerv3.FilterChain) *tlsv3.DownstreamTlsContext {
	t.Helper()
	ts := fc.GetTransportSocket()
	if ts.GetName() != wellknown.TransportSocketTLS {
		t.Fatalf("filter chain %q: transport socket %q, want %q", fc.GetName(), ts.GetName(), wellknown.TransportSocketTLS)
	}
	ctx := &tlsv3.DownstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(ctx); err != nil {
		t.Fatalf("filter chain %q: %v", fc.GetName(), err)
	}
	return ctx
}

// TestInboundMTLS: with mTLS the virtual inbound listener has exactly one
// filter chain, reached only by TLS, whose DownstreamTlsContext requires a
// client certificate from the trust domain, takes the workload's
// certificate and roots from the agent's SDS secrets through the very SDS
// config the outbound clusters use, and accepts TLS 1.2 to 1.3.
func TestInboundMTLS(t *testing.T) {
	opts := Options{MTLS: true, TrustDomain: "example.org"}
	m := readMesh(t, "mtls")
	l, _ := envoyInboundOf(t, m, opts)

	if l.GetTrafficDirection() != corev3.TrafficDirection_INBOUND {
		t.Errorf("traffic direction %v, want INBOUND", l.GetTrafficDirection())
	}
	if got := l.GetAddress().GetSocketAddress(); got.GetAddress() != "0.0.0.0" || got.GetPortValue() != 15006 {
		t.Errorf("address %v, want 0.0.0.0:15006", got)
	}
	// use_original_dst would hand inbound connections to the outbound
	// listener of their port.
	if l.GetUseOriginalDst().GetValue() {
		t.Error("use_original_dst is set")
	}
	var filters []string
	for _, f := range l.GetListenerFilters() {
		filters = append(filters, f.GetName())
	}
	if diff := cmp.Diff([]string{wellknown.OriginalDestination, wellknown.TlsInspector}, filters); diff != "" {
		t.Errorf("listener filters (-want +got):\n%s", diff)
	}
	if l.GetDefaultFilterChain() != nil {
		t.Error("a default filter chain would take plaintext connections")
	}
	if len(l.GetFilterChains()) != 1 {
		t.Fatalf("%d filter chains, want 1", len(l.GetFilterChains()))
	}
	fc := l.GetFilterChains()[0]
	if got := fc.GetFilterChainMatch().GetTransportProtocol(); got != "tls" {
		t.Errorf("filter chain matches transport protocol %q, want tls (plaintext must match no chain)", got)
	}

	ctx := downstreamTLS(t, fc)
	if !ctx.GetRequireClientCertificate().GetValue() {
		t.Error("require_client_certificate is not true")
	}
	common := ctx.GetCommonTlsContext()
	if n := len(common.GetTlsCertificates()); n != 0 {
		t.Errorf("%d inline certificates", n)
	}
	if common.GetTlsCertificateProviderInstance() != nil {
		t.Error("Envoy gets a certificate provider instance, want SDS")
	}
	if got := common.GetTlsParams(); got.GetTlsMinimumProtocolVersion() != tlsv3.TlsParameters_TLSv1_2 ||
		got.GetTlsMaximumProtocolVersion() != tlsv3.TlsParameters_TLSv1_3 {
		t.Errorf("TLS versions %v, want TLSv1_2 to TLSv1_3", got)
	}
	if diff := cmp.Diff([]string{"h2", "http/1.1"}, common.GetAlpnProtocols()); diff != "" {
		t.Errorf("ALPN (-want +got):\n%s", diff)
	}
	combined := common.GetCombinedValidationContext()
	if combined == nil {
		t.Fatal("no combined validation context")
	}
	sans := combined.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	if len(sans) != 1 || sans[0].GetSanType() != tlsv3.SubjectAltNameMatcher_URI || sans[0].GetMatcher().GetPrefix() != "spiffe://example.org/" {
		t.Errorf("client SAN matchers %v, want one URI prefix spiffe://example.org/", sans)
	}

	// The secrets, and how Envoy fetches them, are those of the outbound
	// clusters: one SDS stream to the agent serves both directions.
	var up *tlsv3.UpstreamTlsContext
	for _, c := range Translate(m, node.Envoy, opts).Clusters {
		if ts := c.GetTransportSocket(); ts != nil {
			up = &tlsv3.UpstreamTlsContext{}
			if err := ts.GetTypedConfig().UnmarshalTo(up); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if up == nil {
		t.Fatal("the mtls case has no Envoy cluster with TLS")
	}
	upCommon := up.GetCommonTlsContext()
	if diff := cmp.Diff(upCommon.GetTlsCertificateSdsSecretConfigs(), common.GetTlsCertificateSdsSecretConfigs(), protocmp.Transform()); diff != "" {
		t.Errorf("certificate SDS config differs from the clusters' (-cluster +listener):\n%s", diff)
	}
	if diff := cmp.Diff(upCommon.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(), combined.GetValidationContextSdsSecretConfig(), protocmp.Transform()); diff != "" {
		t.Errorf("roots SDS config differs from the clusters' (-cluster +listener):\n%s", diff)
	}
	certs := common.GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 || certs[0].GetName() != bootstrap.SecretCertificate {
		t.Errorf("certificate secrets %v, want one named %q", certs, bootstrap.SecretCertificate)
	}
	if got := combined.GetValidationContextSdsSecretConfig().GetName(); got != bootstrap.SecretRootCA {
		t.Errorf("roots secret %q, want %q", got, bootstrap.SecretRootCA)
	}
	if got := certs[0].GetSdsConfig().GetApiConfigSource().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName(); got != bootstrap.SDSCluster {
		t.Errorf("SDS from cluster %q, want the bootstrap's %q", got, bootstrap.SDSCluster)
	}
}

// TestEnvoyResourcesCarryNoKeyMaterial: with mTLS, nothing Envoy is served
// holds a certificate, a key or a trust bundle; every TLS context only
// names SDS secrets, so a rotation changes no resource. It walks every
// message, the ones packed in Any fields included.
func TestEnvoyResourcesCarryNoKeyMaterial(t *testing.T) {
	for _, name := range goldenCases(t) {
		r := Translate(readMesh(t, name), node.Envoy, Options{MTLS: true})
		for typ, ms := range byType(r) {
			for _, msg := range ms {
				if err := noKeyMaterial(msg); err != nil {
					t.Errorf("%s %s %q: %v", name, typ, resourceName(msg), err)
				}
			}
		}
	}
}

// noKeyMaterial fails on any message that carries or points at certificate
// material other than by SDS name: inline or file data sources, TLS
// certificates, and validation contexts with their own CA.
func noKeyMaterial(m proto.Message) error {
	return walkDeep(m, func(m proto.Message) error {
		switch v := m.(type) {
		case *corev3.DataSource:
			return fmt.Errorf("data source %v", v)
		case *tlsv3.TlsCertificate:
			return fmt.Errorf("inline TLS certificate")
		case *tlsv3.CertificateValidationContext:
			if v.GetTrustedCa() != nil || v.GetCaCertificateProviderInstance() != nil {
				return fmt.Errorf("validation context with its own CA")
			}
		}
		return nil
	})
}

// TestInboundPlaintext: without mTLS every connection is passed through
// as it is, TLS or not, and no listener filter waits for the client to
// speak first.
func TestInboundPlaintext(t *testing.T) {
	l, _ := envoyInboundOf(t, readMesh(t, "full"), Options{})
	if len(l.GetListenerFilters()) != 1 || l.GetListenerFilters()[0].GetName() != wellknown.OriginalDestination {
		t.Errorf("listener filters %v, want only %s", l.GetListenerFilters(), wellknown.OriginalDestination)
	}
	if len(l.GetFilterChains()) != 1 {
		t.Fatalf("%d filter chains, want 1", len(l.GetFilterChains()))
	}
	fc := l.GetFilterChains()[0]
	if fc.GetFilterChainMatch() != nil {
		t.Errorf("filter chain match %v, want none (every connection)", fc.GetFilterChainMatch())
	}
	if fc.GetTransportSocket() != nil {
		t.Error("transport socket set without mTLS")
	}
}

// TestInboundSameForEveryMesh: the inbound side depends on the options
// only, never on the mesh, so it is the same for every sidecar and no
// change to Services or endpoints changes it.
func TestInboundSameForEveryMesh(t *testing.T) {
	for _, opts := range []Options{{}, {MTLS: true}, {MTLS: true, TrustDomain: "example.org"}} {
		wantL, wantC := envoyInboundOf(t, nil, opts)
		for _, name := range goldenCases(t) {
			l, c := envoyInboundOf(t, readMesh(t, name), opts)
			if diff := cmp.Diff(wantL, l, protocmp.Transform()); diff != "" {
				t.Errorf("%s %+v: listener differs from the empty mesh's:\n%s", name, opts, diff)
			}
			if diff := cmp.Diff(wantC, c, protocmp.Transform()); diff != "" {
				t.Errorf("%s %+v: cluster differs from the empty mesh's:\n%s", name, opts, diff)
			}
		}
	}
}

// TestInboundPassthroughCluster: connections go to their original
// destination from 127.0.0.6, which the pod's iptables rules leave alone.
func TestInboundPassthroughCluster(t *testing.T) {
	_, c := envoyInboundOf(t, nil, Options{MTLS: true})
	if c.GetType() != clusterv3.Cluster_ORIGINAL_DST || c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		t.Errorf("type %v, lb_policy %v, want ORIGINAL_DST, CLUSTER_PROVIDED", c.GetType(), c.GetLbPolicy())
	}
	if got := c.GetUpstreamBindConfig().GetSourceAddress().GetAddress(); got != "127.0.0.6" {
		t.Errorf("source address %q, want 127.0.0.6", got)
	}
	if c.GetTransportSocket() != nil {
		t.Error("the hop to the workload is plaintext; the cluster has a transport socket")
	}
}

// TestTCPProxyClustersExist: every cluster an Envoy listener's TCP proxy
// sends connections to is served.
func TestTCPProxyClustersExist(t *testing.T) {
	for _, name := range goldenCases(t) {
		for _, opts := range []Options{{}, {MTLS: true}} {
			r := Translate(readMesh(t, name), node.Envoy, opts)
			clusters := map[string]bool{}
			for _, c := range r.Clusters {
				clusters[c.GetName()] = true
			}
			for _, l := range r.Listeners {
				for _, fc := range append(slices.Clone(l.GetFilterChains()), l.GetDefaultFilterChain()) {
					for _, f := range fc.GetFilters() {
						tp := &tcpproxyv3.TcpProxy{}
						if !f.GetTypedConfig().MessageIs(tp) {
							continue
						}
						if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
							t.Fatal(err)
						}
						if !clusters[tp.GetCluster()] {
							t.Errorf("%s %+v: listener %q sends to missing cluster %q", name, opts, l.GetName(), tp.GetCluster())
						}
					}
				}
			}
		}
	}
}

// TestCapturePortsGetNoOutboundListener: a Service port equal to one of
// the sidecar's capture ports gets a cluster but no outbound listener,
// which Envoy would refuse beside the capture listener on that address.
func TestCapturePortsGetNoOutboundListener(t *testing.T) {
	m := &policy.Mesh{Services: []policy.Service{{
		Key: model.Key{Namespace: "ns", Name: "odd"},
		Ports: []policy.Port{
			{Name: "out", Port: VirtualOutboundPort},
			{Name: "in", Port: VirtualInboundPort},
		},
	}}}
	r := Translate(m, node.Envoy, Options{})
	byAddress := map[uint32][]string{}
	for _, l := range r.Listeners {
		p := l.GetAddress().GetSocketAddress().GetPortValue()
		byAddress[p] = append(byAddress[p], l.GetName())
	}
	for port, names := range byAddress {
		if len(names) != 1 {
			t.Errorf("port %d has listeners %v, want one", port, names)
		}
	}
	if len(r.Routes) != 0 {
		t.Errorf("%d route configurations, want none", len(r.Routes))
	}
	if len(r.Clusters) != 4 {
		t.Errorf("%d clusters, want 4 (two ports and two passthrough clusters)", len(r.Clusters))
	}
}
