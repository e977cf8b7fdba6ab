#!/usr/bin/env bash
# Remote inference (MLServer, KServe v2) against in-process libtorch on the
# same workload, alternating in one run (scripts/bench_remote.py says what
# it measures). Builds release binaries first; arguments go to the script.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --locked -p ironbridge -p ironbridge-simulator
python3 scripts/bench_remote.py "$@"
