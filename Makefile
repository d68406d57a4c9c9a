# Corridor's build. `make test` is what CI runs, as root: the privileged and
# end-to-end tests make their own network namespaces (without root they
# skip, saying why).
GO      ?= go
BIN     ?= bin/corridor
PKGS    := ./...

.PHONY: build deps test unit all-tests lint bench-smoke fuzz-smoke mutation fmt clean dist

# Screenshots of the browser tests (internal/console/browsertest), one
# directory per test: after `make test` (what .ci/run runs) they are in
# test-artifacts/ of the checkout (git-ignored).
export CORRIDOR_TEST_ARTIFACTS ?= $(CURDIR)/test-artifacts

STATICCHECK := $(shell command -v staticcheck 2>/dev/null || echo $$($(GO) env GOPATH)/bin/staticcheck)

# Static (no cgo): the same binary runs on the host and inside VM guests
# (`corridor image build --with-sample` carries it).
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/corridor

# The Debian package bin/corridor_VERSION_amd64.deb (binary, systemd units,
# /etc/corridor/*.yaml, man pages), built with nFPM by tools/dist, a module
# of its own: nFPM stays out of the corridor binary. See docs/install.md.
dist: build
	cd tools/dist && $(GO) run . --binary $(CURDIR)/$(BIN) --root $(CURDIR) --out $(CURDIR)/bin

# What the tests need (Debian packages, staticcheck): the one list is
# scripts/deps.sh. Already-present packages are left alone.
deps:
	./scripts/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(STATICCHECK) $(PKGS)
	cd tools/dist && $(GO) vet ./... && $(STATICCHECK) ./...

# Quick: the tests that need no root and no lab (privileged and end-to-end
# tests skip under -short).
unit:
	$(GO) test -race -short -count=1 $(PKGS)

# Everything: unit, golden, property, privileged and end-to-end tests, with
# the race detector. One package at a time: the privileged tests share the
# machine's kernel, and the timing tests want the CPUs.
all-tests: build
	CORRIDOR_BIN=$(CURDIR)/$(BIN) $(GO) test -race -count=1 -p 1 -timeout 45m $(PKGS)

# Every Go benchmark once, so that none rots.
bench-smoke: build
	CORRIDOR_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench . -benchtime=1x -count=1 -p 1 -timeout 20m $(PKGS)

# The fail-closed guards each disabled in turn (a test build with the tag
# corridor_mutation): the tests that claim to catch each must fail. About
# a minute; see scripts/mutation.sh and docs/architecture.md.
mutation: build
	CORRIDOR_BIN=$(CURDIR)/$(BIN) GO=$(GO) ./scripts/mutation.sh

# Each fuzzer briefly, on top of its committed seed corpus.
fuzz-smoke:
	$(GO) test -run '^$$' -fuzz FuzzDecodeApps -fuzztime 10s ./internal/spec
	$(GO) test -run '^$$' -fuzz FuzzDecodeServers -fuzztime 10s ./internal/spec
	$(GO) test -run '^$$' -fuzz FuzzCompile -fuzztime 10s ./internal/compile
	$(GO) test -run '^$$' -fuzz FuzzApplyBody -fuzztime 10s ./internal/server
	$(GO) test -run '^$$' -fuzz FuzzDesiredState -fuzztime 10s ./internal/agent
	$(GO) test -run '^$$' -fuzz FuzzParseCommand -fuzztime 10s ./internal/sample

# deps first, so that a fresh machine can run the README's test command.
test: deps
	$(MAKE) lint all-tests mutation bench-smoke

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
