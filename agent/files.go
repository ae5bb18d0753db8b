package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

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

// DefaultRefreshInterval is the longest interval at which grpc-go's
// file_watcher re-reads the files: far below the third of a 24 h leaf's
// lifetime left at renewal.
const DefaultRefreshInterval = time.Minute

// RefreshFor is the file_watcher refresh interval for leaves like leaf: a
// sixth of its lifetime, so gRPC picks up a renewal (at 2/3) long before the
// old certificate expires even with short-lived leaves, capped at
// DefaultRefreshInterval and at least a second.
func RefreshFor(leaf *x509.Certificate) time.Duration {
	r := leaf.NotAfter.Sub(leaf.NotBefore) / 6
	return min(max(r, time.Second), DefaultRefreshInterval)
}

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
		if err := WriteFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
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

// GRPCBootstrap is grpc-go's xDS bootstrap for info (as `fjordctl bootstrap
// --secure` writes it) over the credential files in dir: a file_watcher
// certificate provider named bootstrap.CertProviderInstance for data-plane
// TLS, and TLS channel credentials with the same files, since the channel to
// the control plane's secure port (authenticated xDS, 15012) must present
// the workload's certificate too.
func GRPCBootstrap(info node.Info, xdsAddress, dir string, refresh time.Duration) ([]byte, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("out dir %s: %w", dir, err)
	}
	files := CredentialFiles(abs, refresh)
	return bootstrap.GRPCWith(info, xdsAddress, bootstrap.GRPCOptions{
		CertificateProviders: map[string]bootstrap.FileWatcher{bootstrap.CertProviderInstance: files},
		ChannelTLS:           &files,
	})
}

// CredentialFiles are the files WriteFiles keeps in dir, as grpc-go's
// file_watcher reads them.
func CredentialFiles(dir string, refresh time.Duration) bootstrap.FileWatcher {
	return bootstrap.FileWatcher{
		CertificateFile:   filepath.Join(dir, CertFile),
		PrivateKeyFile:    filepath.Join(dir, KeyFile),
		CACertificateFile: filepath.Join(dir, CAFile),
		RefreshInterval:   refresh,
	}
}

// WriteFileAtomic replaces path with data: a temporary file in the same
// directory, with its final mode from the start, renamed over path, so a
// reader (a proxy starting, gRPC's file_watcher) never sees half a file.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
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
