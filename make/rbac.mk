# rbac.mk regenerates the control plane's RBAC from the kubebuilder:rbac
# markers in watcher/, the only package that talks to the API server.
# Included by the top-level Makefile; `make -f make/rbac.mk rbac` also works
# on its own from the repository root.

GO ?= go

.PHONY: rbac
rbac: ## Regenerate the control plane's RBAC into manifests/rbac.
	$(GO) tool controller-gen rbac:roleName=fjord-control-plane paths=./watcher/... output:rbac:artifacts:config=manifests/rbac
