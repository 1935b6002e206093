# pgshield — see README.md.
GO        ?= go
BIN       := bin
PKGS      := ./...
TEST_FLAGS ?= -race -count=1 -timeout 15m
STATICCHECK_VERSION := v0.8.2
# Stamped into the binary; `pgshield version` and SHOW VERSION show them.
VERSION   := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    := $(shell git rev-parse --short HEAD 2>/dev/null)

.PHONY: all build run test lint fuzz bench clean tools monitoring-check

all: build

build:
	@echo "building pgshield (the first build compiles the PostgreSQL parser, about a minute)"
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION) -X main.commit=$(COMMIT)" -o $(BIN)/pgshield ./cmd/pgshield

## run: start a throwaway primary + replica and pgshield in front of them.
run: build
	./$(BIN)/pgshield dev

## test: the whole suite against real PostgreSQL, with the race detector,
## and the shipped alert rules with promtool; then the allocation test of
## the forwarding path, which needs a build without -race.
test: monitoring-check $(BIN)/minio
	$(GO) vet $(PKGS)
	$(GO) test $(TEST_FLAGS) $(PKGS)
	$(GO) test -count=1 -run 'TestForwardingDoesNotAllocate' ./proxy

## monitoring-check: promtool check and unit-test the shipped alert rules
## (promtool and prometheus come with Debian's prometheus package, installed
## when missing; the suite also runs a real Prometheus against pgshield).
monitoring-check:
	@command -v promtool >/dev/null 2>&1 || { echo "installing prometheus"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus; }
	cd monitoring/prometheus && promtool check rules database-alerts.yml && promtool test rules database-alerts.test.yml

## $(BIN)/minio: the MinIO server the S3 repository tests run on loopback
## (internal/minio), built from the Go module proxy once and then reused;
## the first build takes about 2-3 minutes. MINIO_VERSION must match
## internal/minio.Version (a test checks it).
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
$(BIN)/minio:
	@echo "building the MinIO server into $(BIN)/minio for the S3 tests (once; the first build takes a few minutes)"
	GOBIN=$(CURDIR)/$(BIN) $(GO) install github.com/minio/minio@$(MINIO_VERSION)

$(BIN)/staticcheck:
	GOBIN=$(CURDIR)/$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

tools: $(BIN)/staticcheck

## lint: gofmt, go vet and staticcheck must all be clean.
lint: tools
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	./$(BIN)/staticcheck $(PKGS)

## fuzz: run each fuzz target for FUZZTIME (default 30s).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./internal/wire -run '^$$' -fuzz FuzzReader -fuzztime $(FUZZTIME)
	$(GO) test ./proxy -run '^$$' -fuzz FuzzParseStartup -fuzztime $(FUZZTIME)
	$(GO) test ./proxy -run '^$$' -fuzz FuzzClientMessages -fuzztime $(FUZZTIME)
	$(GO) test ./router -run '^$$' -fuzz FuzzClassify -fuzztime $(FUZZTIME)
	$(GO) test ./cmd/pgshield/config -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/wire -run '^$$' -fuzz FuzzFields -fuzztime $(FUZZTIME)
	$(GO) test ./policy -run '^$$' -fuzz FuzzAnalyze -fuzztime $(FUZZTIME)
	$(GO) test ./policy -run '^$$' -fuzz FuzzCopyReader -fuzztime $(FUZZTIME)
	$(GO) test ./policy -run '^$$' -fuzz FuzzDecodeBinary -fuzztime $(FUZZTIME)
	$(GO) test ./policy -run '^$$' -fuzz FuzzProtect -fuzztime $(FUZZTIME)
	$(GO) test ./crypto -run '^$$' -fuzz FuzzDecrypt -fuzztime $(FUZZTIME)
	$(GO) test ./proxy -run '^$$' -fuzz FuzzRowRewrite -fuzztime $(FUZZTIME)
	$(GO) test ./admin/backup -run '^$$' -fuzz FuzzOpen -fuzztime $(FUZZTIME)

## bench: side-by-side benchmarks against direct PostgreSQL and PgBouncer,
## and pgshield with the example policy, and with the example's encrypted
## columns, against pgshield without, and pgshield's backups against
## pgBackRest's (installs Debian's pgbouncer and pgbackrest when missing);
## results in bench/RESULTS.md.
## BENCH_FLAGS="-only poolers|failover|stats|policy|encryption|backup" runs one scenario.
## BASELINE=<git ref> also builds that ref into bin/pgshield-baseline (from
## a git archive in a temporary directory) and runs it as a third target,
## "pgshield (baseline)", in the pooler comparison.
BENCH_FLAGS ?=
BASELINE ?=
bench: build
	@command -v pgbouncer >/dev/null 2>&1 || { echo "installing pgbouncer"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer; }
	@command -v pgbackrest >/dev/null 2>&1 || { echo "installing pgbackrest"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbackrest; }
ifneq ($(strip $(BASELINE)),)
	@set -e; ref=$$(git rev-parse --verify --quiet '$(BASELINE)^{commit}') || { echo "BASELINE=$(BASELINE): not a commit"; exit 1; }; \
	src=$$(mktemp -d); trap 'rm -rf "$$src"' EXIT; \
	echo "building the baseline pgshield from $(BASELINE) ($$(git rev-parse --short $$ref))"; \
	git archive --format=tar $$ref | tar -x -C "$$src"; \
	cd "$$src" && $(GO) build -trimpath -ldflags "-X main.version=$$(git -C '$(CURDIR)' describe --tags --always $$ref) -X main.commit=$$(git -C '$(CURDIR)' rev-parse --short $$ref)" -o '$(CURDIR)/$(BIN)/pgshield-baseline' ./cmd/pgshield
endif
	$(GO) run ./bench -pgshield $(BIN)/pgshield $(if $(strip $(BASELINE)),-baseline $(BIN)/pgshield-baseline) $(BENCH_FLAGS)

clean:
	rm -rf $(BIN)
