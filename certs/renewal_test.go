package certs

import (
	"testing"
	"time"
)

func TestRenewAt(t *testing.T) {
	tests := map[string]struct {
		nb, na, want time.Time
	}{
		"24h":  {t0, t0.Add(24 * time.Hour), t0.Add(16 * time.Hour)},
		"30s":  {t0, t0.Add(30 * time.Second), t0.Add(20 * time.Second)},
		"1y":   {t0, t0.Add(365 * 24 * time.Hour), t0.Add(365 * 24 * time.Hour * 2 / 3)},
		"zero": {t0, t0, t0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := RenewAt(tc.nb, tc.na); !got.Equal(tc.want) {
				t.Errorf("RenewAt = %s, want %s", got, tc.want)
			}
			if NeedsRenewal(tc.nb, tc.na, tc.want.Add(-time.Nanosecond)) && tc.want.After(tc.nb) {
				t.Error("due just before RenewAt")
			}
			if !NeedsRenewal(tc.nb, tc.na, tc.want) {
				t.Error("not due at RenewAt")
			}
		})
	}
}

func TestValidity(t *testing.T) {
	limit := t0.Add(365 * 24 * time.Hour)
	tests := map[string]struct {
		ttl            time.Duration
		limit          time.Time
		wantNB, wantNA time.Time
	}{
		"24h backdated a minute": {24 * time.Hour, limit, t0.Add(-time.Minute), t0.Add(24 * time.Hour)},
		"30s backdated 3s":       {30 * time.Second, limit, t0.Add(-3 * time.Second), t0.Add(30 * time.Second)},
		"capped by the issuer":   {24 * time.Hour, t0.Add(time.Hour), t0.Add(-time.Minute), t0.Add(time.Hour)},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			nb, na := validity(t0, tc.ttl, tc.limit)
			if !nb.Equal(tc.wantNB) || !na.Equal(tc.wantNA) {
				t.Errorf("validity = %s..%s, want %s..%s", nb, na, tc.wantNB, tc.wantNA)
			}
		})
	}
	// A short-lived leaf must not be due the moment it is issued.
	nb, na := validity(t0, 30*time.Second, limit)
	if NeedsRenewal(nb, na, t0.Add(10*time.Second)) {
		t.Errorf("a 30 s leaf is due 10 s after issuance (renews at %s)", RenewAt(nb, na))
	}
}
