#!/usr/bin/env bash
# The partition-and-churn test for longer than CI runs it: five nodes, a proxy per link, random
# partitions, delays, loss, HQ outages and restarts, then convergence and HQ checked against the union log.
#   scripts/soak.sh --soak MINUTES [--seed N]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10
while [ $# -gt 0 ]; do
  case "$1" in
    --soak) minutes="$2"; shift 2 ;;
    --seed) export LPMESH_CHURN_SEED="$2"; shift 2 ;;
    *) echo "usage: scripts/soak.sh --soak MINUTES [--seed N]" >&2; exit 2 ;;
  esac
done
scripts/setup.sh
cargo build -p lpmesh-node --quiet
LPMESH_SOAK_MINUTES="$minutes" cargo nextest run -p lpmesh-tests --test churn --no-capture \
  --profile soak 2>&1 | grep -E "^(churn:|LPMESH_CHURN_SEED)|PASS|FAIL|panicked"
