#!/usr/bin/env bash
# The store demo on real footage, from a fresh machine: installs what it needs (scripts/setup.sh),
# builds lpmesh in release mode, and runs `lpmesh demo` (arguments are passed on, e.g. --duration 30).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }
cargo build --release -p lpmesh-node --quiet
exec target/release/lpmesh demo "$@"
