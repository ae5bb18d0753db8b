package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
	"github.com/fjordmesh/fjord/examples/echo"
	"github.com/fjordmesh/fjord/xds/node"
)

// identityRig is a fjord-cp with its secure port, and one workload,
// demo/client, whose agent keeps its credentials in certDir.
type identityRig struct {
	cp         *controlPlane
	secureAddr string
	credsDir   string // token and ca.pem from `fjordctl token create`
	certDir    string // the agent's --out-dir
	agentLog   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startIdentityRig starts fjord-cp serving the echo mesh, mints a token for
// demo/client through the running control plane's admin socket, and runs
// `fjordctl agent --out-dir` until the certificate and bootstrap are there.
func startIdentityRig(t *testing.T, b *backends) *identityRig {
	t.Helper()
	r := &identityRig{
		cp:         newControlPlane(t),
		secureAddr: freeAddr(t, "127.0.0.1"),
		credsDir:   filepath.Join(t.TempDir(), "creds"),
		certDir:    filepath.Join(t.TempDir(), "certs"),
		agentLog:   &syncBuffer{},
	}
	// Debug logs: the key search covers the most the control plane says.
	r.cp.args = []string{"--secure-address", r.secureAddr, "--log-level", "debug"}
	writeMesh(t, r.cp, b, 1)
	r.cp.start()

	out, err := exec.Command(bin("fjordctl"), "token", "create", "--data-dir", r.cp.dataDir,
		"--identity", "demo/client", "--ttl", "1h", "-o", r.credsDir).CombinedOutput()
	if err != nil {
		t.Fatalf("fjordctl token create: %v\n%s", err, out)
	}

	agent := exec.Command(bin("fjordctl"), "agent", "--address", r.secureAddr, "--identity", "demo/client",
		"--token-file", filepath.Join(r.credsDir, "token"), "--ca-file", filepath.Join(r.credsDir, "ca.pem"),
		"--out-dir", r.certDir, "--name", "client", "--xds-address", r.secureAddr)
	agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	agent.Stdout, agent.Stderr = r.agentLog, r.agentLog
	if err := agent.Start(); err != nil {
		t.Fatalf("starting fjordctl agent: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = agent.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("fjordctl agent output:\n%s", r.agentLog.String())
		}
	})
	eventually(t, time.Minute, "the agent's bootstrap.json", func() (bool, string) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("fjordctl agent exited: %v\n%s", err, r.agentLog.String())
		default:
		}
		_, err := os.Stat(filepath.Join(r.certDir, "bootstrap.json"))
		return err == nil, fmt.Sprint(err)
	})
	return r
}

func (r *identityRig) read(t *testing.T, dir, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// dialSecure connects to the secure port trusting the CA of ca.pem and
// presenting client (none if nil).
func (r *identityRig) dialSecure(t *testing.T, client *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(r.read(t, r.credsDir, "ca.pem")) {
		t.Fatal("ca.pem holds no certificate")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	if client != nil {
		cfg.Certificates = []tls.Certificate{*client}
	}
	cc, err := grpc.NewClient(r.secureAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// workloadCert is the agent's current certificate and key.
func (r *identityRig) workloadCert(t *testing.T) *tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(r.certDir, "cert.pem"), filepath.Join(r.certDir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

// adsStream sends first as the first request's node, then (if the stream is
// answered) second, and returns the stream's error, or nil if it is still
// served after both.
func adsStream(ctx context.Context, cc *grpc.ClientConn, first, second node.Info) error {
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	// A refused stream fails its sends with io.EOF; Recv has the status.
	_ = s.Send(&discoveryv3.DiscoveryRequest{Node: first.Node(), TypeUrl: resourcev3.ClusterType})
	resp, err := s.Recv()
	if err != nil {
		return err
	}
	_ = s.Send(&discoveryv3.DiscoveryRequest{Node: second.Node(), TypeUrl: resourcev3.ClusterType,
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
	_ = s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResourceNames: []string{"echo.demo.svc.cluster.local:50051"}})
	if _, err := s.Recv(); err != nil {
		return err
	}
	return s.CloseSend()
}

// TestIdentityEndToEnd runs fjord-cp, `fjordctl token create` against its
// admin socket and `fjordctl agent --out-dir`; a grpc-go xDS client on the
// agent's bootstrap reaches the secure port with the agent's certificate
// and calls the echo backend. Streams without a certificate, or whose node
// is not the certificate's identity (at first or later), are refused, and a
// token for one identity gets no certificate for another.
func TestIdentityEndToEnd(t *testing.T) {
	b := startBackends(t, 1)
	r := startIdentityRig(t, b)
	client := node.Info{Namespace: "demo", Workload: "client", ServiceAccount: "client", Kind: node.GRPC}

	t.Run("xds client on the agent's bootstrap", func(t *testing.T) {
		boot := r.read(t, r.certDir, "bootstrap.json")
		if !strings.Contains(string(boot), `"type": "tls"`) || !strings.Contains(string(boot), r.secureAddr) {
			t.Fatalf("the agent's bootstrap does not reach the secure port over TLS:\n%s", boot)
		}
		resolver, err := xds.NewXDSResolverWithConfigForTesting(boot)
		if err != nil {
			t.Fatalf("grpc-go refuses the agent's bootstrap: %v\n%s", err, boot)
		}
		cc, err := grpc.NewClient(target, grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		var last string
		eventually(t, time.Minute, "a call to echo-1 through authenticated xDS", func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			backend, err := echo.Call(ctx, cc)
			last = fmt.Sprintf("backend %q, error %v", backend, err)
			return err == nil && backend == "echo-1", last
		})
	})

	tests := map[string]struct {
		cert          bool
		first, second node.Info
		want          codes.Code
	}{
		"no client certificate": {cert: false, first: client, second: client, want: codes.Unauthenticated},
		"certificate for demo/client, node claims demo/other": {cert: true,
			first: node.Info{Namespace: "demo", Workload: "client", ServiceAccount: "other", Kind: node.GRPC}, want: codes.PermissionDenied},
		"node switched mid-stream": {cert: true, first: client,
			second: node.Info{Namespace: "demo", Workload: "other", ServiceAccount: "other", Kind: node.GRPC}, want: codes.PermissionDenied},
		"the certificate's own node": {cert: true, first: client, second: client, want: codes.OK},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var cert *tls.Certificate
			if tc.cert {
				cert = r.workloadCert(t)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			second := tc.second
			if second == (node.Info{}) {
				second = tc.first
			}
			if err := adsStream(ctx, r.dialSecure(t, cert), tc.first, second); status.Code(err) != tc.want {
				t.Errorf("stream ended with %v, want code %v", err, tc.want)
			}
		})
	}

	t.Run("token for demo/client asking for demo/other", func(t *testing.T) {
		bundle, err := certs.ParseCerts(r.read(t, r.credsDir, "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		token := strings.TrimSpace(string(r.read(t, r.credsDir, "token")))
		cc, err := api.DialCertificates(r.secureAddr, bundle, func() (string, error) { return token, nil })
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		key, err := certs.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		csr, err := certs.NewCSR(*key, certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: "demo", ServiceAccount: "other"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = api.NewCertificateServiceClient(cc).Sign(context.Background(), &api.SignRequest{CsrPem: string(csr)})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("Sign = %v, want PermissionDenied", err)
		}
	})

	t.Run("refusals are counted", func(t *testing.T) {
		_, body := httpGet(t, "http://"+r.cp.monAddr+"/metrics")
		for _, want := range []string{
			`fjord_xds_auth_failures_total{reason="no_certificate"} 1`,
			`fjord_xds_auth_failures_total{reason="identity_mismatch"} 1`,
			`fjord_xds_auth_failures_total{reason="node_changed"} 1`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// keyForms are the ways a workload's private key could show up: the PEM
// file, its PKCS#8 DER raw and in base64 (whole and per PEM line), and the
// private scalar raw, in hex and in base64.
func keyForms(t *testing.T, keyPEM []byte) map[string][]byte {
	t.Helper()
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatal("key.pem holds no PEM block")
	}
	forms := map[string][]byte{
		"key.pem":              keyPEM,
		"PKCS#8 DER":           block.Bytes,
		"PKCS#8 DER base64":    []byte(base64.StdEncoding.EncodeToString(block.Bytes)),
		"PKCS#8 DER base64url": []byte(base64.RawURLEncoding.EncodeToString(block.Bytes)),
	}
	for i, line := range strings.Split(strings.TrimSpace(string(keyPEM)), "\n") {
		if !strings.HasPrefix(line, "-----") {
			forms[fmt.Sprintf("PEM line %d", i)] = []byte(line)
		}
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("key is a %T, want ECDSA", key)
	}
	d, err := ec.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	forms["private scalar"] = d
	forms["private scalar hex"] = []byte(hex.EncodeToString(d))
	forms["private scalar base64"] = []byte(base64.StdEncoding.EncodeToString(d))
	return forms
}

// TestIdentityNoWorkloadKeyInControlPlane searches everything the control
// plane serves (/debug/*, /metrics, xDS responses on both ports), logs and
// stores (every bbolt key and value) for the agent's private key, in every
// form it could take, and finds none.
func TestIdentityNoWorkloadKeyInControlPlane(t *testing.T) {
	b := startBackends(t, 1)
	r := startIdentityRig(t, b)
	forms := keyForms(t, r.read(t, r.certDir, "key.pem"))
	cert := r.workloadCert(t)

	served := map[string][]byte{}
	for _, path := range []string{"/debug/config", "/debug/status", "/debug/mesh", "/metrics"} {
		code, body := httpGet(t, "http://"+r.cp.monAddr+path)
		if code != http.StatusOK {
			t.Errorf("GET %s: %d", path, code)
		}
		served[path] = []byte(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := node.Info{Namespace: "demo", Workload: "client", ServiceAccount: "client", Kind: node.GRPC}
	for port, cc := range map[string]*grpc.ClientConn{
		"plaintext": dialPlain(t, r.cp.xdsAddr),
		"secure":    r.dialSecure(t, cert),
	} {
		clusters, err := clusterservice.NewClusterDiscoveryServiceClient(cc).FetchClusters(ctx,
			&discoveryv3.DiscoveryRequest{Node: client.Node(), TypeUrl: resourcev3.ClusterType})
		if err != nil {
			t.Fatalf("%s port, clusters: %v", port, err)
		}
		listeners, err := fetchListeners(ctx, cc, client)
		if err != nil {
			t.Fatalf("%s port, listeners: %v", port, err)
		}
		if len(clusters.GetResources()) == 0 || len(listeners.GetResources()) == 0 {
			t.Fatalf("%s port served %d clusters and %d listeners: the search would prove nothing",
				port, len(clusters.GetResources()), len(listeners.GetResources()))
		}
		for typ, resp := range map[string]*discoveryv3.DiscoveryResponse{"clusters": clusters, "listeners": listeners} {
			js, err := proto.Marshal(resp)
			if err != nil {
				t.Fatal(err)
			}
			served[port+" xDS "+typ] = js
		}
	}

	if err := r.cp.stop(); err != nil {
		t.Fatalf("fjord-cp did not stop cleanly: %v", err)
	}
	served["fjord-cp output"] = []byte(r.cp.output())
	db, err := bolt.Open(filepath.Join(r.cp.dataDir, "fjord.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var stored int
	err = db.View(func(tx *bolt.Tx) error {
		var walk func(where string, b *bolt.Bucket) error
		walk = func(where string, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					return walk(where+"/"+string(k), b.Bucket(k))
				}
				stored++
				served["bbolt "+where+"/"+string(k)] = append(append([]byte{}, k...), v...)
				return nil
			})
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error { return walk(string(name), b) })
	})
	if err != nil {
		t.Fatal(err)
	}
	if stored == 0 || !containsKey(served, "bbolt ca/") {
		t.Fatalf("found %d bbolt values and no CA bucket: the search would prove nothing", stored)
	}

	for where, data := range served {
		for form, needle := range forms {
			if bytes.Contains(data, needle) {
				t.Errorf("the workload's private key (%s) is in %s", form, where)
			}
		}
	}
}

func containsKey(m map[string][]byte, prefix string) bool {
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

func dialPlain(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// fetchListeners returns the first listener response of an ADS stream for
// n: what a proxy is served.
func fetchListeners(ctx context.Context, cc *grpc.ClientConn, n node.Info) (*discoveryv3.DiscoveryResponse, error) {
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	defer s.CloseSend()
	_ = s.Send(&discoveryv3.DiscoveryRequest{Node: n.Node(), TypeUrl: resourcev3.ListenerType, ResourceNames: []string{"echo.demo.svc.cluster.local:50051"}})
	return s.Recv()
}
