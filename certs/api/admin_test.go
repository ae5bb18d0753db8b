package api

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fjordmesh/fjord/certs"
)

// serveAdmin serves e's AdminService on a peer-checked socket in dir.
func serveAdmin(t *testing.T, e *env, dir string, uids []int) (path string, client AdminServiceClient) {
	t.Helper()
	path = filepath.Join(dir, AdminSocket)
	lis, err := ListenUnix(path, uids, e.log)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	(&Admin{CA: e.ca, Tokens: e.store.Tokens(), Clock: e.clk, Log: e.log}).Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn, err := DialAdmin(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return path, NewAdminServiceClient(conn)
}

func TestAdmin(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 0, 0)
	dir := t.TempDir()
	path, admin := serveAdmin(t, e, dir, []int{os.Getuid()})
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket mode: %v, %v", fi.Mode(), err)
	}

	tok, err := admin.CreateToken(ctx, &CreateTokenRequest{Namespace: "demo", ServiceAccount: "a", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if tok.SpiffeId != idA.String() || !strings.Contains(tok.TrustBundlePem, "BEGIN CERTIFICATE") {
		t.Fatalf("CreateToken = %v", tok)
	}
	_, csrA := csrFor(t, idA)
	if _, err := e.client(t, tok.Token, nil).Sign(ctx, &SignRequest{CsrPem: csrA}); err != nil {
		t.Fatalf("Sign with a token from the admin service: %v", err)
	}
	for name, req := range map[string]*CreateTokenRequest{
		"bad namespace": {Namespace: "Demo", ServiceAccount: "a", Ttl: durationpb.New(time.Hour)},
		"no ttl":        {Namespace: "demo", ServiceAccount: "a"},
	} {
		if _, err := admin.CreateToken(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: CreateToken = %v, want InvalidArgument", name, err)
		}
	}

	st, err := admin.Status(ctx, &StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != string(certs.PhaseIdle) || len(st.Roots) != 1 || st.Signer.GetNotAfter() == nil || st.TrustDomain != certs.DefaultTrustDomain {
		t.Errorf("Status = %v", st)
	}
	st, err = admin.Rotate(ctx, &RotateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != string(certs.PhaseNewRootTrusted) || len(st.Roots) != 2 || st.Deadline == nil {
		t.Errorf("Rotate = %v", st)
	}
	if _, err := admin.Rotate(ctx, &RotateRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second Rotate = %v, want FailedPrecondition", err)
	}

	rev, err := admin.RevokeTokens(ctx, &RevokeTokensRequest{Namespace: "demo", ServiceAccount: "a"})
	if err != nil || rev.Revoked != 1 {
		t.Fatalf("RevokeTokens = %v, %v", rev, err)
	}
	if _, err := e.client(t, tok.Token, nil).Sign(ctx, &SignRequest{CsrPem: csrA}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Sign with a revoked token = %v", err)
	}
}

func TestListenUnixStaleAndBusy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	l, err := ListenUnix(path, []int{os.Getuid()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(path, []int{os.Getuid()}, nil); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second listener on a live socket: %v", err)
	}
	// A listener that dies without unlinking leaves a stale file.
	l.(*peerListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	l2, err := ListenUnix(path, []int{os.Getuid()}, nil)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(regular, []int{os.Getuid()}, nil); err == nil {
		t.Fatal("a regular file was replaced by a socket")
	}
}

// TestAdminUnmanaged: in cert-manager mode the admin service hands out the
// issuer's bundle with tokens and refuses status and rotation, which are
// cert-manager's.
func TestAdminUnmanaged(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 0, 0)
	path := filepath.Join(t.TempDir(), AdminSocket)
	lis, err := ListenUnix(path, []int{os.Getuid()}, e.log)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	(&Admin{Unmanaged: e.ca, Tokens: e.store.Tokens(), Clock: e.clk, Log: e.log}).Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn, err := DialAdmin(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	admin := NewAdminServiceClient(conn)

	if _, err := admin.Status(ctx, &StatusRequest{}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "cert-manager") {
		t.Errorf("Status = %v, want FailedPrecondition naming cert-manager", err)
	}
	if _, err := admin.Rotate(ctx, &RotateRequest{}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "cert-manager") {
		t.Errorf("Rotate = %v, want FailedPrecondition naming cert-manager", err)
	}
	tok, err := admin.CreateToken(ctx, &CreateTokenRequest{Namespace: "demo", ServiceAccount: "a", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if want := string(certs.EncodeCerts(e.ca.Bundle())); tok.TrustBundlePem != want {
		t.Errorf("CreateToken bundle = %q, want the issuer's %q", tok.TrustBundlePem, want)
	}
}
