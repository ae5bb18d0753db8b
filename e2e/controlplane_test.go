package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// controlPlane is one fjord-cp process in standalone mode. Its addresses
// and directories survive a restart, so a test can stop it, break the
// config directory and start it again on the same data.
type controlPlane struct {
	t         *testing.T
	configDir string
	dataDir   string
	xdsAddr   string
	monAddr   string
	// secureAddr is the certificate API and authenticated xDS port; a free
	// one per test, so runs side by side never collide on 15012.
	secureAddr string
	// args are extra flags for fjord-cp, set before start.
	args []string

	mu      sync.Mutex
	log     strings.Builder // everything every run of the process printed
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// newControlPlane prepares directories and loopback addresses; start runs
// the process. The process is stopped by PID when the test ends, whatever
// happens; its output is logged if the test failed, or always with
// E2E_CP_LOG=1.
func newControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	cp := &controlPlane{
		t:          t,
		configDir:  filepath.Join(t.TempDir(), "config"),
		dataDir:    filepath.Join(t.TempDir(), "data"),
		xdsAddr:    freeAddr(t, "127.0.0.1"),
		monAddr:    freeAddr(t, "127.0.0.1"),
		secureAddr: freeAddr(t, "127.0.0.1"),
	}
	for _, d := range []string{cp.configDir, cp.dataDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		cp.stop()
		if t.Failed() || os.Getenv("E2E_CP_LOG") != "" {
			t.Logf("fjord-cp output:\n%s", cp.output())
		}
	})
	return cp
}

// start runs fjord-cp and waits until /readyz answers 200.
func (cp *controlPlane) start() {
	cp.t.Helper()
	cmd := exec.Command(bin("fjord-cp"), append([]string{
		"--config-dir", cp.configDir,
		"--data-dir", cp.dataDir,
		"--xds-address", cp.xdsAddr,
		"--monitoring-address", cp.monAddr,
		"--secure-address", cp.secureAddr,
	}, cp.args...)...)
	// If the test binary dies without running its cleanups, the kernel
	// still ends the control plane.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		cp.t.Fatalf("starting fjord-cp: %v", err)
	}
	exited := make(chan struct{})
	cp.mu.Lock()
	cp.cmd, cp.exited, cp.waitErr = cmd, exited, nil
	fmt.Fprintf(&cp.log, "--- fjord-cp pid %d started\n", cmd.Process.Pid)
	cp.mu.Unlock()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			cp.mu.Lock()
			cp.log.WriteString(sc.Text() + "\n")
			cp.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, pr) // an over-long line: keep the pipe drained
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		<-copied
		cp.mu.Lock()
		cp.waitErr = err
		cp.mu.Unlock()
		close(exited)
	}()
	cp.waitReady()
}

// waitReady polls /readyz until it answers 200, failing at once if the
// process exits.
func (cp *controlPlane) waitReady() {
	cp.t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	url := "http://" + cp.monAddr + "/readyz"
	last := "no answer"
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-cp.exited:
			cp.t.Fatalf("fjord-cp exited before it was ready: %v\n%s", cp.exitErr(), cp.output())
		default:
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	cp.t.Fatalf("fjord-cp not ready after 60s (%s): last answer %s\n%s", url, last, cp.output())
}

// stop sends SIGTERM to the process by PID and waits for it, killing it if
// it does not exit within 15s. It returns the exit error (nil for a clean
// exit) and is a no-op when the process is not running.
func (cp *controlPlane) stop() error {
	cp.mu.Lock()
	cmd, exited := cp.cmd, cp.exited
	cp.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
	default:
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			cp.mu.Lock()
			cp.log.WriteString("--- fjord-cp did not exit within 15s of SIGTERM; killed\n")
			cp.mu.Unlock()
		}
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.cmd = nil
	return cp.waitErr
}

func (cp *controlPlane) exitErr() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.waitErr
}

// output is everything the process printed so far, over all its runs.
func (cp *controlPlane) output() string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.log.String()
}

// waitLog waits until the process output contains s (after offset, a
// length of output taken earlier) and fails the test after timeout.
func (cp *controlPlane) waitLog(offset int, s string, timeout time.Duration) {
	cp.t.Helper()
	eventually(cp.t, timeout, fmt.Sprintf("fjord-cp logs %q", s), func() (bool, string) {
		out := cp.output()
		return strings.Contains(out[offset:], s), "not yet logged"
	})
}

// logLen marks the current end of the output, for waitLog.
func (cp *controlPlane) logLen() int { return len(cp.output()) }

// freeAddr returns host:port with a port that was free a moment ago. The
// control plane binds it right after, on loopback only.
func freeAddr(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// eventually polls cond every 50ms until it holds, and fails the test with
// what and cond's last explanation after timeout. Every wait in these tests
// goes through it: generous deadlines, never a fixed sleep.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still waiting for %s: %s", timeout, what, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
