package certs

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"time"
)

// Status is what `fjordctl ca status` shows: no key material, only
// certificates' public facts.
type Status struct {
	Phase Phase `json:"phase"`
	// Deadline is when the rotation phase may advance.
	Deadline time.Time `json:"deadline,omitzero"`
	// NextStep is the next scheduled step and when it is due.
	NextStep   Step      `json:"nextStep,omitempty"`
	NextStepAt time.Time `json:"nextStepAt,omitzero"`
	// Signer is the intermediate that signs leaves now.
	Signer CertInfo `json:"signer"`
	// Roots are the trusted roots: the signing one, then a pending or a
	// retiring one during a rotation.
	Roots []CertInfo `json:"roots"`
}

// CertInfo describes one CA certificate.
type CertInfo struct {
	// Role is "signing", "pending" (trusted, not signing yet) or "retiring"
	// (trusted, no longer signing).
	Role      string    `json:"role"`
	Subject   string    `json:"subject"`
	Serial    string    `json:"serial"`
	SHA256    string    `json:"sha256"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
}

// Status reports the loaded state.
func (ca *CA) Status() Status {
	return statusOf(ca.view.Load().st, ca.opts.Clock.Now())
}

func statusOf(st *state, now time.Time) Status {
	step, at := Next(st.schedule(), now)
	if step != StepNone {
		at = now
	} else {
		step = nextScheduled(st, at)
	}
	s := Status{
		Phase: st.Phase, Deadline: st.Deadline, NextStep: step, NextStepAt: at,
		Signer: info("signing", st.Active.Signer),
		Roots:  []CertInfo{info("signing", st.Active.Root)},
	}
	if st.Pending != nil {
		s.Roots = append(s.Roots, info("pending", st.Pending.Root))
	}
	if st.Retiring != nil {
		s.Roots = append(s.Roots, info("retiring", st.Retiring))
	}
	return s
}

// nextScheduled names the step Next says is due at at.
func nextScheduled(st *state, at time.Time) Step {
	step, _ := Next(st.schedule(), at)
	return step
}

func info(role string, c *x509.Certificate) CertInfo {
	sum := sha256.Sum256(c.Raw)
	return CertInfo{
		Role: role, Subject: c.Subject.String(), Serial: c.SerialNumber.Text(16),
		SHA256: hex.EncodeToString(sum[:]), NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
	}
}

// describe is a short log form of a CA certificate.
func describe(c *x509.Certificate) string {
	return fmt.Sprintf("%s (serial %s, until %s)", c.Subject.CommonName, c.SerialNumber.Text(16), c.NotAfter.UTC().Format(time.RFC3339))
}
