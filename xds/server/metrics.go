package server

import (
	"github.com/prometheus/client_golang/prometheus"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
)

type metrics struct {
	connected *prometheus.GaugeVec
	pushes    *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	// authFailures counts streams and fetches the secure port refused.
	authFailures *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fjord_xds_connected_proxies",
			Help: "Open xDS streams whose node identity was accepted, by proxy kind.",
		}, []string{"kind"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fjord_xds_pushes_total",
			Help: "xDS responses sent to proxies, by resource type (cluster, endpoint, listener, route).",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fjord_xds_nacks_total",
			Help: "xDS responses rejected by proxies, by resource type.",
		}, []string{"type"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fjord_xds_auth_failures_total",
			Help: "xDS streams and fetches refused on the authenticated port, by reason: no_certificate, bad_certificate (no SPIFFE ID of the trust domain), identity_mismatch (node is not the certificate's namespace and service account), node_changed (mid-stream).",
		}, []string{"reason"}),
	}
	// Every series exists from the start, so a dashboard shows 0, not nothing.
	for _, k := range node.Kinds {
		m.connected.WithLabelValues(string(k))
	}
	for _, u := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
		m.pushes.WithLabelValues(cache.TypeName(u))
		m.nacks.WithLabelValues(cache.TypeName(u))
	}
	for _, r := range authReasons {
		m.authFailures.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.pushes, m.nacks, m.authFailures)
	}
	return m
}
