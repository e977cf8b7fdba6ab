#!/usr/bin/env bash
# Runs one of the aarch64 binaries of scripts/build-aarch64.sh here, under
# qemu-user, with the aarch64 libtorch it was built against:
#   scripts/run-aarch64.sh ironbridge model verify models/examples/bearing-wear/1.0.0
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$1
shift
exec env -u LD_LIBRARY_PATH \
  QEMU_LD_PREFIX=/usr/aarch64-linux-gnu \
  LD_LIBRARY_PATH="$root/.aarch64/runtime" \
  qemu-aarch64 "${CARGO_TARGET_DIR:-$root/target}/aarch64-unknown-linux-gnu/release/$bin" "$@"
