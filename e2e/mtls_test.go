package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	xdscredentials "google.golang.org/grpc/credentials/xds"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/fjordmesh/fjord/agent"
	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
	"github.com/fjordmesh/fjord/xds/node"
)

// TestMTLSProxyless runs fjord-cp with --mtls and proxyless gRPC on both
// sides: an xDS-enabled server (xds.NewGRPCServer) and clients, all with
// credentials/xds and with the certificates and bootstrap of real
// `fjordctl agent --out-dir` processes, whose tokens come from `fjordctl
// token create` through the running fjord-cp's admin socket and whose
// bootstraps reach fjord-cp over authenticated xDS. The server's identity
// is declared on the Service with fjord.dev/service-accounts, as standalone
// mode has no pods.
func TestMTLSProxyless(t *testing.T) {
	cp := newControlPlane(t)
	secure := freeAddr(t, "127.0.0.1")
	cp.args = []string{"--mtls", "--secure-address", secure}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	// echo runs as "server"; echo-wrong claims the same backend runs as
	// "other", so a client dialling it must refuse the server's certificate.
	writeFile(t, cp.configDir, "mesh.yaml",
		mtlsServiceYAML("echo", "server", port)+"---\n"+mtlsServiceYAML("echo-wrong", "other", port))
	cp.start()

	// A second control plane is a second, unrelated CA.
	other := newControlPlane(t)
	otherSecure := freeAddr(t, "127.0.0.1")
	other.args = []string{"--secure-address", otherSecure}
	other.start()

	serverDir := startMTLSAgent(t, cp, secure, "server")
	clientDir := startMTLSAgent(t, cp, secure, "client")
	strangerDir := startMTLSAgent(t, other, otherSecure, "client")
	// A client whose certificate comes from the other CA but which trusts
	// the mesh's roots, so that only the server can refuse it. Its xDS
	// channel is the plaintext port: the secure one would refuse it.
	foreignDir := t.TempDir()
	copyFile(t, filepath.Join(strangerDir, agent.CertFile), filepath.Join(foreignDir, agent.CertFile), 0o644)
	copyFile(t, filepath.Join(strangerDir, agent.KeyFile), filepath.Join(foreignDir, agent.KeyFile), 0o600)
	copyFile(t, filepath.Join(clientDir, agent.CAFile), filepath.Join(foreignDir, agent.CAFile), 0o644)

	srv := startXDSServer(t, agentBootstrap(t, serverDir), lis)

	t.Run("handshake succeeds and the server sees the client's SPIFFE ID", func(t *testing.T) {
		c := mtlsClient(t, agentBootstrap(t, clientDir), "echo")
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := c.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true)); err != nil {
			t.Fatalf("call over mTLS: %v", err)
		}
		want := "spiffe://" + certs.DefaultTrustDomain + "/ns/" + namespace + "/sa/client"
		if got := srv.peers(); len(got) != 1 || got[0] != want {
			t.Errorf("server saw callers %q, want [%q]", got, want)
		}
	})

	t.Run("client certificate from another CA fails", func(t *testing.T) {
		before := len(srv.peers())
		c := mtlsClient(t, plaintextBootstrap(t, cp, "client", foreignDir), "echo")
		code, err := firstOutcome(t, c)
		if code != codes.Unavailable {
			t.Fatalf("call with a foreign client certificate: %v, want Unavailable", err)
		}
		t.Logf("refused as expected: %v", err)
		if got := srv.peers()[before:]; len(got) != 0 {
			t.Errorf("the server served %q with a foreign certificate", got)
		}
	})

	t.Run("SAN mismatch fails", func(t *testing.T) {
		before := len(srv.peers())
		c := mtlsClient(t, agentBootstrap(t, clientDir), "echo-wrong")
		code, err := firstOutcome(t, c)
		if code != codes.Unavailable {
			t.Fatalf("call to a backend whose certificate names another service account: %v, want Unavailable", err)
		}
		t.Logf("refused as expected: %v", err)
		if got := srv.peers()[before:]; len(got) != 0 {
			t.Errorf("the server served %q although the client should have refused it", got)
		}
	})
}

// TestMTLSOffServesPlaintext: without --mtls the same xDS-enabled server
// gets its listener without a transport socket and serves in plaintext
// (credentials/xds falls back), so calls succeed and carry no identity.
func TestMTLSOffServesPlaintext(t *testing.T) {
	cp := newControlPlane(t)
	secure := freeAddr(t, "127.0.0.1")
	cp.args = []string{"--secure-address", secure}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, cp.configDir, "mesh.yaml", mtlsServiceYAML("echo", "server", lis.Addr().(*net.TCPAddr).Port))
	cp.start()
	serverDir, clientDir := startMTLSAgent(t, cp, secure, "server"), startMTLSAgent(t, cp, secure, "client")
	srv := startXDSServer(t, agentBootstrap(t, serverDir), lis)
	c := mtlsClient(t, agentBootstrap(t, clientDir), "echo")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("plaintext call: %v", err)
	}
	if got := srv.peers(); len(got) != 1 || !strings.HasPrefix(got[0], "unauthenticated: ") {
		t.Errorf("server saw callers %q, want one unauthenticated caller", got)
	}
}

// mtlsServiceYAML is a Service name in the demo namespace declaring
// serviceAccount as its identity, and an EndpointSlice with one endpoint,
// 127.0.0.1:port.
func mtlsServiceYAML(name, serviceAccount string, port int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: %[2]s
  annotations:
    fjord.dev/service-accounts: %[3]s
spec:
  ports:
  - {name: grpc, port: %[4]d, targetPort: %[5]d, protocol: TCP, appProtocol: grpc}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %[1]s-1
  namespace: %[2]s
  labels:
    kubernetes.io/service-name: %[1]s
addressType: IPv4
ports:
- {name: grpc, port: %[5]d, protocol: TCP}
endpoints:
- addresses: ["127.0.0.1"]
  conditions: {ready: true}
`, name, namespace, serviceAccount, servicePort, port)
}

// firstOutcome makes one fail-fast call with a generous deadline. A
// handshake failure puts the channel in TRANSIENT_FAILURE, which fails the
// call with Unavailable; a channel still waiting for its config would hold
// the call until the deadline instead (DeadlineExceeded).
func firstOutcome(t *testing.T, c testpb.TestServiceClient) (codes.Code, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := c.EmptyCall(ctx, &testpb.Empty{})
	return status.Code(err), err
}

// agentBootstrap is the gRPC bootstrap the agent wrote into dir.
func agentBootstrap(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, agent.BootstrapFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// plaintextBootstrap is the gRPC xDS bootstrap of workload name (service
// account name in the demo namespace) on cp's plaintext xDS port, with the
// certificate provider over the credential files in dir.
func plaintextBootstrap(t *testing.T, cp *controlPlane, name, dir string) []byte {
	t.Helper()
	b, err := bootstrap.GRPCWith(
		node.Info{Namespace: namespace, Workload: name, ServiceAccount: name, Kind: node.GRPC},
		cp.xdsAddr,
		bootstrap.GRPCOptions{CertificateProviders: map[string]bootstrap.FileWatcher{
			bootstrap.CertProviderInstance: agent.CredentialFiles(dir, agent.DefaultRefreshInterval),
		}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mtlsClient dials xds:///<svc>.demo.svc.cluster.local:<servicePort> with
// credentials/xds (plaintext only where the control plane sends no TLS
// config), configured by boot; the connection closes when the test ends.
func mtlsClient(t *testing.T, boot []byte, svc string) testpb.TestServiceClient {
	t.Helper()
	resolver, err := xds.NewXDSResolverWithConfigForTesting(boot)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := xdscredentials.NewClientCredentials(xdscredentials.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("xds:///%s.%s.svc.cluster.local:%d", svc, namespace, servicePort)
	cc, err := grpc.NewClient(target, grpc.WithResolvers(resolver), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("dialing %s: %v", target, err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

// xdsServer is an xDS-enabled gRPC server that records the SPIFFE ID of
// every caller.
type xdsServer struct {
	testpb.UnimplementedTestServiceServer
	mu      sync.Mutex
	callers []string
}

func (s *xdsServer) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	id, err := api.PeerIdentity(ctx, certs.DefaultTrustDomain)
	caller := id.String()
	if err != nil {
		caller = "unauthenticated: " + err.Error()
	}
	s.mu.Lock()
	s.callers = append(s.callers, caller)
	s.mu.Unlock()
	return &testpb.Empty{}, nil
}

func (s *xdsServer) peers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.callers...)
}

// startXDSServer serves on lis with credentials/xds, configured by boot;
// it stops when the test ends.
func startXDSServer(t *testing.T, boot []byte, lis net.Listener) *xdsServer {
	t.Helper()
	creds, err := xdscredentials.NewServerCredentials(xdscredentials.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	gs, err := xds.NewGRPCServer(grpc.Creds(creds), xds.BootstrapContentsForTesting(boot))
	if err != nil {
		t.Fatal(err)
	}
	s := &xdsServer{}
	testpb.RegisterTestServiceServer(gs, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() { gs.Stop(); <-done })
	return s
}

// startMTLSAgent mints a token for service account sa of the demo
// namespace with `fjordctl token create` through cp's admin socket, runs
// `fjordctl agent --out-dir` with it against cp's certificate API at
// secure, waits until the agent has written its credentials and bootstrap,
// and returns the directory. The agent is stopped by PID when the test
// ends.
func startMTLSAgent(t *testing.T, cp *controlPlane, secure, sa string) string {
	t.Helper()
	creds := filepath.Join(t.TempDir(), "creds")
	out, err := exec.Command(bin("fjordctl"), "token", "create", "--data-dir", cp.dataDir,
		"--identity", namespace+"/"+sa, "--ttl", "1h", "-o", creds).CombinedOutput()
	if err != nil {
		t.Fatalf("fjordctl token create: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "certs")
	cmd := exec.Command(bin("fjordctl"), "agent",
		"--address", secure,
		"--identity", namespace+"/"+sa,
		"--token-file", filepath.Join(creds, "token"),
		"--ca-file", filepath.Join(creds, "ca.pem"),
		"--out-dir", dir,
		"--name", sa,
		"--xds-address", secure,
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting fjordctl agent: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("fjordctl agent %s output:\n%s", sa, logs.String())
		}
	})
	eventually(t, time.Minute, "fjordctl agent "+sa+" writes its credentials and bootstrap", func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("fjordctl agent %s exited:\n%s", sa, logs.String())
		default:
		}
		for _, f := range []string{agent.CAFile, agent.KeyFile, agent.CertFile, agent.BootstrapFile} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				return false, err.Error()
			}
		}
		return true, ""
	})
	return dir
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}
