#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (scripts/setup.sh), then checks
# formatting and lints, and runs every test of the workspace. Fast when run again (cached downloads,
# incremental builds in target/).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }
# CI builds once from a clean clone: incremental caches would only take disk (gigabytes, on machines
# that have seen under 300 MB free). Kept for a developer's reruns.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
echo "[test] cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
# HQ machines build the node without OpenCV and ONNX Runtime: keep that build working.
echo "[test] cargo check without the vision feature (library, binary and the tests that need no pixels)" >&2
cargo check -p lpmesh-node --no-default-features --all-targets --quiet

# The end-to-end tests run the lpmesh binary: build it first.
cargo build -p lpmesh-node --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile "${NEXTEST_PROFILE:-default}"
else
  cargo test --workspace
fi

# Fuzz smoke run: every target about 20 s on its committed seeds (longer runs: scripts/fuzz.sh --seconds N).
echo "[test] fuzz smoke run" >&2
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
scripts/fuzz.sh --smoke
