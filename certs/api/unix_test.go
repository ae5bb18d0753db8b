package api

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childEnv makes the test binary act as a client of a Unix socket instead
// of running tests, so that it can run as another user.
const childEnv = "FJORD_TEST_UNIX_CHILD"

// nobody is the user id the other-user client runs as.
const nobody = 65534

func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		os.Exit(childStatus(path))
	}
	os.Exit(m.Run())
}

// childStatus calls AdminService.Status on the socket: exit 0 if it
// answered, 3 if the call failed (the error on stderr).
func childStatus(path string) int {
	conn, err := DialAdmin(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := NewAdminServiceClient(conn).Status(ctx, &StatusRequest{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

// runChild runs childStatus from the test binary bin against path as uid
// (-1: as this process).
func runChild(t *testing.T, bin, path string, uid int) (exit int, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+path)
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), errb.String()
	}
	if err != nil {
		t.Fatalf("running the client process: %v", err)
	}
	return 0, errb.String()
}

// TestAdminSocketRefusesOtherUsers: a process of another user is refused
// by the peer-credential check even when the socket file would let it
// connect, and cannot even connect with the socket's real mode.
func TestAdminSocketRefusesOtherUsers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test needs root: it runs a client as another user (uid 65534) through syscall.Credential; run `go test` as root")
	}
	e := newEnv(t, 0, 0)
	dir := t.TempDir()
	// Let the other user reach the socket through t.TempDir's two levels.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path, _ := serveAdmin(t, e, dir, []int{os.Getuid()})
	// go test keeps its binary in a directory only root can enter.
	bin := filepath.Join(dir, "client")
	exe, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}

	if code, stderr := runChild(t, bin, path, -1); code != 0 {
		t.Fatalf("control: the same user's client failed (%d): %s", code, stderr)
	}
	code, stderr := runChild(t, bin, path, nobody)
	if code != 3 || !strings.Contains(stderr, "permission denied") {
		t.Fatalf("another user with the socket at mode 0600: exit %d, %s; want a permission error", code, stderr)
	}

	// Even with the file open to all, the peer check refuses.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	code, stderr = runChild(t, bin, path, nobody)
	if code != 3 {
		t.Fatalf("another user with the socket open to all: exit %d, %s; want refused", code, stderr)
	}
	want := fmt.Sprintf(`refused a connection from a process of another user" socket=%s peer_uid=%d `, path, nobody)
	if !strings.Contains(e.logs.String(), want) {
		t.Fatalf("no refusal logged by the peer check; logs:\n%s", e.logs.String())
	}
}
