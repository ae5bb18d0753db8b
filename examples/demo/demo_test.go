package main

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The demo, shortened: the policy goes in after 4s and the failing backend
// must be ejected, with no errors in the seconds that follow.
func TestDemo(t *testing.T) {
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/...")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the binaries: %v\n%s", err, out)
	}

	var out syncBuffer
	o := options{bin: bin, config: "../config", duration: 30 * time.Second, policyAfter: 4 * time.Second, rate: 50}
	if err := run(context.Background(), o, &out); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	text := out.String()
	t.Logf("demo output:\n%s", text)

	_, afterPolicy, ok := strings.Cut(text, ">>> wrote ")
	if !ok {
		t.Fatal("the demo never wrote the policy")
	}
	_, afterEjection, ok := strings.Cut(afterPolicy, ">>> echo-3 ejected")
	if !ok {
		t.Fatal("echo-3 was never reported ejected after the policy was written")
	}
	// Every full second after the ejection, until the demo ends, has no
	// errors: echo-3 stays out for its 30s ejection time.
	lines := regexp.MustCompile(`(?m)^\[ *\d+s\] .*\| errors +([0-9.]+)%`).FindAllStringSubmatch(afterEjection, -1)
	if len(lines) < 3 {
		t.Fatalf("only %d report lines after the ejection, want 3 or more", len(lines))
	}
	for _, l := range lines[1:] { // the first may still count a failure from before
		if l[1] != "0.0" {
			t.Errorf("errors after echo-3 was ejected: %s", l[0])
		}
	}
	// The policy went into the demo's copy of the config only.
	if _, err := os.Stat(filepath.Join(o.config, "echo-breaker.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the demo wrote into the example config: %v", err)
	}
	// The control plane is gone once run returns.
	m := regexp.MustCompile(`fjord-cp \(pid (\d+)\)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("the demo did not print the control plane's pid")
	}
	pid, _ := strconv.Atoi(m[1])
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("fjord-cp pid %d still exists after the demo returned (kill 0: %v)", pid, err)
	}
}

// syncBuffer is an output the demo writes to while the test may read it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
