# hookq — the README's commands.
#   make demo    producer, worker and a verifying receiver in one process (memory queue)
#   make test    installs what the suite needs, then fmt, clippy and every test
#   make bench   the end-to-end benchmark with its ceilings (see README)

CARGO ?= cargo
export HOOKQ_BIN ?= $(CURDIR)/target/debug/hookq

.PHONY: demo run check-config test test-deps lint build-bin unit it bench up down e2e-compose clean

## The embedded default: no queue server, no AWS; ends by itself in under 10 s.
demo:
	$(CARGO) run -q -p hookq-worker --no-default-features --bin hookq -- demo

## A worker on CONFIG (default: examples/config.json).
CONFIG ?= examples/config.json
run:
	$(CARGO) run -q -p hookq-worker --bin hookq -- worker --config $(CONFIG)

check-config:
	$(CARGO) run -q -p hookq-worker --bin hookq -- check-config --config $(CONFIG)

test-deps:
	./scripts/test-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

build-bin:
	$(CARGO) build -p hookq-worker --bin hookq

# nextest runs each test in its own process, in parallel; doc tests run apart.
it: build-bin
	@if command -v cargo-nextest >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi
	$(CARGO) test --workspace --doc

test: test-deps lint it
