package e2e

import (
	"fmt"
	"io"
	"sync"
	"testing"
	"time"
)

// A measurement is how long the mesh took to react to something a user did,
// as a client observed it.
type measurement struct {
	test, what string
	took       time.Duration
}

var (
	measurementsMu sync.Mutex
	measurements   []measurement
)

// measure records and logs the time from a change (a file write) to the
// client's behaviour changing; TestMain prints them all at the end.
func measure(t *testing.T, what string, from, to time.Time) {
	t.Helper()
	d := to.Sub(from)
	t.Logf("measured: %s: %v", what, d.Round(time.Millisecond))
	measurementsMu.Lock()
	defer measurementsMu.Unlock()
	measurements = append(measurements, measurement{test: t.Name(), what: what, took: d})
}

func printMeasurements(w io.Writer) {
	measurementsMu.Lock()
	defer measurementsMu.Unlock()
	if len(measurements) == 0 {
		return
	}
	fmt.Fprintln(w, "e2e measurements (change written -> client behaviour changed):")
	for _, m := range measurements {
		fmt.Fprintf(w, "  %-8v %-72s %s\n", m.took.Round(time.Millisecond), m.what, m.test)
	}
}
