package certs

import (
	"syscall"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// BenchmarkIssueLeaf is the certificate API's per-request work: parse the
// PEM CSR, verify its signature, check its SANs, sign the leaf (Go verifies
// the new signature too) and encode the chain as PEM.
func BenchmarkIssueLeaf(b *testing.B) {
	ca := newTestCA(b, &memStorage{}, clocktesting.NewFakeClock(t0), 0)
	key, err := GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	pemCSR, err := NewCSR(*key, idA)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	for b.Loop() {
		csr, err := ParseCSR(pemCSR)
		if err != nil {
			b.Fatal(err)
		}
		if err := CheckCSR(csr, idA); err != nil {
			b.Fatal(err)
		}
		chain, err := ca.Sign(csr, idA, 0)
		if err != nil {
			b.Fatal(err)
		}
		_ = EncodeCerts(chain)
	}
	// On a shared machine wall time overstates the cost; CPU time is what
	// one core spends.
	b.ReportMetric(float64(b.N)/(cpuTime(b)-cpu0).Seconds(), "leaves/cpu-s")
}

// cpuTime is the CPU time the process has used so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
