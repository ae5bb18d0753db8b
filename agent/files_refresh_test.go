package agent

import (
	"crypto/x509"
	"testing"
	"time"
)

func TestRefreshFor(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for name, tc := range map[string]struct {
		lifetime time.Duration
		want     time.Duration
	}{
		"24h leaf: capped at the default": {24 * time.Hour, DefaultRefreshInterval},
		"30s leaf: a sixth":               {30 * time.Second, 5 * time.Second},
		"3s leaf: at least a second":      {3 * time.Second, time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			leaf := &x509.Certificate{NotBefore: now, NotAfter: now.Add(tc.lifetime)}
			if got := RefreshFor(leaf); got != tc.want {
				t.Errorf("RefreshFor(%v leaf) = %v, want %v", tc.lifetime, got, tc.want)
			}
		})
	}
}
