package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ResiliencePolicy sets outlier detection, connection-pool limits, retries and
// timeouts for the traffic that meshed clients send to a Service. Policies
// attach to Services (optionally one port) through spec.targetRefs; a policy
// without targetRefs is the default for its namespace, and one in the control
// plane's namespace without targetRefs is the mesh-wide default. The most
// specific policy wins field by field: port > service > namespace > mesh.
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=rp,categories=fjord
// +kubebuilder:printcolumn:name="Targets",type=string,JSONPath=`.spec.targetRefs[*].name`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.ancestors[0].conditions[?(@.type=="Accepted")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ResiliencePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired resilience behaviour.
	// +required
	Spec ResiliencePolicySpec `json:"spec"`

	// Status reports, per target, whether the policy was accepted and why not.
	// +optional
	Status PolicyStatus `json:"status,omitempty"`
}

// ResiliencePolicyList is a list of ResiliencePolicy.
// +kubebuilder:object:root=true
type ResiliencePolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the policies.
	Items []ResiliencePolicy `json:"items"`
}

// ResiliencePolicySpec holds the policy's targets and its five sections. At
// least one section must be set; every field is optional so that a more
// specific policy can override just the fields it names.
// +kubebuilder:validation:XValidation:rule="has(self.outlierDetection) || has(self.connectionPool) || has(self.retry) || has(self.timeout) || has(self.faultInjection)",message="spec must set at least one of outlierDetection, connectionPool, retry, timeout, faultInjection"
type ResiliencePolicySpec struct {
	// TargetRefs are the Services (optionally one named port of each) this
	// policy applies to, in Gateway API policy-attachment form. Omitted or
	// empty: the policy is the default for every Service in its namespace.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.all(a, self.exists_one(b, a.name == b.name && (has(a.sectionName) ? (has(b.sectionName) && a.sectionName == b.sectionName) : !has(b.sectionName))))",message="targetRefs must not name the same Service (and sectionName) twice"
	TargetRefs []TargetRef `json:"targetRefs,omitempty"`

	// OutlierDetection ejects endpoints that fail, for a while, so that
	// clients stop sending them traffic (a circuit breaker per endpoint).
	// +optional
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`

	// ConnectionPool limits connections and requests from each client proxy
	// to the Service (a circuit breaker for the whole Service). Limits apply
	// per client proxy, not across the mesh.
	// +optional
	ConnectionPool *ConnectionPool `json:"connectionPool,omitempty"`

	// Retry retries failed requests to the Service.
	// +optional
	Retry *Retry `json:"retry,omitempty"`

	// Timeout bounds requests to the Service.
	// +optional
	Timeout *Timeout `json:"timeout,omitempty"`

	// FaultInjection makes the client proxies fail or delay a share of the
	// requests to the Service on purpose, so that teams can test how their
	// callers, breakers and retries cope.
	// +optional
	FaultInjection *FaultInjection `json:"faultInjection,omitempty"`
}

// TargetRef names a Service, and optionally one of its ports by name, that a
// policy attaches to. It mirrors Gateway API's
// LocalPolicyTargetReferenceWithSectionName.
type TargetRef struct {
	// Group is the API group of the target; only "" (core) is supported.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == ''",message="group must be \"\" (core): only Services can be targeted"
	Group string `json:"group"`
	// Kind is the kind of the target; only Service is supported.
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self == 'Service'",message="kind must be Service"
	Kind string `json:"kind"`
	// Name is the name of the target Service, in the policy's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// SectionName is the name of one port of the Service. Omitted: every port.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	SectionName *string `json:"sectionName,omitempty"`
}

// OutlierDetection configures passive health checking: the client proxy
// watches the responses of each endpoint and ejects the ones that fail.
// Setting the section, even to {}, turns outlier detection on.
// +kubebuilder:validation:XValidation:rule="!has(self.baseEjectionTime) || !has(self.maxEjectionTime) || duration(self.maxEjectionTime) >= duration(self.baseEjectionTime)",message="maxEjectionTime must not be shorter than baseEjectionTime",fieldPath=".maxEjectionTime"
type OutlierDetection struct {
	// Interval is how often ejection decisions are made. Default 10s.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="must be greater than 0"
	Interval *Duration `json:"interval,omitempty"`
	// BaseEjectionTime is how long an endpoint is ejected the first time; the
	// n-th ejection lasts n times as long, up to maxEjectionTime. Default 30s.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="must be greater than 0"
	BaseEjectionTime *Duration `json:"baseEjectionTime,omitempty"`
	// MaxEjectionTime caps the ejection time; it must not be shorter than
	// baseEjectionTime. Default 300s, or baseEjectionTime if that is longer.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="must be greater than 0"
	MaxEjectionTime *Duration `json:"maxEjectionTime,omitempty"`
	// MaxEjectionPercent is the most endpoints, in percent, that may be
	// ejected at once. Default 10.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	MaxEjectionPercent *int32 `json:"maxEjectionPercent,omitempty"`
	// MinHealthPercent is the panic threshold: when fewer than this percent
	// of endpoints are healthy, the proxy ignores health and balances over
	// all of them. 0 disables panic mode. Default 50. Envoy only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	MinHealthPercent *int32 `json:"minHealthPercent,omitempty"`
	// EnforcingPercent is the chance, in percent, that a detected outlier is
	// really ejected; it applies to every detector. 0 is shadow mode: outliers
	// are detected and reported (Envoy's outlier event log and stats) but
	// never ejected. Default 100.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	EnforcingPercent *int32 `json:"enforcingPercent,omitempty"`
	// Consecutive5xxErrors ejects an endpoint after this many 5xx responses
	// in a row. 0 disables this detector. Envoy only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Consecutive5xxErrors *int32 `json:"consecutive5xxErrors,omitempty"`
	// ConsecutiveGatewayErrors ejects an endpoint after this many 502, 503 or
	// 504 responses in a row. 0 disables this detector. Envoy only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ConsecutiveGatewayErrors *int32 `json:"consecutiveGatewayErrors,omitempty"`
	// ConsecutiveLocalOriginFailures ejects an endpoint after this many
	// locally detected failures (connect errors, resets, timeouts) in a row;
	// it needs splitExternalLocalOriginErrors. 0 disables it. Envoy only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ConsecutiveLocalOriginFailures *int32 `json:"consecutiveLocalOriginFailures,omitempty"`
	// SplitExternalLocalOriginErrors counts locally originated failures
	// separately from responses the endpoint sent. Envoy only.
	// +optional
	SplitExternalLocalOriginErrors *bool `json:"splitExternalLocalOriginErrors,omitempty"`
	// SuccessRate ejects endpoints whose success rate is far below the mean
	// of all endpoints.
	// +optional
	SuccessRate *SuccessRate `json:"successRate,omitempty"`
	// FailurePercentage ejects endpoints whose failure rate is above a fixed
	// threshold.
	// +optional
	FailurePercentage *FailurePercentage `json:"failurePercentage,omitempty"`
}

// SuccessRate is the statistical outlier detector: an endpoint is ejected
// when its success rate is below mean - standardDeviationFactor * stdev.
type SuccessRate struct {
	// MinimumHosts is how many endpoints must have enough traffic for the
	// detector to run. Default 5.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MinimumHosts *int32 `json:"minimumHosts,omitempty"`
	// RequestVolume is how many requests an endpoint needs in one interval
	// to be considered. Default 100.
	// +optional
	// +kubebuilder:validation:Minimum=0
	RequestVolume *int32 `json:"requestVolume,omitempty"`
	// StandardDeviationFactor scales the standard deviation, as a decimal
	// string such as "1.9". Default "1.9".
	// +optional
	StandardDeviationFactor *Decimal `json:"standardDeviationFactor,omitempty"`
}

// FailurePercentage is the threshold outlier detector: an endpoint is
// ejected when at least threshold percent of its requests in one interval
// failed.
type FailurePercentage struct {
	// Threshold is the failure percentage at or above which an endpoint is
	// ejected. Default 85.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Threshold *int32 `json:"threshold,omitempty"`
	// MinimumHosts is how many endpoints the Service needs for the detector
	// to run. Default 5; lower it for small backend sets.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MinimumHosts *int32 `json:"minimumHosts,omitempty"`
	// RequestVolume is how many requests an endpoint needs in one interval
	// to be considered. Default 50.
	// +optional
	// +kubebuilder:validation:Minimum=0
	RequestVolume *int32 `json:"requestVolume,omitempty"`
}

// ConnectionPool bounds what one client proxy sends to the Service. Every
// limit is per client proxy (each sidecar or proxyless client keeps its own
// counters), not a mesh-wide quota.
type ConnectionPool struct {
	// MaxConnections is the most connections to all endpoints. Envoy only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxConnections *int32 `json:"maxConnections,omitempty"`
	// MaxPendingRequests is the most requests waiting for a connection.
	// Envoy only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxPendingRequests *int32 `json:"maxPendingRequests,omitempty"`
	// MaxRequests is the most requests in flight; beyond it requests fail
	// at once (UNAVAILABLE for gRPC, 503 for HTTP).
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxRequests *int32 `json:"maxRequests,omitempty"`
	// MaxRetries is the most retries in flight. Envoy only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxRetries *int32 `json:"maxRetries,omitempty"`
	// MaxRequestsPerConnection closes a connection after this many
	// requests; 0 means unlimited. Envoy only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxRequestsPerConnection *int32 `json:"maxRequestsPerConnection,omitempty"`
	// ConnectTimeout bounds establishing a connection. Default 5s.
	// Envoy only.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="must be greater than 0"
	ConnectTimeout *Duration `json:"connectTimeout,omitempty"`
	// IdleTimeout closes upstream connections with no active request for
	// this long; 0 keeps them open. Default 1h. Envoy only.
	// +optional
	IdleTimeout *Duration `json:"idleTimeout,omitempty"`
	// RetryBudget limits retries to a share of the active requests, which
	// scales with load better than maxRetries. Envoy only.
	// +optional
	RetryBudget *RetryBudget `json:"retryBudget,omitempty"`
}

// RetryBudget limits concurrent retries to a percentage of active requests.
type RetryBudget struct {
	// BudgetPercent is the share of active requests that may be retries.
	// Default 20.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	BudgetPercent *int32 `json:"budgetPercent,omitempty"`
	// MinRetryConcurrency is the number of retries always allowed, whatever
	// the budget. Default 3.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MinRetryConcurrency *int32 `json:"minRetryConcurrency,omitempty"`
}

// RetryOn is a condition under which a request is retried. The HTTP
// conditions are Envoy's x-envoy-retry-on values; the gRPC ones are
// x-envoy-retry-grpc-on values and the only ones proxyless gRPC honours.
// +kubebuilder:validation:Enum="5xx";gateway-error;reset;reset-before-request;connect-failure;envoy-ratelimited;retriable-4xx;refused-stream;retriable-status-codes;http3-post-connect-failure;cancelled;deadline-exceeded;internal;resource-exhausted;unavailable
type RetryOn string

// Retry configures automatic retries by the client proxy.
type Retry struct {
	// Attempts is the number of retries after the first try. 0 disables
	// retries.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	Attempts *int32 `json:"attempts,omitempty"`
	// PerTryTimeout bounds each try, including the first; 0 or unset leaves
	// each try bounded only by timeout.request. Envoy only.
	// +optional
	PerTryTimeout *Duration `json:"perTryTimeout,omitempty"`
	// RetryOn lists the conditions that cause a retry. Default:
	// connect-failure, refused-stream, unavailable, cancelled,
	// resource-exhausted (Envoy); unavailable (gRPC). Proxyless gRPC honours
	// only the gRPC conditions (cancelled, deadline-exceeded, internal,
	// resource-exhausted, unavailable) and ignores the others.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	RetryOn []RetryOn `json:"retryOn,omitempty"`
	// RetriableStatusCodes are HTTP status codes that cause a retry, in
	// addition to retryOn. Envoy only.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:Minimum=100
	// +kubebuilder:validation:items:Maximum=599
	RetriableStatusCodes []int32 `json:"retriableStatusCodes,omitempty"`
	// Backoff spaces retries out with jittered exponential backoff.
	// +optional
	Backoff *Backoff `json:"backoff,omitempty"`
}

// Backoff is a jittered exponential backoff between retries. Its two
// intervals constrain each other, so resolution takes a backoff from one
// policy as a whole rather than merging the intervals of different policies.
// +kubebuilder:validation:XValidation:rule="!has(self.baseInterval) || !has(self.maxInterval) || duration(self.maxInterval) >= duration(self.baseInterval)",message="maxInterval must not be shorter than baseInterval",fieldPath=".maxInterval"
type Backoff struct {
	// BaseInterval is the first backoff. Default 25ms.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="must be greater than 0"
	BaseInterval *Duration `json:"baseInterval,omitempty"`
	// MaxInterval caps the backoff. Default 10 times baseInterval.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="must be greater than 0"
	MaxInterval *Duration `json:"maxInterval,omitempty"`
}

// Timeout bounds requests to the Service.
type Timeout struct {
	// Request bounds a whole request, retries included; 0 or unset means no
	// limit. For proxyless gRPC it becomes the route's max stream duration.
	// +optional
	Request *Duration `json:"request,omitempty"`
	// Idle ends a request stream that has sent and received nothing for
	// this long; 0 disables it. Default: the connection manager's stream idle
	// timeout (5m). Envoy only.
	// +optional
	Idle *Duration `json:"idle,omitempty"`
}

// FaultInjection injects faults into requests before they leave the client
// proxy: the request never reaches the Service when it is aborted. Delay
// applies first, then abort. Both proxy kinds honour it (Envoy's fault
// filter; proxyless gRPC implements the same filter).
// +kubebuilder:validation:XValidation:rule="has(self.abort) || has(self.delay)",message="faultInjection must set abort, delay or both"
type FaultInjection struct {
	// Abort fails a share of the requests at once with a fixed status.
	// +optional
	Abort *FaultAbort `json:"abort,omitempty"`
	// Delay holds a share of the requests for a fixed time before they are
	// sent.
	// +optional
	Delay *FaultDelay `json:"delay,omitempty"`
}

// FaultAbort fails requests with an HTTP or a gRPC status; exactly one of
// the two is set. It is merged as a whole, like backoff, because its fields
// only make sense together.
// +kubebuilder:validation:XValidation:rule="has(self.httpStatus) != has(self.grpcStatus)",message="abort must set exactly one of httpStatus, grpcStatus"
type FaultAbort struct {
	// HTTPStatus is the HTTP status the aborted requests get. Proxyless gRPC
	// turns it into the gRPC code of the HTTP-to-gRPC mapping (503 becomes
	// UNAVAILABLE).
	// +optional
	// +kubebuilder:validation:Minimum=200
	// +kubebuilder:validation:Maximum=599
	HTTPStatus *int32 `json:"httpStatus,omitempty"`
	// GRPCStatus is the gRPC status code the aborted requests get (14 is
	// UNAVAILABLE).
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=16
	GRPCStatus *int32 `json:"grpcStatus,omitempty"`
	// Percentage is the share of requests aborted, from "0" to "100" with up
	// to three decimals ("0.5"). Default "100".
	// +optional
	// +kubebuilder:validation:XValidation:rule="double(self) <= 100.0",message="must be at most 100"
	Percentage *Decimal `json:"percentage,omitempty"`
}

// FaultDelay delays requests by a fixed time. It is merged as a whole.
type FaultDelay struct {
	// FixedDelay is how long a delayed request waits before it is sent.
	// +required
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="must be greater than 0"
	FixedDelay *Duration `json:"fixedDelay"`
	// Percentage is the share of requests delayed, from "0" to "100" with
	// up to three decimals. Default "100".
	// +optional
	// +kubebuilder:validation:XValidation:rule="double(self) <= 100.0",message="must be at most 100"
	Percentage *Decimal `json:"percentage,omitempty"`
}

// PolicyStatus follows Gateway API's PolicyStatus: one entry per ancestor
// (each target Service, or the namespace for a namespace default).
type PolicyStatus struct {
	// Ancestors holds the status for each target of the policy.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	Ancestors []PolicyAncestorStatus `json:"ancestors,omitempty"`
}

// PolicyAncestorStatus is the status of a policy with respect to one target.
type PolicyAncestorStatus struct {
	// AncestorRef is the target this status is about.
	AncestorRef AncestorRef `json:"ancestorRef"`
	// ControllerName is the controller that wrote this status:
	// fjord.dev/control-plane.
	ControllerName string `json:"controllerName"`
	// Conditions describe the policy's state for this target. Type
	// Accepted, with reasons Accepted, Invalid, Conflicted, TargetNotFound.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// AncestorRef identifies a policy target: a Service (and optionally a port),
// or a Namespace for namespace and mesh defaults.
type AncestorRef struct {
	// Group is "" for core kinds.
	Group string `json:"group"`
	// Kind is Service or Namespace.
	Kind string `json:"kind"`
	// Namespace of the target; empty for a Namespace.
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// Name of the target.
	Name string `json:"name"`
	// SectionName is the port name, when the policy targets one port.
	// +optional
	SectionName *string `json:"sectionName,omitempty"`
}

// Condition types and reasons used in PolicyStatus.
const (
	ConditionAccepted = "Accepted"

	ReasonAccepted       = "Accepted"
	ReasonInvalid        = "Invalid"
	ReasonConflicted     = "Conflicted"
	ReasonTargetNotFound = "TargetNotFound"

	// ControllerName is written into every PolicyAncestorStatus.
	ControllerName = "fjord.dev/control-plane"
)

func init() {
	SchemeBuilder.Register(&ResiliencePolicy{}, &ResiliencePolicyList{})
}
