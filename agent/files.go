package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fjordmesh/fjord/bootstrap"
	"github.com/fjordmesh/fjord/xds/node"
)

// Files in the --out-dir.
const (
	KeyFile       = "key.pem"
	CertFile      = "cert.pem"
	CAFile        = "ca.pem"
	BootstrapFile = "bootstrap.json"
)

// DefaultRefreshInterval is how often grpc-go's file_watcher re-reads the
// files: far below the third of a leaf's lifetime left at renewal.
const DefaultRefreshInterval = time.Minute

// WriteFiles writes the credentials into dir: the bundle first (so new roots
// are trusted before anything signed by them appears), then the key, then
// the chain. Each file is replaced atomically (written beside it, then
// renamed), so a reader never sees half a file; key.pem is 0600. A reader
// between the key and the chain sees a pair that does not match, which
// grpc-go's file_watcher rejects, keeping the previous pair until its next
// refresh.
func WriteFiles(dir string, c *Credentials) error {
	key, err := c.Key.PEM()
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{CAFile, c.BundlePEM, 0o644},
		{KeyFile, key, 0o600},
		{CertFile, c.ChainPEM, 0o644},
	} {
		if err := writeAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// WriteOnChange writes the credentials into dir now and after every change
// until ctx ends.
func (a *Agent) WriteOnChange(ctx context.Context, dir string) error {
	for {
		ch := a.Changed()
		if c := a.Current(); c != nil {
			if err := WriteFiles(dir, c); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		}
	}
}

// GRPCBootstrap is grpc-go's xDS bootstrap for info (as `fjordctl bootstrap`
// writes it) with a file_watcher certificate provider named
// bootstrap.CertProviderInstance over the credential files in dir.
func GRPCBootstrap(info node.Info, xdsAddress, dir string, refresh time.Duration) ([]byte, error) {
	base, err := bootstrap.GRPC(info, xdsAddress)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("out dir %s: %w", dir, err)
	}
	interval, err := protojson.Marshal(durationpb.New(refresh))
	if err != nil {
		return nil, fmt.Errorf("refresh interval %s: %w", refresh, err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(base, &doc); err != nil {
		return nil, fmt.Errorf("gRPC bootstrap for %s: %w", info.ID(), err)
	}
	providers, err := json.Marshal(map[string]any{
		bootstrap.CertProviderInstance: map[string]any{
			"plugin_name": "file_watcher",
			"config": map[string]any{
				"certificate_file":    filepath.Join(abs, CertFile),
				"private_key_file":    filepath.Join(abs, KeyFile),
				"ca_certificate_file": filepath.Join(abs, CAFile),
				"refresh_interval":    json.RawMessage(interval),
			},
		},
	})
	if err != nil {
		return nil, err
	}
	doc["certificate_providers"] = providers
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("gRPC bootstrap for %s: %w", info.ID(), err)
	}
	return append(out, '\n'), nil
}

// writeAtomic replaces path with data: a temporary file in the same
// directory, with its final mode from the start, renamed over path.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600, so key bytes are never readable by
	// others, even for a moment.
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
