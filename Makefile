# Fjord — the standard make vocabulary. `make help` lists the targets.
SHELL        := /usr/bin/env bash
GO           ?= go
BIN          := $(CURDIR)/bin
DATA_DIR     ?= $(CURDIR)/.data
CONFIG_DIR   ?= $(CURDIR)/examples/config
XDS_ADDR     ?= 127.0.0.1:15010
MON_ADDR     ?= 127.0.0.1:15014
GOTEST_FLAGS ?= -race -count=1 -timeout 30m

include make/envtest.mk
include make/rbac.mk
include make/certs.mk
include make/bench.mk

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build fjord-cp and fjordctl into bin/.
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: run
run: build ## Run the control plane standalone on examples/config (xDS on 127.0.0.1:15010).
	$(BIN)/fjord-cp --config-dir $(CONFIG_DIR) --data-dir $(DATA_DIR) \
		--xds-address $(XDS_ADDR) --monitoring-address $(MON_ADDR)

.PHONY: demo
demo: build ## Circuit-breaker demo: control plane, three echo backends, a proxyless client.
	$(GO) run ./examples/demo --bin $(BIN)

.PHONY: test
test: envtest-assets netns-tools ## Unit, golden, envtest and end-to-end tests, with -race.
	$(GO) test $(GOTEST_FLAGS) ./...

.PHONY: test-e2e
test-e2e: envtest-assets netns-tools ## Only the end-to-end tests.
	$(GO) test $(GOTEST_FLAGS) ./e2e/...

# The Kubernetes-mode end-to-end tests run inside a private network
# namespace they make themselves (unshare from util-linux, ip from iproute2).
.PHONY: netns-tools
netns-tools: ## Check for unshare and ip; install iproute2 with apt-get when missing and root.
	@command -v unshare >/dev/null || { echo "netns-tools: unshare not found: install util-linux" >&2; exit 1; }
	@command -v ip >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq iproute2; \
		else echo "netns-tools: ip not found: install iproute2 (as root: apt-get install -y iproute2)" >&2; exit 1; fi; }

.PHONY: bench
bench: bench-load ## Load harness, reduced matrix (under 5 minutes): convergence, pushes, bytes, CPU and memory table.

.PHONY: bench-micro
bench-micro: ## Go benchmarks (resolution, translation, cache, fast path, leaf issuance), 5 runs each for medians.
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./policy/... ./xds/... ./controlplane/... ./certs/...

.PHONY: lint
lint: ## go vet and gofmt.
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: generate
generate: ## Regenerate deepcopy code (the certificate API protos: make generate-proto, needs protoc).
	$(GO) tool controller-gen object paths=./policy/api/...

.PHONY: manifests
manifests: rbac ## Regenerate the CRDs into manifests/crd and the RBAC into manifests/rbac.
	$(GO) tool controller-gen crd paths=./policy/api/... output:crd:artifacts:config=manifests/crd

.PHONY: verify
verify: generate manifests ## Regenerate everything and fail on a diff.
	@git diff --exit-code -- policy manifests certs || { echo "generated files are stale: run make generate manifests"; exit 1; }

.PHONY: clean
clean: ## Remove built binaries and local state.
	rm -rf $(BIN) $(DATA_DIR)
