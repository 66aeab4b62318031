#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo fuzz, libFuzzer) for a while each.
#
#   scripts/fuzz.sh [--smoke] [TARGET...] [--seconds N]
#
# All targets by default, N seconds each (300; --smoke: 20, what CI runs). Each run starts from the committed
# seeds (fuzz/corpus/TARGET), copied to a scratch directory so the repository's corpus stays small; a crash
# leaves its input under fuzz/artifacts/TARGET/ and makes the script exit non-zero after the other targets.
#
# Stable toolchain only (CI has no nightly). With `--sanitizer none` cargo fuzz passes no -Z flag, and stable
# rustc builds it as is. cargo fuzz's default, AddressSanitizer, passes -Zsanitizer=address, which stable refuses
# ("the option `Z` is only accepted on the nightly compiler"); with RUSTC_BOOTSTRAP=1 stable accepts it (its
# rust-std ships the ASan runtime), but the targets run 4 to 8 times slower, and the code under test is safe
# Rust, where what libFuzzer can see is a panic either way. LPMESH_FUZZ_SANITIZER=address turns it on for a
# deeper run (unsafe code in dependencies), in a target directory of its own.
# The build keeps cargo fuzz's default debug assertions: an integer overflow on hostile input is a panic here,
# found, rather than a silent wrap.
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
      sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
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

sanitizer="${LPMESH_FUZZ_SANITIZER:-none}"
FUZZ_FLAGS=(--sanitizer "$sanitizer")
if [ "$sanitizer" != none ]; then
  export RUSTC_BOOTSTRAP=1
  # Other RUSTFLAGS: sharing fuzz/target would rebuild everything on each switch.
  FUZZ_FLAGS+=(--target-dir "fuzz/target/$sanitizer")
fi
log "building ${#targets[@]} target(s) (a cold build compiles the mesh's and HQ's dependencies once more)"
build_start=$SECONDS
if [ ${#targets[@]} -eq ${#known[@]} ]; then
  # One cargo invocation builds the targets in parallel.
  cargo fuzz build "${FUZZ_FLAGS[@]}"
else
  for t in "${targets[@]}"; do cargo fuzz build "${FUZZ_FLAGS[@]}" "$t"; done
fi
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
  # libFuzzer's own count: `cargo fuzz run` first rebuilds whatever changed since the build above.
  took="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$scratch/$t.log" | tail -n 1)"
  took="${took:-$((SECONDS - start))}"
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
log "new inputs went to a scratch corpus, now gone; to grow the committed one, run on it, then minimise it:"
log "  cargo fuzz run ${FUZZ_FLAGS[*]} TARGET -- -max_total_time=600; cargo fuzz cmin ${FUZZ_FLAGS[*]} TARGET"
