#!/usr/bin/env bash
# A fleet on this box (issue 11): N gateways, each with its own simulated
# pump, spool and model folder, against one victoria-metrics and one MLflow
# registry; moves the model's alias and reports the time until all N serve
# the new version through their gates, CPU and memory per gateway and the
# store's ingest rate (scripts/fleet_sim.py says how). Builds release
# binaries first.
#
#   scripts/fleet-sim.sh 10
#   scripts/fleet-sim.sh 50 --window-s 30 --gate-samples 60
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ $# -lt 1 ]; then
  echo "usage: $0 N [scripts/fleet_sim.py options]" >&2
  exit 2
fi
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --locked -p ironbridge -p ironbridge-simulator
python3 scripts/fleet_sim.py "$@"
