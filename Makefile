# hookq — the README's commands.
#   make demo    producer, worker and a verifying receiver in one process (memory queue)
#   make test    installs what the suite needs, then fmt, clippy and every test
#   make bench   the end-to-end benchmark with its ceilings (see README)

CARGO ?= cargo
export HOOKQ_BIN ?= $(CURDIR)/target/debug/hookq

.PHONY: demo run check-config test test-deps lint build-bin unit it bench up down e2e-compose clean

## The embedded default: no queue server, no AWS; ends by itself in under 10 s.
demo:
	$(CARGO) run -q -p hookq --no-default-features --bin hookq -- demo

## A worker on CONFIG (default: examples/config.json).
CONFIG ?= examples/config.json
run:
	$(CARGO) run -q -p hookq --bin hookq -- worker --config $(CONFIG)

check-config:
	$(CARGO) run -q -p hookq --bin hookq -- check-config --config $(CONFIG)

test-deps:
	./scripts/test-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

build-bin:
	$(CARGO) build -p hookq --bin hookq

# Doc tests first, then nextest (each test in its own process, in parallel),
# whose summary closes the run.
it: build-bin
	$(CARGO) test --workspace --doc
	@if command -v cargo-nextest >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

test: test-deps lint it

.PHONY: images send-webhook

## Docker (docs/operations.md). `make images` builds the hookq image from a
## release binary (deploy/Dockerfile) and the example receiver's image.
## LOCAL_BASE=1 for a machine without a registry: the base images are then
## made here by deploy/make-base-image.sh (debootstrap; needs root) instead
## of pulled.
HOOKQ_IMAGE ?= hookq:local
RECEIVER_IMAGE ?= hookq-example-receiver:local
LOCAL_BASE ?=
ifeq ($(LOCAL_BASE),1)
BASE_IMAGE ?= hookq-local/debian:bookworm-slim
PYTHON_IMAGE ?= hookq-local/python:3-bookworm
REDIS_IMAGE ?= hookq-local/redis:7-bookworm
else
BASE_IMAGE ?= debian:bookworm-slim
PYTHON_IMAGE ?= python:3-slim
REDIS_IMAGE ?= redis:7
endif
## The release profile keeps line tables (~100 MB); the image drops them
## (symbols stay, so backtraces keep function names). IMAGE_STRIP=true keeps them.
IMAGE_STRIP ?= strip --strip-debug
WORKERS ?= 3
INGESTS ?= 2
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_IMAGES = HOOKQ_IMAGE=$(HOOKQ_IMAGE) RECEIVER_IMAGE=$(RECEIVER_IMAGE) REDIS_IMAGE=$(REDIS_IMAGE)

images:
ifeq ($(LOCAL_BASE),1)
	BASE_IMAGE=$(BASE_IMAGE) PYTHON_IMAGE=$(PYTHON_IMAGE) REDIS_IMAGE=$(REDIS_IMAGE) deploy/make-base-image.sh
endif
	$(CARGO) build --release -p hookq --bin hookq
	rm -rf target/image && mkdir -p target/image && cp -p target/release/hookq target/image/hookq
	$(IMAGE_STRIP) target/image/hookq
	docker build -q -f deploy/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(HOOKQ_IMAGE) target/image
	docker build -q --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(RECEIVER_IMAGE) deploy/receiver

## redis + WORKERS workers + INGESTS ingest replicas + the example receiver
## (docker-compose.yml), from `make images`. INGESTS is at most the number of
## ports in INGEST_PORTS (8080-8081 by default).
up: images
	$(COMPOSE_IMAGES) $(COMPOSE) up -d --no-build --scale worker=$(WORKERS) --scale ingest=$(INGESTS)
	@echo "receiver: curl -s 127.0.0.1:8000/stats; logs: $(COMPOSE) logs -f receiver; stop: make down"
	@echo "ingest (where Sockudo/Soketi/Pusher post): 127.0.0.1:8080 and :8081; send it a signed webhook: make send-webhook (the curl is in docs/senders.md)"

## One signed webhook to the ingest of `make up`, as a realtime server sends
## it (docs/senders.md): app-1's key and secret of deploy/config/compose.json.
## The receiver logs it: $(COMPOSE) logs receiver. The same body twice within
## ingest.dedup_window_ms (5 min) is answered {"duplicate":true} and sent once.
INGEST_URL ?= http://127.0.0.1:8080/pusher/webhooks
send-webhook:
	@body='{"time_ms":'"$$(date +%s)"'000,"events":[{"name":"channel_occupied","channel":"room-1"}]}'; \
	sig=$$(printf '%s' "$$body" | openssl dgst -sha256 -hmac 'app-1-secret-change-me' | awk '{print $$NF}'); \
	echo "POST $(INGEST_URL) $$body"; \
	curl -sS -X POST '$(INGEST_URL)' -H 'Content-Type: application/json' \
	  -H 'X-Pusher-Key: app-1-key' -H "X-Pusher-Signature: $$sig" --data-binary "$$body"; echo

## Stops and removes the containers; Redis's data volume stays (docker compose down -v drops it).
down:
	$(COMPOSE_IMAGES) $(COMPOSE) down

## The compose end-to-end test: 10,000 events, 3 workers, one SIGKILLed, and
## signed webhooks through 2 ingest replicas (scripts/e2e-compose.sh).
e2e-compose:
	./scripts/e2e-compose.sh

.PHONY: bench-build bench-quick bench-micro

## The benchmark's release binaries (the worker it runs, and the benchmark itself).
bench-build:
	$(CARGO) build --release -p hookq -p hookq-bench --bin hookq --bin hookq-bench

## The end-to-end benchmark with its ceilings (docs/benchmark.md): a table on
## stdout, JSON in target/bench/. Needs redis-server and redis-benchmark.
bench: bench-build
	./target/release/hookq-bench --hookq target/release/hookq --out target/bench

## The same with smaller counts (about 40 s), to try it out.
bench-quick: bench-build
	./target/release/hookq-bench --hookq target/release/hookq --out target/bench --quick

## Criterion micro-benchmarks: signing, envelope encoding, job decoding, batcher.
bench-micro:
	$(CARGO) bench -p hookq-bench
