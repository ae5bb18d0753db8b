package agent

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/certs"
)

// childEnv makes the test binary act as an SDS client instead of running
// tests, so that it can run as another user.
const childEnv = "FJORD_TEST_SDS_CHILD"

// nobody is the user id the other-user client runs as.
const nobody = 65534

func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		os.Exit(childFetch(path))
	}
	os.Exit(m.Run())
}

// childFetch opens an SDS stream on the socket and waits for the
// certificate: exit 0 if it came, 3 if not (the error on stderr).
func childFetch(path string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := dialSDS(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	defer conn.Close()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err == nil {
		err = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.SecretType, ResourceNames: []string{bootstrap.SecretCertificate}})
	}
	if err == nil {
		_, err = stream.Recv()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

func dialSDS(path string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// serveSDS runs a's SDS server on a socket in dir for uids until the test
// ends.
func serveSDS(t *testing.T, e *env, a *Agent, dir string, uids []int) string {
	t.Helper()
	path := filepath.Join(dir, "sds.sock")
	lis, err := ListenSDS(path, uids, e.log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.ServeSDS(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return path
}

// sdsStream is one Envoy-like SDS subscription.
type sdsStream struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
	names  []string
}

func subscribe(t *testing.T, conn *grpc.ClientConn, names ...string) *sdsStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := &sdsStream{t: t, stream: stream, names: names}
	s.send("", "", nil)
	return s
}

func (s *sdsStream) send(version, nonce string, nack *status.Status) {
	s.t.Helper()
	err := s.stream.Send(&discoveryv3.DiscoveryRequest{
		TypeUrl: resourcev3.SecretType, ResourceNames: s.names,
		VersionInfo: version, ResponseNonce: nonce, ErrorDetail: nack,
	})
	if err != nil {
		s.t.Fatal(err)
	}
}

// recv returns the next response's secrets by name, after ACKing it as
// Envoy does.
func (s *sdsStream) recv() (string, map[string]*tlsv3.Secret) {
	s.t.Helper()
	resp, err := s.stream.Recv()
	if err != nil {
		s.t.Fatal(err)
	}
	secrets := map[string]*tlsv3.Secret{}
	for _, a := range resp.Resources {
		sec := &tlsv3.Secret{}
		if err := a.UnmarshalTo(sec); err != nil {
			s.t.Fatal(err)
		}
		if err := sec.ValidateAll(); err != nil {
			s.t.Errorf("secret %s: %v", sec.Name, err)
		}
		secrets[sec.Name] = sec
	}
	s.send(resp.VersionInfo, resp.Nonce, nil)
	return resp.VersionInfo, secrets
}

// TestSDS drives the agent's SDS socket as Envoy does: one stream for the
// certificate, one for the bundle, ACKs, and pushes on renewal and on a
// root rotation.
func TestSDS(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a := e.startAgent(t)
	path := serveSDS(t, e, a, t.TempDir(), []int{os.Getuid()})
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("SDS socket mode: %v, %v", fi, err)
	}
	conn, err := dialSDS(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	certStream := subscribe(t, conn, bootstrap.SecretCertificate)
	rootStream := subscribe(t, conn, bootstrap.SecretRootCA)

	v1, secrets := certStream.recv()
	first := checkCertificate(t, secrets, a.Current())
	_, roots := rootStream.recv()
	checkRoots(t, roots, e.ca.Bundle())

	// A renewal is pushed, with a new key.
	e.renewNow(t, a)
	v2, secrets := certStream.recv()
	second := checkCertificate(t, secrets, a.Current())
	if v2 == v1 || second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatalf("renewal pushed version %s (was %s) with serial %s", v2, v1, second.SerialNumber)
	}

	// A NACK is not answered with the same version again; the next renewal
	// is still pushed.
	certStream.send(v1, "2", &status.Status{Message: "rejected for the test"})
	if _, err := e.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	e.renewNow(t, a)
	if v3, secrets := certStream.recv(); v3 == v2 {
		t.Fatal("renewal after a NACK not pushed")
	} else {
		checkCertificate(t, secrets, a.Current())
	}
	// The rotation's bundle (both roots) reaches the ROOTCA stream, which
	// the renewal before the rotation left alone (same bundle).
	_, roots = rootStream.recv()
	checkRoots(t, roots, e.ca.Bundle())
	if len(e.ca.Bundle()) != 2 {
		t.Fatalf("CA bundle during the rotation has %d roots", len(e.ca.Bundle()))
	}

	// A wildcard unary fetch gets both.
	resp, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.SecretType})
	if err != nil || len(resp.Resources) != 2 {
		t.Fatalf("FetchSecrets = %v, %v", resp, err)
	}
	if strings.Contains(e.logs.String(), "PRIVATE KEY") {
		t.Error("a private key appears in the logs")
	}
}

// checkCertificate checks the "default" secret against the agent's
// credentials: the chain, a key that matches it, the identity.
func checkCertificate(t *testing.T, secrets map[string]*tlsv3.Secret, want *Credentials) *x509.Certificate {
	t.Helper()
	sec, ok := secrets[bootstrap.SecretCertificate]
	if !ok || len(secrets) != 1 {
		t.Fatalf("secrets %v, want only %s", secrets, bootstrap.SecretCertificate)
	}
	tc := sec.GetTlsCertificate()
	chain, err := certs.ParseCerts(tc.GetCertificateChain().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	key, err := certs.ParseKey(tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if !leaf.Equal(want.Leaf()) {
		t.Fatalf("served leaf %s, agent holds %s", leaf.SerialNumber, want.Leaf().SerialNumber)
	}
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		t.Fatal("served key does not match the served certificate")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != idA.String() {
		t.Fatalf("URIs %v", leaf.URIs)
	}
	return leaf
}

func rootsOf(t *testing.T, secrets map[string]*tlsv3.Secret) []*x509.Certificate {
	t.Helper()
	sec, ok := secrets[bootstrap.SecretRootCA]
	if !ok || len(secrets) != 1 {
		t.Fatalf("secrets %v, want only %s", secrets, bootstrap.SecretRootCA)
	}
	roots, err := certs.ParseCerts(sec.GetValidationContext().GetTrustedCa().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	return roots
}

func checkRoots(t *testing.T, secrets map[string]*tlsv3.Secret, want []*x509.Certificate) {
	t.Helper()
	got := rootsOf(t, secrets)
	if len(got) != len(want) {
		t.Fatalf("ROOTCA has %d roots, want %d", len(got), len(want))
	}
	for i := range got {
		if !got[i].Equal(want[i]) {
			t.Fatalf("ROOTCA root %d differs from the CA's bundle", i)
		}
	}
}

// TestSDSRefusesOtherUsers: an SDS client running as another user gets no
// secrets, by the socket's mode and, with the mode opened up, by the peer
// credential check.
func TestSDSRefusesOtherUsers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test needs root: it runs an SDS client as another user (uid 65534) through syscall.Credential; run `go test` as root")
	}
	e := newEnv(t)
	a := e.startAgent(t)
	if _, err := a.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := serveSDS(t, e, a, dir, []int{os.Getuid()})
	// go test keeps its binary in a directory only root can enter.
	bin := filepath.Join(dir, "client")
	exe, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(uid int) (int, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+path)
		if uid >= 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), stderr.String()
		}
		if err != nil {
			t.Fatalf("running the SDS client: %v", err)
		}
		return 0, stderr.String()
	}

	if code, stderr := run(-1); code != 0 {
		t.Fatalf("control: an SDS client of the same user failed (%d): %s", code, stderr)
	}
	if code, stderr := run(nobody); code != 3 || !strings.Contains(stderr, "permission denied") {
		t.Fatalf("another user, socket mode 0600: exit %d, %s; want a permission error", code, stderr)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if code, stderr := run(nobody); code != 3 {
		t.Fatalf("another user, socket open to all: exit %d, %s; want refused", code, stderr)
	}
	want := fmt.Sprintf(`refused a connection from a process of another user" socket=%s peer_uid=%d `, path, nobody)
	if !strings.Contains(e.logs.String(), want) {
		t.Fatalf("no refusal by the peer check in the logs:\n%s", e.logs.String())
	}
}
