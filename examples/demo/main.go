// Command demo shows Fjord's circuit breaker working on a real proxyless
// gRPC client: it runs the control plane on a copy of examples/config,
// three echo backends of which one fails every call, and a client that
// prints each backend's share of the calls and the error rate every second.
// After a few seconds it writes a ResiliencePolicy into the config
// directory; the failing backend is ejected, errors drop to zero, and the
// backend is tried again once its ejection time is over.
//
// Run it with `make demo` (go run ./examples/demo --bin bin).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

type options struct {
	bin         string        // directory holding fjord-cp and fjordctl
	config      string        // the example config directory to copy
	duration    time.Duration // how long to run
	policyAfter time.Duration // when to write the ResiliencePolicy
	rate        int           // calls per second
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory holding the fjord-cp and fjordctl binaries")
	flag.StringVar(&o.config, "config", "examples/config", "config directory to copy and serve")
	flag.DurationVar(&o.duration, "duration", 60*time.Second, "how long to run")
	flag.DurationVar(&o.policyAfter, "policy-after", 8*time.Second, "when to write the circuit-breaker policy")
	flag.IntVar(&o.rate, "rate", 50, "calls per second")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "demo:", err)
		stop()
		os.Exit(1)
	}
}
