package watcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/fjordmesh/fjord/watcher/model"
)

// benchServices and benchEndpoints size the cluster of
// BenchmarkKubeSnapshotEndpointChange: every Service has one EndpointSlice
// of benchEndpoints endpoints, each backed by its own Pod. Creating the
// objects through the API server costs most of the benchmark's setup,
// which is why it holds a few hundred Services rather than thousands.
const benchServices, benchEndpoints = 300, 10

var benchCluster struct {
	once sync.Once
	err  error
}

// benchObjects creates the benchmark's namespace and objects once per test
// binary.
func benchObjects(b *testing.B, c client.Client, ns string) {
	benchCluster.once.Do(func() {
		ctx := context.Background()
		if benchCluster.err = c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); benchCluster.err != nil {
			return
		}
		errs := make([]error, benchServices)
		var wg sync.WaitGroup
		limit := make(chan struct{}, 8)
		for s := range benchServices {
			wg.Add(1)
			limit <- struct{}{}
			go func() {
				defer func() { <-limit; wg.Done() }()
				errs[s] = createBenchService(ctx, c, ns, s)
			}()
		}
		wg.Wait()
		benchCluster.err = errors.Join(errs...)
	})
	if benchCluster.err != nil {
		b.Fatal(benchCluster.err)
	}
}

// createBenchService creates the s-th Service of the benchmark, its pods
// and its slice.
func createBenchService(ctx context.Context, c client.Client, ns string, s int) error {
	name := fmt.Sprintf("svc-%04d", s)
	// Headless: envtest's service IP range holds a few hundred addresses.
	svc := service(ns, name, corev1.ServicePort{Name: "http", Port: 8080})
	svc.Spec.ClusterIP = corev1.ClusterIPNone
	if err := c.Create(ctx, svc); err != nil {
		return err
	}
	var eps []discoveryv1.Endpoint
	for e := range benchEndpoints {
		p := fmt.Sprintf("%s-pod-%02d", name, e)
		if err := c.Create(ctx, pod(ns, p, name+"-sa", nil, owner("apps/v1", "StatefulSet", name))); err != nil {
			return err
		}
		eps = append(eps, endpoint(fmt.Sprintf("10.%d.%d.%d", s/250, s%250, e+1), true, p))
	}
	return c.Create(ctx, endpointSlice(ns, name+"-1", name,
		[]discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](9000)}}, eps...))
}

// BenchmarkKubeSnapshotEndpointChange measures what a build costs the
// Kubernetes source when one endpoint of one EndpointSlice flipped since the
// last build: listing the caches into a snapshot and comparing it with the
// published one. The write to the API server and the wait for the cache to
// see it are not timed.
func BenchmarkKubeSnapshotEndpointChange(b *testing.B) {
	cfg, c := apiServer(b)
	const ns = "bench-snapshot"
	benchObjects(b, c, ns)
	src, cached := startCaches(b, cfg)
	ctx := b.Context()
	kb := benchBuild(src, ctx)
	kb.build()
	if kb.published == nil || len(kb.published.EndpointSlices) < benchServices {
		b.Fatalf("first build published %v", kb.published)
	}
	slice := &discoveryv1.EndpointSlice{}
	key := client.ObjectKey{Namespace: ns, Name: "svc-0000-1"}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if err := c.Get(ctx, key, slice); err != nil {
			b.Fatal(err)
		}
		slice.Endpoints[0].Conditions.Ready = ptr.To(!*slice.Endpoints[0].Conditions.Ready)
		if err := c.Update(ctx, slice); err != nil {
			b.Fatal(err)
		}
		awaitCache(b, cached, slice, false)
		before := kb.published
		b.StartTimer()
		kb.build()
		b.StopTimer()
		if kb.published == before {
			b.Fatal("the endpoint change was not published")
		}
		b.StartTimer()
	}
}

// benchBuild is the kubeBuild a KubeSource's Run would make, publishing
// nowhere.
func benchBuild(src *KubeSource, ctx context.Context) *kubeBuild {
	return newKubeBuild(src, ctx, func(*model.Snapshot) {}, map[model.RouteKind]bool{})
}
