# Switchyard build, checks, tests and demo. `make help` lists the targets.

GO        ?= go
BIN       := $(CURDIR)/bin
BUF_VERSION         := v1.75.0
STATICCHECK_VERSION := v0.8.2
BUF       := $(BIN)/buf
export PATH := $(BIN):$(PATH)
# VERSION is stamped into the binary (switchyard --version) and the package.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)

.DEFAULT_GOAL := help

.PHONY: help
help: ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build the switchyard binary into bin/
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/switchyard ./cmd/switchyard

.PHONY: package
package: build ## build bin/switchyard_VERSION_ARCH.deb (binary, systemd units, example configs, user)
	cd deploy/package && $(GO) run . -version '$(VERSION)' -binary $(BIN)/switchyard -out $(BIN)

$(BUF):
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)

# protoc-gen-go is built from the protobuf module go.mod pins, so the
# generated code matches the runtime it is compiled against.
.PHONY: $(BIN)/protoc-gen-go
$(BIN)/protoc-gen-go:
	$(GO) build -o $@ google.golang.org/protobuf/cmd/protoc-gen-go

# protoc-gen-go-vtproto likewise: reflection-free encoders for the messages
# the agent writes on every change (status, applied state, health report).
.PHONY: $(BIN)/protoc-gen-go-vtproto
$(BIN)/protoc-gen-go-vtproto:
	$(GO) build -o $@ github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

.PHONY: generate
generate: $(BUF) $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-vtproto ## regenerate Go code from proto/ (committed)
	$(BUF) generate

.PHONY: check
check: $(BUF) $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-vtproto $(BIN)/staticcheck ## formatting, vet, staticcheck, buf lint, generated-code and go.mod drift, import arrows
	@echo "== gofmt"; out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "$$out"; exit 1; fi
	@echo "== go vet"; $(GO) vet ./... && cd deploy/package && $(GO) vet ./...
	@echo "== staticcheck"; $(BIN)/staticcheck ./...
	@echo "== buf lint"; $(BUF) lint
	@echo "== buf breaking"; if git describe --tags --abbrev=0 >/dev/null 2>&1; then \
		$(BUF) breaking --against ".git#tag=$$(git describe --tags --abbrev=0)"; else echo "no release tag yet; skipped"; fi
	@echo "== generated code"; $(BUF) generate && git diff --exit-code -- proto || \
		{ echo "generated code is stale: run make generate and commit"; exit 1; }
	@echo "== go mod tidy"; $(GO) mod tidy -diff && (cd deploy/package && $(GO) mod tidy -diff) || \
		{ echo "go.mod/go.sum not tidy: run go mod tidy (here and in deploy/package)"; exit 1; }
	@echo "== import arrows"; $(GO) test -count=1 -run TestArrows ./internal/arrows/

.PHONY: test
test: ## run every test with the race detector (installs haproxy, promtool and chromium when missing)
	@scripts/ensure-haproxy
	@scripts/ensure-promtool
	@scripts/ensure-chromium
	$(GO) test -race -count=1 -timeout 30m ./...

.PHONY: demo
demo: ## a local fleet with real HAProxy: blue -> green -> blue, then a bad canary rolled back by itself (KEEP=1 keeps it running)
	@scripts/ensure-haproxy
	$(GO) run ./integration/demo $(if $(KEEP),-keep-running)

.PHONY: bench
bench: ## benchmarks, reported as figures (one package at a time, so they do not share the cores); scale profiles in bench/profiles/
	SWITCHYARD_BENCH_PROFILES=$(CURDIR)/bench/profiles $(GO) test -p 1 -run '^$$' -bench . -benchmem -count=1 -timeout 90m ./...

.PHONY: bench-scale
bench-scale: ## the fleet-scale benchmark alone (100, 1,000, 10,000 agents), with CPU and heap profiles in bench/profiles/
	SWITCHYARD_BENCH_PROFILES=$(CURDIR)/bench/profiles $(GO) test -run '^$$' -bench 'BenchmarkScale_DecisionToApplied$$' -benchtime 1x -count=1 -timeout 30m ./integration/

# AGENTS are the fleet sizes of bench-procs, comma-separated; raise them to
# find where a machine stops keeping up (docs/operations.md, Fleet scale).
# 500 nodes take about 4 GiB and two minutes on 2 cores.
AGENTS ?= 100,500
.PHONY: bench-procs
bench-procs: ## fleet scale with agents as real processes, one HAProxy each, at AGENTS agents (default 100,500), beside in-process and raw NATS
	@scripts/ensure-haproxy
	SWITCHYARD_PROCESS_AGENTS=$(AGENTS) $(GO) test -count=1 -run '^$$' -bench '^BenchmarkScale_ProcessAgents$$' -benchtime 1x -timeout 60m ./integration/

# SOAK is how long the fault lab injects faults, ROUND each round before
# the convergence check; SEED reruns a schedule (printed by every run).
SOAK  ?= 10m
ROUND ?= 30s
SEED  ?=
.PHONY: soak
soak: ## the fault lab for SOAK (default 10m) with rounds of ROUND; SEED=N reruns a schedule
	@scripts/ensure-haproxy
	@echo "fault lab for $(SOAK), full log in $(CURDIR)/soak.log"
	@SWITCHYARD_LAB_DURATION=$(SOAK) SWITCHYARD_LAB_ROUND=$(ROUND) SWITCHYARD_LAB_SEED=$(SEED) \
		$(GO) test -race -count=1 -timeout 0 -run '^TestFaultLab_ShortRun$$' -v ./integration/ >soak.log 2>&1; \
		status=$$?; grep -E '^(--- |PASS|FAIL|ok )|faultlab(_drills)?_test.go:[0-9]+: ' soak.log; exit $$status

.PHONY: fuzz
fuzz: ## run each fuzz target for a short while
	$(GO) test -run '^$$' -fuzz FuzzFSM_Decode -fuzztime 20s ./coordinator/fsm/
	$(GO) test -run '^$$' -fuzz FuzzSpec_Parse -fuzztime 20s ./internal/spec/
	$(GO) test -run '^$$' -fuzz FuzzDocument_Open -fuzztime 20s ./bus/
	$(GO) test -run '^$$' -fuzz FuzzAgent_DesiredDocument -fuzztime 20s ./agent/

.PHONY: clean
clean: ## remove built binaries
	rm -rf $(BIN)
