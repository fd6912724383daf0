#!/usr/bin/env bash
# Builds the loco-shared and loco-agent fuzz targets with cargo-fuzz (libFuzzer + AddressSanitizer, release
# with debug assertions and overflow checks) and runs each for a bounded time.
#
#   fuzz/run.sh                     # every target, 20 s each
#   FUZZ_SECONDS=300 fuzz/run.sh layout_ray bitrate_pacer
#
# The agent's targets (whep_http, rfb_server, framebuffer_ops) link loco-agent, so the first
# build compiles webrtc-rs & co. with ASan (15-25 min on 2 cores); later builds are incremental.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). It uses nightly-only rustc flags
# (-Zsanitizer=address, sancov passes); on a stable toolchain RUSTC_BOOTSTRAP=1 (set here
# unless already set) lets stable rustc accept them.
#
# Seeds: fuzz/corpus/<target>/ (committed, small, read only). The growing corpus lives in
# $LOCO_CACHE/fuzz-corpus/<target>/ and is kept between runs. A crash leaves its input in
# fuzz/artifacts/<target>/; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -O -a <target> fuzz/artifacts/<target>/crash-...
# Prints the executions run per target (from libFuzzer's final stats) and exits non-zero if
# any target crashed, leaked, timed out or failed to build.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${LOCO_CACHE:-$HOME/.cache/loco}
export CARGO_TARGET_DIR=$CACHE/fuzz-target
export RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-1}
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
ALL_TARGETS=(input_message desktops_config layout_ray bitrate_pacer retransmit_twcc feedback_loop lan_switch whep_http rfb_server framebuffer_ops)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")

command -v cargo-fuzz >/dev/null || { echo "fuzz/run.sh: cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2; exit 2; }
cd "$HERE" || exit 2
# Same flags for build and run so that `run` does not rebuild.
FLAGS=(--fuzz-dir "$HERE" -O -a)

echo "==> building ${TARGETS[*]} (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
for t in "${TARGETS[@]}"; do
  cargo fuzz build "${FLAGS[@]}" "$t" || { echo "fuzz/run.sh: build of $t failed" >&2; exit 2; }
done

LOGS=$CACHE/fuzz-logs
mkdir -p "$LOGS"
failed=()
summary=()
for t in "${TARGETS[@]}"; do
  work=$CACHE/fuzz-corpus/$t
  mkdir -p "$work" "$HERE/artifacts/$t"
  log=$LOGS/$t.log
  echo "==> fuzzing $t for ${SECONDS_PER_TARGET}s (log: $log)" >&2
  # The first corpus dir receives new inputs; the committed seeds (if any) are only read.
  seeds=()
  [ -d "$HERE/corpus/$t" ] && seeds=("$HERE/corpus/$t")
  cargo fuzz run "${FLAGS[@]}" "$t" "$work" ${seeds[@]+"${seeds[@]}"} -- \
      -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
      >"$log" 2>&1
  rc=$?
  # libFuzzer's final stats: "stat::number_of_executed_units: N"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  cov=$(grep -E '^#[0-9]+' "$log" | tail -n1 | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  corpus=$(find "$work" -type f | wc -l)
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    art=$(grep -o 'artifact_prefix=[^;]*; Test unit written to [^ ]*' "$log" | sed 's/.*written to //' | tail -n1)
    summary+=("$(printf '%-16s FAILED rc=%s execs=%s %s' "$t" "$rc" "${execs:-?}" "${art:+input: $art}")")
    echo "---- last lines of $log ----" >&2
    tail -n 40 "$log" >&2
  else
    summary+=("$(printf '%-16s ok     execs=%s cov=%s corpus=%s' "$t" "${execs:-?}" "${cov:-?}" "$corpus")")
  fi
done

echo
echo "fuzz results (${SECONDS_PER_TARGET}s per target):"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/run.sh: crash or failure in: ${failed[*]}" >&2
  exit 1
fi
