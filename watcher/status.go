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
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/fjordmesh/fjord/policy"
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
)

// What the status writer needs.
//
// +kubebuilder:rbac:groups=fjord.dev,resources=resiliencepolicies/status,verbs=update;patch

// ErrNotLeader is returned by StatusWriter.Write on a replica that does not
// lead: only the leader writes status.
var ErrNotLeader = errors.New("not the leader: only the leader writes policy status")

// Backoff of the status writer's retries after a failed write.
const (
	statusRetryMin = time.Second
	statusRetryMax = time.Minute
)

// DefaultFieldOwner is the field manager of the status the control plane
// writes.
const DefaultFieldOwner = "fjord-control-plane"

// StatusWriter writes ResiliencePolicy status from resolution's status
// data, through the status subresource. It writes only on the leader, and
// only what changed: a status equal to the cached object's is not written
// again, and a condition keeps its lastTransitionTime unless its status,
// reason or message changed. So a control plane that rebuilds its model a
// thousand times an hour does not churn the API server, and `kubectl get rp
// -w` shows real transitions only. Ancestors written by other controllers
// are left as they are.
type StatusWriter struct {
	client    client.Client // writes
	cached    client.Reader // the source's cache, to compare against
	apiReader client.Reader // fresh reads after a conflict
	leader    Elector
	owner     string
	now       func() time.Time
	log       *slog.Logger

	mu      sync.Mutex
	desired []policy.Status
	poke    chan struct{}

	writing sync.Mutex // one Write at a time
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

// Update hands the writer the statuses of the latest resolution. It never
// blocks: the pipeline publishes to the proxies without waiting for the
// API server, and Run writes the newest statuses when it gets to them.
// statuses must not be modified afterwards.
func (w *StatusWriter) Update(statuses []policy.Status) {
	w.mu.Lock()
	w.desired = statuses
	w.mu.Unlock()
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

func (w *StatusWriter) latest() []policy.Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.desired
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
			if statuses := w.latest(); statuses != nil {
				_, err := w.Write(ctx, statuses)
				switch {
				case errors.Is(err, ErrNotLeader) || ctx.Err() != nil:
					return // the term ended
				case err != nil:
					w.log.Warn("policy status: write failed, retrying", "in", delay, "err", err)
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
// returns how many it wrote. It returns ErrNotLeader, writing nothing, when
// this replica does not lead. A policy that is gone, or whose generation
// differs from the one the status was computed from (a newer build is on
// its way), is skipped. Errors name the policy; one policy's failure does
// not stop the others.
func (w *StatusWriter) Write(ctx context.Context, statuses []policy.Status) (int, error) {
	w.writing.Lock()
	defer w.writing.Unlock()
	written := 0
	var errs []error
	for _, st := range statuses {
		if !w.leader.Leading() {
			return written, ErrNotLeader
		}
		if err := ctx.Err(); err != nil {
			return written, errors.Join(append(errs, err)...)
		}
		ok, err := w.writeOne(ctx, st)
		if err != nil {
			errs = append(errs, fmt.Errorf("status of ResiliencePolicy %s: %w", st.Key, err))
			continue
		}
		if ok {
			written++
		}
	}
	return written, errors.Join(errs...)
}

// writeOne writes one policy's status if it changed. The first attempt
// starts from the cached object, which is nearly always current; a conflict
// means the cache was behind, and the retry reads the API server.
func (w *StatusWriter) writeOne(ctx context.Context, st policy.Status) (bool, error) {
	key := client.ObjectKey{Namespace: st.Namespace, Name: st.Name}
	reader := w.cached
	wrote := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var cur fjordv1a1.ResiliencePolicy
		if err := reader.Get(ctx, key, &cur); err != nil {
			return err
		}
		reader = w.apiReader
		if cur.Generation != st.Generation {
			w.log.Debug("policy status: generation moved on, skipping", "policy", st.Key.String(),
				"statusGeneration", st.Generation, "generation", cur.Generation)
			return nil
		}
		next := w.merge(cur.Status, st)
		if equality.Semantic.DeepEqual(cur.Status, next) {
			return nil
		}
		cur.Status = next
		if err := w.client.Status().Update(ctx, &cur, client.FieldOwner(w.owner)); err != nil {
			return err
		}
		w.log.Debug("policy status: written", "policy", st.Key.String(), "generation", st.Generation)
		wrote = true
		return nil
	})
	if apierrors.IsNotFound(err) {
		return false, nil // deleted since the build; nothing to report on
	}
	return wrote, err
}

// merge computes the status to write: the ancestors of other controllers
// as they are, then ours from st. A condition that did not change keeps
// its lastTransitionTime; one that did gets the current time.
func (w *StatusWriter) merge(old fjordv1a1.PolicyStatus, st policy.Status) fjordv1a1.PolicyStatus {
	now := metav1.NewTime(w.now().UTC().Truncate(time.Second))
	var out fjordv1a1.PolicyStatus
	for _, a := range old.Ancestors {
		if a.ControllerName != fjordv1a1.ControllerName {
			out.Ancestors = append(out.Ancestors, a)
		}
	}
	for _, a := range st.Ancestors {
		a = *a.DeepCopy()
		prev := findAncestor(old.Ancestors, a.AncestorRef)
		for i := range a.Conditions {
			c := &a.Conditions[i]
			c.LastTransitionTime = now
			if prev == nil {
				continue
			}
			if p := findCondition(prev.Conditions, c.Type); p != nil &&
				p.Status == c.Status && p.Reason == c.Reason && p.Message == c.Message {
				c.LastTransitionTime = p.LastTransitionTime
			}
		}
		out.Ancestors = append(out.Ancestors, a)
	}
	return out
}

func findAncestor(as []fjordv1a1.PolicyAncestorStatus, ref fjordv1a1.AncestorRef) *fjordv1a1.PolicyAncestorStatus {
	i := slices.IndexFunc(as, func(a fjordv1a1.PolicyAncestorStatus) bool {
		return a.ControllerName == fjordv1a1.ControllerName && equality.Semantic.DeepEqual(a.AncestorRef, ref)
	})
	if i < 0 {
		return nil
	}
	return &as[i]
}

func findCondition(cs []metav1.Condition, typ string) *metav1.Condition {
	i := slices.IndexFunc(cs, func(c metav1.Condition) bool { return c.Type == typ })
	if i < 0 {
		return nil
	}
	return &cs[i]
}
