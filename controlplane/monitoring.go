package controlplane

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fjordmesh/fjord/policy"
)

// monitoringHandler serves health, readiness, metrics and the debug views.
//
//	/healthz        200 while the process runs
//	/readyz         200 once a complete build has reached the xDS cache
//	                (the persisted config counts), 503 before
//	/metrics        Prometheus
//	/debug/config   the model snapshot last built, as JSON
//	/debug/status   every policy's and route's status, as JSON
//	                {"policies": [...], "routes": [...]}
//	/debug/mesh     the resolved mesh (effective policy per port and where
//	                each field came from), as JSON
//	/debug/pprof/   Go profiles (go tool pprof http://ADDR/debug/pprof/profile);
//	                the monitoring address is loopback unless set otherwise
func (cp *ControlPlane) monitoringHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !cp.ready.Load() {
			http.Error(w, "not ready: no complete config has reached the xds cache yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(cp.reg, promhttp.HandlerOpts{Registry: cp.reg}))
	mux.HandleFunc("GET /debug/config", func(w http.ResponseWriter, _ *http.Request) {
		snap, _ := cp.state()
		writeJSON(w, snap, snap != nil)
	})
	mux.HandleFunc("GET /debug/status", func(w http.ResponseWriter, _ *http.Request) {
		_, mesh := cp.state()
		if mesh == nil {
			writeJSON(w, nil, false)
			return
		}
		writeJSON(w, struct {
			Policies []policy.Status      `json:"policies"`
			Routes   []policy.RouteStatus `json:"routes"`
		}{mesh.Statuses, mesh.RouteStatuses}, true)
	})
	mux.HandleFunc("GET /debug/mesh", func(w http.ResponseWriter, _ *http.Request) {
		_, mesh := cp.state()
		writeJSON(w, mesh, mesh != nil)
	})
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// writeJSON answers v as indented JSON, or 503 when nothing is built yet.
func writeJSON(w http.ResponseWriter, v any, built bool) {
	if !built {
		http.Error(w, "no config built yet", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
