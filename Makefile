# berth: the two commands are `make run` and `make test` (as root, Debian).
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local

# Debian packages berthd needs at run time.
RUN_PKGS := runc containernetworking-plugins iproute2 iptables
# Extra packages the tests and benchmarks use (all real parts, no mocks).
TEST_PKGS := $(RUN_PKGS) crun docker-registry skopeo umoci busybox-static catatonit \
	apache2-utils attr jq containerd python3-websocket python3-venv binutils systemd prometheus

.PHONY: run test build build-debug deps-run deps-test lint bench soak bench-pull bench-unpack install deb clean durability \
	conformance conformance-kit deps-conformance chaos

# Installs only what is missing, so repeated runs are quick and offline-safe.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps-run:
	$(call apt_install,$(RUN_PKGS))

deps-test:
	$(call apt_install,$(TEST_PKGS))
	@# The SPDY streaming tests drive an independent client (node-spdy,
	@# vendored in integration/tests/spdy); a machine without node gets Debian's.
	@if ! command -v node >/dev/null; then \
		echo "installing: nodejs"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs; \
	fi

build:
	$(CARGO) build --release --workspace --bins

build-debug:
	$(CARGO) build --workspace --bins

# Sets up and runs the main job: berthd in the foreground with its default
# config (/etc/berth/config.toml if present) and socket (/run/berth/berth.sock).
# A default CNI network (berth0, 10.88.0.0/16) is installed if none exists.
run: deps-run build
	./target/release/berthd config cni --write
	./target/release/berthd

# Sets up and passes the tests: unit tests beside the code, end-to-end tests in
# integration/ (real registry, real berthd over its socket).
test: deps-test build-debug
	$(CARGO) test --workspace --no-fail-fast

# The conformance kit: upstream crictl and critest v1.29.0, build-images.sh,
# run-critest.sh, certs.d/ (CI lays out shared/ beside the repo). `make test`
# never needs it.
CONFORMANCE_DIR ?= ../shared/conformance
# What integration/conformance/run.sh and the kit's scripts use.
CONFORMANCE_PKGS := $(RUN_PKGS) docker-registry skopeo busybox-static catatonit jq curl \
	procps util-linux libapr1 libaprutil1

conformance-kit:
	@CONFORMANCE_DIR="$(CONFORMANCE_DIR)" bash integration/conformance/run.sh --check-kit

deps-conformance:
	$(call apt_install,$(CONFORMANCE_PKGS))

# Upstream critest (validation) against a private berthd in each sandbox mode
# (pinned, pause), then the crictl verb test; see integration/conformance/README.md.
# CONFORMANCE_PROFILE=debug (default: the build `make test` has just made, so CI
# builds once) or release.
CONFORMANCE_PROFILE ?= debug
conformance: conformance-kit deps-conformance $(if $(filter release,$(CONFORMANCE_PROFILE)),build,build-debug)
	CONFORMANCE_DIR="$(CONFORMANCE_DIR)" CONFORMANCE_PROFILE="$(CONFORMANCE_PROFILE)" \
		CARGO="$(CARGO)" bash integration/conformance/run.sh

# SIGKILL berthd during bursts of metadata writes, 1000 times: no acknowledged
# write may be lost, no record torn (issue 13; make test runs 15 cycles).
durability: deps-test build-debug
	BERTH_DURABILITY_CYCLES=$${CYCLES:-1000} $(CARGO) test -p integration --test meta_durability -- --nocapture

# The chaos suite: berthd under kubelet-like CRI load (8 pod workers, a lister, a
# puller, long-lived logging pods) while faults are thrown at it (berthd and shims
# SIGKILLed, runc dying mid-create, CNI ADD failing/hanging/dying, the registry
# stopped, the root filesystem full); fails on any broken invariant or leak. The
# full profile (100 berthd kills + 35 other faults) by default; .ci/run passes
# CHAOS_ARGS="--profile ci" (10 kills, the 7 other kinds once, 2 min). Debug build
# (the one `make test` made) unless CHAOS_BUILD=release.
CHAOS_BUILD ?= debug
CHAOS_ARGS ?=
chaos: deps-test $(if $(filter release,$(CHAOS_BUILD)),build,build-debug)
	./target/$(CHAOS_BUILD)/chaos $(CHAOS_ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The CRI workload (pod start, lifecycle, lists, exec, memory, restart, cold pull)
# against containerd 1.6's CRI plugin, side by side; see README, Performance.
bench: deps-test build
	$(CARGO) run --release -p integration --bin bench-cri -- $(BENCH_ARGS)

# berthd's RSS over 500 pod cycles beside 10 long-lived pods: fails when it grows
# more than 384 KiB per 100 cycles after warm-up (flags through SOAK_ARGS, e.g.
# SOAK_ARGS="--cycles 750 --heaptrack /tmp/berthd"); see README, Performance.
soak: deps-test build
	$(CARGO) run --release -p integration --bin soak-cri -- $(SOAK_ARGS)

# Pull (fetch+unpack) throughput against containerd, plus fetch-only references
# (skopeo, ctr content fetch); see README, Performance.
bench-pull: deps-test build
	$(CARGO) run --release -p integration --bin bench-pull -- $(BENCH_ARGS)

# Import/pull + unpack into snapshots against containerd, and umoci's unpack alone.
bench-unpack: deps-test build
	$(CARGO) run --release -p integration --bin bench-unpack -- $(BENCH_ARGS)

install: build
	install -m 0755 target/release/berthd target/release/berthctl target/release/berth-shim $(PREFIX)/bin/

# berth_<version>_<arch>.deb in target/deb: the binaries, the systemd unit,
# /etc/berth/config.toml and the default CNI network (conffiles), completions
# and man pages. Install with `dpkg -i` (or `apt install ./target/deb/...`).
deb: build
	packaging/build-deb.sh --bin-dir target/release --out target/deb

clean:
	$(CARGO) clean

# Fuzzing (issue 13): every cargo-fuzz target in fuzz/ (nightly; cargo-fuzz is
# installed if missing) on generated seeds for FUZZ_SECONDS each, one at a time;
# prints executions, coverage, corpus and crashes per target, fails on a crash.
# FUZZ_TARGETS="spdy_frames ..." runs a subset. See README, Fuzzing.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(if $(FUZZ_TARGETS),FUZZ_TARGETS="$(FUZZ_TARGETS)") CARGO="$(CARGO)" bash fuzz/run.sh
