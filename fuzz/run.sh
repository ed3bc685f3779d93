#!/usr/bin/env bash
# Bounded fuzzing run (make fuzz): builds every cargo-fuzz target in fuzz/,
# writes its generated seeds into fuzz/corpus/<target>/, runs it for
# FUZZ_SECONDS (one process, one job: the machine has 2 cores), and prints a
# table: executions, coverage (libFuzzer's cov: edges and ft: features at
# the end), corpus size, crashes. Exits non-zero when a target crashed
# (panic, sanitizer report, timeout, OOM); the input is in
# fuzz/artifacts/<target>/ and the log in fuzz/logs/<target>.log.
#
#   FUZZ_SECONDS=60 FUZZ_TARGETS="layer_apply spdy_frames" fuzz/run.sh
set -uo pipefail

cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
ALL_TARGETS="layer_apply image_json reference hosts_toml cri_log spdy_frames spdy_session ws_session cri_requests"
FUZZ_TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}
CARGO=${CARGO:-cargo}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
	echo "fuzz: the nightly toolchain is missing; trying: rustup toolchain install nightly --profile minimal"
	if ! rustup toolchain install nightly --profile minimal; then
		echo "fuzz: cannot install the nightly Rust toolchain (offline?). cargo-fuzz needs nightly" >&2
		echo "fuzz: (sanitizer flags); install it with 'rustup toolchain install nightly' and rerun." >&2
		exit 2
	fi
fi
if ! $CARGO +nightly fuzz --version >/dev/null 2>&1; then
	echo "fuzz: installing cargo-fuzz"
	$CARGO install cargo-fuzz --locked || {
		echo "fuzz: cannot install cargo-fuzz" >&2
		exit 2
	}
fi

# Release build with debug assertions and overflow checks, AddressSanitizer.
$CARGO +nightly fuzz build --debug-assertions || exit 1
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$triple/release

max_len() {
	case $1 in
	layer_apply | spdy_frames | spdy_session | ws_session) echo 65536 ;;
	*) echo 8192 ;;
	esac
}

# layer_apply: on an error path apply_layer drops its hashing thread's handle
# and the thread ends a moment later, once its channel is closed; a leak check
# in that moment reports the thread's std-internal thread-local (112 bytes,
# not reproducible on a rerun). Leak checking is off for it alone.
extra_flags() {
	case $1 in
	layer_apply) echo -detect_leaks=0 ;;
	esac
}

mkdir -p fuzz/logs
rows=()
failed=0
for t in $FUZZ_TARGETS; do
	corpus=fuzz/corpus/$t
	artifacts=fuzz/artifacts/$t
	log=fuzz/logs/$t.log
	mkdir -p "$corpus" "$artifacts"
	BERTH_FUZZ_SEEDS=$corpus "$bin_dir/$t" >/dev/null 2>&1 || {
		echo "fuzz: $t: generating seeds failed" >&2
		failed=1
	}
	before=$(find "$artifacts" -type f | wc -l)
	echo "fuzz: $t for ${FUZZ_SECONDS}s (log: $log)"
	"$bin_dir/$t" "$corpus" \
		-max_total_time="$FUZZ_SECONDS" -max_len="$(max_len "$t")" \
		-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=20 \
		-print_final_stats=1 -artifact_prefix="$artifacts/" $(extra_flags "$t") >"$log" 2>&1
	rc=$?
	after=$(find "$artifacts" -type f | wc -l)
	crashes=$((after - before))
	if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
	[ "$crashes" -ne 0 ] && failed=1
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	last=$(grep -E '#[0-9]+.*(cov|ft): ' "$log" | tail -1)
	cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
	ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
	corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
	rows+=("$(printf '%-14s %12s %8s %8s %12s %8s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes")")
	if [ "$crashes" -ne 0 ]; then
		echo "fuzz: $t CRASHED (exit $rc); see $log and $artifacts/" >&2
		grep -m5 -E 'panicked|ERROR: |SUMMARY' "$log" >&2
	fi
done

echo
printf '%-14s %12s %8s %8s %12s %8s\n' target executions cov ft corpus crashes
for r in "${rows[@]}"; do echo "$r"; done
exit $failed
