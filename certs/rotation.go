package certs

import "time"

// Phase is where the built-in CA is in a root rotation. A new root is
// trusted everywhere before it signs anything, and the old one stays trusted
// until nothing it signed can still be valid, so no handshake fails at any
// point of a rotation:
//
//	Idle            bundle {old}       old signs
//	NewRootTrusted  bundle {old, new}  old signs   (until every workload has renewed once)
//	NewRootSigning  bundle {old, new}  new signs   (until every leaf the old one signed has expired)
//	Idle            bundle {new}       new signs
type Phase string

// Phases.
const (
	PhaseIdle           Phase = "Idle"
	PhaseNewRootTrusted Phase = "NewRootTrusted"
	PhaseNewRootSigning Phase = "NewRootSigning"
)

// Step is one change of the CA's state.
type Step string

// Steps, in the order Next considers them.
const (
	StepNone          Step = ""
	StepSwitchSigner  Step = "SwitchSigner"  // NewRootTrusted -> NewRootSigning
	StepDropOldRoot   Step = "DropOldRoot"   // NewRootSigning -> Idle
	StepRenewSigner   Step = "RenewSigner"   // a new intermediate from the same root
	StepStartRotation Step = "StartRotation" // Idle -> NewRootTrusted
)

// Validity is a certificate's validity period.
type Validity struct {
	NotBefore, NotAfter time.Time
}

// Schedule is all that the CA's decisions depend on.
type Schedule struct {
	Phase Phase
	// Deadline is when the current rotation phase may advance (zero when
	// Idle).
	Deadline time.Time
	// Root and Signer are the signing root and intermediate.
	Root, Signer Validity
}

// Next returns the step due at now, or StepNone and when the next step
// will be due. Rotation phases advance first; the intermediate is renewed at
// 2/3 of its lifetime; a root past 2/3 of its lifetime starts a rotation by
// itself, so an operator who never runs `fjordctl ca rotate` still never
// sees a root expire.
func Next(s Schedule, now time.Time) (Step, time.Time) {
	switch s.Phase {
	case PhaseNewRootTrusted:
		if !now.Before(s.Deadline) {
			return StepSwitchSigner, now
		}
	case PhaseNewRootSigning:
		if !now.Before(s.Deadline) {
			return StepDropOldRoot, now
		}
	}
	signerDue := RenewAt(s.Signer.NotBefore, s.Signer.NotAfter)
	if !now.Before(signerDue) {
		return StepRenewSigner, now
	}
	due := signerDue
	if s.Phase == PhaseIdle {
		rootDue := RenewAt(s.Root.NotBefore, s.Root.NotAfter)
		if !now.Before(rootDue) {
			return StepStartRotation, now
		}
		due = earliest(due, rootDue)
	} else {
		due = earliest(due, s.Deadline)
	}
	return StepNone, due
}

// Overlap is how long each rotation phase lasts: every workload renews its
// leaf (and with it fetches the bundle) within one leaf lifetime, and a leaf
// signed just before a switch expires one leaf lifetime later; skew covers
// clocks and retries.
func Overlap(maxLeafTTL, skew time.Duration) time.Duration {
	return maxLeafTTL + skew
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
