#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs
# (scripts/setup.sh, idempotent), then runs every Rust test. Integration tests
# start their own victoria-metrics, pymodbus and asyncua peers on free
# loopback ports.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
source scripts/env.sh
cargo test --workspace --locked "$@"
