# Corridor's build. `make test` is what CI runs (as root: privileged and
# end-to-end tests need network namespaces; without root they skip).
GO      ?= go
BIN     ?= bin/corridor
PKGS    := ./...

.PHONY: build test unit privileged e2e lint bench-smoke fmt clean

build:
	$(GO) build -o $(BIN) ./cmd/corridor

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@if command -v staticcheck >/dev/null; then staticcheck $(PKGS); else echo "staticcheck not installed: skipped (make tools)"; fi

# Pure unit and golden tests, with the race detector.
unit:
	$(GO) test -race -count=1 -short $(PKGS)

# Privileged and end-to-end tests: each makes its own namespaces.
privileged: build
	CORRIDOR_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -p 1 -timeout 30m $(PKGS)

# Every Go benchmark once, so that none rots.
bench-smoke:
	$(GO) test -run '^$$' -bench . -benchtime=1x -timeout 20m $(PKGS)

test: lint unit privileged bench-smoke

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
