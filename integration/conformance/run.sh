#!/usr/bin/env bash
# run.sh: `make conformance`. Upstream critest v1.29.0 (validation) against a private
# berthd in each CRI sandbox mode, then the crictl verb test
# (integration/tests/crictl.rs), all offline. As root, after `make build`
# (target/$CONFORMANCE_PROFILE/berthd, debug by default) and the Debian packages of `make deps-conformance`.
#
#   run.sh               the whole run; exit 0 only if every critest run and the crictl test passed
#   run.sh --check-kit   only check that the conformance kit is there (exit 2 if not)
#
# Env: CONFORMANCE_DIR   the kit (bin/critest, bin/crictl, run-critest.sh, build-images.sh,
#                        certs.d/); default ../shared/conformance beside the repo
#      CONFORMANCE_MODES sandbox modes to run (default "pinned pause")
#      CONFORMANCE_CRICTL_TEST=0  skip the crictl verb test
#      CRITEST_RUN       the kit's cache and results (default /var/tmp/critest-run)
#      CONFORMANCE_BASE  private berthd roots/states, certs.d copy, registry storage
#                        (default /var/tmp/berth-conformance; emptied at start and at the end)
#      CONFORMANCE_REGISTRY_PORT (default 5055; the next free port if busy)
#      CRITEST_TIMEOUT   seconds per critest run (default 1500)
#      CRITEST_ARGS      extra critest/ginkgo flags, e.g. "--ginkgo.focus=Networking"
#      also passed through to run-critest.sh: CRITEST_SKIP, CRITEST_SEED
# Results: $CRITEST_RUN/results/berth-conformance-TIME/ (registry and build-images logs, the
# crictl test log, table.txt) with one berth-MODE/ per mode (run-critest.sh's summary.txt,
# report.json, junit.xml, critest.log, plus berthd.toml, berthd.log, cni.conflist).
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
KIT=${CONFORMANCE_DIR:-$REPO/../shared/conformance}
MODES=${CONFORMANCE_MODES:-pinned pause}
RUN=${CRITEST_RUN:-/var/tmp/critest-run}
BASE=${CONFORMANCE_BASE:-/var/tmp/berth-conformance}
REG_PORT_WANT=${CONFORMANCE_REGISTRY_PORT:-5055}
CRITEST_TIMEOUT=${CRITEST_TIMEOUT:-1500}
CRICTL_TEST_TIMEOUT=${CRICTL_TEST_TIMEOUT:-2400}
CARGO=${CARGO:-cargo}
# debug (default: what `make test` has just built, so CI builds once) or release
PROFILE=${CONFORMANCE_PROFILE:-debug}
case $PROFILE in
  debug) CARGO_PROFILE_ARGS=() ;;
  release) CARGO_PROFILE_ARGS=(--release) ;;
  *) echo "CONFORMANCE_PROFILE must be debug or release, not $PROFILE" >&2; exit 2 ;;
esac
BERTHD=$REPO/target/$PROFILE/berthd
BERTHCTL=$REPO/target/$PROFILE/berthctl
# The private pod network: never berth's default berth0 / 10.88.0.0/16.
NET_NAME=berth-conformance
BRIDGE=berthct0
SUBNET=10.89.0.0/16

log() { printf '[conformance] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# ------------------------------------------------------------------ the kit
check_kit() {
  if [ ! -d "$KIT" ]; then
    die "conformance kit not found at $KIT (set CONFORMANCE_DIR; CI lays it out as ../shared/conformance beside the repo). \`make test\` does not need it."
  fi
  KIT=$(cd "$KIT" && pwd)
  local f missing=()
  for f in bin/critest bin/crictl; do [ -x "$KIT/$f" ] || missing+=("$f (executable)"); done
  for f in run-critest.sh build-images.sh; do [ -f "$KIT/$f" ] || missing+=("$f"); done
  for f in registry.k8s.io gcr.io public.ecr.aws; do
    [ -f "$KIT/certs.d/$f/hosts.toml" ] || missing+=("certs.d/$f/hosts.toml")
  done
  [ ${#missing[@]} -eq 0 ] || die "conformance kit at $KIT is incomplete, missing: ${missing[*]}"
}

if [ "${1:-}" = --check-kit ]; then
  check_kit
  log "conformance kit: $KIT"
  exit 0
fi
[ $# -eq 0 ] || die "usage: $0 [--check-kit]"
check_kit
CRICTL=$KIT/bin/crictl

[ "$(id -u)" = 0 ] || die "must run as root (berthd, runc, CNI, mounts)"
for c in docker-registry skopeo jq curl ss ip iptables runc ipcs pgrep timeout findmnt; do
  command -v "$c" >/dev/null || die "$c not found: run \`make deps-conformance\` (or \`make conformance\`)"
done
if [ ! -x "$BERTHD" ] || [ ! -x "$BERTHCTL" ]; then
  die "$BERTHD or $BERTHCTL missing: run \`make build\` first"
fi
for m in $MODES; do
  case $m in pinned|pause) ;; *) die "unknown sandbox mode '$m' in CONFORMANCE_MODES" ;; esac
done

case $BASE in /?*/?*) ;; *) die "CONFORMANCE_BASE must be an absolute path two levels deep at least, got '$BASE'" ;; esac
# One run at a time on this machine (they share $BASE, the bridge and critest's host ports).
# fd 9 holds the lock; every long-lived child is started with 9>&- so none keeps it.
mkdir -p "$RUN"
exec 9>"$RUN/berth-conformance.lock"
if ! flock -n 9; then
  log "another make conformance holds $RUN/berth-conformance.lock; waiting for it"
  flock -w 5400 9 || die "the other make conformance did not finish"
fi
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=$RUN/results/berth-conformance-$STAMP
mkdir -p "$RESULTS"

# ------------------------------------------------------------------ state the trap cleans up
REG_PID="" REG="" BERTHD_PID="" BERTHD_SOCK="" BERTHD_RC="" MODE_DIR="" MODE_OUT="" CHILD_PID=""
CLEANED=0

# run_bg LOGFILE TIMEOUT CMD...: runs CMD under `timeout` in the background and waits for it,
# so that a signal to this script is acted on at once (the trap kills it) instead of after
# CMD ends. Returns CMD's status (124 on timeout).
run_bg() {
  local logf=$1 secs=$2 rc=0; shift 2
  timeout -k 30 "$secs" "$@" >"$logf" 2>&1 </dev/null 9>&- &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 0.1 s until it succeeds; 1 on
# timeout, or at once when CMD returns 2 (what it waits for is gone, e.g. the daemon died).
wait_until() {
  local secs=$1 what=$2 st; shift 2
  local deadline=$((SECONDS + secs))
  while :; do
    st=0; "$@" || st=$?
    [ "$st" != 0 ] || return 0
    if [ "$st" = 2 ]; then log "gave up waiting for $what"; return 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then log "timed out after ${secs}s waiting for $what"; return 1; fi
    sleep 0.1
  done
}

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
gone() { ! kill -0 "$1" 2>/dev/null; }

# ------------------------------------------------------------------ registry
port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

registry_answers() {
  alive "$REG_PID" || return 2
  curl -sf -o /dev/null "http://127.0.0.1:$REG_PORT/v2/"
}

start_registry() {
  local p tries=0
  REG_PORT=""
  for p in "$REG_PORT_WANT" $(seq 5056 5155); do
    port_free "$p" && { REG_PORT=$p; break; }
  done
  [ -n "$REG_PORT" ] || die "no free port for the registry in $REG_PORT_WANT, 5056-5155"
  while :; do
    mkdir -p "$BASE/registry"
    sed -e "s|@STORAGE@|$BASE/registry/storage|" -e "s|@PORT@|$REG_PORT|" \
      "$HERE/registry.yml.in" > "$BASE/registry/config.yml"
    setsid docker-registry serve "$BASE/registry/config.yml" >"$RESULTS/registry.log" 2>&1 </dev/null 9>&- &
    REG_PID=$!
    local deadline=$((SECONDS + 30)) st=0
    while :; do
      st=0; registry_answers || st=$?
      [ "$st" = 0 ] && break
      [ "$st" = 2 ] && break
      [ "$SECONDS" -lt "$deadline" ] || break
      sleep 0.1
    done
    [ "$st" = 0 ] && break
    if [ "$st" = 2 ] && grep -q 'address already in use' "$RESULTS/registry.log" && [ $((tries += 1)) -lt 5 ]; then
      log "port $REG_PORT was taken meanwhile, trying the next one"   # lost a race for the port
      wait "$REG_PID" 2>/dev/null || true
      REG_PID=""
      REG_PORT=$((REG_PORT + 1))
      continue
    fi
    tail -20 "$RESULTS/registry.log" >&2 || true
    die "docker-registry did not come up on 127.0.0.1:$REG_PORT"
  done
  REG=127.0.0.1:$REG_PORT
  log "docker-registry (pid $REG_PID) on $REG, storage $BASE/registry/storage"

  # the kit's mirror files, pointing at this registry
  rm -rf "$BASE/certs.d"
  cp -r "$KIT/certs.d" "$BASE/certs.d"
  chmod -R u+w "$BASE/certs.d"
  local f
  for f in "$BASE"/certs.d/*/hosts.toml; do
    sed -i "s|127\.0\.0\.1:5055|$REG|g" "$f"
    grep -q "\"http://$REG\"" "$f" || die "could not point $f at $REG"
  done
}

# ------------------------------------------------------------------ berthd
berthd_answers() {
  alive "$BERTHD_PID" || return 2
  [ -S "$BERTHD_SOCK" ] && BERTH_ADDRESS=$BERTHD_SOCK timeout 5 "$BERTHCTL" version >/dev/null 2>&1 || return 1
}

# write_config MODE OUT: berthd.toml (defaults + the four keys) and the private conflist
write_config() {
  local mode=$1 out=$2 d=$MODE_DIR
  mkdir -p "$d/root" "$d/state" "$d/net.d"
  sed -e "s|@ROOT@|$d/root|" -e "s|@STATE@|$d/state|" -e "s|@CERTS_D@|$BASE/certs.d|" \
    -e "s|@CNI_CONF_DIR@|$d/net.d|" -e "s|@SANDBOX_MODE@|$mode|" \
    "$HERE/berthd.toml.in" > "$d/berthd.toml"
  cp "$d/berthd.toml" "$out/berthd.toml"
  # berth's default network (`berthd config cni`) with its own name, bridge, subnet and
  # host-local data dir (leases go away with $MODE_DIR)
  "$BERTHD" --config /dev/null config cni | jq --arg name "$NET_NAME" --arg br "$BRIDGE" \
    --arg sub "$SUBNET" --arg data "$d/cni-ipam" '
      .name = $name
      | .plugins |= map(if .type == "bridge"
          then .bridge = $br | .ipam.ranges = [[{subnet: $sub}]] | .ipam.dataDir = $data
          else . end)' > "$d/net.d/10-$NET_NAME.conflist"
  jq -e --arg br "$BRIDGE" '[.plugins[] | select(.type == "bridge" and .bridge == $br)] | length == 1' \
    "$d/net.d/10-$NET_NAME.conflist" >/dev/null \
    || die "berthd's default CNI network has no bridge plugin to adapt: $(cat "$d/net.d/10-$NET_NAME.conflist")"
  if grep -q 'berth0\|10\.88\.' "$d/net.d/10-$NET_NAME.conflist"; then
    die "the private conflist still names berth0 or 10.88.x: $d/net.d/10-$NET_NAME.conflist"
  fi
  cp "$d/net.d/10-$NET_NAME.conflist" "$out/cni.conflist"
  # the effective config must be berth's defaults but for these keys
  "$BERTHD" --config "$d/berthd.toml" config dump > "$out/berthd-effective.toml"
  "$BERTHD" --config "$d/berthd.toml" config default > "$out/berthd-default.toml"
  local changed
  changed=$( { diff "$out/berthd-default.toml" "$out/berthd-effective.toml" || true; } \
    | sed -n 's/^> *\([a-z_]*\) *=.*/\1/p' | sort | tr '\n' ' ')
  if [ "$changed" != "address conf_dir config_path root sandbox_mode state " ] \
     && [ "$changed" != "address conf_dir config_path root state " ]; then   # "pinned" is the default mode
    die "berthd.toml changes more than root/state/config_path/conf_dir/sandbox_mode: $changed (see $out)"
  fi
}

start_berthd() {
  local out=$1
  BERTHD_SOCK=$MODE_DIR/state/berth.sock
  # its own session: a Ctrl-C meant for this script must not stop it before the pods are
  # removed through it (stop_berthd); the config path under $MODE_DIR lets sweep find it
  NO_COLOR=1 setsid "$BERTHD" --config "$MODE_DIR/berthd.toml" >"$out/berthd.log" 2>&1 </dev/null 9>&- &
  BERTHD_PID=$!
  if ! wait_until 60 "berthd on $BERTHD_SOCK" berthd_answers; then
    alive "$BERTHD_PID" || log "berthd exited before answering"
    echo "----- last 40 lines of $out/berthd.log:"; tail -40 "$out/berthd.log" || true; echo "-----"
    return 1
  fi
  log "berthd (pid $BERTHD_PID) answers on $BERTHD_SOCK"
}

crictl_ep() {
  "$CRICTL" --runtime-endpoint "unix://$BERTHD_SOCK" --image-endpoint "unix://$BERTHD_SOCK" --timeout 60s "$@"
}

# stop_berthd OUT: removes the pods critest left through the CRI (CNI DEL, cgroups), then
# SIGTERM and wait (SIGKILL after 30 s). Sets BERTHD_RC.
stop_berthd() {
  local out=$1 n
  BERTHD_RC=""
  [ -n "$BERTHD_PID" ] || return 0
  if alive "$BERTHD_PID"; then
    n=$(crictl_ep pods -q 2>>"$out/cleanup.log" | wc -l) || n="?"
    if [ "$n" != 0 ]; then
      log "removing $n pod(s) left behind (crictl rmp -af)"
      crictl_ep rmp -a -f >>"$out/cleanup.log" 2>&1 || log "crictl rmp -af failed (see $out/cleanup.log); the sweep removes what is left"
    fi
    kill -TERM "$BERTHD_PID" 2>/dev/null || true
    if ! wait_until 30 "berthd to exit after SIGTERM" gone "$BERTHD_PID"; then
      kill -KILL "$BERTHD_PID" 2>/dev/null || true
    fi
  fi
  local rc=0
  wait "$BERTHD_PID" 2>/dev/null || rc=$?
  BERTHD_RC=$rc BERTHD_PID=""
  [ "$rc" = 0 ] || log "WARNING: berthd exited with status $rc (see $out/berthd.log)"
}

mounts_under() {  # mount points strictly below $1, deepest first
  awk -v d="$1/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -ru
}

# sweep DIR: what berthd and its shims may leave under DIR after a failure: runc containers,
# processes (shims) started with or in DIR, mounts (rootfs overlays, netns/ipc/uts pins,
# /dev/shm tmpfs), the network's portmap/masquerade rules. Then removes DIR.
sweep() {
  local d=$1 r id pid m
  [ -d "$d" ] || return 0
  for r in "$d"/state/runc/*/ "$d"/*/state/runc/*/; do
    [ -d "$r" ] || continue
    for id in $(runc --root "$r" list -q 2>/dev/null); do
      log "sweep: runc delete --force $id"
      runc --root "$r" delete --force "$id" >/dev/null 2>&1 || true
    done
  done
  for pid in $(ps -eo pid= | tr -d ' '); do
    [ "$pid" != $$ ] || continue
    if tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF "$d/" \
       || [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$d"/* ]]; then
      log "sweep: kill -KILL $pid ($(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | cut -c1-80))"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for _ in 1 2 3 4 5; do
    m=$(mounts_under "$d")
    [ -n "$m" ] || break
    while read -r m; do
      umount -R "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done <<<"$m"
  done
  remove_net_rules
  if [ -n "$(mounts_under "$d")" ]; then
    log "WARNING: mounts left under $d, not removing it:"; mounts_under "$d" >&2
    return 1
  fi
  rm -rf --one-file-system "$d"
}

# The iptables rules CNI DEL would have removed for pods of $NET_NAME (portmap DNAT, bridge
# masquerade): each rule whose comment names the network, and the chain it jumps to.
remove_net_rules() {
  local chain line target
  for chain in CNI-HOSTPORT-DNAT POSTROUTING; do
    for _ in $(seq 1 200); do
      line=$(iptables -w -t nat -S "$chain" 2>/dev/null | grep -F -- "$NET_NAME" | head -1) || true
      [ -n "$line" ] || break
      target=$(sed -n 's/.* -j \([^ ]*\).*/\1/p' <<<"$line")
      eval "iptables -w -t nat ${line/#-A /-D }" 2>/dev/null || break
      case $target in CNI-*) iptables -w -t nat -F "$target" 2>/dev/null; iptables -w -t nat -X "$target" 2>/dev/null || true ;; esac
    done
  done
}

cleanup() {
  local rc=$?
  [ "$CLEANED" = 0 ] || return 0
  CLEANED=1
  set +e
  trap - ERR
  trap '' INT TERM
  if alive "$CHILD_PID"; then kill -TERM "$CHILD_PID" 2>/dev/null; wait "$CHILD_PID" 2>/dev/null; fi
  if [ -n "$BERTHD_PID" ]; then
    log "cleanup: stopping berthd (pid $BERTHD_PID)"
    stop_berthd "${MODE_OUT:-$RESULTS}"
  fi
  [ -z "$MODE_DIR" ] || sweep "$MODE_DIR"
  if [ -n "$REG_PID" ]; then
    kill -TERM "$REG_PID" 2>/dev/null
    wait_until 10 "docker-registry to exit" gone "$REG_PID" || kill -KILL "$REG_PID" 2>/dev/null
    wait "$REG_PID" 2>/dev/null
  fi
  ip link del "$BRIDGE" >/dev/null 2>&1
  # Only what this script created: the mode dirs are swept above; certs.d, registry storage
  if [ -z "$(mounts_under "$BASE")" ]; then rm -rf --one-file-system "$BASE"; fi
  [ "$rc" = 0 ] || log "exit status $rc; results in $RESULTS"
  exit "$rc"
}
trap cleanup EXIT
set -E
trap 'log "failed (status $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ------------------------------------------------------------------ main
declare -A RES_RC RES_PASS RES_FAIL RES_SECS

# What an earlier run left if it was killed with SIGKILL (we hold the lock: no run is live)
if [ -d "$BASE" ]; then
  log "removing what an earlier run left in $BASE"
  sweep "$BASE" || die "could not clean $BASE"
fi
ip link del "$BRIDGE" >/dev/null 2>&1 || true
mkdir -p "$BASE"
log "kit $KIT, results $RESULTS"

start_registry
t0=$SECONDS
log "build-images.sh -> $REG (log: $RESULTS/build-images.log)"
if ! run_bg "$RESULTS/build-images.log" 900 env REG="$REG" CRITEST_RUN="$RUN" bash "$KIT/build-images.sh"; then
  tail -30 "$RESULTS/build-images.log" >&2
  die "build-images.sh failed"
fi
log "images: $(grep -c ' sha256:' "$RESULTS/build-images.log") tags pushed in $((SECONDS - t0)) s"

run_mode() {
  local mode=$1 rc=0 t0=$SECONDS
  local out=$RESULTS/berth-$mode
  MODE_OUT=$out MODE_DIR=$BASE/$mode
  mkdir -p "$out"
  log "=== sandbox_mode = $mode"
  write_config "$mode" "$out"
  if ! start_berthd "$out"; then
    RES_RC[$mode]=2 RES_SECS[$mode]=$((SECONDS - t0))
    stop_berthd "$out"; sweep "$MODE_DIR" || true; MODE_DIR=""
    return
  fi
  # critest binds host ports 12000-12003: never two runs at once on this machine
  if pgrep -x critest >/dev/null; then
    log "another critest is running (pid $(pgrep -x critest | xargs)); waiting for it to end"
    wait_until 5400 "the other critest run to end" bash -c '! pgrep -x critest >/dev/null' \
      || die "another critest kept running"
  fi
  local args=()
  read -r -a args <<<"${CRITEST_ARGS:-}"
  log "critest against unix://$BERTHD_SOCK (log: $out/critest.log)"
  run_bg "$out/run-critest.log" "$CRITEST_TIMEOUT" env OUT="$out" CRITEST_RUN="$RUN" CRICTL="$CRICTL" \
    bash "$KIT/run-critest.sh" --name "berth-$mode" "unix://$BERTHD_SOCK" "${args[@]}" || rc=$?
  [ "$rc" != 124 ] || log "critest did not finish within ${CRITEST_TIMEOUT}s (CRITEST_TIMEOUT)"
  echo "----- critest summary, sandbox_mode = $mode (rc $rc):"
  if [ -s "$out/summary.txt" ]; then
    cat "$out/summary.txt"
  else
    echo "(no summary.txt; run-critest.sh said:)"; cat "$out/run-critest.log"
  fi
  echo "-----"
  stop_berthd "$out"
  if [ "$rc" != 0 ] || [ "${BERTHD_RC:-0}" != 0 ]; then
    echo "----- last 40 lines of $out/berthd.log:"; tail -40 "$out/berthd.log"; echo "-----"
  fi
  sweep "$MODE_DIR" || true
  MODE_DIR=""
  RES_RC[$mode]=$rc RES_SECS[$mode]=$((SECONDS - t0))
  RES_PASS[$mode]=$(sed -n 's/^passed: \([0-9][0-9]*\) .*/\1/p' "$out/summary.txt" 2>/dev/null || true)
  RES_FAIL[$mode]=$(sed -n 's/^passed: [0-9]* *failed: \([0-9][0-9]*\).*/\1/p' "$out/summary.txt" 2>/dev/null || true)
}

for mode in $MODES; do run_mode "$mode"; done
ip link del "$BRIDGE" >/dev/null 2>&1 || true

# The crictl verb test drives upstream crictl against berthds it starts itself.
CRICTL_RS=$REPO/integration/tests/crictl.rs
t0=$SECONDS
if [ "${CONFORMANCE_CRICTL_TEST:-1}" = 0 ]; then
  log "crictl verb test: skipped (CONFORMANCE_CRICTL_TEST=0)"
  RES_RC[crictl]=skip
elif [ ! -f "$CRICTL_RS" ]; then
  log "################################################################"
  log "SKIP: crictl verb test: $CRICTL_RS does not exist (yet)"
  log "################################################################"
  RES_RC[crictl]=skip
else
  # The verb test, and crictl answering under a 20,000-connection flood of the
  # streaming port (issue 14).
  log "crictl verb test: cargo test ${CARGO_PROFILE_ARGS[*]} -p integration --test crictl --test streaming_flood -- --ignored --test-threads=1 (log: $RESULTS/crictl-test.log)"
  rc=0
  run_bg "$RESULTS/crictl-test.log" "$CRICTL_TEST_TIMEOUT" env CRICTL="$CRICTL" CONFORMANCE_DIR="$KIT" \
    CONFORMANCE_REGISTRY="$REG" CONFORMANCE_CERTS_D="$BASE/certs.d" \
    "$CARGO" test "${CARGO_PROFILE_ARGS[@]}" -p integration --test crictl --test streaming_flood -- --ignored --test-threads=1 || rc=$?
  RES_RC[crictl]=$rc
  # Summed over the two test binaries.
  RES_PASS[crictl]=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\1/p' "$RESULTS/crictl-test.log" | awk '{s += $1} END {print s + 0}')
  RES_FAIL[crictl]=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\2/p' "$RESULTS/crictl-test.log" | awk '{s += $1} END {print s + 0}')
  # each test's status, and for each failure its error or panic message (no backtrace)
  echo "----- crictl verb test (rc $rc; full log $RESULTS/crictl-test.log):"
  awk 'function flush(  i) {
         if (n <= 40) { for (i = 1; i <= n; i++) print b[i] }
         else { for (i = 1; i <= 20; i++) print b[i]; print "  [... " n - 35 " lines ...]"
                for (i = n - 14; i <= n; i++) print b[i] }
         n = 0; p = 0 }
       /^(running [0-9]+ test|test .* \.\.\. |test result:|failures:$)/ { if (p) flush() }
       /^(running [0-9]+ test|test .* \.\.\. |test result:)/ {print; next}
       /^---- .* stdout ----$/ { if (p) flush(); print; next }
       /^(Stack backtrace:|note: run with)/ { if (p) flush() }
       /^(Error: |thread .* panicked)/ { if (p) flush(); p = 1 }
       p { b[++n] = $0 }
       END { if (p) flush() }' "$RESULTS/crictl-test.log"
  if [ "$rc" != 0 ] && ! grep -q '^test result:' "$RESULTS/crictl-test.log"; then
    tail -40 "$RESULTS/crictl-test.log"   # it did not get as far as running the tests
  fi
  echo "-----"
fi
RES_SECS[crictl]=$((SECONDS - t0))

# ------------------------------------------------------------------ the table
ok=0 bad=0 skipped=0
printf '%-16s %-8s %7s %7s %8s\n' run result passed failed seconds > "$RESULTS/table.txt"
for r in $MODES crictl; do
  rc=${RES_RC[$r]}
  case $rc in
    0) res=passed; ok=$((ok + 1)) ;;
    skip) res=skipped; skipped=$((skipped + 1)) ;;
    *) res=FAILED; bad=$((bad + 1)) ;;
  esac
  if [ "$r" = crictl ]; then name="crictl test"; else name="critest $r"; fi
  printf '%-16s %-8s %7s %7s %8s\n' "$name" "$res" "${RES_PASS[$r]:--}" "${RES_FAIL[$r]:--}" "${RES_SECS[$r]}" >> "$RESULTS/table.txt"
done
echo "===== make conformance (results: $RESULTS)"
cat "$RESULTS/table.txt"
if [ "$skipped" -gt 0 ]; then
  echo "conformance: $ok passed, $bad failed, $skipped skipped"
else
  echo "conformance: $ok passed, $bad failed"
fi
[ "$bad" = 0 ] || exit 1
