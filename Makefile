# Grantline build targets. `make demo` and `make test` are the quick start.
GO       ?= go
BIN      ?= bin/grantline
PKGS     ?= ./...
BENCHTIME ?= 1x
BUF      ?= $(shell command -v buf 2>/dev/null || echo $(HOME)/go/bin/buf)
SOAK_MINUTES ?= 5

.PHONY: all build test test-race run demo generate checkgenerate bench bench-compare bench-scale lint fuzz soak clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/grantline

## test: the whole suite (unit, service, CLI scripts, crash test, fuzz seed corpora).
test:
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 15m $(PKGS)

test-race:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

## run: the service with the zero-config defaults (./grantline-data, 127.0.0.1:7800).
run: build
	$(BIN) serve

## demo: the whole loop on synthetic IGA/PAM data, kept in DEMO_OUT (replaced on each run).
DEMO_OUT ?= grantline-demo
demo: build
	rm -rf -- $(DEMO_OUT)
	$(BIN) demo --out $(DEMO_OUT)

## generate: regenerate protobuf code (needs buf v1.75.0, protoc-gen-go, protoc-gen-connect-go).
generate:
	cd proto && PATH="$(HOME)/go/bin:$$PATH" $(BUF) lint && PATH="$(HOME)/go/bin:$$PATH" $(BUF) generate

## checkgenerate: fail if the committed generated code is stale.
checkgenerate: generate
	git diff --exit-code -- proto/gen

## bench-compare: Grantline's ledger against Tessera's POSIX driver, in process, interleaved
## rounds (a module of its own, bench/compare; not part of test). COMPARE_FLAGS e.g. -rounds 7.
COMPARE_FLAGS ?=
bench-compare:
	cd bench/compare && $(GO) run . $(COMPARE_FLAGS)

## bench-scale: the scale run of docs/BENCHMARKS.md "Memory (issue 16)": serve with its defaults
## on a temporary data directory, bench EVENTS events, evaluate --json, fsck, with RssAnon/RssFile
## sampled every second and heap profiles (scripts/bench-scale.sh; opt-in, not part of test).
## SCALE_FLAGS e.g. SERVE_FLAGS="--max-mapped 256MiB" OUT=DIR.
EVENTS ?= 1000000
SCALE_FLAGS ?=
bench-scale: build
	GRANTLINE=$(abspath $(BIN)) $(SCALE_FLAGS) scripts/bench-scale.sh $(EVENTS)

## bench: Go benchmarks; figures go into docs/BENCHMARKS.md.
bench:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -count 5 $(PKGS)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^proto/gen/'))" || (gofmt -l $$(git ls-files '*.go' | grep -v '^proto/gen/'); exit 1)
	$(GO) vet $(PKGS)

## fuzz: run each fuzz target for FUZZTIME (default 30s).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

## soak: sustained load for SOAK_MINUTES, then a full verification of the log.
soak: build
	$(BIN) bench --soak $(SOAK_MINUTES)m --verify

clean:
	rm -rf bin
