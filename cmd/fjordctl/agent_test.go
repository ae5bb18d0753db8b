package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fjordmesh/fjord/agent"
	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
	"github.com/fjordmesh/fjord/store"
)

// TestAgentCommand runs `fjordctl agent` against a certificate API on
// 127.0.0.1 with a token and roots as `fjordctl token create` writes them,
// delivering both over SDS and to an out dir, and stops it.
func TestAgentCommand(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ca, err := certs.New(ctx, certs.Options{Storage: s.CA(), Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	cp := certs.Identity{TrustDomain: certs.DefaultTrustDomain, Namespace: "fjord-system", ServiceAccount: "fjord-cp"}
	serving, err := certs.NewServing(ca, certs.ServingOptions{Identity: cp, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.NewServer(api.Options{Issuer: ca, Authenticator: &certs.TokenAuthenticator{Store: s.Tokens()}, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(serving.TLSConfig())))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	defer g.Stop()

	creds := t.TempDir()
	token, _, err := certs.MintToken(ctx, s.Tokens(), certs.ServiceAccount{Namespace: "demo", Name: "client"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(creds, tokenFile), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(creds, caFile), ca.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, sock := filepath.Join(t.TempDir(), "certs"), filepath.Join(t.TempDir(), "sds.sock")

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	root := newRoot()
	var logs bytes.Buffer
	root.SetOut(&logs)
	root.SetErr(&logs)
	root.SetArgs([]string{"agent", "--address", lis.Addr().String(), "--identity", "demo/client",
		"--token-file", filepath.Join(creds, tokenFile), "--ca-file", filepath.Join(creds, caFile),
		"--out-dir", out, "--sds-socket", sock, "--xds-address", "127.0.0.1:15012"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(runCtx) }()

	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(out, agent.BootstrapFile)); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("agent stopped: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no bootstrap.json after a minute")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(out, agent.CertFile), filepath.Join(out, agent.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := pair.Leaf.URIs[0].String(); got != "spiffe://cluster.local/ns/demo/sa/client" {
		t.Errorf("identity %s", got)
	}
	boot, err := os.ReadFile(filepath.Join(out, agent.BootstrapFile))
	if err != nil || !strings.Contains(string(boot), `"plugin_name": "file_watcher"`) || !strings.Contains(string(boot), `"id": "grpc~demo~client"`) {
		t.Errorf("bootstrap.json: %v\n%s", err, boot)
	}

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{
		TypeUrl: resourcev3.SecretType, ResourceNames: []string{bootstrap.SecretCertificate},
	})
	if err != nil || len(resp.Resources) != 1 {
		t.Fatalf("SDS fetch = %v, %v", resp, err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("agent did not stop cleanly: %v", err)
	}
	if strings.Contains(logs.String(), token) || strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Error("the token or a key appears in the agent's output")
	}
}

func TestAgentCommandErrors(t *testing.T) {
	dir := t.TempDir()
	tok, ca := filepath.Join(dir, "token"), filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(tok, []byte("fjt_x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"agent", "--identity", "demo/a", "--token-file", tok, "--ca-file", ca}
	tests := map[string]struct {
		args []string
		want string
	}{
		"no delivery":  {base, "set --sds-socket, --out-dir or both"},
		"bad identity": {[]string{"agent", "--identity", "demo", "--token-file", tok, "--ca-file", ca, "--out-dir", dir}, "NAMESPACE/SERVICE-ACCOUNT"},
		"bad roots":    {append(base, "--out-dir", dir), "--ca-file"},
		"no token":     {[]string{"agent", "--identity", "demo/a", "--token-file", filepath.Join(dir, "nope"), "--ca-file", ca, "--out-dir", dir}, "--token-file"},
		"missing flag": {[]string{"agent", "--out-dir", dir}, `required flag(s) "ca-file", "identity", "token-file" not set`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := run(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
