# envtest.mk builds the real kube-apiserver and etcd that the envtest-based
# tests run against, from the pinned tool modules in tools/, into bin/k8s.
# The binaries are file targets: they are built only when missing (or when
# their tool module's pins change), and later builds reuse the Go build
# cache. Included by the top-level Makefile; `make -f make/envtest.mk
# envtest-assets` also works on its own from the repository root.

GO ?= go

ENVTEST_TOOLS  := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/../tools)
ENVTEST_ASSETS := $(CURDIR)/bin/k8s

# Tests find the binaries through controller-runtime envtest's variable.
export KUBEBUILDER_ASSETS := $(ENVTEST_ASSETS)

# Static binaries: no C toolchain needed, and they run inside the network
# namespaces the end-to-end tests make. GOWORK=off keeps each tool module on
# its own pins even if a go.work appears at the root.
ENVTEST_GO    := GOWORK=off $(GO)
ENVTEST_BUILD := CGO_ENABLED=0 $(ENVTEST_GO) build

# envtest_need_go fails the recipe with a clear message when Go is missing.
define envtest_need_go
	@command -v $(GO) >/dev/null 2>&1 || { \
		echo "envtest-assets: '$(GO)' not found: install Go (see go.mod for the version) to build kube-apiserver and etcd from tools/" >&2; \
		exit 1; }
endef

.PHONY: envtest-assets
envtest-assets: $(ENVTEST_ASSETS)/kube-apiserver $(ENVTEST_ASSETS)/etcd ## Build kube-apiserver and etcd for envtest into bin/k8s (only when missing).

# The version is stamped from the module pin so that /version reports the
# release instead of v0.0.0-master.
ENVTEST_VERSION_PKG := k8s.io/component-base/version

$(ENVTEST_ASSETS)/kube-apiserver: $(ENVTEST_TOOLS)/kube-apiserver/go.mod $(ENVTEST_TOOLS)/kube-apiserver/go.sum
	$(envtest_need_go)
	@mkdir -p $(@D)
	@echo "building $@ (several minutes on a cold build cache)"
	@set -eu; cd $(ENVTEST_TOOLS)/kube-apiserver; \
	v=$$($(ENVTEST_GO) list -m -f '{{.Version}}' k8s.io/kubernetes); \
	major=$$(echo "$$v" | cut -d. -f1 | tr -d v); minor=$$(echo "$$v" | cut -d. -f2); \
	x="-X $(ENVTEST_VERSION_PKG).gitVersion=$$v -X $(ENVTEST_VERSION_PKG).gitMajor=$$major"; \
	x="$$x -X $(ENVTEST_VERSION_PKG).gitMinor=$$minor -X $(ENVTEST_VERSION_PKG).gitTreeState=clean"; \
	$(ENVTEST_BUILD) -ldflags "-s -w $$x" -o $@.tmp k8s.io/kubernetes/cmd/kube-apiserver
	@mv $@.tmp $@

$(ENVTEST_ASSETS)/etcd: $(ENVTEST_TOOLS)/etcd/go.mod $(ENVTEST_TOOLS)/etcd/go.sum
	$(envtest_need_go)
	@mkdir -p $(@D)
	@echo "building $@"
	@cd $(ENVTEST_TOOLS)/etcd && $(ENVTEST_BUILD) -o $@.tmp -ldflags "-s -w" go.etcd.io/etcd/server/v3
	@mv $@.tmp $@
