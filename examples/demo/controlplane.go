package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// controlPlane is the fjord-cp process the demo runs.
type controlPlane struct {
	bin              string
	cmd              *exec.Cmd
	exited           chan struct{}
	waitErr          error
	log              string
	xdsAddr, monAddr string
}

// startControlPlane runs bin/fjord-cp in standalone mode on loopback ports,
// with its output in logPath. The process gets its own process group, so a
// Ctrl-C reaches the demo, which stops it in order; and the kernel kills it
// should the demo die without cleaning up.
func startControlPlane(ctx context.Context, bin, configDir, dataDir, logPath string) (*controlPlane, error) {
	xdsAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	monAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	secureAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(filepath.Join(bin, "fjord-cp"),
		"--config-dir", configDir, "--data-dir", dataDir,
		"--xds-address", xdsAddr, "--monitoring-address", monAddr, "--secure-address", secureAddr)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting fjord-cp (did `make build` run?): %w", err)
	}
	cp := &controlPlane{bin: bin, cmd: cmd, exited: make(chan struct{}), log: logPath, xdsAddr: xdsAddr, monAddr: monAddr}
	go func() {
		cp.waitErr = cmd.Wait()
		close(cp.exited)
	}()
	return cp, nil
}

func (cp *controlPlane) pid() int { return cp.cmd.Process.Pid }

// waitReady polls /readyz until the control plane has built its first
// config.
func (cp *controlPlane) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+cp.monAddr+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-cp.exited:
			return fmt.Errorf("fjord-cp exited before it was ready: %v", cp.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("waiting for fjord-cp to be ready: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// bootstrap asks fjordctl for the client's xDS bootstrap, as a user would.
func (cp *controlPlane) bootstrap(ctx context.Context) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(cp.bin, "fjordctl"), "bootstrap", "--kind", "grpc",
		"--namespace", "demo", "--name", "demo-client", "--service-account", "demo-client",
		"--xds-address", cp.xdsAddr)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("fjordctl bootstrap: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// stop ends the process by PID (SIGTERM, then SIGKILL after 10s) and waits
// for it. It reports an exit that was not clean.
func (cp *controlPlane) stop() error {
	select {
	case <-cp.exited:
		return fmt.Errorf("fjord-cp exited on its own: %v", cp.waitErr)
	default:
	}
	_ = cp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-cp.exited:
		if cp.waitErr != nil {
			return fmt.Errorf("fjord-cp (pid %d) on SIGTERM: %w", cp.pid(), cp.waitErr)
		}
		return nil
	case <-time.After(10 * time.Second):
		_ = cp.cmd.Process.Kill()
		<-cp.exited
		return fmt.Errorf("fjord-cp (pid %d) did not exit within 10s of SIGTERM; killed", cp.pid())
	}
}

// tail returns the last n lines of the control plane's log.
func (cp *controlPlane) tail(n int) string {
	data, err := os.ReadFile(cp.log)
	if err != nil {
		return err.Error() + "\n"
	}
	lines := strings.SplitAfter(string(data), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
