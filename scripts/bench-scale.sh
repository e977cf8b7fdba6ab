#!/usr/bin/env bash
# Scale curves of the performance issue's workload (issue 10): 1, 10, 100,
# 1,000 machines and 10, 100, 1,000 tags per machine, IronBridge beside the
# reference Python gateway at each point (BENCHMARKS.md §12). Builds release
# binaries first; arguments go to scripts/bench_scale.py.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
bash benchmarks/setup.sh
source scripts/env.sh
cargo build --release --locked -p ironbridge -p ironbridge-simulator
python3 scripts/bench_scale.py "$@"
