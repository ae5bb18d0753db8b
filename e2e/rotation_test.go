package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscredentials "google.golang.org/grpc/credentials/xds"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fjordmesh/fjord/agent"
	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
)

// Timing of TestRotationUnderLoad. Leaves live 30 s (renewed every ~20 s);
// each root rotation phase lasts a leaf lifetime plus the skew.
const (
	rotationLeafTTL = 30 * time.Second
	rotationSkew    = 5 * time.Second
	// rotationRefresh is how often gRPC re-reads the agents' files. The
	// agent's default (a minute) is longer than these leaves live; an
	// operator running 30 s leaves sets `fjordctl agent --refresh-interval`
	// the same way.
	rotationRefresh = time.Second
	// rotationConnAge is the servers' MaxConnectionAge: every connection is
	// replaced this often, so handshakes keep happening with the latest
	// certificates on both sides.
	rotationConnAge = 2 * time.Second
	// rotationTick bounds the load: at most one call per tick (20/s).
	rotationTick = 50 * time.Millisecond
	// rotationRenewals is how many leaf renewals each side must go through
	// before the root rotation starts.
	rotationRenewals = 3
)

// TestRotationUnderLoad: fjord-cp --mtls with 30 s leaves; an xDS-enabled
// gRPC server (demo/echo) and an xDS client (demo/client) whose credentials
// come from real `fjordctl agent --out-dir` processes; calls at a bounded
// rate throughout, on connections the server replaces every couple of
// seconds. The leaves are renewed at least three times on each side, then
// `fjordctl ca rotate` runs a full root rotation, followed with `fjordctl
// ca status`. Not one call may fail; at the end both sides hold leaves under
// the new root only, their bundles no longer hold the old root, and the last
// handshakes on both sides were made with those leaves.
func TestRotationUnderLoad(t *testing.T) {
	start := time.Now()
	since := func() string { return time.Since(start).Truncate(100 * time.Millisecond).String() }

	cp := newControlPlane(t)
	cp.args = []string{"--mtls", "--leaf-ttl", rotationLeafTTL.String(), "--ca-skew", rotationSkew.String()}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, cp.configDir, "mesh.yaml", mtlsServiceYAML("echo", "echo", lis.Addr().(*net.TCPAddr).Port))
	cp.start()
	oldRoot := caStatus(t, cp).signingRoot(t)
	t.Logf("%s: fjord-cp ready, root %s", since(), oldRoot.Serial)

	dirs := map[string]string{
		"echo":   startMTLSAgent(t, cp, cp.secureAddr, "echo"),
		"client": startMTLSAgent(t, cp, cp.secureAddr, "client"),
	}
	leaves := watchLeaves(t, dirs, func(format string, args ...any) { t.Logf(since()+": "+format, args...) })

	srv := startRecordingXDSServer(t, withRefresh(t, agentBootstrap(t, dirs["echo"]), rotationRefresh), lis)
	client := mtlsClient(t, withRefresh(t, agentBootstrap(t, dirs["client"]), rotationRefresh), "echo")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := client.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("first call over mTLS: %v", err)
	}
	t.Logf("%s: first call succeeded; load starts", since())
	load := startRotationLoad(client)
	defer load.stop()

	eventually(t, 3*time.Minute, fmt.Sprintf("%d renewals of each leaf", rotationRenewals), func() (bool, string) {
		n := leaves.renewals()
		return n["echo"] >= rotationRenewals && n["client"] >= rotationRenewals, fmt.Sprintf("renewals so far %v", n)
	})

	out, err := exec.Command(bin("fjordctl"), "ca", "rotate", "--data-dir", cp.dataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("fjordctl ca rotate: %v\n%s", err, out)
	}
	t.Logf("%s: fjordctl ca rotate:\n%s", since(), out)

	var newRoot *api.CertInfo
	phase := certs.PhaseIdle
	eventually(t, 4*(rotationLeafTTL+rotationSkew), "the root rotation to complete", func() (bool, string) {
		st := caStatus(t, cp)
		if p := certs.Phase(st.GetPhase()); p != phase {
			until := ""
			if st.GetDeadline() != nil {
				until = " until " + st.GetDeadline().AsTime().Format(time.TimeOnly)
			}
			t.Logf("%s: CA phase %s%s, roots %s", since(), p, until, describeRoots(st))
			phase = p
		}
		signing := st.signingRoot(t)
		if phase != certs.PhaseIdle || signing.GetSha256() == oldRoot.GetSha256() || len(st.GetRoots()) != 1 {
			return false, fmt.Sprintf("phase %s, roots %s", phase, describeRoots(st))
		}
		newRoot = signing
		return true, ""
	})
	newPool := x509.NewCertPool()
	newPool.AppendCertsFromPEM([]byte(caStatus(t, cp).GetTrustBundlePem()))

	// Each agent drops the old root at its next renewal.
	eventually(t, 2*rotationLeafTTL, "both agents' files under the new root only", func() (bool, string) {
		for name, dir := range dirs {
			if err := underRootOnly(dir, newPool, oldRoot.GetSha256()); err != nil {
				return false, fmt.Sprintf("%s: %v", name, err)
			}
		}
		return true, ""
	})
	t.Logf("%s: both agents hold leaves and a bundle of the new root %s only", since(), newRoot.GetSerial())

	// The last handshakes on both sides used those leaves: a connection
	// lives rotationConnAge and gRPC re-reads the files every
	// rotationRefresh, so a few seconds of calls show it.
	eventually(t, time.Minute, "calls whose handshakes present leaves under the new root only, on both sides", func() (bool, string) {
		if err := verifyChain(srv.lastPeer(), newPool); err != nil {
			return false, "server saw the client's chain: " + err.Error()
		}
		if err := verifyChain(load.lastPeer(), newPool); err != nil {
			return false, "client saw the server's chain: " + err.Error()
		}
		return true, ""
	})

	total, failed, errs := load.stop()
	t.Logf("%s: %d calls, %d failed; the server saw %d client leaves, the client %d server leaves",
		since(), total, failed, srv.distinctPeers(), load.distinctPeers())
	if failed != 0 {
		t.Errorf("%d of %d calls failed, first ones: %v", failed, total, errs)
	}
	// Each leaf was current for long enough to be used by new handshakes.
	for name, seen := range map[string]int{"client (at the server)": srv.distinctPeers(), "echo (at the client)": load.distinctPeers()} {
		if want := rotationRenewals + 1; seen < want {
			t.Errorf("handshakes presented %d distinct %s leaves, want at least %d", seen, name, want)
		}
	}
	if total == 0 {
		t.Error("no calls were made")
	}
}

// caStatusResponse is `fjordctl ca status -o json`.
type caStatusResponse struct{ *api.StatusResponse }

func caStatus(t *testing.T, cp *controlPlane) caStatusResponse {
	t.Helper()
	out, err := exec.Command(bin("fjordctl"), "ca", "status", "--data-dir", cp.dataDir, "-o", "json").Output()
	if err != nil {
		t.Fatalf("fjordctl ca status: %v", err)
	}
	st := &api.StatusResponse{}
	if err := protojson.Unmarshal(out, st); err != nil {
		t.Fatalf("fjordctl ca status -o json: %v\n%s", err, out)
	}
	return caStatusResponse{st}
}

// signingRoot is the root the signing intermediate is under.
func (st caStatusResponse) signingRoot(t *testing.T) *api.CertInfo {
	t.Helper()
	for _, r := range st.GetRoots() {
		if r.GetRole() == "signing" {
			return r
		}
	}
	t.Fatalf("fjordctl ca status shows no signing root: %v", st.StatusResponse)
	return nil
}

func describeRoots(st caStatusResponse) string {
	var s []string
	for _, r := range st.GetRoots() {
		s = append(s, r.GetRole()+" "+r.GetSerial())
	}
	return fmt.Sprint(s)
}

// withRefresh is boot with every refresh_interval (the data-plane
// certificate provider's and the xDS channel's) set to d.
func withRefresh(t *testing.T, boot []byte, d time.Duration) []byte {
	t.Helper()
	var doc any
	if err := json.Unmarshal(boot, &doc); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	found := 0
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if k == "refresh_interval" {
					v[k] = d.String()
					found++
					continue
				}
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(doc)
	if found == 0 {
		t.Fatalf("bootstrap has no refresh_interval:\n%s", boot)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// leafWatch follows the cert.pem of each agent directory and counts the
// renewals (serial changes) after the first leaf.
type leafWatch struct {
	mu     sync.Mutex
	counts map[string]int
	stopCh chan struct{}
	done   chan struct{}
}

// watchLeaves polls every agent's cert.pem until the test ends, logging
// each new leaf with logf.
func watchLeaves(t *testing.T, dirs map[string]string, logf func(string, ...any)) *leafWatch {
	w := &leafWatch{counts: map[string]int{}, stopCh: make(chan struct{}), done: make(chan struct{})}
	serials := map[string]string{}
	poll := func() {
		for name, dir := range dirs {
			chain, err := readCerts(filepath.Join(dir, agent.CertFile))
			if err != nil {
				continue // between the agent's atomic renames there is always a whole file; a read error is transient
			}
			leaf := chain[0]
			s := leaf.SerialNumber.Text(16)
			if serials[name] == s {
				continue
			}
			issuer := ""
			if len(chain) > 1 {
				issuer = chain[1].Subject.CommonName
			}
			w.mu.Lock()
			if serials[name] != "" {
				w.counts[name]++
			}
			n := w.counts[name]
			w.mu.Unlock()
			serials[name] = s
			logf("%s leaf #%d serial %.12s…, valid %s-%s, issued by %q", name, n, s,
				leaf.NotBefore.Format(time.TimeOnly), leaf.NotAfter.Format(time.TimeOnly), issuer)
		}
	}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			poll()
			select {
			case <-w.stopCh:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { close(w.stopCh); <-w.done })
	return w
}

func (w *leafWatch) renewals() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := map[string]int{}
	for k, v := range w.counts {
		n[k] = v
	}
	return n
}

func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return certs.ParseCerts(b)
}

// underRootOnly checks an agent directory: cert.pem verifies against pool
// (the new root alone) and ca.pem no longer holds the root with SHA-256
// oldSHA (hex, as `fjordctl ca status` prints it).
func underRootOnly(dir string, pool *x509.CertPool, oldSHA string) error {
	chain, err := readCerts(filepath.Join(dir, agent.CertFile))
	if err != nil {
		return err
	}
	if err := verifyChain(chain, pool); err != nil {
		return fmt.Errorf("%s: %w", agent.CertFile, err)
	}
	bundle, err := readCerts(filepath.Join(dir, agent.CAFile))
	if err != nil {
		return err
	}
	for _, c := range bundle {
		if sum := sha256.Sum256(c.Raw); hex.EncodeToString(sum[:]) == oldSHA {
			return fmt.Errorf("%s still holds the old root", agent.CAFile)
		}
	}
	return nil
}

// verifyChain verifies a leaf-first chain against pool.
func verifyChain(chain []*x509.Certificate, pool *x509.CertPool) error {
	if len(chain) == 0 {
		return errors.New("no chain")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// peerLog records the certificate chains the other side presented.
type peerLog struct {
	mu     sync.Mutex
	last   []*x509.Certificate
	leaves map[string]bool
}

func (p *peerLog) record(info credentials.AuthInfo) {
	tlsInfo, ok := info.(credentials.TLSInfo)
	if !ok || len(tlsInfo.State.PeerCertificates) == 0 {
		return
	}
	chain := tlsInfo.State.PeerCertificates
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.leaves == nil {
		p.leaves = map[string]bool{}
	}
	p.last = chain
	p.leaves[chain[0].SerialNumber.String()] = true
}

func (p *peerLog) lastPeer() []*x509.Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

func (p *peerLog) distinctPeers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.leaves)
}

// recordingServer is a TestService that records its callers' chains.
type recordingServer struct {
	testpb.UnimplementedTestServiceServer
	peerLog
}

func (s *recordingServer) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	if p, ok := peer.FromContext(ctx); ok {
		s.record(p.AuthInfo)
	}
	return &testpb.Empty{}, nil
}

// startRecordingXDSServer is startXDSServer with connections that live
// rotationConnAge, so clients handshake again and again.
func startRecordingXDSServer(t *testing.T, boot []byte, lis net.Listener) *recordingServer {
	t.Helper()
	creds, err := xdscredentials.NewServerCredentials(xdscredentials.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	gs, err := xds.NewGRPCServer(grpc.Creds(creds), xds.BootstrapContentsForTesting(boot),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: rotationConnAge, MaxConnectionAgeGrace: time.Minute}))
	if err != nil {
		t.Fatal(err)
	}
	s := &recordingServer{}
	testpb.RegisterTestServiceServer(gs, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() { gs.Stop(); <-done })
	return s
}

// rpcLoad makes one fail-fast call per rotationTick (a call that takes longer
// delays the next: the rate is bounded, never exceeded) until stop, and
// records the server's chain of every successful call. A handshake that
// fails puts the channel in TRANSIENT_FAILURE, which fails these calls.
type rpcLoad struct {
	peerLog
	stopOnce sync.Once
	stopCh   chan struct{}
	done     chan struct{}

	mu            sync.Mutex
	total, failed int
	errs          []string
}

func startRotationLoad(c testpb.TestServiceClient) *rpcLoad {
	l := &rpcLoad{stopCh: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(rotationTick)
		defer tick.Stop()
		for {
			select {
			case <-l.stopCh:
				return
			case <-tick.C:
			}
			var p peer.Peer
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := c.EmptyCall(ctx, &testpb.Empty{}, grpc.Peer(&p))
			cancel()
			l.mu.Lock()
			l.total++
			if err != nil {
				l.failed++
				if len(l.errs) < 5 {
					l.errs = append(l.errs, time.Now().Format(time.TimeOnly)+" "+err.Error())
				}
			}
			l.mu.Unlock()
			if err == nil {
				l.record(p.AuthInfo)
			}
		}
	}()
	return l
}

// stop ends the load (at once if called again) and returns its counts.
func (l *rpcLoad) stop() (total, failed int, errs []string) {
	l.stopOnce.Do(func() { close(l.stopCh) })
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.failed, l.errs
}
