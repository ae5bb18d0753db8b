package watcher

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
	"github.com/fjordmesh/fjord/watcher/model"
)

// only reduces a snapshot to the objects of the given namespaces, so that
// tests sharing one API server look only at their own.
func only(s *model.Snapshot, namespaces ...string) *model.Snapshot {
	in := func(k model.Key) bool { return slices.Contains(namespaces, k.Namespace) }
	out := &model.Snapshot{}
	for _, x := range s.Services {
		if in(x.Key) {
			out.Services = append(out.Services, x)
		}
	}
	for _, x := range s.EndpointSlices {
		if in(x.Key) {
			out.EndpointSlices = append(out.EndpointSlices, x)
		}
	}
	for _, x := range s.Policies {
		if in(x.Key) {
			out.Policies = append(out.Policies, x)
		}
	}
	for _, x := range s.Routes {
		if in(x.Key) {
			out.Routes = append(out.Routes, x)
		}
	}
	return out
}

// diffModel compares snapshots. Creation timestamps come from the API
// server; TestKubeSourceFollowsChanges checks that they are there.
func diffModel(want, got *model.Snapshot) string {
	return cmp.Diff(want, got, cmpopts.EquateEmpty(), cmpopts.IgnoreFields(model.Policy{}, "CreationTimestamp"))
}

func service(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Ports: ports},
	}
}

func endpointSlice(ns, name, svc string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func endpoint(addr string, ready bool, pod string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}
	if pod != "" {
		e.TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: pod}
	}
	return e
}

func pod(ns, name, sa string, labels map[string]string, owner *metav1.OwnerReference) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			Containers:         []corev1.Container{{Name: "app", Image: "registry.invalid/app"}},
		},
	}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return p
}

func owner(apiVersion, kind, name string) *metav1.OwnerReference {
	return &metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: name,
		UID: types.UID("uid-" + name), Controller: ptr.To(true)}
}

func resiliencePolicy(ns, name string, spec fjordv1a1.ResiliencePolicySpec) *fjordv1a1.ResiliencePolicy {
	return &fjordv1a1.ResiliencePolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

func timeoutSpec(request string, targets ...string) fjordv1a1.ResiliencePolicySpec {
	s := fjordv1a1.ResiliencePolicySpec{Timeout: &fjordv1a1.Timeout{Request: ptr.To(fjordv1a1.Duration(request))}}
	for _, t := range targets {
		s.TargetRefs = append(s.TargetRefs, fjordv1a1.TargetRef{Kind: "Service", Name: t})
	}
	return s
}

func modelPolicy(ns, name string, gen int64, spec fjordv1a1.ResiliencePolicySpec) model.Policy {
	return model.Policy{Key: model.Key{Namespace: ns, Name: name}, Generation: gen, Spec: spec}
}

// TestKubeSourceFollowsChanges creates, updates and deletes Services,
// EndpointSlices, Pods and policies on a real API server and checks the
// model the source publishes after each step.
func TestKubeSourceFollowsChanges(t *testing.T) {
	cfg, c := apiServer(t)
	const ns = "follow"
	createNamespace(t, c, ns, nil)
	_, p := runSource(t, cfg, KubeOptions{})

	mustCreate(t, c, service(ns, "echo",
		corev1.ServicePort{Name: "grpc", Port: 8080, AppProtocol: ptr.To("grpc")},
		corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}))
	for _, x := range []*corev1.Pod{
		pod(ns, "echo-5d8f9c7b6-x2k4p", "echo-sa", map[string]string{"pod-template-hash": "5d8f9c7b6"},
			owner("apps/v1", "ReplicaSet", "echo-5d8f9c7b6")),
		pod(ns, "db-0", "", nil, owner("apps/v1", "StatefulSet", "db")),
		pod(ns, "lonely", "lonely-sa", nil, nil),
	} {
		mustCreate(t, c, x)
	}
	slice := endpointSlice(ns, "echo-1", "echo", []discoveryv1.EndpointPort{{Name: ptr.To("grpc"), Port: ptr.To[int32](9000)}},
		endpoint("10.0.0.1", true, "echo-5d8f9c7b6-x2k4p"),
		endpoint("10.0.0.2", false, "db-0"),
		endpoint("10.0.0.3", true, "lonely"),
		endpoint("10.0.0.4", true, "not-yet-seen"),
		endpoint("10.0.0.5", true, ""))
	mustCreate(t, c, slice)
	// A slice the mesh cannot use (FQDN) is left out, not fatal.
	fqdn := endpointSlice(ns, "echo-fqdn", "echo", nil, discoveryv1.Endpoint{Addresses: []string{"echo.example.com"}})
	fqdn.AddressType = discoveryv1.AddressTypeFQDN
	mustCreate(t, c, fqdn)
	rp := resiliencePolicy(ns, "echo-timeout", timeoutSpec("5s", "echo"))
	mustCreate(t, c, rp)

	wantSvc := model.Service{Key: model.Key{Namespace: ns, Name: "echo"},
		Ports: []model.ServicePort{{Name: "grpc", Port: 8080, AppProtocol: "grpc"}}}
	wantSlice := model.EndpointSlice{Key: model.Key{Namespace: ns, Name: "echo-1"}, Service: "echo",
		Ports: []model.EndpointPort{{Name: "grpc", Port: 9000}},
		Endpoints: []model.Endpoint{
			{Address: "10.0.0.1", Ready: true, Workload: "echo", ServiceAccount: "echo-sa"},
			{Address: "10.0.0.2", Ready: false, Workload: "db", ServiceAccount: "default"},
			{Address: "10.0.0.3", Ready: true, Workload: "lonely", ServiceAccount: "lonely-sa"},
			{Address: "10.0.0.4", Ready: true, Workload: "not-yet-seen"},
			{Address: "10.0.0.5", Ready: true},
		}}
	want := &model.Snapshot{
		Services:       []model.Service{wantSvc},
		EndpointSlices: []model.EndpointSlice{wantSlice},
		Policies:       []model.Policy{modelPolicy(ns, "echo-timeout", 1, timeoutSpec("5s", "echo"))},
	}
	got := p.waitFor(t, want, ns)
	for _, pol := range only(got, ns).Policies {
		if pol.CreationTimestamp.IsZero() {
			t.Errorf("policy %s: creationTimestamp not taken from the API server", pol.Key)
		}
	}

	t.Run("update", func(t *testing.T) {
		svc := &corev1.Service{}
		if err := c.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "echo"}, svc); err != nil {
			t.Fatal(err)
		}
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "http", Port: 8081})
		if err := c.Update(t.Context(), svc); err != nil {
			t.Fatalf("updating Service: %v", err)
		}
		if err := c.Get(t.Context(), client.ObjectKeyFromObject(slice), slice); err != nil {
			t.Fatal(err)
		}
		slice.Endpoints[1].Conditions.Ready = ptr.To(true)
		slice.Endpoints = slice.Endpoints[:4]
		if err := c.Update(t.Context(), slice); err != nil {
			t.Fatalf("updating EndpointSlice: %v", err)
		}
		if err := c.Get(t.Context(), client.ObjectKeyFromObject(rp), rp); err != nil {
			t.Fatal(err)
		}
		rp.Spec = timeoutSpec("7s", "echo")
		if err := c.Update(t.Context(), rp); err != nil {
			t.Fatalf("updating ResiliencePolicy: %v", err)
		}
		// A pod that shows up after its endpoint gets its identity then.
		mustCreate(t, c, pod(ns, "not-yet-seen", "late-sa", nil, owner("batch/v1", "Job", "migrate")))

		svc2 := wantSvc
		svc2.Ports = []model.ServicePort{{Name: "grpc", Port: 8080, AppProtocol: "grpc"}, {Name: "http", Port: 8081}}
		slice2 := wantSlice
		slice2.Endpoints = []model.Endpoint{
			{Address: "10.0.0.1", Ready: true, Workload: "echo", ServiceAccount: "echo-sa"},
			{Address: "10.0.0.2", Ready: true, Workload: "db", ServiceAccount: "default"},
			{Address: "10.0.0.3", Ready: true, Workload: "lonely", ServiceAccount: "lonely-sa"},
			{Address: "10.0.0.4", Ready: true, Workload: "migrate", ServiceAccount: "late-sa"},
		}
		p.waitFor(t, &model.Snapshot{
			Services:       []model.Service{svc2},
			EndpointSlices: []model.EndpointSlice{slice2},
			Policies:       []model.Policy{modelPolicy(ns, "echo-timeout", 2, timeoutSpec("7s", "echo"))},
		}, ns)
	})

	t.Run("delete", func(t *testing.T) {
		began := time.Now()
		for _, obj := range []client.Object{rp, slice, fqdn, service(ns, "echo")} {
			if err := c.Delete(t.Context(), obj); err != nil {
				t.Fatalf("deleting %T %s: %v", obj, obj.GetName(), err)
			}
		}
		p.waitFor(t, &model.Snapshot{}, ns)
		// A measurement, not an assertion: API writes to published model,
		// the coalescer's hold-off (DefaultHoldOff) included.
		t.Logf("model published %s after the first of 4 deletes was sent", time.Since(began).Round(time.Millisecond))
	})
}

// TestKubeSourceFirstPublishIsComplete starts a source on a namespace that
// already holds many objects: the first snapshot it publishes must hold all
// of them, never the part the informers had listed so far.
func TestKubeSourceFirstPublishIsComplete(t *testing.T) {
	cfg, c := apiServer(t)
	const ns = "bulk"
	createNamespace(t, c, ns, nil)
	want := &model.Snapshot{}
	for i := range 40 {
		name := fmt.Sprintf("svc-%02d", i)
		mustCreate(t, c, service(ns, name, corev1.ServicePort{Name: "http", Port: 80}))
		mustCreate(t, c, endpointSlice(ns, name+"-a", name, []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
			endpoint(fmt.Sprintf("10.1.0.%d", i+1), true, "")))
		want.Services = append(want.Services, model.Service{Key: model.Key{Namespace: ns, Name: name},
			Ports: []model.ServicePort{{Name: "http", Port: 80}}})
		want.EndpointSlices = append(want.EndpointSlices, model.EndpointSlice{Key: model.Key{Namespace: ns, Name: name + "-a"},
			Service: name, Ports: []model.EndpointPort{{Name: "http", Port: 8080}},
			Endpoints: []model.Endpoint{{Address: fmt.Sprintf("10.1.0.%d", i+1), Ready: true}}})
		if i%4 == 0 {
			mustCreate(t, c, resiliencePolicy(ns, name, timeoutSpec("3s", name)))
			want.Policies = append(want.Policies, modelPolicy(ns, name, 1, timeoutSpec("3s", name)))
		}
	}

	_, p := runSource(t, cfg, KubeOptions{})
	p.waitFor(t, want, ns)
	if diff := diffModel(want, only(p.all()[0], ns)); diff != "" {
		t.Errorf("the first published snapshot is not the whole namespace (-want +got):\n%s", diff)
	}
}

// TestKubeSourceNamespaceSelector checks which namespaces reach the model:
// by default all but kube-system; with a selector, the matching ones,
// following label changes; and always the policies of the mesh namespace.
func TestKubeSourceNamespaceSelector(t *testing.T) {
	cfg, c := apiServer(t)
	const off = "fjord.dev/mesh"
	createNamespace(t, c, "sel-in", nil)
	createNamespace(t, c, "sel-out", map[string]string{off: "disabled"})
	for _, ns := range []string{"sel-in", "sel-out", "kube-system"} {
		svc := service(ns, "sel-svc", corev1.ServicePort{Port: 80})
		mustCreate(t, c, svc)
		t.Cleanup(func() { _ = c.Delete(t.Context(), svc) })
	}
	mustCreate(t, c, resiliencePolicy("sel-out", "defaults", timeoutSpec("9s")))
	svc := func(ns string) model.Service {
		return model.Service{Key: model.Key{Namespace: ns, Name: "sel-svc"}, Ports: []model.ServicePort{{Port: 80}}}
	}
	defaults := modelPolicy("sel-out", "defaults", 1, timeoutSpec("9s"))
	all := []string{"sel-in", "sel-out", "kube-system"}

	t.Run("default", func(t *testing.T) {
		_, p := runSource(t, cfg, KubeOptions{})
		p.waitFor(t, &model.Snapshot{
			Services: []model.Service{svc("sel-in"), svc("sel-out")},
			Policies: []model.Policy{defaults},
		}, all...)
	})

	t.Run("selector", func(t *testing.T) {
		// sel-out is excluded by label but is the mesh namespace here: its
		// policies (the mesh-wide defaults) are read, its Services are not.
		_, p := runSource(t, cfg, KubeOptions{
			NamespaceSelector: off + "!=disabled," + DefaultNamespaceSelector,
			MeshNamespace:     "sel-out",
		})
		p.waitFor(t, &model.Snapshot{Services: []model.Service{svc("sel-in")}, Policies: []model.Policy{defaults}}, all...)

		setLabel := func(ns, value string) {
			t.Helper()
			n := &corev1.Namespace{}
			if err := c.Get(t.Context(), client.ObjectKey{Name: ns}, n); err != nil {
				t.Fatal(err)
			}
			n.Labels[off] = value
			if err := c.Update(t.Context(), n); err != nil {
				t.Fatalf("labelling namespace %s: %v", ns, err)
			}
		}
		setLabel("sel-out", "enabled")
		p.waitFor(t, &model.Snapshot{Services: []model.Service{svc("sel-in"), svc("sel-out")}, Policies: []model.Policy{defaults}}, all...)
		setLabel("sel-in", "disabled")
		p.waitFor(t, &model.Snapshot{Services: []model.Service{svc("sel-out")}, Policies: []model.Policy{defaults}}, all...)
	})
}

func TestNewKubeSourceRejectsBadSelector(t *testing.T) {
	_, err := NewKubeSource(nil, KubeOptions{NamespaceSelector: "a in (b"})
	if err == nil || !strings.Contains(err.Error(), `namespace selector "a in (b"`) {
		t.Fatalf("NewKubeSource with a broken selector: got error %v, want one naming the selector", err)
	}
}

func TestPodIdentity(t *testing.T) {
	hash := map[string]string{"pod-template-hash": "7f9c"}
	cases := map[string]struct {
		pod  *corev1.Pod
		want identity
	}{
		"deployment": {
			pod:  pod("ns", "web-7f9c-abcde", "web", hash, owner("apps/v1", "ReplicaSet", "web-7f9c")),
			want: identity{workload: "web", serviceAccount: "web"},
		},
		"replicaset without the hash label": {
			pod:  pod("ns", "web-7f9c-abcde", "web", nil, owner("apps/v1", "ReplicaSet", "web-7f9c")),
			want: identity{workload: "web-7f9c", serviceAccount: "web"},
		},
		"replicaset whose name lacks the hash": {
			pod:  pod("ns", "rs-abcde", "", hash, owner("apps/v1", "ReplicaSet", "rs")),
			want: identity{workload: "rs", serviceAccount: "default"},
		},
		"statefulset": {
			pod:  pod("ns", "db-0", "db", nil, owner("apps/v1", "StatefulSet", "db")),
			want: identity{workload: "db", serviceAccount: "db"},
		},
		"someone else's ReplicaSet kind": {
			pod:  pod("ns", "x-7f9c-1", "", hash, owner("example.com/v1", "ReplicaSet", "x-7f9c")),
			want: identity{workload: "x-7f9c", serviceAccount: "default"},
		},
		"no controller": {
			pod:  pod("ns", "debug", "ops", nil, nil),
			want: identity{workload: "debug", serviceAccount: "ops"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := podIdentity(tc.pod); got != tc.want {
				t.Errorf("podIdentity = %+v, want %+v", got, tc.want)
			}
			reduced, err := reducePod(tc.pod)
			if err != nil {
				t.Fatal(err)
			}
			if got := podIdentity(reduced.(*corev1.Pod)); got != tc.want {
				t.Errorf("podIdentity of the cached (reduced) pod = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// generatedRBAC reads manifests/rbac/role.yaml: the ClusterRole and the
// Role in the control plane's namespace.
func generatedRBAC(t *testing.T) (*rbacv1.ClusterRole, *rbacv1.Role) {
	t.Helper()
	path := filepath.Join("..", "manifests", "rbac", "role.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the generated RBAC (make rbac): %v", err)
	}
	var cr *rbacv1.ClusterRole
	var r *rbacv1.Role
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var head metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		switch head.Kind {
		case "ClusterRole":
			cr = &rbacv1.ClusterRole{}
			err = yaml.UnmarshalStrict([]byte(doc), cr)
		case "Role":
			r = &rbacv1.Role{}
			err = yaml.UnmarshalStrict([]byte(doc), r)
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	if cr == nil || r == nil || r.Namespace != meshNS {
		t.Fatalf("%s: want a ClusterRole and a Role in %s, got %v and %v", path, meshNS, cr, r)
	}
	return cr, r
}

// addUser makes an API server user bound to nothing yet.
func addUser(t *testing.T, name string) *envtest.AuthenticatedUser {
	t.Helper()
	u, err := shared.env.AddUser(envtest.User{Name: name}, nil)
	if err != nil {
		t.Fatalf("adding user %s: %v", name, err)
	}
	return u
}

func bindClusterRole(t *testing.T, c client.Client, user string, role *rbacv1.ClusterRole) {
	t.Helper()
	mustCreate(t, c, role)
	mustCreate(t, c, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	})
}

func bindRole(t *testing.T, c client.Client, user string, role *rbacv1.Role) {
	t.Helper()
	mustCreate(t, c, role)
	mustCreate(t, c, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: role.Namespace, Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	})
}

// TestKubeSourceStopsBeforeSync stops a source whose caches can never sync
// (its user may read nothing): Run must return, not hang the shutdown.
func TestKubeSourceStopsBeforeSync(t *testing.T) {
	apiServer(t)
	u := addUser(t, "fjord-cp-unbound")
	log, logs := newTestLog(t)
	src, err := NewKubeSource(u.Config(), KubeOptions{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	published := make(chan struct{}, 1)
	go func() { done <- src.Run(ctx, func(*model.Snapshot) { published <- struct{}{} }) }()
	logs.waitForN(t, 1, "list/watch failed", "forbidden")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after a cancel before sync: %v", err)
		}
	case <-time.After(waitCeiling):
		t.Fatalf("Run did not return within %s of its context ending before the caches synced", waitCeiling)
	}
	if len(published) != 0 {
		t.Error("a source that never synced published a snapshot")
	}
}

func httpRoute(ns, name string, parent string, backends ...string) *gatewayv1.HTTPRoute {
	r := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	r.Spec.ParentRefs = []gatewayv1.ParentReference{{
		Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(parent),
	}}
	rule := gatewayv1.HTTPRouteRule{}
	for _, b := range backends {
		rule.BackendRefs = append(rule.BackendRefs, gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{
			BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(b), Port: ptr.To(gatewayv1.PortNumber(80))},
		}})
	}
	r.Spec.Rules = []gatewayv1.HTTPRouteRule{rule}
	return r
}

func grpcRoute(ns, name string, parent string) *gatewayv1.GRPCRoute {
	r := &gatewayv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	r.Spec.ParentRefs = []gatewayv1.ParentReference{{
		Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(parent),
	}}
	r.Spec.Rules = []gatewayv1.GRPCRouteRule{{
		Matches: []gatewayv1.GRPCRouteMatch{{Method: &gatewayv1.GRPCMethodMatch{Service: ptr.To("echo.Echo")}}},
		BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{
			BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(parent), Port: ptr.To(gatewayv1.PortNumber(80))},
		}}},
	}}
	return r
}

// TestKubeSourceRoutes follows HTTPRoutes and GRPCRoutes into the model.
// The expected routes are the converters' output for the objects as the
// API server stored them (with the CRDs' defaults), which the converters'
// own tests pin down; this test is about the source listing them.
func TestKubeSourceRoutes(t *testing.T) {
	cfg, c := apiServer(t)
	const ns = "routes"
	createNamespace(t, c, ns, nil)
	mustCreate(t, c, service(ns, "echo", corev1.ServicePort{Port: 80}))
	mustCreate(t, c, service(ns, "echo-v2", corev1.ServicePort{Port: 80}))
	hr := httpRoute(ns, "split", "echo", "echo")
	gr := grpcRoute(ns, "by-method", "echo")
	mustCreate(t, c, hr)
	mustCreate(t, c, gr)
	_, p := runSource(t, cfg, KubeOptions{})

	svcs := []model.Service{
		{Key: model.Key{Namespace: ns, Name: "echo"}, Ports: []model.ServicePort{{Port: 80}}},
		{Key: model.Key{Namespace: ns, Name: "echo-v2"}, Ports: []model.ServicePort{{Port: 80}}},
	}
	got := p.waitFor(t, &model.Snapshot{Services: svcs, Routes: []model.Route{GRPCRouteFromK8s(gr), HTTPRouteFromK8s(hr)}}, ns)
	if rs := only(got, ns).Routes; len(rs) != 2 || len(rs[1].Rules) != 1 || len(rs[1].Rules[0].BackendRefs) != 1 {
		t.Fatalf("routes in the model: %+v", rs)
	}

	hr.Spec.Rules[0].BackendRefs = append(hr.Spec.Rules[0].BackendRefs, httpRoute(ns, "", "", "echo-v2").Spec.Rules[0].BackendRefs...)
	if err := c.Update(t.Context(), hr); err != nil {
		t.Fatalf("updating HTTPRoute: %v", err)
	}
	if err := c.Delete(t.Context(), gr); err != nil {
		t.Fatalf("deleting GRPCRoute: %v", err)
	}
	got = p.waitFor(t, &model.Snapshot{Services: svcs, Routes: []model.Route{HTTPRouteFromK8s(hr)}}, ns)
	if r := only(got, ns).Routes[0]; r.Generation != 2 || len(r.Rules[0].BackendRefs) != 2 {
		t.Errorf("updated route in the model: generation %d, backends %+v; want generation 2 and two backends", r.Generation, r.Rules[0].BackendRefs)
	}
}

// TestKubeSourceEndpointHoldOff runs the source with an hour-long normal
// hold-off: EndpointSlice and Pod changes are published all the same, so
// they took the endpoint hold-off.
func TestKubeSourceEndpointHoldOff(t *testing.T) {
	cfg, c := apiServer(t)
	const ns = "endpoint-holdoff"
	createNamespace(t, c, ns, nil)
	mustCreate(t, c, service(ns, "echo", corev1.ServicePort{Name: "grpc", Port: 8080}))
	ports := []discoveryv1.EndpointPort{{Name: ptr.To("grpc"), Port: ptr.To[int32](9000)}}
	slice := endpointSlice(ns, "echo-1", "echo", ports, endpoint("10.0.0.1", true, "echo-0"))
	mustCreate(t, c, slice)
	_, p := runSource(t, cfg, KubeOptions{HoldOff: time.Hour, EndpointHoldOff: time.Millisecond, MaxDelay: time.Hour})

	svc := model.Service{Key: model.Key{Namespace: ns, Name: "echo"}, Ports: []model.ServicePort{{Name: "grpc", Port: 8080}}}
	want := func(eps ...model.Endpoint) *model.Snapshot {
		return &model.Snapshot{Services: []model.Service{svc}, EndpointSlices: []model.EndpointSlice{{
			Key: model.Key{Namespace: ns, Name: "echo-1"}, Service: "echo",
			Ports: []model.EndpointPort{{Name: "grpc", Port: 9000}}, Endpoints: eps,
		}}}
	}
	p.waitFor(t, want(model.Endpoint{Address: "10.0.0.1", Ready: true, Workload: "echo-0"}), ns)

	// A flip, as a rollout makes them.
	if err := c.Get(t.Context(), client.ObjectKeyFromObject(slice), slice); err != nil {
		t.Fatal(err)
	}
	slice.Endpoints[0].Conditions.Ready = ptr.To(false)
	if err := c.Update(t.Context(), slice); err != nil {
		t.Fatalf("updating EndpointSlice: %v", err)
	}
	p.waitFor(t, want(model.Endpoint{Address: "10.0.0.1", Workload: "echo-0"}), ns)

	// The pod behind the endpoint names its workload and service account.
	mustCreate(t, c, pod(ns, "echo-0", "echo-sa", nil, owner("apps/v1", "StatefulSet", "echo")))
	p.waitFor(t, want(model.Endpoint{Address: "10.0.0.1", Workload: "echo", ServiceAccount: "echo-sa"}), ns)
}

// TestKubeSourceExportTo reads the export-to annotation, and shows that a
// value that does not parse changes nothing served: the Service keeps the
// last list accepted for it, and a new Service with a bad list is visible
// to its own namespace only.
func TestKubeSourceExportTo(t *testing.T) {
	cfg, c := apiServer(t)
	const ns = "export-to"
	createNamespace(t, c, ns, nil)
	echo := service(ns, "echo", corev1.ServicePort{Port: 80})
	echo.Annotations = map[string]string{AnnotationExportTo: "., web"}
	mustCreate(t, c, echo)
	_, p := runSource(t, cfg, KubeOptions{})

	svc := func(name string, exportTo ...string) model.Service {
		return model.Service{Key: model.Key{Namespace: ns, Name: name}, Ports: []model.ServicePort{{Port: 80}}, ExportTo: exportTo}
	}
	p.waitFor(t, &model.Snapshot{Services: []model.Service{svc("echo", ns, "web")}}, ns)

	edit := func(name, value string) {
		t.Helper()
		s := &corev1.Service{}
		if err := c.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
			t.Fatal(err)
		}
		s.Annotations = map[string]string{AnnotationExportTo: value}
		if err := c.Update(t.Context(), s); err != nil {
			t.Fatalf("updating Service %s: %v", name, err)
		}
	}
	edit("echo", "*")
	p.waitFor(t, &model.Snapshot{Services: []model.Service{svc("echo", "*")}}, ns)

	// A bad edit of echo, and a new Service with a bad list; a second,
	// good Service is added last, so that its appearance proves the bad
	// ones were read.
	edit("echo", "web,Not_A_Namespace")
	bad := service(ns, "bad", corev1.ServicePort{Port: 80})
	bad.Annotations = map[string]string{AnnotationExportTo: "*,"}
	mustCreate(t, c, bad)
	mustCreate(t, c, service(ns, "later", corev1.ServicePort{Port: 80}))
	p.waitFor(t, &model.Snapshot{Services: []model.Service{svc("bad", ns), svc("echo", "*"), svc("later")}}, ns)

	// Fixed, it takes effect.
	edit("echo", ".")
	p.waitFor(t, &model.Snapshot{Services: []model.Service{svc("bad", ns), svc("echo", ns), svc("later")}}, ns)
}

// TestKubeSnapshotReuse checks what a snapshot shares with the one before
// it: the model objects of unchanged API objects, down to their lists, and
// whole lists of a kind nothing changed in; and that whatever a model object
// depends on (its API object, the pods behind its endpoints) still changes
// it, without touching the snapshot published before.
func TestKubeSnapshotReuse(t *testing.T) {
	cfg, c := apiServer(t)
	const ns = "reuse"
	createNamespace(t, c, ns, nil)
	svcA, svcB := service(ns, "a", corev1.ServicePort{Name: "http", Port: 8080}), service(ns, "b", corev1.ServicePort{Name: "http", Port: 8080})
	ports := []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](9000)}}
	sliceA := endpointSlice(ns, "a-1", "a", ports, endpoint("10.1.0.1", true, "a-0"))
	sliceB := endpointSlice(ns, "b-1", "b", ports, endpoint("10.2.0.1", true, "b-0"), endpoint("10.2.0.2", true, "b-1"))
	podB1 := pod(ns, "b-1", "b-sa", nil, owner("apps/v1", "StatefulSet", "b"))
	rp := resiliencePolicy(ns, "p", timeoutSpec("5s", "a"))
	objs := []client.Object{svcA, svcB,
		pod(ns, "a-0", "a-sa", nil, nil), pod(ns, "b-0", "b-sa", nil, owner("apps/v1", "StatefulSet", "b")), podB1,
		sliceA, sliceB, rp}
	for _, obj := range objs {
		mustCreate(t, c, obj)
	}
	src, cached := startCaches(t, cfg)
	for _, obj := range objs {
		awaitCache(t, cached, obj, false)
	}
	kb := newKubeBuild(src, t.Context(), func(*model.Snapshot) {}, map[model.RouteKind]bool{})
	build := func() *model.Snapshot {
		t.Helper()
		kb.build()
		if kb.published == nil {
			t.Fatal("nothing published")
		}
		return kb.published
	}
	update := func(obj client.Object, change func()) {
		t.Helper()
		if err := c.Get(t.Context(), client.ObjectKeyFromObject(obj), obj); err != nil {
			t.Fatal(err)
		}
		change()
		if err := c.Update(t.Context(), obj); err != nil {
			t.Fatalf("updating %T %s: %v", obj, obj.GetName(), err)
		}
		awaitCache(t, cached, obj, false)
	}
	find := func(s *model.Snapshot, name string) model.EndpointSlice {
		t.Helper()
		for _, es := range s.EndpointSlices {
			if es.Key == (model.Key{Namespace: ns, Name: name}) {
				return es
			}
		}
		t.Fatalf("EndpointSlice %s/%s not in the snapshot", ns, name)
		return model.EndpointSlice{}
	}
	sameList := func(what string, a, b int, pa, pb any) {
		t.Helper()
		if a != b || a > 0 && pa != pb {
			t.Errorf("%s: not the previous snapshot's list", what)
		}
	}
	sharesSlice := func(prev, next *model.Snapshot, name string) {
		t.Helper()
		p, n := find(prev, name), find(next, name)
		if &p.Ports[0] != &n.Ports[0] || &p.Endpoints[0] != &n.Endpoints[0] {
			t.Errorf("EndpointSlice %s: unchanged, but converted again", name)
		}
	}
	sharesServices := func(prev, next *model.Snapshot) {
		t.Helper()
		sameList("Services", len(prev.Services), len(next.Services), &prev.Services[0], &next.Services[0])
	}
	sharesSlices := func(prev, next *model.Snapshot) {
		t.Helper()
		sameList("EndpointSlices", len(prev.EndpointSlices), len(next.EndpointSlices), &prev.EndpointSlices[0], &next.EndpointSlices[0])
	}
	sa := func(s *model.Snapshot, slice, addr string) string {
		t.Helper()
		for _, e := range find(s, slice).Endpoints {
			if e.Address == addr {
				return e.ServiceAccount
			}
		}
		t.Fatalf("EndpointSlice %s has no endpoint %s", slice, addr)
		return ""
	}

	s1 := build()
	wantSvc := func(name string, ports ...model.ServicePort) model.Service {
		return model.Service{Key: model.Key{Namespace: ns, Name: name}, Ports: ports}
	}
	http := model.ServicePort{Name: "http", Port: 8080}
	want := &model.Snapshot{
		Services: []model.Service{wantSvc("a", http), wantSvc("b", http)},
		EndpointSlices: []model.EndpointSlice{
			{Key: model.Key{Namespace: ns, Name: "a-1"}, Service: "a", Ports: []model.EndpointPort{{Name: "http", Port: 9000}},
				Endpoints: []model.Endpoint{{Address: "10.1.0.1", Ready: true, Workload: "a-0", ServiceAccount: "a-sa"}}},
			{Key: model.Key{Namespace: ns, Name: "b-1"}, Service: "b", Ports: []model.EndpointPort{{Name: "http", Port: 9000}},
				Endpoints: []model.Endpoint{
					{Address: "10.2.0.1", Ready: true, Workload: "b", ServiceAccount: "b-sa"},
					{Address: "10.2.0.2", Ready: true, Workload: "b", ServiceAccount: "b-sa"},
				}},
		},
		Policies: []model.Policy{modelPolicy(ns, "p", 1, timeoutSpec("5s", "a"))},
	}
	if diff := diffModel(want, only(s1, ns)); diff != "" {
		t.Fatalf("first snapshot (-want +got):\n%s", diff)
	}

	t.Run("nothing changed", func(t *testing.T) {
		s, err := kb.snapshot()
		if err != nil {
			t.Fatal(err)
		}
		sharesServices(s1, s)
		sharesSlices(s1, s)
		sameList("Policies", len(s1.Policies), len(s.Policies), &s1.Policies[0], &s.Policies[0])
	})

	var s2 *model.Snapshot
	t.Run("one EndpointSlice changed", func(t *testing.T) {
		update(sliceA, func() { sliceA.Endpoints[0].Conditions.Ready = ptr.To(false) })
		s2 = build()
		if find(s2, "a-1").Endpoints[0].Ready {
			t.Error("the changed endpoint is still ready")
		}
		if !find(s1, "a-1").Endpoints[0].Ready {
			t.Error("the change reached the snapshot published before")
		}
		sharesSlice(s1, s2, "b-1")
		sharesServices(s1, s2)
		sameList("Policies", len(s1.Policies), len(s2.Policies), &s1.Policies[0], &s2.Policies[0])
	})

	var s3 *model.Snapshot
	t.Run("a pod's service account changed", func(t *testing.T) {
		// A pod's service account cannot be edited: the pod is replaced,
		// under the same name, and its endpoint's slice stays as it is.
		if err := c.Delete(t.Context(), podB1, client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
		awaitCache(t, cached, podB1, true)
		podB1 = pod(ns, "b-1", "b-other-sa", nil, owner("apps/v1", "StatefulSet", "b"))
		mustCreate(t, c, podB1)
		awaitCache(t, cached, podB1, false)
		s3 = build()
		if got := sa(s3, "b-1", "10.2.0.2"); got != "b-other-sa" {
			t.Errorf("the replaced pod's endpoint runs as %q, want b-other-sa", got)
		}
		if got := sa(s3, "b-1", "10.2.0.1"); got != "b-sa" {
			t.Errorf("the other pod's endpoint runs as %q, want b-sa", got)
		}
		if got := sa(s2, "b-1", "10.2.0.2"); got != "b-sa" {
			t.Errorf("the change reached the snapshot published before: %q", got)
		}
		sharesSlice(s2, s3, "a-1")
		sharesServices(s2, s3)
	})

	var s4 *model.Snapshot
	t.Run("a Service changed", func(t *testing.T) {
		update(svcA, func() { svcA.Spec.Ports = append(svcA.Spec.Ports, corev1.ServicePort{Name: "admin", Port: 7070}) })
		s4 = build()
		if diff := cmp.Diff([]model.Service{wantSvc("a", model.ServicePort{Name: "admin", Port: 7070}, http), wantSvc("b", http)},
			only(s4, ns).Services); diff != "" {
			t.Errorf("Services (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]model.Service{wantSvc("a", http), wantSvc("b", http)}, only(s3, ns).Services); diff != "" {
			t.Errorf("the change reached the snapshot published before (-want +got):\n%s", diff)
		}
		prevB, nextB := only(s3, ns).Services[1], only(s4, ns).Services[1]
		if &prevB.Ports[0] != &nextB.Ports[0] {
			t.Error("Service b: unchanged, but converted again")
		}
		sharesSlices(s3, s4)
	})

	t.Run("objects deleted", func(t *testing.T) {
		for _, obj := range []client.Object{svcB, sliceB, rp} {
			if err := c.Delete(t.Context(), obj); err != nil {
				t.Fatalf("deleting %T %s: %v", obj, obj.GetName(), err)
			}
			awaitCache(t, cached, obj, true)
		}
		s5 := build()
		got := only(s5, ns)
		if len(got.Services) != 1 || got.Services[0].Name != "a" || len(got.EndpointSlices) != 1 ||
			got.EndpointSlices[0].Name != "a-1" || len(got.Policies) != 0 {
			t.Errorf("after deleting Service b, its slice and the policy: %+v", got)
		}
		if len(only(s4, ns).Services) != 2 {
			t.Error("the deletion reached the snapshot published before")
		}
		b, p := model.Key{Namespace: ns, Name: "b"}, model.Key{Namespace: ns, Name: "p"}
		if _, ok := kb.services[b]; ok {
			t.Error("the deleted Service is still kept")
		}
		if _, ok := kb.exportTo[b]; ok {
			t.Error("the deleted Service's export-to state is still kept")
		}
		if _, ok := kb.slices[model.Key{Namespace: ns, Name: "b-1"}]; ok {
			t.Error("the deleted EndpointSlice is still kept")
		}
		if _, ok := kb.policies[p]; ok {
			t.Error("the deleted policy is still kept")
		}
		if len(kb.services) != len(s5.Services) || len(kb.slices) != len(s5.EndpointSlices) || len(kb.policies) != len(s5.Policies) {
			t.Errorf("kept %d Services, %d EndpointSlices, %d policies for a snapshot of %d, %d, %d",
				len(kb.services), len(kb.slices), len(kb.policies), len(s5.Services), len(s5.EndpointSlices), len(s5.Policies))
		}
	})
}
