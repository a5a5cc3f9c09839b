# wsbroker: `make run` starts the broker on its embedded defaults (--dev),
# `make test` runs every test. Both work on a fresh Debian machine with Go;
# `make deps` installs the system packages the tests need (run as root).
GO       ?= go
BIN      := .bin
# Fuzz budgets are execution counts, not durations: a time budget on a busy
# machine can end in "context deadline exceeded" from the fuzzing engine
# itself, with no crasher. FuzzHandshake runs a whole upgrade per input.
FUZZ_FAST ?= 100000x
FUZZ_SLOW ?= 150x
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run build test unit fuzz-short lint deps jaeger bench bench-memory bench-compare clean

build:
	$(GO) build -o $(BIN)/wsbroker ./cmd/wsbroker

run: build
	$(BIN)/wsbroker serve --dev --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9090 --log-format text

# deps installs what the end-to-end tests drive for real: promtool and
# Prometheus, Chromium, and a Jaeger built from the module proxy.
deps:
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null || ! command -v chromium >/dev/null; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus prometheus-alertmanager chromium; \
	fi
	$(MAKE) jaeger

jaeger:
	@if [ -x tools/jaeger/build.sh ]; then tools/jaeger/build.sh; fi

test: deps unit fuzz-short

unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

# Each fuzz target runs for its budget; a crasher fails the build and its
# input lands in testdata/fuzz to become a regression test.
fuzz-short:
	@for pkg in ./authn/ ./broker/ ./telemetry/event/; do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep ^Fuzz); do \
			case $$t in FuzzHandshake) n=$(FUZZ_SLOW);; *) n=$(FUZZ_FAST);; esac; \
			echo "fuzz $$pkg $$t ($$n)"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $$n $$pkg || exit 1; \
		done; \
	done

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf $(BIN) data

# bench-memory: the broker in one process, 10,000 idle authenticated
# connections from another (the open-file limit is per process), and the
# broker's RSS and Go heap per connection from its own /metrics.
BENCH_CONNS ?= 10000
BENCH_FANOUT ?= 0
bench-memory: build
	@set -e; dir=$$(mktemp -d); head -c 48 /dev/urandom | base64 > $$dir/secret; \
	$(BIN)/wsbroker serve --jwt-hmac-secret-file $$dir/secret --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090 \
		--max-conns-per-subject 0 --log-level warn & pid=$$!; trap "kill $$pid" EXIT; \
	for i in $$(seq 50); do curl -sf http://127.0.0.1:19090/readyz >/dev/null && break; sleep 0.1; done; \
	$(GO) build -o $$dir/loadclient ./bench/loadclient; \
	ulimit -n 20000; $$dir/loadclient hold -url ws://127.0.0.1:18080/ws -metrics http://127.0.0.1:19090/metrics \
		-hmac-secret-file $$dir/secret -n $(BENCH_CONNS) -fanout $(BENCH_FANOUT)

# bench-compare: wsbroker against bench/baseline (net/http + gorilla/websocket
# + golang-jwt, two goroutines per connection), each server in its own
# process and the load client (bench/loadclient) in another: handshakes/s
# accepted and rejected, memory per idle connection, fan-out to BENCH_CONNS
# subscribers, the tracing tax. Rounds alternate the order; the table gives
# medians, min–max and per-round ratios (docs/benchmarks.md). ~4 min.
# BENCH_REF=HEAD builds a commit instead of the work tree; BENCH_FLAGS=-pin
# puts the server and the client on separate CPUs.
BENCH_ROUNDS ?= 3
BENCH_DURATION ?= 3s
BENCH_REF ?=
BENCH_FLAGS ?=
bench-compare:
	$(GO) run ./bench/cmd/benchtable -rounds $(BENCH_ROUNDS) -duration $(BENCH_DURATION) -conns $(BENCH_CONNS) $(if $(BENCH_REF),-ref $(BENCH_REF)) $(BENCH_FLAGS)

# soak: wsbroker soak starts a broker in its own process and churns
# SOAK_CONNS good and bad connections on loopback for SOAK_DURATION, with
# publishes, then checks events, deliveries, goroutines and heap against the
# broker's own figures (docs/reliability.md). The settle wait covers Go's
# 2-minute forced GC, so the heap figure after the churn is collected heap.
SOAK_DURATION ?= 5m
SOAK_CONNS ?= 5000
SOAK_FLAGS ?=
.PHONY: soak
soak: build
	$(BIN)/wsbroker soak --duration $(SOAK_DURATION) --conns $(SOAK_CONNS) --bad-ratio 0.2 --publish-rate 100 \
		--hold 5s --source-addrs 16 --settle 150s --max-heap-growth 33554432 $(SOAK_FLAGS)
