package load

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"

	"github.com/fjordmesh/fjord/xds/node"
	"github.com/fjordmesh/fjord/xds/translate"
)

// FleetSpec is the mix of simulated proxies.
type FleetSpec struct {
	Proxies int `json:"proxies"`
	// EnvoyFraction of the proxies subscribe like Envoy sidecars, the rest
	// like proxyless gRPC clients.
	EnvoyFraction float64 `json:"envoyFraction"`
	// DeltaFraction of each pattern use the incremental protocol, the rest
	// state of the world.
	DeltaFraction float64 `json:"deltaFraction"`
	// GRPCDeltaFraction, when set, is the share of gRPC-like proxies using
	// the incremental protocol instead of DeltaFraction. The fleet Fjord's
	// own bootstraps make has Envoy on delta and gRPC on state of the world
	// (grpc-go speaks nothing else): DeltaFraction 1, GRPCDeltaFraction 0.
	GRPCDeltaFraction *float64 `json:"grpcDeltaFraction,omitempty"`
	// NodeOnce makes the Envoy-like proxies send their node only in the
	// first request of each stream, as the Envoys of fjordctl bootstrap
	// do (set_node_on_first_message_only); otherwise they send it in every
	// request, as Envoy does by default. gRPC-like proxies send it once
	// per stream either way, as grpc-go does.
	NodeOnce bool `json:"nodeOnce,omitempty"`
	// GRPCServices is how many Services each gRPC client dials.
	GRPCServices int `json:"grpcServices"`
	// Seed makes the mix and the dialled Services reproducible.
	Seed uint64 `json:"seed"`
}

// DeltaShare says which share of the fleet speaks delta: one percentage,
// or one per kind when gRPC-like proxies have their own.
func (f FleetSpec) DeltaShare() string {
	if f.GRPCDeltaFraction == nil {
		return fmt.Sprintf("%.0f%%", 100*f.DeltaFraction)
	}
	return fmt.Sprintf("Envoy-like %.0f%%, gRPC-like %.0f%%", 100*f.DeltaFraction, 100**f.GRPCDeltaFraction)
}

// PlanProxies assigns every proxy its pattern, protocol, identity and, for
// gRPC clients, the Services it dials, shuffled so that any prefix of the
// list (a ramp step) has the same mix as the whole.
func PlanProxies(spec FleetSpec, m *Mesh) []ProxySpec {
	rng := rand.New(rand.NewPCG(spec.Seed, 0x6a6f7264))
	nEnvoy := int(float64(spec.Proxies)*spec.EnvoyFraction + 0.5)
	var out []ProxySpec
	add := func(pattern Pattern, n int) {
		share := spec.DeltaFraction
		if pattern == GRPCLike && spec.GRPCDeltaFraction != nil {
			share = *spec.GRPCDeltaFraction
		}
		nDelta := int(float64(n)*share + 0.5)
		for i := range n {
			out = append(out, ProxySpec{Pattern: pattern, Delta: i < nDelta, NodeOnce: spec.NodeOnce})
		}
	}
	add(EnvoyLike, nEnvoy)
	add(GRPCLike, spec.Proxies-nEnvoy)
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	dials := max(1, min(spec.GRPCServices, len(m.services)))
	for i := range out {
		ps := &out[i]
		kind := node.Envoy
		if ps.Pattern == GRPCLike {
			kind = node.GRPC
			picked := map[int]bool{}
			for len(picked) < dials {
				picked[rng.IntN(len(m.services))] = true
			}
			for svc := range picked {
				ps.Services = append(ps.Services, svc)
			}
			slices.Sort(ps.Services)
			for _, svc := range ps.Services {
				s := m.services[svc]
				ps.Listeners = append(ps.Listeners, translate.ListenerName(node.GRPC, s.key, s.port))
			}
		}
		ns := m.namespaces[i%len(m.namespaces)]
		if len(ps.Services) > 0 {
			ns = m.services[ps.Services[0]].key.Namespace
		}
		proto := "sotw"
		if ps.Delta {
			proto = "delta"
		}
		ps.Info = node.Info{
			Namespace:      ns,
			Workload:       fmt.Sprintf("load-%s-%s-%05d", ps.Pattern, proto, i),
			ServiceAccount: fmt.Sprintf("load-%05d", i),
			Kind:           kind,
		}
	}
	return out
}

// Fleet is the set of simulated proxies, each on its own gRPC connection
// as a real proxy would be.
type Fleet struct {
	target       string
	reconnectMax time.Duration
	intern       *interner
	tracker      tracker
	// codec is the gRPC codec of every proxy's connection; its pool is
	// also the connections' buffer pool.
	codec proxyCodec

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	proxies []*proxy
	specs   []ProxySpec
	conns   []*grpc.ClientConn
	errs    int
	// errKinds counts stream errors by message (the first 10 messages).
	errKinds map[string]int
}

// NewFleet prepares proxies for specs, none started. A broken connection
// is retried with grpc-go's exponential backoff capped at reconnectMax.
func NewFleet(target string, specs []ProxySpec, reconnectMax time.Duration) *Fleet {
	ctx, cancel := context.WithCancel(context.Background())
	return &Fleet{
		target: target, reconnectMax: reconnectMax, specs: specs,
		intern: newInterner(), codec: newProxyCodec(), ctx: ctx, cancel: cancel,
	}
}

// Started is the number of proxies started.
func (f *Fleet) Started() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

func (f *Fleet) started() []*proxy {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.proxies[:len(f.conns)])
}

// prepare creates proxies until there are n (not beyond the plan) and
// returns the new ones, not yet running, so that a change can be watched
// on them before they connect.
func (f *Fleet) prepare(n int) []*proxy {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*proxy
	for id := len(f.proxies); id < n && id < len(f.specs); id++ {
		p := newProxy(id, f.specs[id], f)
		f.proxies = append(f.proxies, p)
		out = append(out, p)
	}
	return out
}

// envoyWindow is Envoy's default HTTP/2 stream and connection window
// (Http2ProtocolOptions initial_stream_window_size and
// initial_connection_window_size), which its xDS connection uses.
const envoyWindow = 256 << 20

// start runs every prepared proxy that is not running yet, each on its own
// connection.
func (f *Fleet) start() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.proxies[len(f.conns):] {
		opts := []grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: backoff.Config{
					BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2,
					MaxDelay: f.reconnectMax,
				},
				MinConnectTimeout: 5 * time.Second,
			}),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30), grpc.ForceCodecV2(f.codec)),
			experimental.WithBufferPool(f.codec.pool),
		}
		if p.spec.Pattern == EnvoyLike {
			// Envoy's HTTP/2 client opens its xDS connection with fixed
			// 256 MiB stream and connection windows and never estimates
			// bandwidth, so it sends no BDP pings and almost no window
			// updates; grpc-go's defaults (64 KiB, BDP estimation) stay
			// for the gRPC-like proxies, which are grpc-go clients.
			opts = append(opts, grpc.WithInitialWindowSize(envoyWindow), grpc.WithInitialConnWindowSize(envoyWindow))
		}
		conn, err := grpc.NewClient(f.target, opts...)
		if err != nil {
			return fmt.Errorf("proxy %s: %w", p.spec.Info.ID(), err)
		}
		f.conns = append(f.conns, conn)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			p.run(f.ctx, conn)
		}()
	}
	return nil
}

// Close ends every stream and connection and waits for the proxies.
func (f *Fleet) Close() {
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
}

func (f *Fleet) streamError(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs++
	msg := fmt.Sprint(err)
	if f.errKinds == nil {
		f.errKinds = map[string]int{}
	}
	if _, ok := f.errKinds[msg]; ok || len(f.errKinds) < 10 {
		f.errKinds[msg]++
	}
}

// StreamErrors is the number of streams that ended with an error, and how
// many ended with each of the first ten distinct messages.
func (f *Fleet) StreamErrors() (int, map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.errs, maps.Clone(f.errKinds)
}

// stragglers describes up to n affected proxies that have not converged on
// pc: what they are, their streams and what they hold of the change, so a
// report says why a change did not converge.
func (f *Fleet) stragglers(pc *pendingChange, n int) []string {
	var out []string
	for _, p := range f.started() {
		if len(out) == n {
			break
		}
		if !pc.affected[p.id] || pc.at[p.id].Load() != 0 {
			continue
		}
		out = append(out, p.describe())
	}
	return out
}

// Watch starts watching a change on every started proxy; call it before
// writing the change.
func (f *Fleet) Watch(c *Change) *pendingChange {
	return f.tracker.watch(c, f.started(), len(f.specs))
}

// Forget stops watching a change.
func (f *Fleet) Forget(pc *pendingChange) { f.tracker.forget(pc) }

// Up is the number of started proxies with an open stream.
func (f *Fleet) Up() int {
	n := 0
	for _, p := range f.started() {
		if p.upAt.Load() != 0 {
			n++
		}
	}
	return n
}

// counters is a snapshot of what every proxy has received.
type counters struct {
	responses, bytes []int64
}

func (f *Fleet) counters() counters {
	c := counters{responses: make([]int64, len(f.specs)), bytes: make([]int64, len(f.specs))}
	for _, p := range f.started() {
		c.responses[p.id] = p.responses.Load()
		c.bytes[p.id] = p.bytes.Load()
	}
	return c
}

// Shrinks returns every Shrink recorded so far.
func (f *Fleet) Shrinks() []Shrink {
	var out []Shrink
	for _, p := range f.started() {
		p.mu.Lock()
		out = append(out, p.shrinks...)
		p.mu.Unlock()
	}
	return out
}

// NACKs is the number of responses proxies could not decode.
func (f *Fleet) NACKs() int64 {
	var n int64
	for _, p := range f.started() {
		n += p.nacks.Load()
	}
	return n
}
