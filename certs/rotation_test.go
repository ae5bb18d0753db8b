package certs

import (
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	day := 24 * time.Hour
	year := 365 * day
	fresh := Schedule{
		Phase:  PhaseIdle,
		Root:   Validity{t0, t0.Add(10 * year)},
		Signer: Validity{t0, t0.Add(year)},
	}
	with := func(f func(*Schedule)) Schedule { s := fresh; f(&s); return s }
	signerDue := t0.Add(year * 2 / 3)
	tests := map[string]struct {
		s        Schedule
		now      time.Time
		wantStep Step
		wantDue  time.Time
	}{
		"idle, nothing due: next is the signer renewal": {fresh, t0.Add(day), StepNone, signerDue},
		"signer at 2/3":                        {fresh, signerDue, StepRenewSigner, signerDue},
		"root at 2/3 starts a rotation":        {with(func(s *Schedule) { s.Signer = Validity{t0.Add(7 * year), t0.Add(8 * year)} }), t0.Add(10 * year * 2 / 3), StepStartRotation, t0.Add(10 * year * 2 / 3)},
		"trusted phase waits for its deadline": {with(func(s *Schedule) { s.Phase, s.Deadline = PhaseNewRootTrusted, t0.Add(2*day) }), t0.Add(day), StepNone, t0.Add(2 * day)},
		"trusted phase switches at deadline":   {with(func(s *Schedule) { s.Phase, s.Deadline = PhaseNewRootTrusted, t0.Add(2*day) }), t0.Add(2 * day), StepSwitchSigner, t0.Add(2 * day)},
		"signing phase drops at deadline":      {with(func(s *Schedule) { s.Phase, s.Deadline = PhaseNewRootSigning, t0.Add(2*day) }), t0.Add(3 * day), StepDropOldRoot, t0.Add(3 * day)},
		"no automatic rotation during one": {with(func(s *Schedule) {
			s.Phase, s.Deadline = PhaseNewRootSigning, t0.Add(9*year)
			s.Signer = Validity{t0.Add(7 * year), t0.Add(8 * year)}
		}), t0.Add(7 * year), StepNone, t0.Add(7*year + year*2/3)},
		"phase step before signer renewal": {with(func(s *Schedule) { s.Phase, s.Deadline = PhaseNewRootTrusted, t0 }), signerDue, StepSwitchSigner, signerDue},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			step, due := Next(tc.s, tc.now)
			if step != tc.wantStep || !due.Equal(tc.wantDue) {
				t.Errorf("Next = %q at %s, want %q at %s", step, due, tc.wantStep, tc.wantDue)
			}
		})
	}
}
