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
	}
	// Every series exists from the start, so a dashboard shows 0, not nothing.
	for _, k := range node.Kinds {
		m.connected.WithLabelValues(string(k))
	}
	for _, u := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
		m.pushes.WithLabelValues(cache.TypeName(u))
		m.nacks.WithLabelValues(cache.TypeName(u))
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.pushes, m.nacks)
	}
	return m
}
