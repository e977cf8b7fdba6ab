#!/usr/bin/env bash
# Where issue 10's workload's CPU goes, stage by stage: the gateway with
# and without its model and store, the bare tokio-modbus reads beneath it,
# and the reference Python gateway with and without everything but its
# reads (scripts/bench_stages.py). Builds the release binaries first.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
bash benchmarks/setup.sh
source scripts/env.sh
cargo build --release --locked -p ironbridge -p ironbridge-simulator
cargo build --release --locked -p ironbridge-connectors --example bare_modbus_poll
python3 scripts/bench_stages.py "$@"
