package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/fjordmesh/fjord/policy"
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// What the status writer needs.
//
// +kubebuilder:rbac:groups=fjord.dev,resources=resiliencepolicies/status,verbs=update;patch
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes/status;grpcroutes/status,verbs=update;patch

// ErrNotLeader is returned by StatusWriter's writes on a replica that does
// not lead: only the leader writes status.
var ErrNotLeader = errors.New("not the leader: only the leader writes status")

// Backoff of the status writer's retries after a failed write.
const (
	statusRetryMin = time.Second
	statusRetryMax = time.Minute
)

// DefaultFieldOwner is the field manager of the status the control plane
// writes.
const DefaultFieldOwner = "fjord-control-plane"

// StatusWriter writes the status of ResiliencePolicies, HTTPRoutes and
// GRPCRoutes from resolution's status data, through the status
// subresource. It writes only on the leader, and only what changed: a
// status equal to the cached object's is not written again, and a
// condition keeps its lastTransitionTime unless its status, reason or
// message changed. So a control plane that rebuilds its model a thousand
// times an hour does not churn the API server, and `kubectl get rp -w`
// shows real transitions only. Entries written by other controllers
// (Gateway API's controllerName) are left as they are.
type StatusWriter struct {
	client    client.Client // writes
	cached    client.Reader // the source's cache, to compare against
	apiReader client.Reader // fresh reads after a conflict
	leader    Elector
	owner     string
	now       func() time.Time
	log       *slog.Logger

	mu       sync.Mutex
	policies []policy.Status
	routes   []policy.RouteStatus
	updated  bool // Update was called
	poke     chan struct{}

	writing sync.Mutex // one write pass at a time
}

// NewStatusWriter returns a writer that shares src's caches and writes only
// while leader says this replica leads.
func NewStatusWriter(src *KubeSource, leader Elector, log *slog.Logger) *StatusWriter {
	if log == nil {
		log = slog.Default()
	}
	return &StatusWriter{
		client: src.Client(), cached: src.Client(), apiReader: src.APIReader(),
		leader: leader, owner: DefaultFieldOwner, now: time.Now, log: log,
		poke: make(chan struct{}, 1),
	}
}

// Update hands the writer the statuses of the latest resolution
// (policy.Mesh's Statuses and RouteStatuses). It never blocks: the
// pipeline publishes to the proxies without waiting for the API server,
// and Run writes the newest statuses when it gets to them. The slices must
// not be modified afterwards.
func (w *StatusWriter) Update(policies []policy.Status, routes []policy.RouteStatus) {
	w.mu.Lock()
	w.policies, w.routes, w.updated = policies, routes, true
	w.mu.Unlock()
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

func (w *StatusWriter) latest() ([]policy.Status, []policy.RouteStatus, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.policies, w.routes, w.updated
}

// Run writes the statuses given to Update while this replica leads, until
// ctx ends. On gaining leadership it writes the newest statuses at once
// (the previous leader may have stopped half way); a failed write is
// retried with backoff until it succeeds or newer statuses replace it.
func (w *StatusWriter) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		term, err := w.leader.Await(ctx)
		if err != nil {
			return nil // ctx ended
		}
		w.serveTerm(ctx, term)
	}
	return nil
}

// serveTerm writes while term lasts. Writes run under a context that ends
// with the term, so a replica that loses the lease abandons its writes.
func (w *StatusWriter) serveTerm(ctx, term context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(term, cancel)()

	delay := statusRetryMin
	var retryC <-chan time.Time
	due := true // the new leader writes whatever is pending
	for {
		if due {
			due, retryC = false, nil
			if policies, routes, ok := w.latest(); ok {
				_, perr := w.Write(ctx, policies)
				_, rerr := w.WriteRoutes(ctx, routes)
				err := errors.Join(perr, rerr)
				switch {
				case errors.Is(err, ErrNotLeader) || ctx.Err() != nil:
					return // the term ended
				case err != nil:
					w.log.Warn("status: write failed, retrying", "in", delay, "err", err)
					retryC = time.After(delay)
					delay = min(2*delay, statusRetryMax)
				default:
					delay = statusRetryMin
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-w.poke:
			due = true
		case <-retryC:
			due = true
		}
	}
}

// Write brings the status of every policy named in statuses up to date and
// returns how many it wrote. It returns ErrNotLeader, writing nothing more,
// when this replica does not lead. A policy that is gone, or whose
// generation differs from the one the status was computed from (a newer
// build is on its way), is skipped. Errors name the policy; one policy's
// failure does not stop the others.
func (w *StatusWriter) Write(ctx context.Context, statuses []policy.Status) (int, error) {
	return w.writeAll(ctx, len(statuses), func(i int) (bool, error) {
		st := statuses[i]
		key := client.ObjectKey{Namespace: st.Namespace, Name: st.Name}
		wrote, err := w.writeObject(ctx, key, st.Generation, func() (client.Object, func() bool) {
			rp := &fjordv1a1.ResiliencePolicy{}
			return rp, func() bool {
				next := w.mergePolicy(rp.Status, st)
				if equality.Semantic.DeepEqual(rp.Status, next) {
					return false
				}
				rp.Status = next
				return true
			}
		})
		if err != nil {
			return false, fmt.Errorf("status of ResiliencePolicy %s: %w", st.Key, err)
		}
		return wrote, nil
	})
}

// WriteRoutes is Write for HTTPRoutes and GRPCRoutes: it writes the
// parents this control plane is responsible for (parentRefs to Services).
func (w *StatusWriter) WriteRoutes(ctx context.Context, routes []policy.RouteStatus) (int, error) {
	return w.writeAll(ctx, len(routes), func(i int) (bool, error) {
		st := routes[i]
		key := client.ObjectKey{Namespace: st.Namespace, Name: st.Name}
		wrote, err := w.writeObject(ctx, key, st.Generation, func() (client.Object, func() bool) {
			var obj client.Object
			var cur *gatewayv1.RouteStatus
			if st.Kind == model.KindGRPCRoute {
				r := &gatewayv1.GRPCRoute{}
				obj, cur = r, &r.Status.RouteStatus
			} else {
				r := &gatewayv1.HTTPRoute{}
				obj, cur = r, &r.Status.RouteStatus
			}
			return obj, func() bool {
				next := w.mergeRoute(cur.Parents, st)
				if equality.Semantic.DeepEqual(cur.Parents, next) {
					return false
				}
				cur.Parents = next
				return true
			}
		})
		if err != nil {
			return false, fmt.Errorf("status of %s %s: %w", st.Kind, st.Key, err)
		}
		return wrote, nil
	})
}

// writeAll runs one write pass over n objects.
func (w *StatusWriter) writeAll(ctx context.Context, n int, one func(int) (bool, error)) (int, error) {
	w.writing.Lock()
	defer w.writing.Unlock()
	written := 0
	var errs []error
	for i := range n {
		if !w.leader.Leading() {
			return written, ErrNotLeader
		}
		if err := ctx.Err(); err != nil {
			return written, errors.Join(append(errs, err)...)
		}
		ok, err := one(i)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			written++
		}
	}
	return written, errors.Join(errs...)
}

// writeObject writes one object's status if it changes. fresh returns an
// empty object to read into and the function that updates its status,
// reporting whether anything changed. The first attempt starts from the
// cached object, which is nearly always current; a conflict means the cache
// was behind, and the retry reads the API server. An object that is gone,
// or at another generation than gen, is skipped.
func (w *StatusWriter) writeObject(ctx context.Context, key client.ObjectKey, gen int64,
	fresh func() (client.Object, func() bool)) (bool, error) {
	reader := w.cached
	wrote := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, apply := fresh()
		if err := reader.Get(ctx, key, cur); err != nil {
			return err
		}
		reader = w.apiReader
		if cur.GetGeneration() != gen {
			w.log.Debug("status: generation moved on, skipping", "object", key.String(),
				"statusGeneration", gen, "generation", cur.GetGeneration())
			return nil
		}
		if !apply() {
			return nil
		}
		if err := w.client.Status().Update(ctx, cur, client.FieldOwner(w.owner)); err != nil {
			return err
		}
		w.log.Debug("status: written", "object", key.String(), "type", fmt.Sprintf("%T", cur), "generation", gen)
		wrote = true
		return nil
	})
	if apierrors.IsNotFound(err) {
		return false, nil // deleted since the build; nothing to report on
	}
	return wrote, err
}

// mergePolicy computes the policy status to write: the ancestors of other
// controllers as they are, then ours from st.
func (w *StatusWriter) mergePolicy(old fjordv1a1.PolicyStatus, st policy.Status) fjordv1a1.PolicyStatus {
	now := w.stamp()
	var out fjordv1a1.PolicyStatus
	for _, a := range old.Ancestors {
		if a.ControllerName != fjordv1a1.ControllerName {
			out.Ancestors = append(out.Ancestors, a)
		}
	}
	for _, a := range st.Ancestors {
		a = *a.DeepCopy()
		i := slices.IndexFunc(old.Ancestors, func(o fjordv1a1.PolicyAncestorStatus) bool {
			return o.ControllerName == fjordv1a1.ControllerName && equality.Semantic.DeepEqual(o.AncestorRef, a.AncestorRef)
		})
		var prev []metav1.Condition
		if i >= 0 {
			prev = old.Ancestors[i].Conditions
		}
		stampConditions(a.Conditions, prev, now)
		out.Ancestors = append(out.Ancestors, a)
	}
	return out
}

// mergeRoute computes a route's status parents: other controllers' as they
// are, then ours from st.
func (w *StatusWriter) mergeRoute(old []gatewayv1.RouteParentStatus, st policy.RouteStatus) []gatewayv1.RouteParentStatus {
	now := w.stamp()
	var out []gatewayv1.RouteParentStatus
	for _, p := range old {
		if p.ControllerName != fjordv1a1.ControllerName {
			out = append(out, p)
		}
	}
	for _, p := range st.Parents {
		next := gatewayv1.RouteParentStatus{
			ParentRef:      parentReference(p.ParentRef),
			ControllerName: gatewayv1.GatewayController(p.ControllerName),
			Conditions:     slices.Clone(p.Conditions),
		}
		i := slices.IndexFunc(old, func(o gatewayv1.RouteParentStatus) bool {
			return o.ControllerName == next.ControllerName && equality.Semantic.DeepEqual(o.ParentRef, next.ParentRef)
		})
		var prev []metav1.Condition
		if i >= 0 {
			prev = old[i].Conditions
		}
		stampConditions(next.Conditions, prev, now)
		out = append(out, next)
	}
	return out
}

// parentReference writes a model parentRef back in the API's form. Group
// and kind are always set (the model carries the API's defaults), so the
// status names the parent exactly as the stored spec does.
func parentReference(p model.ParentRef) gatewayv1.ParentReference {
	out := gatewayv1.ParentReference{
		Group: ptr.To(gatewayv1.Group(p.Group)),
		Kind:  ptr.To(gatewayv1.Kind(p.Kind)),
		Name:  gatewayv1.ObjectName(p.Name),
	}
	if p.Namespace != "" {
		out.Namespace = ptr.To(gatewayv1.Namespace(p.Namespace))
	}
	if p.SectionName != "" {
		out.SectionName = ptr.To(gatewayv1.SectionName(p.SectionName))
	}
	if p.Port != 0 {
		out.Port = ptr.To(gatewayv1.PortNumber(p.Port))
	}
	return out
}

// stamp is the lastTransitionTime of a condition that changes now, at the
// second precision the API stores.
func (w *StatusWriter) stamp() metav1.Time {
	return metav1.NewTime(w.now().UTC().Truncate(time.Second))
}

// stampConditions sets each condition's lastTransitionTime: the previous
// one when the condition of that type in prev has the same status, reason
// and message, now otherwise.
func stampConditions(conds, prev []metav1.Condition, now metav1.Time) {
	for i := range conds {
		c := &conds[i]
		c.LastTransitionTime = now
		j := slices.IndexFunc(prev, func(p metav1.Condition) bool { return p.Type == c.Type })
		if j >= 0 && prev[j].Status == c.Status && prev[j].Reason == c.Reason && prev[j].Message == c.Message {
			c.LastTransitionTime = prev[j].LastTransitionTime
		}
	}
}
