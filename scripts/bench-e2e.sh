#!/usr/bin/env bash
# Builds release binaries and runs the end-to-end benchmark at a few loads.
# Figures go to stdout as JSON lines; BENCHMARKS.md quotes them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --locked -p ironbridge -p ironbridge-simulator
for machines in 1 100 1000; do
  python3 scripts/bench_e2e.py --machines "$machines" --poll-ms 100 --seconds "${SECONDS_PER_RUN:-30}"
done
