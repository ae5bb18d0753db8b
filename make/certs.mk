# certs.mk regenerates the certificate API's Go code (certs/api/*.pb.go)
# from certs/api/certificate.proto. The generated files are committed, so
# only a change to the .proto needs protoc, from Debian's protobuf-compiler
# package (apt-get install -y protobuf-compiler); protoc-gen-go and
# protoc-gen-go-grpc are go tools pinned in go.mod. Included by the
# top-level Makefile; `make -f make/certs.mk generate-proto` also works on
# its own from the repository root.

GO     ?= go
PROTOC ?= protoc

.PHONY: generate-proto
generate-proto: ## Regenerate the certificate API's Go code from certs/api/certificate.proto.
	@command -v $(PROTOC) >/dev/null || { echo "protoc not found: apt-get install -y protobuf-compiler"; exit 1; }
	$(GO) build -o $(CURDIR)/bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o $(CURDIR)/bin/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc
	$(PROTOC) --plugin=protoc-gen-go=$(CURDIR)/bin/protoc-gen-go \
		--plugin=protoc-gen-go-grpc=$(CURDIR)/bin/protoc-gen-go-grpc \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		certs/api/certificate.proto
