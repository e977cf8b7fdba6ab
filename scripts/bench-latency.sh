#!/usr/bin/env bash
# Issue 10's latency figures: register change -> stored in victoria-metrics,
# and register change -> data change at an OPC UA subscriber, p50/p99, at
# each [influx] flush interval. Builds release binaries first.
# Arguments go to scripts/bench_latency.py (e.g. --changes 100 --flush-ms 1000,100
# --opcua-min-publishing-ms 10); without any, its defaults.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
bash benchmarks/setup.sh
source scripts/env.sh
cargo build --release --locked -p ironbridge -p ironbridge-simulator
python3 scripts/bench_latency.py "$@"
