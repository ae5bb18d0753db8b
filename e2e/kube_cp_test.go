package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/fjordmesh/fjord/certs"
)

// kubeControlPlane is one fjord-cp process in Kubernetes mode, with leader
// election on, as installed. Its addresses survive a restart.
type kubeControlPlane struct {
	t          *testing.T
	kubeconfig string
	xdsAddr    string
	secureAddr string
	monAddr    string

	mu     sync.Mutex
	log    strings.Builder // everything every run printed
	cmd    *exec.Cmd
	exited chan struct{}
}

// startKubeControlPlane starts fjord-cp on the API server of cfg and waits
// until it is ready; it is stopped by PID when the test ends.
func startKubeControlPlane(t *testing.T, cfg *rest.Config) *kubeControlPlane {
	t.Helper()
	cp := &kubeControlPlane{
		t:          t,
		kubeconfig: writeKubeconfig(t, cfg),
		xdsAddr:    freeAddr(t, "127.0.0.1"),
		secureAddr: freeAddr(t, "127.0.0.1"),
		monAddr:    freeAddr(t, "127.0.0.1"),
	}
	t.Cleanup(func() {
		cp.stop()
		if t.Failed() || os.Getenv("E2E_CP_LOG") != "" {
			t.Logf("fjord-cp output:\n%s", cp.output())
		}
	})
	cp.start()
	return cp
}

// client is what newClient needs to build a client's bootstrap.
func (cp *kubeControlPlane) client() *controlPlane {
	return &controlPlane{t: cp.t, xdsAddr: cp.xdsAddr, monAddr: cp.monAddr}
}

func (cp *kubeControlPlane) start() {
	cp.t.Helper()
	cmd := exec.Command(bin("fjord-cp"),
		"--kubeconfig", cp.kubeconfig,
		// Plaintext xDS, which Kubernetes mode serves only on request, for
		// clients without identities; identity itself runs as installed
		// (its CA in a Secret), and has its own suite.
		"--xds-address", cp.xdsAddr,
		"--secure-address", cp.secureAddr,
		"--monitoring-address", cp.monAddr,
		"--debounce", "20ms", "--max-delay", "200ms",
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		cp.t.Fatalf("starting fjord-cp: %v", err)
	}
	exited := make(chan struct{})
	cp.mu.Lock()
	cp.cmd, cp.exited = cmd, exited
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
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		<-copied
		cp.mu.Lock()
		fmt.Fprintf(&cp.log, "--- fjord-cp pid %d exited: %v\n", cmd.Process.Pid, err)
		cp.mu.Unlock()
		close(exited)
	}()
	client := &http.Client{Timeout: 2 * time.Second}
	eventually(cp.t, time.Minute, "fjord-cp /readyz to answer 200", func() (bool, string) {
		select {
		case <-exited:
			cp.t.Fatalf("fjord-cp exited before it was ready:\n%s", cp.output())
		default:
		}
		resp, err := client.Get("http://" + cp.monAddr + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// stop sends SIGTERM by PID and waits, killing the process after 15s.
// It reports whether the process exited by itself.
func (cp *kubeControlPlane) stop() bool {
	cp.mu.Lock()
	cmd, exited := cp.cmd, cp.exited
	cp.cmd = nil
	cp.mu.Unlock()
	if cmd == nil {
		return true
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return cmd.ProcessState.Success()
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		return false
	}
}

func (cp *kubeControlPlane) output() string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.log.String()
}

// testRootCAConfigMap: fjord-cp, as the installed ServiceAccount, keeps
// ConfigMap fjord-root-ca in the meshed namespace, and its ca.crt is the
// root of the CA in Secret fjord-ca: what agents there trust to reach the
// control plane.
func (k *kube) testRootCAConfigMap(t *testing.T) {
	ctx := context.Background()
	var sec corev1.Secret
	if err := k.admin.Get(ctx, client.ObjectKey{Namespace: "fjord-system", Name: "fjord-ca"}, &sec); err != nil {
		t.Fatalf("Secret fjord-ca: %v", err)
	}
	roots, err := certs.ParseCerts(sec.Data["root.pem"])
	if err != nil || len(roots) != 1 {
		t.Fatalf("root.pem of Secret fjord-ca: %d certificates, %v", len(roots), err)
	}
	want := string(certs.EncodeCerts(roots))
	eventually(t, time.Minute, "ConfigMap fjord-root-ca in "+namespace+" to hold the CA's root", func() (bool, string) {
		var cm corev1.ConfigMap
		if err := k.admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "fjord-root-ca"}, &cm); err != nil {
			return false, err.Error()
		}
		return cm.Data["ca.crt"] == want, fmt.Sprintf("ca.crt %q, want %q", cm.Data["ca.crt"], want)
	})
}
