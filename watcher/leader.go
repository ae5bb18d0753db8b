package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
)

// Leader election needs its Lease, and records "became leader" events on
// it, in the control plane's namespace.
//
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=fjord-system,resources=leases,verbs=get;create;update
// +kubebuilder:rbac:groups="",namespace=fjord-system,resources=events,verbs=create;patch

// Elector says whether this replica may write status. Every replica serves
// xDS; only the one that leads writes to the API server, so that replicas
// never fight over a policy's status.
type Elector interface {
	// Leading reports whether this replica leads now.
	Leading() bool
	// Await blocks until this replica leads and returns a context that
	// ends when its leadership does. It fails only when ctx ends first.
	Await(ctx context.Context) (context.Context, error)
}

// AlwaysLeader is the Elector of a control plane run without leader
// election (--leader-elect=false): a single replica that always writes.
type AlwaysLeader struct{}

// Leading is always true.
func (AlwaysLeader) Leading() bool { return true }

// Await returns ctx: the leadership lasts as long as the caller.
func (AlwaysLeader) Await(ctx context.Context) (context.Context, error) { return ctx, ctx.Err() }

// Default timings of the election, as in Kubernetes' own controllers: a
// leader that stops renewing is replaced within LeaseDuration, and gives
// up RenewDeadline after its last renewal, before anyone else can take over.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
	DefaultLeaseName     = "fjord-control-plane"
)

// LeaderOptions configures a Leader. Zero values take the defaults.
type LeaderOptions struct {
	// Namespace holds the Lease: the control plane's own namespace.
	// Required.
	Namespace string
	// Name is the Lease's name. Default DefaultLeaseName.
	Name string
	// Identity names this replica in the Lease. Default: the host name
	// (the pod name in a cluster) and a random suffix, so that two
	// processes on one host never share an identity.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are the election's
	// timings; see the defaults.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// Leader runs leader election on a coordination.k8s.io Lease with
// client-go's leaderelection. Unlike controller-runtime's manager, which
// exits the process when leadership is lost, a Leader that loses the Lease
// only stops leading and campaigns again: the replica keeps serving xDS
// from its caches, and only its status writes stop.
type Leader struct {
	clients      *kubernetes.Clientset
	ns, name, id string
	lease, renew time.Duration
	retry        time.Duration
	log          *slog.Logger

	mu      sync.Mutex
	term    context.Context // the current leadership, nil if none yet
	changed chan struct{}   // closed when term changes
}

// NewLeader prepares an election; Run takes part in it.
func NewLeader(cfg *rest.Config, o LeaderOptions) (*Leader, error) {
	if o.Namespace == "" {
		return nil, errors.New("leader election: namespace: required (the control plane's namespace)")
	}
	if o.Name == "" {
		o.Name = DefaultLeaseName
	}
	if o.Identity == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("leader election: identity from the host name: %w", err)
		}
		o.Identity = host + "_" + string(uuid.NewUUID())
	}
	if o.LeaseDuration == 0 {
		o.LeaseDuration = DefaultLeaseDuration
	}
	if o.RenewDeadline == 0 {
		o.RenewDeadline = DefaultRenewDeadline
	}
	if o.RetryPeriod == 0 {
		o.RetryPeriod = DefaultRetryPeriod
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	// One hung request must not cost the lease: bound each call well
	// below the renew deadline, as client-go advises.
	c := rest.CopyConfig(cfg)
	c.Timeout = max(time.Second, o.RenewDeadline/2)
	cs, err := kubernetes.NewForConfig(rest.AddUserAgent(c, "fjord-leader-election"))
	if err != nil {
		return nil, fmt.Errorf("leader election: client for %s: %w", cfg.Host, err)
	}
	l := &Leader{
		clients: cs, ns: o.Namespace, name: o.Name, id: o.Identity,
		lease: o.LeaseDuration, renew: o.RenewDeadline, retry: o.RetryPeriod,
		log:     o.Log.With("lease", o.Namespace+"/"+o.Name, "identity", o.Identity),
		changed: make(chan struct{}),
	}
	// Timings that cannot work (a renew deadline longer than the lease)
	// fail here, at startup, rather than in Run.
	if _, err := leaderelection.NewLeaderElector(l.election(nil)); err != nil {
		return nil, fmt.Errorf("leader election on lease %s/%s: %w", l.ns, l.name, err)
	}
	return l, nil
}

// election is the configuration of one campaign.
func (l *Leader) election(events resourcelock.EventRecorder) leaderelection.LeaderElectionConfig {
	return leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: l.ns, Name: l.name},
			Client:     l.clients.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: l.id, EventRecorder: events},
		},
		LeaseDuration:   l.lease,
		RenewDeadline:   l.renew,
		RetryPeriod:     l.retry,
		ReleaseOnCancel: true,
		Name:            l.name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: l.started,
			OnStoppedLeading: func() {},
			OnNewLeader:      l.newLeader,
		},
	}
}

// Identity is this replica's name in the Lease.
func (l *Leader) Identity() string { return l.id }

// Run takes part in the election until ctx ends. When ctx ends while this
// replica leads, the Lease is released so that another replica takes over
// at once instead of after the lease duration. A lost Lease (the API
// server unreachable past the renew deadline, say) ends the term, and Run
// campaigns again.
func (l *Leader) Run(ctx context.Context) error {
	events := record.NewBroadcaster(record.WithContext(ctx))
	defer events.Shutdown()
	events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: l.clients.CoreV1().Events(l.ns)})
	recorder := events.NewRecorder(clientgoscheme.Scheme, corev1.EventSource{Component: DefaultLeaseName})

	for {
		le, err := leaderelection.NewLeaderElector(l.election(recorder))
		if err != nil {
			return fmt.Errorf("leader election on lease %s/%s: %w", l.ns, l.name, err)
		}
		le.Run(ctx) // returns when ctx ends or the lease is lost
		if ctx.Err() != nil {
			return nil
		}
		l.log.Warn("leader election: lost the lease; status writes stop, serving continues; campaigning again")
	}
}

// started is called by the elector with a context that ends with this
// term of leadership.
func (l *Leader) started(term context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.term = term
	close(l.changed)
	l.changed = make(chan struct{})
	l.log.Info("leader election: leading; this replica writes status")
}

// newLeader is called by the elector whenever it sees another holder.
func (l *Leader) newLeader(id string) {
	l.log.Info("leader election: new leader", "leader", id)
}

// Leading implements Elector.
func (l *Leader) Leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term != nil && l.term.Err() == nil
}

// Await implements Elector.
func (l *Leader) Await(ctx context.Context) (context.Context, error) {
	for {
		l.mu.Lock()
		term, changed := l.term, l.changed
		l.mu.Unlock()
		if term != nil && term.Err() == nil {
			return term, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}
