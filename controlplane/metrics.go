package controlplane

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the pipeline's own; the xDS server registers its metrics
// (connected proxies, pushes, NACKs) on the same registry.
type metrics struct {
	buildSeconds prometheus.Histogram
	builds       *prometheus.CounterVec
	configErrors prometheus.Counter
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fjord_build_seconds",
			Help: "Time from a published snapshot to the xDS cache holding its resources: resolution, translation for every proxy kind, cache update.",
			// A build takes well under a millisecond for a small mesh and
			// seconds for a very large one.
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fjord_builds_total",
			Help: "Builds by result: success, or error when the xDS cache refused the resources (the last good config stays served).",
		}, []string{"result"}),
		configErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fjord_config_errors_total",
			Help: "Configuration errors found in the input: files that do not parse, objects defined twice. Each is also logged with its file and reason.",
		}),
	}
	m.builds.WithLabelValues("success")
	m.builds.WithLabelValues("error")
	reg.MustRegister(m.buildSeconds, m.builds, m.configErrors,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
