#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo fuzz, libFuzzer) for a while each.
#
#   scripts/fuzz.sh [--smoke] [TARGET...] [--seconds N]
#
# All targets by default, N seconds each (300; --smoke: 20, what CI runs). Each run starts from the committed
# seeds (fuzz/corpus/TARGET), copied to a scratch directory so the repository's corpus stays small; a crash
# leaves its input under fuzz/artifacts/TARGET/ and makes the script exit non-zero after the other targets.
#
# Stable toolchain only (CI has no nightly): with `--sanitizer none` cargo fuzz passes no -Z flag, so stable
# rustc builds it as is. AddressSanitizer would need -Zsanitizer (RUSTC_BOOTSTRAP=1 on stable) and buys little
# here: the code under test is safe Rust, where every bug libFuzzer can see is a panic, and ASan roughly halves
# the executions per second. The build keeps cargo fuzz's default debug assertions, so integer overflows on
# hostile input are found as panics rather than wrapping silently.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[fuzz] %s\n' "$*" >&2; }

seconds=300
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) seconds=20 ;;
    --seconds)
      [ $# -ge 2 ] || { echo "--seconds needs a number" >&2; exit 2; }
      seconds="$2"
      shift
      ;;
    --seconds=*) seconds="${1#--seconds=}" ;;
    -h | --help)
      sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
case "$seconds" in '' | *[!0-9]*) echo "--seconds wants a whole number, got '$seconds'" >&2; exit 2 ;; esac

known=()
for f in fuzz/fuzz_targets/*.rs; do known+=("$(basename "$f" .rs)"); done
if [ ${#targets[@]} -eq 0 ]; then targets=("${known[@]}"); fi
for t in "${targets[@]}"; do
  [[ " ${known[*]} " == *" $t "* ]] || { echo "unknown fuzz target '$t'; known: ${known[*]}" >&2; exit 2; }
done

command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }
# Pinned, and --locked, so every machine fuzzes with the same libFuzzer driver; skipped once installed.
CARGO_FUZZ_VERSION=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

FUZZ_FLAGS=(--sanitizer none)
log "building ${#targets[@]} target(s) (a cold build compiles the mesh and HQ's dependencies once more)"
build_start=$SECONDS
for t in "${targets[@]}"; do
  cargo fuzz build "${FUZZ_FLAGS[@]}" "$t"
done
log "built in $((SECONDS - build_start)) s"

scratch="$(mktemp -d "${TMPDIR:-/tmp}/lpmesh-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
  cp -R "fuzz/corpus/$t/." "$scratch/$t/" 2>/dev/null || true
  # Past fixes stay fixed: earlier crash inputs are seeds too.
  [ -d "fuzz/regressions/$t" ] && cp -R "fuzz/regressions/$t/." "$scratch/$t/"
  log "$t: ${seconds} s"
  start=$SECONDS
  rc=0
  # -timeout: an input that takes this long is a hang worth a report. -max_len: the largest seed decides
  # otherwise, and 64 KiB covers every size limit that matters (records, heartbeats) without slowing down.
  cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "$scratch/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=30 -max_len=65536 \
    >"$scratch/$t.log" 2>&1 || rc=$?
  took=$((SECONDS - start))
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log" | tail -n 1)"
  crashes=0
  if [ "$rc" -ne 0 ]; then
    crashes=1
    failed+=("$t")
    # The panic, the input's path and libFuzzer's summary; the whole log stays for the person reading CI.
    grep -E "panicked at|^Panic|ERROR: libFuzzer|deadly signal|Test unit written to|SUMMARY:|timeout" "$scratch/$t.log" |
      head -n 20 >&2 || true
    cp "$scratch/$t.log" "fuzz/artifacts/$t/last-run.log"
    log "$t: crashed; the input is under fuzz/artifacts/$t/, the log in fuzz/artifacts/$t/last-run.log"
    log "reproduce: cargo fuzz run ${FUZZ_FLAGS[*]} $t fuzz/artifacts/$t/<crash-file>"
  fi
  summary+=("fuzz $t: ${execs:-?} executions in $took s, $crashes crashes")
done

printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  log "crashed: ${failed[*]}; once fixed, keep the input in fuzz/regressions/TARGET/ (a seed from then on)"
  exit 1
fi
log "new inputs stayed in a scratch corpus; to keep the interesting ones, run a target for longer on the"
log "committed corpus and minimise it: cargo fuzz run ${FUZZ_FLAGS[*]} TARGET && cargo fuzz cmin ${FUZZ_FLAGS[*]} TARGET"
