package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/fjordmesh/fjord/certs"
	"github.com/fjordmesh/fjord/certs/api"
	"github.com/fjordmesh/fjord/store"
)

// TestOfflineTokenAndCA: with no control plane on the data directory, the
// commands work on it directly, and what they leave is what a control plane
// would load.
func TestOfflineTokenAndCA(t *testing.T) {
	ctx := context.Background()
	data, out := t.TempDir(), filepath.Join(t.TempDir(), "creds")

	if _, err := run(t, "ca", "status", "--data-dir", data); err == nil || !strings.Contains(err.Error(), "no CA") {
		t.Fatalf("status before any CA: %v", err)
	}
	msg, err := run(t, "token", "create", "--data-dir", data, "--identity", "demo/a", "--ttl", "1h", "-o", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "spiffe://cluster.local/ns/demo/sa/a") {
		t.Errorf("output: %s", msg)
	}
	token := readToken(t, out)
	if fi, err := os.Stat(filepath.Join(out, tokenFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode: %v, %v", fi, err)
	}
	roots, err := os.ReadFile(filepath.Join(out, caFile))
	if err != nil {
		t.Fatal(err)
	}

	st, err := run(t, "ca", "status", "--data-dir", data)
	if err != nil || !strings.Contains(st, "Phase:") || !strings.Contains(st, "Idle") || !strings.Contains(st, "root (signing)") {
		t.Fatalf("status = %s, %v", st, err)
	}
	if st, err := run(t, "ca", "status", "--data-dir", data, "-o", "json"); err != nil || !strings.Contains(st, `"phase": "Idle"`) {
		t.Fatalf("json status = %s, %v", st, err)
	}
	if st, err := run(t, "ca", "rotate", "--data-dir", data); err != nil || !strings.Contains(st, "NewRootTrusted") || !strings.Contains(st, "root (pending)") {
		t.Fatalf("rotate = %s, %v", st, err)
	}
	if _, err := run(t, "ca", "rotate", "--data-dir", data); err == nil || !strings.Contains(err.Error(), "already in progress") {
		t.Fatalf("second rotate: %v", err)
	}
	// Printing the token alone.
	if tok, err := run(t, "token", "create", "--data-dir", data, "--identity", "demo/b"); err != nil || !strings.HasPrefix(tok, "fjt_") {
		t.Fatalf("token to stdout: %q, %v", tok, err)
	}

	// A control plane on this data directory loads the CA, the rotation and
	// the token.
	s, err := store.Open(data)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.New(ctx, certs.Options{Storage: s.CA(), Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if ca.Status().Phase != certs.PhaseNewRootTrusted {
		t.Errorf("phase %s, want the rotation started offline", ca.Status().Phase)
	}
	first, err := certs.ParseCerts(roots)
	if err != nil || !first[0].Equal(ca.Bundle()[0]) || len(ca.Bundle()) != 2 {
		t.Fatalf("control plane loaded another CA (bundle of %d): %v", len(ca.Bundle()), err)
	}
	if sa, err := (&certs.TokenAuthenticator{Store: s.Tokens()}).Authenticate(ctx, token); err != nil || sa.String() != "demo/a" {
		t.Fatalf("token: %v, %v", sa, err)
	}
	s.Close()

	if msg, err := run(t, "token", "revoke", "--data-dir", data, "--identity", "demo/a"); err != nil || !strings.Contains(msg, "revoked 1 token") {
		t.Fatalf("revoke = %s, %v", msg, err)
	}
}

// TestOnlineToken: while a control plane holds the data directory, the
// commands go through its admin socket.
func TestOnlineToken(t *testing.T) {
	ctx := context.Background()
	data, out := t.TempDir(), t.TempDir()
	s, err := store.Open(data)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ca, err := certs.New(ctx, certs.Options{Storage: s.CA(), Log: quiet})
	if err != nil {
		t.Fatal(err)
	}

	// Locked, and no admin socket: a clear error.
	if _, err := run(t, "ca", "status", "--data-dir", data); err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("status on a held data dir without a socket: %v", err)
	}

	lis, err := api.ListenUnix(filepath.Join(data, api.AdminSocket), []int{os.Getuid()}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	(&api.Admin{CA: ca, Tokens: s.Tokens(), TrustDomain: "example.org", Log: quiet}).Register(g)
	go g.Serve(lis)
	defer g.Stop()

	msg, err := run(t, "token", "create", "--data-dir", data, "--identity", "demo/a", "-o", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "spiffe://example.org/ns/demo/sa/a") {
		t.Errorf("the control plane's trust domain is not used: %s", msg)
	}
	if sa, err := (&certs.TokenAuthenticator{Store: s.Tokens()}).Authenticate(ctx, readToken(t, out)); err != nil || sa.String() != "demo/a" {
		t.Fatalf("token minted through the socket: %v, %v", sa, err)
	}
	if st, err := run(t, "ca", "status", "--data-dir", data); err != nil || !strings.Contains(st, "example.org") {
		t.Fatalf("status through the socket = %s, %v", st, err)
	}
	if _, err := run(t, "ca", "rotate", "--data-dir", data); err != nil || ca.Status().Phase != certs.PhaseNewRootTrusted {
		t.Fatalf("rotate through the socket: %v, phase %s", err, ca.Status().Phase)
	}
}

func readToken(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, tokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSpace(b))
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
