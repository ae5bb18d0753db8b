package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fjordmesh/fjord/xds/cache"
	"github.com/fjordmesh/fjord/xds/node"
)

// watchCounter is the cache with a count of the watches open in it.
type watchCounter struct {
	cachev3.Cache

	mu   sync.Mutex
	open int
}

func (w *watchCounter) counted(cancel func(), err error) (func(), error) {
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.open++
	w.mu.Unlock()
	var once sync.Once
	return func() {
		cancel()
		once.Do(func() {
			w.mu.Lock()
			w.open--
			w.mu.Unlock()
		})
	}, nil
}

func (w *watchCounter) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	return w.counted(w.Cache.CreateWatch(req, sub, ch))
}

func (w *watchCounter) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	return w.counted(w.Cache.CreateDeltaWatch(req, sub, ch))
}

func (w *watchCounter) watches() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.open
}

// TestCloseEndsEveryStream: Close ends every kind of stream, every watch a
// stream opened is cancelled, and no goroutine of the server is left once
// the gRPC server has stopped.
func TestCloseEndsEveryStream(t *testing.T) {
	before := runtime.NumGoroutine()
	log := slog.New(slog.DiscardHandler)
	c := cache.New(log)
	if _, err := c.Update(node.Envoy, endpointsOnly(map[string]string{"web.demo": "10.0.0.1", "echo.demo": "10.0.0.2"})); err != nil {
		t.Fatal(err)
	}
	counter := &watchCounter{Cache: c}
	s := newServer(counter, nil, log)
	g := grpc.NewServer(GRPCOptions()...)
	s.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve(lis) }()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sidecar := node.Info{Namespace: "demo", Workload: "web", ServiceAccount: "web", Kind: node.Envoy}.Node()

	// Each stream is open once its first response is in. Every watch a
	// stream opened must be cancelled, answered or not.
	var ends []func() error
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
	sotw, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, typeURL := range []string{resourcev3.ClusterType, resourcev3.EndpointType} {
		if err := sotw.Send(&discoveryv3.DiscoveryRequest{Node: sidecar, TypeUrl: typeURL, ResourceNames: []string{"web.demo"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := sotw.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	ends = append(ends, func() error { _, err := sotw.Recv(); return err })
	delta, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: sidecar, TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"web.demo"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := delta.Recv(); err != nil {
		t.Fatal(err)
	}
	ends = append(ends, func() error { _, err := delta.Recv(); return err })
	cds, err := clusterservice.NewClusterDiscoveryServiceClient(cc).StreamClusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cds.Send(&discoveryv3.DiscoveryRequest{Node: sidecar, ResourceNames: []string{"web.demo"}}); err != nil {
		t.Fatal(err)
	}
	out, err := cds.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// The ACK's watch stays open: nothing changes.
	if err := cds.Send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{"web.demo"}, VersionInfo: out.GetVersionInfo(), ResponseNonce: out.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	ends = append(ends, func() error { _, err := cds.Recv(); return err })

	s.Close()
	for i, end := range ends {
		if err := end(); err == nil {
			t.Errorf("stream %d: received a response after Close, want its end", i)
		}
	}
	for counter.watches() != 0 {
		if ctx.Err() != nil {
			t.Fatalf("%d watches still open after every stream ended", counter.watches())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cc.Close()
	g.GracefulStop()
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		t.Fatal(err)
	}
	for runtime.NumGoroutine() > before {
		if ctx.Err() != nil {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines left (%d before):\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
