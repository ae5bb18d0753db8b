package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fjordmesh/fjord/examples/echo"
)

// The Service every test routes to. Clients dial it at servicePort; the
// endpoints listen on whatever port the backends got (targetPort).
const (
	namespace   = "demo"
	service     = "echo"
	servicePort = 50051
	target      = "xds:///echo.demo.svc.cluster.local:50051"
)

// backends are echo servers on 127.0.0.1, 127.0.0.2, ... that share one
// port, as the pods behind a Service do.
type backends struct {
	port    int
	servers []*echo.Server
}

// startBackends starts n echo backends, named echo-1..echo-n, on
// 127.0.0.1..127.0.0.n and one common port. They stop when the test ends.
func startBackends(t *testing.T, n int) *backends {
	t.Helper()
	for range 20 {
		ls, err := listenAll(n)
		if errors.Is(err, syscall.EADDRINUSE) {
			continue // the port is taken on some address: pick another
		}
		if err != nil {
			t.Fatal(err)
		}
		b := &backends{port: ls[0].Addr().(*net.TCPAddr).Port}
		for i, l := range ls {
			s := echo.Serve(fmt.Sprintf("echo-%d", i+1), l)
			t.Cleanup(s.Stop)
			b.servers = append(b.servers, s)
		}
		return b
	}
	t.Fatalf("found no port free on 127.0.0.1..127.0.0.%d in 20 tries", n)
	return nil
}

func listenAll(n int) ([]net.Listener, error) {
	var ls []net.Listener
	port := "0"
	for i := 1; i <= n; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(fmt.Sprintf("127.0.0.%d", i), port))
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, err
		}
		ls = append(ls, l)
		port = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	}
	return ls, nil
}

// get returns the backend named name (echo-1, ...).
func (b *backends) get(name string) *echo.Server {
	for _, s := range b.servers {
		if s.Name() == name {
			return s
		}
	}
	panic("no backend " + name)
}

// ip is the address of backend echo-i.
func ip(i int) string { return fmt.Sprintf("127.0.0.%d", i) }

// writeFile replaces dir/name atomically (write elsewhere, then rename), so
// the control plane's watcher never reads half a file. It returns the time
// just before the rename, which is when the change became visible.
func writeFile(t *testing.T, dir, name, content string) time.Time {
	t.Helper()
	staging, err := os.CreateTemp(filepath.Dir(dir), "staging-")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := staging.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if err := staging.Close(); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if err := os.Rename(staging.Name(), filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	return at
}

// removeFile deletes dir/name and returns the time just before.
func removeFile(t *testing.T, dir, name string) time.Time {
	t.Helper()
	at := time.Now()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	return at
}

// serviceYAML is the echo Service with one gRPC port.
func serviceYAML(targetPort int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: %s
spec:
  selector: {app: echo}
  ports:
  - name: grpc
    port: %d
    targetPort: %d
    protocol: TCP
    appProtocol: grpc
`, service, namespace, servicePort, targetPort)
}

// endpointSliceYAML is an EndpointSlice of the echo Service with the given
// addresses, all ready, on port.
func endpointSliceYAML(name string, port int, addrs ...string) string {
	eps := "endpoints: []\n"
	if len(addrs) > 0 {
		eps = "endpoints:\n"
		for _, a := range addrs {
			eps += fmt.Sprintf("- addresses: [%q]\n  conditions: {ready: true}\n", a)
		}
	}
	return fmt.Sprintf(`apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %s
  namespace: %s
  labels:
    kubernetes.io/service-name: %s
addressType: IPv4
ports:
- name: grpc
  port: %d
  protocol: TCP
%s`, name, namespace, service, port, eps)
}

// policyYAML is a ResiliencePolicy on the echo Service; spec holds the spec
// sections as YAML at column zero, as a user would write them.
func policyYAML(name, spec string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: fjord.dev/v1alpha1
kind: ResiliencePolicy
metadata:
  name: %s
  namespace: %s
spec:
  targetRefs:
  - {group: "", kind: Service, name: %s}
`, name, namespace, service)
	for _, line := range strings.Split(strings.TrimSpace(spec), "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

// writeMesh writes the Service and one EndpointSlice with backends echo-1..n
// into the control plane's config directory.
func writeMesh(t *testing.T, cp *controlPlane, b *backends, endpoints ...int) {
	t.Helper()
	writeFile(t, cp.configDir, "service.yaml", serviceYAML(b.port))
	var addrs []string
	for _, i := range endpoints {
		addrs = append(addrs, ip(i))
	}
	writeFile(t, cp.configDir, "endpoints.yaml", endpointSliceYAML("echo-1", b.port, addrs...))
}
