package load

import (
	"math"
	"slices"
	"time"
)

// Dist summarises a set of durations, in milliseconds.
type Dist struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50Ms"`
	P90  float64 `json:"p90Ms"`
	P99  float64 `json:"p99Ms"`
	Max  float64 `json:"maxMs"`
	Mean float64 `json:"meanMs"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// distOf summarises ds. Percentiles are nearest-rank: p99 of 100 samples is
// the 99th smallest, a value that was actually observed.
func distOf(ds []time.Duration) Dist {
	if len(ds) == 0 {
		return Dist{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return ms(s[max(0, min(i, len(s)-1))])
	}
	return Dist{
		N: len(s), P50: rank(0.50), P90: rank(0.90), P99: rank(0.99),
		Max: ms(s[len(s)-1]), Mean: ms(sum) / float64(len(s)),
	}
}

// Stat is the mean and maximum of a per-proxy quantity.
type Stat struct {
	Mean float64 `json:"mean"`
	Max  float64 `json:"max"`
}

func statOf(xs []float64) Stat {
	if len(xs) == 0 {
		return Stat{}
	}
	var st Stat
	for _, x := range xs {
		st.Mean += x
		st.Max = max(st.Max, x)
	}
	st.Mean /= float64(len(xs))
	return st
}

// slope fits y = a + b·x by least squares and returns b; 0 with fewer than
// two distinct x.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if len(xs) < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}

// quantiles returns the 0th to 100th percentiles of ds in milliseconds
// (nearest rank), enough to draw its distribution; nil for no samples.
func quantiles(ds []time.Duration) []float64 {
	if len(ds) == 0 {
		return nil
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	out := make([]float64, 101)
	for p := range out {
		i := int(math.Ceil(float64(p)/100*float64(len(s)))) - 1
		out[p] = ms(s[max(0, min(i, len(s)-1))])
	}
	return out
}
