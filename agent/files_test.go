package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/xds"

	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/xds/node"
)

// TestOutDir: the files follow renewals, key.pem is 0600, and each file is
// a consistent key/certificate pair that TLS loads.
func TestOutDir(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent(t)
	first, err := a.WaitReady(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.WriteOnChange(ctx, dir) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	wantFiles := func(c *Credentials) bool {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
		if err != nil || !pair.Leaf.Equal(c.Leaf()) {
			return false
		}
		ca, err := os.ReadFile(filepath.Join(dir, CAFile))
		return err == nil && string(ca) == string(c.BundlePEM)
	}
	eventually(t, "the first files", func() bool { return wantFiles(first) })
	modes := map[string]os.FileMode{KeyFile: 0o600, CertFile: 0o644, CAFile: 0o644}
	for name, want := range modes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}

	e.renewNow(t, a)
	eventually(t, "renewal", func() bool { return a.Current() != first })
	eventually(t, "the renewed files", func() bool { return wantFiles(a.Current()) })
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Errorf("out dir holds %d entries, want 3 (no temporary files left)", len(entries))
	}
}

// TestGRPCBootstrap: the bootstrap is `fjordctl bootstrap`'s with a
// file_watcher provider over the out dir and TLS channel credentials over
// the same files, and grpc-go accepts it.
func TestGRPCBootstrap(t *testing.T) {
	info := node.Info{Namespace: "demo", Workload: "client", ServiceAccount: "a", Kind: node.GRPC}
	dir := t.TempDir()
	got, err := GRPCBootstrap(info, "127.0.0.1:15012", dir, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := xds.NewXDSResolverWithConfigForTesting(got); err != nil {
		t.Fatalf("grpc-go refuses the bootstrap: %v\n%s", err, got)
	}

	var doc, base map[string]any
	if err := json.Unmarshal(got, &doc); err != nil {
		t.Fatal(err)
	}
	plain, err := bootstrap.GRPC(info, "127.0.0.1:15012")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(plain, &base); err != nil {
		t.Fatal(err)
	}
	files := map[string]any{
		"certificate_file":    filepath.Join(dir, CertFile),
		"private_key_file":    filepath.Join(dir, KeyFile),
		"ca_certificate_file": filepath.Join(dir, CAFile),
		"refresh_interval":    "90s",
	}
	server := doc["xds_servers"].([]any)[0].(map[string]any)
	if d := cmp.Diff([]any{map[string]any{"type": "tls", "config": files}}, server["channel_creds"]); d != "" {
		t.Errorf("channel_creds (-want +got):\n%s", d)
	}
	server["channel_creds"] = base["xds_servers"].([]any)[0].(map[string]any)["channel_creds"]
	providers := doc["certificate_providers"]
	delete(doc, "certificate_providers")
	if d := cmp.Diff(base, doc); d != "" {
		t.Errorf("bootstrap differs from fjordctl bootstrap's beyond credentials (-want +got):\n%s", d)
	}
	want := map[string]any{bootstrap.CertProviderInstance: map[string]any{"plugin_name": "file_watcher", "config": files}}
	if d := cmp.Diff(want, providers); d != "" {
		t.Errorf("certificate_providers (-want +got):\n%s", d)
	}
}
