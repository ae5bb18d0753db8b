package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/fjordmesh/fjord/examples/echo"
	fjordv1a1 "github.com/fjordmesh/fjord/policy/api/v1alpha1"
)

// The Kubernetes-mode suite runs fjord-cp against a real kube-apiserver
// and etcd. The API server refuses EndpointSlice addresses on loopback, so
// the suite runs in a network namespace of its own: TestKube re-executes
// this test binary under `unshare --net --pid --fork`, where the
// namespace's loopback device carries 10.244.0.0/24 addresses for the API
// server and the backends. Nothing leaves the namespace, and because the
// test binary is the namespace's init process, the kernel ends etcd,
// kube-apiserver and fjord-cp when it exits, whatever the reason.

// netnsEnv marks the test binary running inside the namespace.
const netnsEnv = "FJORD_E2E_NETNS"

// Addresses on the namespace's loopback device.
const (
	apiServerIP  = "10.244.0.1"
	kubeBackends = 3 // echo-i listens on 10.244.0.(i+1)
)

func kubeIP(i int) string { return fmt.Sprintf("10.244.0.%d", i+1) }

func TestKube(t *testing.T) {
	if os.Getenv(netnsEnv) == "" {
		runInNetns(t)
		return
	}
	k := startKube(t)
	t.Run("RootCAConfigMap", k.testRootCAConfigMap)
	t.Run("OutlierEjection", k.testOutlierEjection)
	t.Run("RetriesAndTheirRemoval", k.testRetries)
	t.Run("MaxRequestsBreakerAndItsRemoval", k.testBreaker)
	t.Run("PolicyStatus", k.testStatus)
	t.Run("RestartWhileConnected", k.testRestart)
}

// runInNetns runs TestKube again inside a new network and PID namespace
// and fails with its output if it fails. Without root, or without unshare
// and ip, it fails saying what is missing: these tests never pass without
// running.
func runInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the Kubernetes-mode e2e tests need root: they make a private network namespace (unshare --net) " +
			"so that the API server accepts the backends' EndpointSlice addresses; run them as root (make test-e2e does in CI)")
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the Kubernetes-mode e2e tests need %s (util-linux for unshare, iproute2 for ip): %v", tool, err)
		}
	}
	if _, err := kubeAssets(); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir() // etcd's data and the API server's certificates, removed also after a crash inside
	args := []string{"--net", "--pid", "--fork", "--kill-child", os.Args[0],
		"-test.run", "^TestKube$", "-test.v", "-test.timeout", "5m"}
	cmd := exec.Command("unshare", args...)
	// The binaries are built again inside, from the build cache; there is
	// no network there, so nothing may be fetched.
	cmd.Env = append(os.Environ(), netnsEnv+"=1", "TMPDIR="+tmp, "GOPROXY=off", "GOTOOLCHAIN=local")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare %s: %v", strings.Join(args, " "), err)
	}
	passed := false
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		t.Log(line)
		if strings.HasPrefix(line, "--- PASS: TestKube ") {
			passed = true
		}
	}
	if err := cmd.Wait(); err != nil || !passed {
		t.Fatalf("TestKube inside the network namespace: exit %v, passed %v", err, passed)
	}
}

func kubeAssets() (string, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return "", errors.New("KUBEBUILDER_ASSETS is not set: run `make -f make/envtest.mk envtest-assets` and " +
			"export KUBEBUILDER_ASSETS=<repository>/bin/k8s (make test-e2e does both)")
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, name)); err != nil {
			return "", fmt.Errorf("KUBEBUILDER_ASSETS=%s has no %s (%w): run `make -f make/envtest.mk envtest-assets`", assets, name, err)
		}
	}
	return assets, nil
}

// kube is the suite's cluster: the API server, the echo Service with its
// backends, and one fjord-cp.
type kube struct {
	admin client.Client
	b     *backends
	cp    *kubeControlPlane
}

func startKube(t *testing.T) *kube {
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", apiServerIP + "/32", "dev", "lo"}} {
		ipCmd(t, args...)
	}
	for i := 1; i <= kubeBackends; i++ {
		ipCmd(t, "addr", "add", kubeIP(i)+"/32", "dev", "lo")
	}
	assets, err := kubeAssets()
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "manifests", "crd")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
		// Ceilings for a busy machine, not expectations.
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	// Without a default route the API server finds no address to
	// advertise; give it the namespace's own.
	env.ControlPlane.GetAPIServer().Configure().Set("advertise-address", apiServerIP)
	start := time.Now()
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting kube-apiserver and etcd from %s: %v", assets, errors.Join(err, env.Stop()))
	}
	t.Logf("kube-apiserver and etcd started in %v", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping kube-apiserver and etcd: %v", err)
		}
	})
	scheme := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(scheme), fjordv1a1.AddToScheme(scheme)); err != nil {
		t.Fatal(err)
	}
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	k := &kube{admin: admin, b: startKubeBackends(t)}
	// The install manifests, as a user applies them (less the Deployment:
	// the test runs fjord-cp itself, as the ServiceAccount they bind).
	for _, f := range []string{
		filepath.Join("..", "manifests", "deploy", "00-namespace.yaml"),
		filepath.Join("..", "manifests", "deploy", "10-serviceaccount.yaml"),
		filepath.Join("..", "manifests", "rbac", "role.yaml"),
		filepath.Join("..", "manifests", "deploy", "20-rolebindings.yaml"),
	} {
		k.apply(t, f)
	}
	k.create(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}})
	k.create(t, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: service},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Name: "grpc", Port: servicePort, TargetPort: intstr.FromInt(k.b.port),
				Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("grpc")}},
		},
	})
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "echo-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("grpc"), Port: ptr.To(int32(k.b.port)),
			Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for i := 1; i <= kubeBackends; i++ {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{kubeIP(i)}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	k.create(t, slice)
	sa, err := env.AddUser(envtest.User{
		Name:   "system:serviceaccount:fjord-system:fjord-control-plane",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:fjord-system", "system:authenticated"},
	}, nil)
	if err != nil {
		t.Fatalf("credentials of the fjord-control-plane ServiceAccount: %v", err)
	}
	k.cp = startKubeControlPlane(t, sa.Config())
	return k
}

// apply creates every object of a YAML file.
func (k *kube) apply(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		k.create(t, &u)
	}
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// startKubeBackends starts echo-1..n on 10.244.0.2.. and one common port.
func startKubeBackends(t *testing.T) *backends {
	t.Helper()
	var ls []net.Listener
	port := "0"
	for i := 1; i <= kubeBackends; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(kubeIP(i), port))
		if err != nil {
			t.Fatal(err) // the namespace is fresh: every port is free
		}
		ls = append(ls, l)
		port = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	}
	b := &backends{port: ls[0].Addr().(*net.TCPAddr).Port}
	for i, l := range ls {
		s := echo.Serve(fmt.Sprintf("echo-%d", i+1), l)
		t.Cleanup(s.Stop)
		b.servers = append(b.servers, s)
	}
	return b
}

func (k *kube) create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := k.admin.Create(context.Background(), obj); err != nil {
		t.Fatalf("creating %T %s/%s: %v", obj, obj.GetNamespace(), obj.GetName(), err)
	}
}

// applyPolicy creates the policy (as policyYAML writes it) and returns the
// time just before the write, when the change was made.
func (k *kube) applyPolicy(t *testing.T, name, spec string) (time.Time, *fjordv1a1.ResiliencePolicy) {
	t.Helper()
	rp := &fjordv1a1.ResiliencePolicy{}
	if err := yaml.UnmarshalStrict([]byte(policyYAML(name, spec)), rp); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	k.create(t, rp)
	return at, rp
}

// deletePolicy deletes it and returns the time just before.
func (k *kube) deletePolicy(t *testing.T, rp *fjordv1a1.ResiliencePolicy) time.Time {
	t.Helper()
	at := time.Now()
	if err := k.admin.Delete(context.Background(), rp); err != nil {
		t.Fatalf("deleting ResiliencePolicy %s/%s: %v", rp.Namespace, rp.Name, err)
	}
	return at
}

// writeKubeconfig writes cfg (the envtest admin's certificates) as a
// kubeconfig file for fjord-cp.
func writeKubeconfig(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}
