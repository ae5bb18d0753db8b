# bench.mk runs the load harness (cmd/fjord-load, package load) against the
# fjord-cp binary: simulated Envoy-like and proxyless-gRPC-like proxies on
# real xDS streams, changes written to a standalone config directory, and
# the time until every affected proxy has ACKed each change. See
# docs/benchmarks.md for what is measured and the latest figures. Included
# by the top-level Makefile.
#
#   make bench-load                         reduced matrix, under 5 minutes
#   make bench-full                         full matrix, plots into docs/benchmarks
#   make bench-load BENCH_FLAGS='--profile bin/bench/profiles'
#                                           the same with CPU and heap profiles
#                                           of the control plane (go tool pprof)

GO         ?= go
BIN        ?= $(CURDIR)/bin
BENCH_OUT  ?= $(BIN)/bench
# Extra fjord-load flags, e.g. --profile DIR, --runs NAME,NAME.
BENCH_FLAGS ?=

BENCH_BUILD := $(GO) build -o $(BIN)/ ./cmd/fjord-cp ./cmd/fjord-load

.PHONY: bench-load
bench-load: ## Load harness, reduced matrix (under 5 minutes on 2 cores): prints the convergence table.
	$(BENCH_BUILD)
	$(BIN)/fjord-load --matrix reduced --cp-bin $(BIN)/fjord-cp --out $(BENCH_OUT)/reduced $(BENCH_FLAGS)

.PHONY: bench-full
bench-full: ## Load harness, full matrix (1,000 proxies x 1,000 Services x 10 endpoints, then 10,000 proxies; about 7 minutes on 2 cores): report in bin/bench/full, plots in docs/benchmarks.
	$(BENCH_BUILD)
	$(BIN)/fjord-load --matrix full --cp-bin $(BIN)/fjord-cp --out $(BENCH_OUT)/full --plots $(CURDIR)/docs/benchmarks $(BENCH_FLAGS)
