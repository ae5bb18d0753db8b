package certs

import "time"

// Renewal and backdating are pure functions of a certificate's validity and
// the time, so that every schedule is tested with a fake clock.

// RenewAt is when a certificate valid from notBefore to notAfter is renewed:
// at 2/3 of its lifetime, which leaves a third of it for retries when the
// CA is unreachable.
func RenewAt(notBefore, notAfter time.Time) time.Time {
	return notBefore.Add(notAfter.Sub(notBefore) * 2 / 3)
}

// NeedsRenewal reports whether a certificate valid from notBefore to
// notAfter is due for renewal at now.
func NeedsRenewal(notBefore, notAfter, now time.Time) bool {
	return !now.Before(RenewAt(notBefore, notAfter))
}

// maxBackdate bounds how far before issuance a certificate's NotBefore lies.
const maxBackdate = time.Minute

// backdate is how far NotBefore lies before issuance: enough for a peer
// whose clock is a little behind to accept a fresh certificate, but at most
// a tenth of the lifetime so that short-lived certificates are not renewed
// the moment they arrive.
func backdate(ttl time.Duration) time.Duration {
	return min(maxBackdate, ttl/10)
}

// validity is the NotBefore and NotAfter of a certificate issued at now for
// ttl, never beyond limit (the issuer's own NotAfter).
func validity(now time.Time, ttl time.Duration, limit time.Time) (notBefore, notAfter time.Time) {
	notBefore = now.Add(-backdate(ttl)).Truncate(time.Second)
	notAfter = now.Add(ttl).Truncate(time.Second)
	if notAfter.After(limit) {
		notAfter = limit
	}
	return notBefore, notAfter
}
