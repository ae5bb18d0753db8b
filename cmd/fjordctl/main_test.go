package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fjordmesh/fjord/agent"
	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/xds/node"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestBootstrapCommand(t *testing.T) {
	want := node.Info{Namespace: "demo", Workload: "client", ServiceAccount: "sa", Kind: node.GRPC}
	wantGRPC, err := bootstrap.GRPC(want, "127.0.0.1:1234")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"bootstrap", "--kind", "grpc", "--namespace", "demo", "--name", "client",
		"--service-account", "sa", "--xds-address", "127.0.0.1:1234"}

	t.Run("stdout", func(t *testing.T) {
		out, err := run(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(string(wantGRPC), out); d != "" {
			t.Errorf("(-want +got):\n%s", d)
		}
	})
	t.Run("file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "bootstrap.json")
		if out, err := run(t, append(args, "-o", path)...); err != nil || out != "" {
			t.Fatalf("run = %q, %v", out, err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(string(wantGRPC), string(got)); d != "" {
			t.Errorf("(-want +got):\n%s", d)
		}
		if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
			t.Errorf("temporary files left behind: %v", entries)
		}
	})
	t.Run("secure", func(t *testing.T) {
		dir := t.TempDir()
		out, err := run(t, "bootstrap", "--kind", "grpc", "--namespace", "demo", "--name", "client",
			"--service-account", "sa", "--secure", "--cert-dir", dir)
		if err != nil {
			t.Fatal(err)
		}
		files := agent.CredentialFiles(dir, agent.DefaultRefreshInterval)
		want, err := bootstrap.GRPCWith(want, bootstrap.DefaultSecureXDSAddress, bootstrap.GRPCOptions{
			CertificateProviders: map[string]bootstrap.FileWatcher{bootstrap.CertProviderInstance: files},
			ChannelTLS:           &files,
		})
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(string(want), out); d != "" {
			t.Errorf("(-want +got):\n%s", d)
		}
	})
	t.Run("envoy with default address", func(t *testing.T) {
		out, err := run(t, "bootstrap", "--kind", "envoy", "--namespace", "demo", "--name", "web", "--service-account", "web")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "port_value: 15010") || !strings.Contains(out, "id: envoy~demo~web") ||
			!strings.Contains(out, "api_type: DELTA_GRPC") {
			t.Errorf("unexpected Envoy bootstrap:\n%s", out)
		}
	})
	t.Run("envoy state of the world", func(t *testing.T) {
		out, err := run(t, "bootstrap", "--kind", "envoy", "--namespace", "demo", "--name", "web", "--service-account", "web",
			"--xds-protocol", "sotw")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "api_type: GRPC") || strings.Contains(out, "DELTA_GRPC") {
			t.Errorf("want state-of-the-world ADS:\n%s", out)
		}
	})
}

func TestBootstrapCommandErrors(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"missing flags": {[]string{"bootstrap", "--kind", "grpc"}, `required flag(s) "name", "namespace", "service-account" not set`},
		"bad kind": {[]string{"bootstrap", "--kind", "linkerd", "--namespace", "a", "--name", "b", "--service-account", "c"},
			`unknown proxy kind "linkerd"`},
		"bad address": {[]string{"bootstrap", "--kind", "grpc", "--namespace", "a", "--name", "b", "--service-account", "c", "--xds-address", "nowhere"},
			`xds address "nowhere"`},
		"secure without cert dir": {[]string{"bootstrap", "--kind", "grpc", "--namespace", "a", "--name", "b", "--service-account", "c", "--secure"},
			"--secure needs --cert-dir"},
		"cert dir without secure": {[]string{"bootstrap", "--kind", "grpc", "--namespace", "a", "--name", "b", "--service-account", "c", "--cert-dir", "x"},
			"--cert-dir needs --secure"},
		"secure envoy": {[]string{"bootstrap", "--kind", "envoy", "--namespace", "a", "--name", "b", "--service-account", "c", "--secure", "--cert-dir", "x"},
			"only for --kind grpc"},
		"bad protocol": {[]string{"bootstrap", "--kind", "envoy", "--namespace", "a", "--name", "b", "--service-account", "c", "--xds-protocol", "rest"},
			`--xds-protocol "rest": want delta or sotw`},
		"protocol for grpc": {[]string{"bootstrap", "--kind", "grpc", "--namespace", "a", "--name", "b", "--service-account", "c", "--xds-protocol", "delta"},
			"--xds-protocol: only for --kind envoy"},
		"tilde in name": {[]string{"bootstrap", "--kind", "grpc", "--namespace", "a", "--name", "b~c", "--service-account", "c"},
			"must not contain '~'"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := run(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	writeVersion(&out, &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/fjordmesh/fjord", Version: "v0.1.0"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc123"},
			{Key: "vcs.time", Value: "2026-01-01T00:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	})
	want := "fjordctl v0.1.0\nrevision abc123 (modified) 2026-01-01T00:00:00Z\ngo go1.26.8\n"
	if d := cmp.Diff(want, out.String()); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if out, err := run(t, "version"); err != nil || !strings.HasPrefix(out, "fjordctl ") {
		t.Errorf("version = %q, %v", out, err)
	}
}
