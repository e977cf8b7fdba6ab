#!/usr/bin/env bash
# Builds release binaries and runs the OPC UA benchmark (BENCHMARKS.md,
# "OPC UA machine"): one machine with 1,000 monitored items at 100 ms over
# SignAndEncrypt and over None (RUNS times each, default 3) against a load
# server that caps a publish response at 1,000 changes; then 100 items, and
# 1,000 items against the uncapped server (async-opcua's default). Figures go
# to stdout as JSON lines. Honours CARGO_TARGET_DIR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --locked -p ironbridge -p ironbridge-simulator
bench() { python3 scripts/bench_opcua.py --interval-ms 100 --seconds "${SECONDS_PER_RUN:-20}" "$@"; }
echo "# load before: $(uptime)" >&2
for run in $(seq "${RUNS:-3}"); do
  for security in sign-encrypt none; do
    bench --variables 1000 --security "$security" --max-notifications-per-publish 1000
  done
done
bench --variables 100 --security sign-encrypt
bench --variables 1000 --security sign-encrypt
echo "# load after: $(uptime)" >&2
