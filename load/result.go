package load

import "time"

// Report is everything one fjord-load invocation measured.
type Report struct {
	Machine Machine     `json:"machine"`
	Command string      `json:"command"`
	Runs    []RunResult `json:"runs"`
}

// RunResult is what one run measured.
type RunResult struct {
	Spec RunSpec `json:"spec"`
	// Kubernetes: the mesh lived in a real API server and the control plane
	// ran in Kubernetes mode; otherwise standalone, on a directory.
	Kubernetes bool      `json:"kubernetes"`
	Started    time.Time `json:"started"`
	Finished   time.Time `json:"finished"`
	// LoadAverage is /proc/loadavg at the start and the end: on a shared
	// machine other work inflates wall-clock latencies (CPU seconds are
	// not affected).
	LoadAverage [2]string `json:"loadAverage"`
	// ReadySeconds is from starting the control plane to /readyz.
	ReadySeconds float64 `json:"readySeconds"`
	// PolicyProblems lists generated policies that were not Accepted.
	PolicyProblems []string `json:"policyProblems,omitempty"`
	// Ramp has one entry per step, the first with no proxy.
	Ramp []RampStep `json:"ramp"`
	// RSSPerProxyBytes and HeapPerProxyBytes are the slopes of resident
	// memory and Go heap in use against connected proxies.
	RSSPerProxyBytes  float64          `json:"rssPerProxyBytes"`
	HeapPerProxyBytes float64          `json:"heapPerProxyBytes"`
	Scenarios         []ScenarioResult `json:"scenarios"`
	// Shrinks (the first 20 of ShrinkCount) are responses after which a
	// proxy held fewer resources of a type than before; there must be none.
	Shrinks     []Shrink `json:"shrinks,omitempty"`
	ShrinkCount int      `json:"shrinkCount"`
	// NACKs counts responses a proxy could not decode.
	NACKs int64 `json:"nacks"`
	// StreamErrors counts streams that ended with an error (a restart ends
	// every stream once), StreamErrorKinds them by message (the first ten
	// distinct messages).
	StreamErrors     int            `json:"streamErrors"`
	StreamErrorKinds map[string]int `json:"streamErrorKinds,omitempty"`
	// LoadCPUSeconds is the harness's own CPU time during the run: it shares
	// the machine with the control plane.
	LoadCPUSeconds float64  `json:"loadCpuSeconds"`
	Profiles       []string `json:"profiles,omitempty"`
	Errors         []string `json:"errors,omitempty"`
}

// RampStep is the state after connecting a batch of proxies.
type RampStep struct {
	Proxies    int `json:"proxies"`
	NewProxies int `json:"newProxies"`
	// Sync is, per new proxy, the time from the batch's start to its ACK of
	// its whole configuration; NotSynced counts those that never got it.
	Sync       Dist     `json:"sync"`
	NotSynced  int      `json:"notSynced"`
	Stragglers []string `json:"stragglers,omitempty"`
	// Sample is the control plane after the batch settled, and after a
	// forced garbage collection if GCForced (possible when the control
	// plane serves /debug/pprof).
	Sample       Sample  `json:"sample"`
	GCForced     bool    `json:"gcForced"`
	LoadRSSBytes float64 `json:"loadRssBytes"`
}

// ScenarioResult is what one scenario measured.
type ScenarioResult struct {
	Kind    ScenarioKind `json:"kind"`
	Changes int          `json:"changes"`
	// Examples names the first changes made.
	Examples []string `json:"examples"`
	// AffectedPerChange is the mean number of proxies a change concerned.
	AffectedPerChange float64 `json:"affectedPerChange"`
	// Latency is, over every (change, affected proxy), the time from the
	// change being written to the proxy's ACK of content containing it.
	Latency Dist `json:"latency"`
	// LatencyQuantiles are Latency's 0th to 100th percentiles (ms).
	LatencyQuantiles []float64 `json:"latencyQuantilesMs,omitempty"`
	// ChangeLatency is, per change, the time until the last affected proxy
	// had it.
	ChangeLatency Dist `json:"changeLatency"`
	// ChangeRecords lists, for the first maxChangeRecords changes, when each was
	// written and when its last affected proxy had it: which changes make
	// the tail, to lay beside the control plane's log.
	ChangeRecords []ChangeRecord `json:"changeRecords,omitempty"`
	// NotConverged counts (change, affected proxy) pairs that did not
	// converge before the change timeout; Stragglers describes some of
	// those proxies.
	NotConverged int      `json:"notConverged"`
	Stragglers   []string `json:"stragglers,omitempty"`
	// UnaffectedPushes counts responses received by proxies no change of
	// the observation concerned; it must be 0.
	UnaffectedPushes  int64   `json:"unaffectedPushes"`
	UnaffectedProxies float64 `json:"unaffectedProxies"`
	// PushesPerAffectedProxy and BytesPerAffectedProxy are per affected
	// proxy and change (serialised DiscoveryResponse bytes, without gRPC
	// framing).
	PushesPerAffectedProxy Stat `json:"pushesPerAffectedProxy"`
	BytesPerAffectedProxy  Stat `json:"bytesPerAffectedProxy"`
	// CPUSecondsPerChange is the control plane's CPU time per change,
	// settle time included; LoadCPUSecondsPerChange the harness's.
	CPUSecondsPerChange     float64 `json:"cpuSecondsPerChange"`
	LoadCPUSecondsPerChange float64 `json:"loadCpuSecondsPerChange"`
	// Builds is the number of control-plane builds during the scenario.
	Builds int `json:"builds"`
	// Phases of discrete changes, from the control plane's log (which
	// stamps milliseconds): Queue is from the write to the build's start
	// (debounce and file scan), Build the build (resolve, translate, cache
	// update), Cache the part of it in cache updates that changed something
	// (unchanged proxy kinds log at debug level and are not counted), and
	// Delivery from the build's start to the last affected proxy's ACK:
	// the build and the pushes, which overlap, since a proxy kind's
	// watches fire as soon as its cache is updated.
	Queue    Dist `json:"queue"`
	Build    Dist `json:"build"`
	Cache    Dist `json:"cache"`
	Delivery Dist `json:"delivery"`
	// Restart is set for the restart scenario.
	Restart *RestartResult `json:"restart,omitempty"`
	// Samples are the control plane before and after.
	Before Sample `json:"before"`
	After  Sample `json:"after"`
}

// ChangeRecord is one converged change of a scenario.
type ChangeRecord struct {
	Written time.Time `json:"written"`
	LastMs  float64   `json:"lastMs"`
}

// maxChangeRecords bounds ScenarioResult.ChangeRecords.
const maxChangeRecords = 200

// RestartResult times a control-plane restart, all from the moment the
// new process was started.
type RestartResult struct {
	// StopSeconds is how long the old process took to exit after SIGTERM;
	// Killed says it had not after 30 s and was killed.
	StopSeconds float64 `json:"stopSeconds"`
	Killed      bool    `json:"killed,omitempty"`
	// ListeningSeconds: the xDS port accepts connections.
	ListeningSeconds float64 `json:"listeningSeconds"`
	// ReconnectedSeconds: every proxy has a new stream with its
	// subscriptions sent.
	ReconnectedSeconds float64 `json:"reconnectedSeconds"`
	// ConvergedSeconds: every proxy reconnected and every affected proxy
	// ACKed the change written while the control plane was down.
	ConvergedSeconds float64 `json:"convergedSeconds"`
	// Shrinks during the restart; must be 0.
	Shrinks int `json:"shrinks"`
	// NotReconnected counts proxies without a stream at the end.
	NotReconnected int `json:"notReconnected"`
}
