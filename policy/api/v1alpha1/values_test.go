package v1alpha1

import (
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDurationParse(t *testing.T) {
	cases := map[string]struct {
		in      Duration
		want    time.Duration
		wantErr bool
	}{
		"seconds":          {in: "5s", want: 5 * time.Second},
		"milliseconds":     {in: "500ms", want: 500 * time.Millisecond},
		"compound":         {in: "1h30m", want: 90 * time.Minute},
		"four groups":      {in: "1h2m3s4ms", want: time.Hour + 2*time.Minute + 3*time.Second + 4*time.Millisecond},
		"zero":             {in: "0s", want: 0},
		"largest":          {in: "99999h", want: 99999 * time.Hour},
		"negative":         {in: "-1s", wantErr: true},
		"fraction":         {in: "1.5s", wantErr: true},
		"microseconds":     {in: "10us", wantErr: true},
		"no unit":          {in: "5", wantErr: true},
		"unknown unit":     {in: "5x", wantErr: true},
		"empty":            {in: "", wantErr: true},
		"five groups":      {in: "1h1m1s1ms1s", wantErr: true},
		"six digits":       {in: "100000s", wantErr: true},
		"space":            {in: "5 s", wantErr: true},
		"plus sign":        {in: "+5s", wantErr: true},
		"trailing newline": {in: "5s\n", wantErr: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := tc.in.Parse()
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Parse(%q) = %v, want an error", tc.in, got)
				}
				if !strings.Contains(err.Error(), strconv.Quote(string(tc.in))) {
					t.Errorf("error %q does not quote the value", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestDecimalMilli(t *testing.T) {
	cases := map[string]struct {
		in      Decimal
		want    uint32
		wantErr bool
	}{
		"integer":         {in: "2", want: 2000},
		"one decimal":     {in: "1.9", want: 1900},
		"two decimals":    {in: "1.95", want: 1950},
		"three decimals":  {in: "0.001", want: 1},
		"largest":         {in: "9999.999", want: 9999999},
		"leading zeros":   {in: "0001.5", want: 1500},
		"four decimals":   {in: "1.9999", wantErr: true},
		"five digits":     {in: "10000", wantErr: true},
		"negative":        {in: "-1", wantErr: true},
		"dot only":        {in: ".", wantErr: true},
		"trailing dot":    {in: "1.", wantErr: true},
		"leading dot":     {in: ".5", wantErr: true},
		"exponent":        {in: "1e3", wantErr: true},
		"empty":           {in: "", wantErr: true},
		"comma decimal":   {in: "1,9", wantErr: true},
		"surrounding gap": {in: " 1.9", wantErr: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := tc.in.Milli()
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Milli(%q) = %d, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Milli(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

// FuzzDurationParse checks Parse against an independent reading of the
// CRD's duration grammar (one to four groups of one to five digits and a
// unit h, m, s or ms), so standalone mode accepts exactly what the API
// server accepts, with the value the API server's CEL duration() sees.
func FuzzDurationParse(f *testing.F) {
	for _, s := range []string{"5s", "500ms", "1h30m", "1h2m3s4ms", "0s", "-1s", "1.5s", "10us", "5", "", "99999h99999h99999h99999h", "1m1ms", "1mm"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, ok := scanDuration(s)
		got, err := Duration(s).Parse()
		if ok != (err == nil) {
			t.Fatalf("Parse(%q): error %v, but the grammar says valid=%v", s, err, ok)
		}
		if ok && got != want {
			t.Fatalf("Parse(%q) = %v, want %v", s, got, want)
		}
	})
}

func scanDuration(s string) (time.Duration, bool) {
	var total time.Duration
	groups := 0
	for len(s) > 0 {
		n := 0
		for n < len(s) && s[n] >= '0' && s[n] <= '9' {
			n++
		}
		if n == 0 || n > 5 {
			return 0, false
		}
		var v time.Duration
		for _, c := range s[:n] {
			v = v*10 + time.Duration(c-'0')
		}
		s = s[n:]
		switch {
		case strings.HasPrefix(s, "ms"):
			v, s = v*time.Millisecond, s[2:]
		case strings.HasPrefix(s, "h"):
			v, s = v*time.Hour, s[1:]
		case strings.HasPrefix(s, "m"):
			v, s = v*time.Minute, s[1:]
		case strings.HasPrefix(s, "s"):
			v, s = v*time.Second, s[1:]
		default:
			return 0, false
		}
		total += v
		groups++
	}
	return total, groups >= 1 && groups <= 4
}

// FuzzDecimalMilli checks Milli against the CRD's decimal grammar (one to
// four digits, optionally a point and one to three digits) and against exact
// rational arithmetic for the value.
func FuzzDecimalMilli(f *testing.F) {
	for _, s := range []string{"1.9", "0", "9999.999", "1.", ".5", "1e3", "-1", "1.9999", "00.010"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		whole, frac, hasDot := strings.Cut(s, ".")
		ok := digits(whole, 1, 4) && (!hasDot || digits(frac, 1, 3))
		got, err := Decimal(s).Milli()
		if ok != (err == nil) {
			t.Fatalf("Milli(%q): error %v, but the grammar says valid=%v", s, err, ok)
		}
		if !ok {
			return
		}
		r, good := new(big.Rat).SetString(s)
		if !good {
			t.Fatalf("big.Rat cannot read %q", s)
		}
		r.Mul(r, big.NewRat(1000, 1))
		if !r.IsInt() || r.Num().Uint64() != uint64(got) {
			t.Fatalf("Milli(%q) = %d, want %s", s, got, r.RatString())
		}
	})
}

func digits(s string, lo, hi int) bool {
	if len(s) < lo || len(s) > hi {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
